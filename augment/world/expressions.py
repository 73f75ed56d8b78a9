"""Referring expressions for visual grounding: each object of a scene gets expressions that single
it out ("the red circle", "the large square on the left"); `truth.check_expression` judges them."""
from __future__ import annotations

import random

from augment.world.captions import (
    COLOUR_WORDS, GENERIC_NOUN, POSITION_PHRASES, RELATION_PHRASES, SHAPE_WORDS, SIZE_WORDS, holding_relations,
)
from augment.world.render import object_box
from augment.world.scene import Scene, SceneObject
from augment.world.truth import check_expression

# which content words an expression names, in the order the canonical expression tries them:
# the first that singles the object out is its canonical (shortest) expression
EXPRESSION_FORMS = (
    ("shape",), ("colour", "shape"), ("size", "shape"), ("size", "colour", "shape"),
    ("colour",), ("size",), ("position",), ("shape", "position"), ("colour", "shape", "position"),
    ("size", "colour", "shape", "position"),
)


def _form_matches(form: tuple[str, ...], obj: SceneObject, other: SceneObject) -> bool:
    return all(getattr(obj, name) == getattr(other, name) for name in form)


def singles_out(form: tuple[str, ...], scene: Scene, target: int) -> bool:
    """Whether naming `form`'s attributes of object `target` matches no other object."""
    obj = scene.objects[target]
    return not any(_form_matches(form, obj, other) for k, other in enumerate(scene.objects) if k != target)


def _expression_text(obj: SceneObject, form: tuple[str, ...], rng: random.Random | None) -> str:
    def word(options: tuple[str, ...]) -> str:
        return options[0] if rng is None else rng.choice(options)

    words = ["the"]
    if "size" in form:
        words.append(word(SIZE_WORDS[obj.size]))
    if "colour" in form:
        words.append(word(COLOUR_WORDS[obj.colour]))
    words.append(word(SHAPE_WORDS[obj.shape]) if "shape" in form else GENERIC_NOUN)
    if "position" in form:
        words.append(word(POSITION_PHRASES[obj.position]))
    return " ".join(words)


def _relation_expression(scene: Scene, target: int, rng: random.Random) -> str | None:
    """'the red circle to the left of the blue square', when the landmark singles itself out."""
    obj = scene.objects[target]
    landmarks = [k for k in range(len(scene.objects)) if k != target]
    if not landmarks:
        return None
    landmark = rng.choice(landmarks)
    relation = rng.choice(holding_relations(obj, scene.objects[landmark]))
    own = _expression_text(obj, ("colour", "shape"), rng)
    forms = [f for f in EXPRESSION_FORMS if "position" not in f and singles_out(f, scene, landmark)]
    other = _expression_text(scene.objects[landmark], rng.choice(forms) if forms else ("colour", "shape"), rng)
    return f"{own} {rng.choice(RELATION_PHRASES[relation])} {other}"


def canonical_expression(scene: Scene, target: int) -> str:
    """The shortest expression (first of `EXPRESSION_FORMS`) that singles out object `target`."""
    form = next(f for f in EXPRESSION_FORMS if singles_out(f, scene, target))
    return _expression_text(scene.objects[target], form, None)


def referring_expressions(scene: Scene, target: int, rng: random.Random, n: int = 3) -> list[str]:
    """Up to `n` distinct expressions that single out object `target` (each checked by
    `check_expression`): the canonical one first, then random forms and synonyms, and a relation to
    another object. Fewer than `n` only when the scene offers no more distinct wordings."""
    expressions = [canonical_expression(scene, target)]
    forms = [f for f in EXPRESSION_FORMS if singles_out(f, scene, target)]
    attempts = 0
    while len(expressions) < n and attempts < 50 * n:
        attempts += 1
        if len(scene.objects) > 1 and rng.random() < 0.25:
            text = _relation_expression(scene, target, rng)
        else:
            text = _expression_text(scene.objects[target], rng.choice(forms), rng)
        if text and text not in expressions and check_expression(text, scene, target):
            expressions.append(text)
    return expressions


def expressions_for_scene(scene: Scene, rng: random.Random, n: int = 3) -> list[dict]:
    """Every object's referring expressions with its true box: [{object, box, expressions}]."""
    return [{"object": k, "box": list(object_box(obj)), "expressions": referring_expressions(scene, k, rng, n)}
            for k, obj in enumerate(scene.objects)]
