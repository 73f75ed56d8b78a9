"""The sample world's content: what a scene holds and how scenes are drawn at random.

A scene holds 1-3 objects. Each object has *content* (shape, colour, size, named position), which
is all a caption may state, and *render-only details* (pixel jitter, rotation); the background is
plain or noisy grey. Everything is seeded with `random.Random` (stable across platforms and
Python versions).
"""
from __future__ import annotations

import random
from dataclasses import asdict, dataclass

from augment.errors import SourceError

SHAPES = ("circle", "square", "triangle", "star", "diamond", "hexagon")
COLOURS = {
    "red": (220, 40, 40),
    "green": (40, 170, 60),
    "blue": (40, 80, 220),
    "yellow": (240, 220, 50),
    "purple": (140, 60, 190),
    "orange": (245, 140, 30),
    "white": (245, 245, 245),
    "black": (20, 20, 20),
}
SIZES = ("small", "large")
POSITIONS = ("left", "right", "top", "bottom", "centre")
BACKGROUNDS = ("plain", "noisy")

# coarse grid coordinates of the named positions (x grows rightwards, y grows downwards);
# relations ("to the left of", "above") are decided on these, never on the jittered pixels
POSITION_GRID = {"left": (-1, 0), "right": (1, 0), "top": (0, -1), "bottom": (0, 1), "centre": (0, 0)}
MAX_JITTER = 2  # pixels
MAX_ROTATION = 15  # degrees; more would turn a square into a diamond

# object counts 1, 2, 3 with these probabilities
OBJECT_COUNT_WEIGHTS = (0.25, 0.40, 0.35)


@dataclass(frozen=True)
class SceneObject:
    shape: str
    colour: str
    size: str
    position: str
    # render-only details: they change pixels, never what a caption may say
    dx: int = 0
    dy: int = 0
    rotation: int = 0

    def content(self) -> tuple[str, str, str, str]:
        return (self.shape, self.colour, self.size, self.position)


@dataclass(frozen=True)
class Scene:
    objects: tuple[SceneObject, ...]
    background: str = "plain"
    # render-only: seeds the grey noise of a noisy background
    noise_seed: int = 0

    def to_dict(self) -> dict:
        return {
            "background": self.background,
            "noise_seed": self.noise_seed,
            "objects": [asdict(obj) for obj in self.objects],
        }

    @classmethod
    def from_dict(cls, data: dict) -> "Scene":
        try:
            objects = tuple(SceneObject(**obj) for obj in data["objects"])
            scene = cls(objects, str(data.get("background", "plain")), int(data.get("noise_seed", 0)))
        except (KeyError, TypeError, ValueError) as exc:
            raise SourceError(f"malformed sample-world scene {data!r}: {exc}") from exc
        problem = _scene_problem(scene)
        if problem:
            raise SourceError(f"malformed sample-world scene: {problem}")
        return scene

    def content(self) -> tuple:
        """What captions describe: objects without render details, and the background kind."""
        return (tuple(obj.content() for obj in self.objects), self.background)


def _scene_problem(scene: Scene) -> str | None:
    if not 1 <= len(scene.objects) <= len(POSITIONS):
        return f"{len(scene.objects)} objects"
    if scene.background not in BACKGROUNDS:
        return f"unknown background {scene.background!r}"
    allowed = {"shape": SHAPES, "colour": COLOURS, "size": SIZES, "position": POSITIONS}
    for obj in scene.objects:
        for name, values in allowed.items():
            if getattr(obj, name) not in values:
                return f"unknown {name} {getattr(obj, name)!r}"
    positions = [obj.position for obj in scene.objects]
    if len(set(positions)) != len(positions):
        return f"two objects share a position in {positions}"
    return None


def sample_render_details(rng: random.Random) -> tuple[int, int, int]:
    return (
        rng.randint(-MAX_JITTER, MAX_JITTER),
        rng.randint(-MAX_JITTER, MAX_JITTER),
        rng.randint(-MAX_ROTATION, MAX_ROTATION),
    )


def _object_count(rng: random.Random) -> int:
    draw = rng.random()
    total = 0.0
    for count, weight in enumerate(OBJECT_COUNT_WEIGHTS, start=1):
        total += weight
        if draw < total:
            return count
    return len(OBJECT_COUNT_WEIGHTS)


def sample_scene(rng: random.Random) -> Scene:
    """A random scene; the same `rng` state always gives the same scene."""
    count = _object_count(rng)
    positions = rng.sample(POSITIONS, count)
    objects = []
    for position in positions:
        shape = rng.choice(SHAPES)
        colour = rng.choice(sorted(COLOURS))
        size = rng.choice(SIZES)
        dx, dy, rotation = sample_render_details(rng)
        objects.append(SceneObject(shape, colour, size, position, dx, dy, rotation))
    background = rng.choice(BACKGROUNDS)
    return Scene(tuple(objects), background, rng.getrandbits(32))


def relation_holds(relation: str, first: str, second: str) -> bool:
    """Whether the object at named position `first` is `relation` the one at `second`."""
    (x1, y1), (x2, y2) = POSITION_GRID[first], POSITION_GRID[second]
    return {"left_of": x1 < x2, "right_of": x1 > x2, "above": y1 < y2, "below": y1 > y2}[relation]
