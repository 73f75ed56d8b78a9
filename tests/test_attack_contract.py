"""The attacks' contract over the whole matrix the product allows (audit BF).

For every model family (tiny-clip = open_clip, tiny-hf-clip, tiny-blip, tiny-albef; TCL is the ALBEF family
and has no twin of its own), task (retrieval, captioning, grounding), attack and protocol, in evaluation and
as the trainer's inner attacks (tecoa, fare, mat):

1. pixels in [0, 1] and within eps of the clean image (fp32 and CPU autocast), the reported linf the one
   recomputed from the returned pixels;
2. at most `budget` words changed, no special token or empty word as a substitute, a substitute differs
   from its word; image-only attacks leave every caption as given, text-only attacks every pixel;
3. the model after the attack: parameters and buffers bitwise, `.grad`, `training`, `requires_grad` and
   grad mode as before, also when the attack raises midway;
4. the pixels, captions and pairing handed to the attack unchanged;
5. the same seed gives the same adversarial examples;
6. each attack does not make its own objective better for the victim than the clean input.

Untrained tiny twins (random weights have a real gradient), 3 images, 1-2 steps.
"""
from __future__ import annotations

import pytest
import torch

pytestmark = pytest.mark.usefixtures("one_torch_thread")

EPS = 4 / 255
STEPS = 1  # a random start and one step: every code path of the loop
BUDGET = 2
FAMILIES = ("tiny-clip", "tiny-hf-clip", "tiny-blip", "tiny-albef")
RETRIEVAL_ATTACKS = ("pgd", "bert-attack", "synonym", "sep", "co-attack", "sga")
PROTOCOLS = ("project", "sga", "co-attack")
FUSED_ATTACKS = ("pgd", "bert-attack", "synonym", "sep", "co-attack")
SPECIAL = ("[UNK]", "[SEP]", "[PAD]", "[MASK]", "[CLS]", "<|endoftext|>", "<|startoftext|>")
# captions in the tiny masked LM's vocabulary; under a reference protocol the evaluation hands them over
# cleaned (lower case, no punctuation), as here
CAPTIONS = ["a red circle left of a blue square", "a small green triangle above the circle",
            "two large yellow stars", "a blue square below a red star",
            "a green circle", "one small purple triangle right of a square"]
PUNCTUATED = ["A red circle, left of a blue square.", "a small green triangle above the circle!",
              "Two large yellow stars;", "a blue square (below) a red star",
              "a green circle", "one small purple triangle, right of a square"]
PAIRING = torch.tensor([0, 0, 1, 1, 2, 2])

_MODELS: dict = {}


def model_of(name: str, **options):
    from models import load_model

    key = (name, tuple(sorted(options.items())))
    if key not in _MODELS:
        _MODELS[key] = load_model(name, device="cpu", **options)
    return _MODELS[key]


@pytest.fixture(scope="module")
def mlm():
    from augment.registry import load_mlm

    model, tokenizer = load_mlm("tiny-mlm")
    return model, tokenizer, "tiny-mlm"


def clean_images(count: int = 3, size: int = 64) -> torch.Tensor:
    images = torch.rand(count, 3, size, size, generator=torch.Generator().manual_seed(0))
    images[:, :, :4, :4] = 0.0  # pixels at the range's ends: the eps ball must be clipped to [0, 1]
    images[:, :, -4:, -4:] = 1.0
    return images


# ----------------------------------------------------------------------------- what is checked


def model_state(model) -> dict:
    """Everything an attack must leave as it found it."""
    return {
        "tensors": {**{f"param {n}": p.detach().clone() for n, p in model.named_parameters()},
                    **{f"buffer {n}": b.detach().clone() for n, b in model.named_buffers()}},
        "grads": {n: None if p.grad is None else p.grad.detach().clone() for n, p in model.named_parameters()},
        "training": {n: m.training for n, m in model.named_modules()},
        "requires_grad": {n: p.requires_grad for n, p in model.named_parameters()},
        "grad_enabled": torch.is_grad_enabled(),
        "staged": len(getattr(model, "_staged", []) or []),
    }


def assert_state_unchanged(before: dict, model) -> None:
    after = model_state(model)
    changed = [n for n, t in before["tensors"].items()
               if n not in after["tensors"] or not torch.equal(t, after["tensors"][n])]
    assert not changed, f"the attack changed {changed[:5]}"
    grads = [n for n, g in before["grads"].items()
             if (g is None) != (after["grads"][n] is None) or (g is not None and not torch.equal(g, after["grads"][n]))]
    assert not grads, f"the attack left gradients on {grads[:5]}"
    assert after["training"] == before["training"], "the attack changed a module's training mode"
    assert after["requires_grad"] == before["requires_grad"], "the attack changed requires_grad"
    assert after["grad_enabled"] == before["grad_enabled"], "the attack changed torch's grad mode"
    assert after["staged"] == before["staged"], "the attack staged momentum features for the queue"


def special_tokens(model) -> set[str]:
    tokens = set(SPECIAL)
    tokenizer = getattr(model, "tokenizer", None)
    for token in getattr(tokenizer, "all_special_tokens", []) or []:
        tokens.add(str(token))
    return tokens


def check_words(before: list[str], after: list[str], changes: list[list[dict]], budget: int, specials: set[str],
                multi_word: bool = False) -> None:
    """At most `budget` words of each caption changed, each to a real word different from it."""
    assert len(after) == len(before) == len(changes)
    for original, attacked, recorded in zip(before, after, changes):
        assert len(recorded) <= budget, (original, attacked, recorded)
        if attacked == original:
            assert not recorded, (original, recorded)
            continue
        words, new = original.split(), attacked.split()
        if len(words) == len(new):
            differing = [(a, b) for a, b in zip(words, new) if a != b]
            assert 0 < len(differing) <= budget, (original, attacked)
            assert len(differing) == len(recorded), (original, attacked, recorded)
        else:  # the reference reading of captions as given: a multi-piece substitute's pieces joined by spaces
            assert multi_word, f"a substitution changed the number of words: {original!r} -> {attacked!r}"
            assert 0 < len(recorded) <= budget and all(" " in c["to"] for c in recorded if c["to"].count(" ")), recorded
        for change in recorded:
            substitute = change["to"]
            assert substitute and substitute.strip(), (original, attacked, recorded)
            assert substitute.lower() != change["from"].lower(), (original, attacked, recorded)
            assert not any(token in substitute for token in specials), (original, attacked, recorded)
            assert not any(token in word for word in new for token in specials if token not in original), \
                (original, attacked)


def check_result(result, images: torch.Tensor, texts: list[str], modality: str, eps: float, budget: int,
                 specials: set[str], name: str, clean_copies: torch.Tensor | None = None, multi_word: bool = False) -> None:
    """Items 1 and 2 on one attack's result (`clean_copies`: the clean image of each returned image)."""
    from train.attacks.base import words_changed_of

    clean = images if clean_copies is None else clean_copies
    adversarial = result.images
    assert adversarial.shape == clean.shape and adversarial.dtype == clean.dtype
    if modality in ("image", "multimodal"):
        assert torch.isfinite(adversarial).all()
        assert float(adversarial.min()) >= 0 and float(adversarial.max()) <= 1, (name, adversarial.min(), adversarial.max())
        linf = float((adversarial - clean).abs().max())
        assert linf <= eps + 1e-6, (name, linf * 255)
        assert linf > 0, f"{name}: no pixel moved"
        assert result.info["linf"] == linf, (name, result.info["linf"], linf)
    else:
        assert torch.equal(adversarial, clean), f"{name}: a text-only attack changed pixels"
    if modality in ("text", "multimodal"):
        check_words(texts, list(result.texts), words_changed_of(result, texts, name), budget, specials, multi_word)
    else:
        assert list(result.texts) == texts, f"{name}: an image-only attack changed captions"


def run_contract(make, model, images, texts, pairing, *, modality, eps=EPS, budget=BUDGET, name="",
                 call=None, copies=False, precision="fp32", specials_allowed=False, multi_word=False):
    """Build the attack twice with the same seed (`make(seed)`), run both; every item checked."""
    from models.half_precision import autocast
    from train.eval_common import reseed_attack

    call = call or (lambda attack, i, t, p: attack(i, t, p))
    kept = (images.clone(), list(texts), pairing.clone())
    state = model_state(model)
    with autocast("cpu", precision):
        first = call(make(0), images, texts, pairing)
    assert_state_unchanged(state, model)
    assert torch.equal(images, kept[0]) and texts == kept[1] and torch.equal(pairing, kept[2]), \
        f"{name}: the attack changed its inputs"
    clean_copies = images[pairing] if copies else None
    # --reference-bugs brings back the reference codes' special tokens as substitutes (REFERENCE_BUGS["special-tokens"])
    specials = set() if specials_allowed else special_tokens(model)
    check_result(first, images, texts, modality, eps, budget, specials, name, clean_copies, multi_word)
    attack = make(0)  # the evaluation reseeds one attack object per batch (`reseed_attack`): its caches must not matter
    with autocast("cpu", precision):
        call(attack, images[:, :, :, torch.arange(images.shape[-1] - 1, -1, -1)], texts[::-1], pairing)  # another batch
        reseed_attack(attack, 0)
        second = call(attack, images, texts, pairing)
    assert torch.equal(first.images, second.images), f"{name}: the same seed gave other pixels"
    assert list(first.texts) == list(second.texts), f"{name}: the same seed gave other captions"
    return first


# ----------------------------------------------------------------------------- retrieval, evaluation


def retrieval_cells():
    for family in FAMILIES:
        for protocol in PROTOCOLS:
            for attack in RETRIEVAL_ATTACKS:
                yield family, attack, protocol, "unimodal", False
    for protocol, family in (("sga", "tiny-clip"), ("co-attack", "tiny-albef")):  # the reference bugs, each code's victim
        for attack in RETRIEVAL_ATTACKS:
            yield family, attack, protocol, "unimodal", True
    for embedding in ("multimodal", "multimodal-cls"):  # the fused-embedding attacks: ALBEF under co-attack only
        for attack in FUSED_ATTACKS:
            for bugs in (False, True):
                yield "tiny-albef", attack, "co-attack", embedding, bugs


MODALITY = {"pgd": "image", "bert-attack": "text", "synonym": "text", "sep": "multimodal", "co-attack": "multimodal",
            "sga": "multimodal"}


@pytest.mark.parametrize("family,name,protocol,embedding,bugs", list(retrieval_cells()))
def test_retrieval_attacks_keep_the_contract(family, name, protocol, embedding, bugs, mlm, request):
    from train.attacks import build_attack

    if name == "synonym":
        request.getfixturevalue("wordnet_ready")
    model = model_of(family)
    texts = CAPTIONS if protocol != "project" else PUNCTUATED
    options = dict(eps=EPS, steps=STEPS, budget=BUDGET, top_k=5, protocol=protocol, attacked_embedding=embedding,
                   reference_bugs=bugs)
    attack = build_attack(name, model, seed=0, mlm=mlm, **options)
    assert attack.modality == MODALITY[name]
    run_contract(lambda seed: build_attack(name, model, seed=seed, mlm=mlm, **options), model, clean_images(),
                 texts, PAIRING, modality=MODALITY[name], name=f"{family} {name} {protocol} {embedding}",
                 specials_allowed=bugs)


# the other settings a command line (or the API) may give, each on the attacks that read it
OPTION_CELLS = [
    ("text guide", dict(guide="text"), ("bert-attack", "sga"), "project", PUNCTUATED),
    ("wordnet", dict(candidates="wordnet"), ("sep", "co-attack", "sga"), "project", PUNCTUATED),
    ("wordnet sga", dict(candidates="wordnet"), ("bert-attack", "sep", "co-attack"), "sga", CAPTIONS),
    ("few MLM tokens", dict(max_length=4), ("bert-attack", "sga"), "project", PUNCTUATED),
    ("one text a pass", dict(text_batch=2, mlm_batch=2), ("bert-attack", "sga"), "project", PUNCTUATED),
    ("step over eps", dict(step_size=3 * EPS), ("pgd", "co-attack", "sga"), "project", PUNCTUATED),
    ("step over eps, sga", dict(step_size=3 * EPS), ("pgd", "sep", "sga"), "sga", CAPTIONS),
    ("no random start", dict(random_start=False), ("pgd", "co-attack", "sga"), "sga", CAPTIONS),
    ("contrastive", dict(loss="contrastive"), RETRIEVAL_ATTACKS, "project", PUNCTUATED),
    ("words per round", dict(words_per_round=3), ("bert-attack", "sga"), "project", PUNCTUATED),
    ("one scale", dict(scales=(0.5,)), ("sga",), "project", PUNCTUATED),
    ("captions as given", dict(), ("bert-attack", "sep", "co-attack", "sga"), "co-attack", PUNCTUATED),
    ("budget 0", dict(budget=0), ("bert-attack", "sep", "co-attack", "sga"), "project", PUNCTUATED),
]


def option_cells():
    for label, options, names, protocol, texts in OPTION_CELLS:
        # ALBEF where the protocol reads it otherwise (its [CLS] states under co-attack) or the loss differs
        for family in ("tiny-clip", "tiny-albef") if protocol != "project" or label == "contrastive" else ("tiny-clip",):
            for name in names:
                yield pytest.param(family, name, protocol, options, texts, id=f"{family}-{name}-{protocol}-{label}")


@pytest.mark.parametrize("family,name,protocol,options,texts", list(option_cells()))
def test_retrieval_attacks_keep_the_contract_under_other_settings(family, name, protocol, options, texts, mlm, request):
    from train.attacks import build_attack

    if name == "synonym" or options.get("candidates") == "wordnet":
        request.getfixturevalue("wordnet_ready")
    model = model_of(family)
    settings = {**dict(eps=EPS, steps=STEPS, budget=BUDGET, top_k=5, protocol=protocol), **options}
    modality = MODALITY[name]
    if settings["budget"] == 0 and modality == "text":
        modality = "none"
    run_contract(lambda seed: build_attack(name, model, seed=seed, mlm=mlm, **settings), model, clean_images(), texts,
                 PAIRING, modality=modality, budget=settings["budget"], name=f"{family} {name} {protocol} {options}",
                 # README "Protocols" item 9: the reference reading joins a multi-piece substitute's pieces by spaces
                 multi_word=protocol != "project")


@pytest.mark.parametrize("precision", ["amp_bf16", "amp_fp16"])
@pytest.mark.parametrize("family,name,protocol", [("tiny-clip", "pgd", "project"), ("tiny-clip", "sga", "project"),
                                                  ("tiny-albef", "co-attack", "project"), ("tiny-blip", "sep", "sga"),
                                                  ("tiny-albef", "co-attack", "co-attack"),
                                                  ("tiny-hf-clip", "sga", "sga")])
def test_retrieval_attacks_keep_the_contract_under_autocast(family, name, protocol, precision, mlm):
    from train.attacks import build_attack

    model = model_of(family)
    options = dict(eps=EPS, steps=STEPS, budget=BUDGET, top_k=5, protocol=protocol)
    run_contract(lambda seed: build_attack(name, model, seed=seed, mlm=mlm, **options), model, clean_images(),
                 CAPTIONS, PAIRING, modality=MODALITY[name], name=f"{family} {name} {protocol} {precision}",
                 precision=precision)


@pytest.mark.parametrize("family", FAMILIES)
def test_retrieval_pgd_and_text_attack_make_their_loss_worse_for_the_victim(family, mlm):
    from train.attacks import build_attack
    from train.attacks.base import default_pairing, pair_loss

    model = model_of(family)
    images = clean_images()
    pairing = default_pairing(3, len(CAPTIONS), PAIRING)

    def loss(pixels, texts) -> float:
        with torch.no_grad():
            return float(pair_loss(model.encode_image(pixels), model.encode_text(texts), pairing))

    clean = loss(images, CAPTIONS)
    adversarial = build_attack("pgd", model, seed=0, eps=8 / 255, steps=3)(images, CAPTIONS, PAIRING)
    assert loss(adversarial.images, CAPTIONS) > clean
    attacked = build_attack("bert-attack", model, seed=0, mlm=mlm, budget=BUDGET, top_k=5)(images, CAPTIONS, PAIRING)
    assert loss(images, attacked.texts) >= clean


@pytest.mark.parametrize("family,name", [("tiny-clip", "sga"), ("tiny-albef", "co-attack"), ("tiny-albef", "pgd")])
def test_an_attack_that_raises_midway_restores_the_model(family, name, mlm, monkeypatch):
    """A PGD step that fails (out of memory) leaves the model, its modes and grad mode as they were."""
    from train.attacks import build_attack

    model = model_of(family)
    attack = build_attack(name, model, seed=0, mlm=mlm, eps=EPS, steps=STEPS, budget=BUDGET, top_k=5,
                          protocol="co-attack" if name == "pgd" else "project")
    state = model_state(model)
    method = "image_features" if family == "tiny-albef" else "encode_image"  # ALBEF's [CLS] reading too
    original = getattr(type(model), method)

    def failing(self, pixels, *args, **kwargs):
        if torch.is_grad_enabled() and pixels.requires_grad:  # inside a PGD step
            raise RuntimeError("out of memory (simulated)")
        return original(self, pixels, *args, **kwargs)

    monkeypatch.setattr(type(model), method, failing)
    with torch.no_grad(), pytest.raises(RuntimeError, match="simulated"):
        attack(clean_images(), CAPTIONS, PAIRING)
    monkeypatch.setattr(type(model), method, original)
    assert_state_unchanged(state, model)


def test_a_heat_attack_that_raises_midway_removes_its_hook_and_restores_the_model(monkeypatch):
    from train.attacks.grounding import build_grounding_attack

    model = model_of("tiny-albef")
    attack = build_grounding_attack("pgd", model, objective="heat", seed=0, eps=EPS, steps=STEPS)
    state = model_state(model)
    cross = model.text_encoder.encoder.layer[model.grounding_layer].crossattention.self
    hooks, attention = dict(cross._forward_hooks), model.text_encoder.fusion_config._attn_implementation

    class Failing(torch.nn.Module):
        def forward(self, states):
            raise RuntimeError("out of memory (simulated)")

    head = model.itm_head
    model.itm_head = Failing()
    try:
        with pytest.raises(RuntimeError, match="simulated"):
            attack(clean_images(), CAPTIONS, PAIRING, boxes=BOXES, sizes=SIZES)
    finally:
        model.itm_head = head
    assert dict(cross._forward_hooks) == hooks
    assert model.text_encoder.fusion_config._attn_implementation == attention
    assert_state_unchanged(state, model)


def test_an_inner_attack_that_raises_midway_restores_the_training_modes(monkeypatch):
    model = training_model("tiny-albef", "retrieval")
    step = method_of("mat", model, "retrieval")
    state = model_state(model)
    original = type(model).encode_image

    def failing(self, pixels, *args, **kwargs):
        if torch.is_grad_enabled() and pixels.requires_grad:
            raise RuntimeError("out of memory (simulated)")
        return original(self, pixels, *args, **kwargs)

    monkeypatch.setattr(type(model), "encode_image", failing)
    with pytest.raises(RuntimeError, match="simulated"):
        step._pgd(clean_images(), model.tokenize(CAPTIONS[:3]), torch.arange(3), CAPTIONS[:3])
    monkeypatch.setattr(type(model), "encode_image", original)
    assert_state_unchanged(state, model)


# ----------------------------------------------------------------------------- captioning, evaluation


CAPTION_MODALITY = {"pgd": "image", "pgd-targeted": "image", "prompt": "text", "prompt-pgd": "multimodal"}


def check_prompts(result, prompt: str, budget: int, specials: set[str]) -> None:
    prompts = result.info["prompts"]
    check_words([prompt] * len(prompts), prompts, result.info["prompt_changes"], budget, specials)


def captioning_cells():
    for precision in ("fp32", "amp_bf16"):
        for name in CAPTION_MODALITY:
            for candidates in (("mlm", "wordnet") if name in ("prompt", "prompt-pgd") else ("mlm",)):
                yield name, candidates, precision


@pytest.mark.parametrize("name,candidates,precision", list(captioning_cells()))
def test_captioning_attacks_keep_the_contract(name, candidates, precision, mlm, request):
    from train.attacks.captioning import build_caption_attack

    if candidates == "wordnet":
        request.getfixturevalue("wordnet_ready")
    model = model_of("tiny-captioner", kind="captioning", prompt="a picture of")
    options = dict(eps=EPS, steps=STEPS, budget=BUDGET, top_k=5, candidates=candidates, mlm=mlm)
    modality = CAPTION_MODALITY[name]
    # the references are never changed (the prompt attacks change the prompt): checked as an image attack's captions
    pixels_and_references = {"image": "image", "multimodal": "image", "text": "none"}[modality]
    result = run_contract(lambda seed: build_caption_attack(name, model, seed=seed, **options), model, clean_images(),
                          CAPTIONS, PAIRING, modality=pixels_and_references, name=f"captioning {name}",
                          precision=precision)
    assert list(result.texts) == CAPTIONS  # the references are never changed by an evaluation attack
    if modality in ("text", "multimodal"):
        check_prompts(result, model.prompt, BUDGET, special_tokens(model))


def test_captioning_pgd_raises_the_references_loss_and_targeted_lowers_the_targets(mlm):
    from train.attacks.captioning import build_caption_attack, lm_losses

    model = model_of("tiny-captioner", kind="captioning", prompt="a picture of")
    images = clean_images()

    def loss(pixels, texts, rows) -> float:
        return float(lm_losses(model, pixels[torch.as_tensor(rows)], texts).mean())

    clean = loss(images, CAPTIONS, PAIRING)
    adversarial = build_caption_attack("pgd", model, seed=0, eps=8 / 255, steps=3)(images, CAPTIONS, PAIRING)
    assert loss(adversarial.images, CAPTIONS, PAIRING) > clean
    targeted = build_caption_attack("pgd-targeted", model, seed=0, eps=8 / 255, steps=3)(images, CAPTIONS, PAIRING)
    targets = targeted.info["targets"]
    assert loss(targeted.images, targets, [0, 1, 2]) < loss(images, targets, [0, 1, 2])


# ----------------------------------------------------------------------------- grounding, evaluation


GROUNDING_ATTACKS = ("pgd", "bert-attack", "synonym", "sep", "co-attack", "sga")


def grounding_cells():
    for family in ("tiny-blip", "tiny-albef"):
        for name in GROUNDING_ATTACKS:
            yield family, name, "project", "itm", "unimodal"
    for name in GROUNDING_ATTACKS:
        yield "tiny-albef", name, "project", "heat", "unimodal"
        yield "tiny-albef", name, "co-attack", "itm", "unimodal"
        yield "tiny-blip", name, "co-attack", "itm", "unimodal"
    for name in FUSED_ATTACKS:
        for embedding in ("multimodal", "multimodal-cls"):
            yield "tiny-albef", name, "co-attack", "itm", embedding


BOXES = [[4, 4, 20, 20], [30, 10, 20, 20], [10, 30, 16, 16], [0, 0, 32, 32], [20, 20, 30, 30], [5, 40, 20, 20]]
SIZES = [(64, 64)] * 6


def grounding_precision_cells():
    for cell in grounding_cells():
        yield (*cell, "fp32")
    yield "tiny-albef", "pgd", "project", "heat", "unimodal", "amp_bf16"  # Grad-CAM's second order under autocast
    yield "tiny-albef", "sga", "project", "itm", "unimodal", "amp_fp16"
    yield "tiny-blip", "co-attack", "co-attack", "itm", "unimodal", "amp_bf16"


@pytest.mark.parametrize("family,name,protocol,objective,embedding,precision", list(grounding_precision_cells()))
def test_grounding_attacks_keep_the_contract(family, name, protocol, objective, embedding, precision, mlm, request):
    from train.attacks.grounding import build_grounding_attack
    from train.attacks.grounding_protocols import IMAGE_PER_TEXT, build_reference_grounding_attack

    if name == "synonym":
        request.getfixturevalue("wordnet_ready")
    model = model_of(family)
    common = dict(eps=EPS, steps=STEPS, budget=BUDGET, top_k=5, mlm=mlm)
    if protocol == "project":
        def make(seed):
            return build_grounding_attack(name, model, objective=objective, seed=seed, **common)
    else:
        def make(seed):
            return build_reference_grounding_attack(name, model, protocol=protocol, attacked_embedding=embedding,
                                                    seed=seed, **common)
    attack = make(0)
    copies = protocol != "project" and attack.modality in ("image", "multimodal")

    def call(attack, images, texts, pairing):
        result = attack(images, texts, pairing, boxes=BOXES, sizes=SIZES)
        if copies:
            assert result.info[IMAGE_PER_TEXT]
        return result

    texts = CAPTIONS if protocol != "project" else PUNCTUATED
    run_contract(make, model, clean_images(), texts, PAIRING, modality=MODALITY[name], call=call, copies=copies,
                 name=f"grounding {family} {name} {protocol} {objective} {embedding}", precision=precision)


@pytest.mark.parametrize("objective", ["itm", "heat"])
def test_grounding_pgd_lowers_its_score(objective):
    from train.attacks.grounding import build_grounding_attack

    model = model_of("tiny-albef")
    attack = build_grounding_attack("pgd", model, objective=objective, seed=0, eps=8 / 255, steps=3)
    images = clean_images()
    result = attack(images, CAPTIONS, PAIRING, boxes=BOXES, sizes=SIZES)
    with torch.no_grad():
        clean = attack.victim.scores(images, CAPTIONS, PAIRING, BOXES, SIZES).mean()
        adversarial = attack.victim.scores(result.images, CAPTIONS, PAIRING, BOXES, SIZES).mean()
    assert adversarial < clean


# ----------------------------------------------------------------------------- the trainer's inner attacks


def training_model(family: str, task: str, momentum: bool = False):
    """A fresh model as the trainer holds it: training mode, gradients of an earlier micro step kept."""
    from models import load_model

    if task == "captioning":
        model = load_model("tiny-captioner", device="cpu", kind="captioning")
    else:
        model = load_model(family, device="cpu")
    if momentum:
        model.set_momentum_distillation(True)
    model.train()
    for index, parameter in enumerate(model.parameters()):
        if parameter.requires_grad and index % 2 == 0:  # some with a gradient accumulated, some None
            parameter.grad = torch.full_like(parameter, 0.5)
    return model


def method_of(method: str, model, task_name: str, mlm_name: str = "tiny-mlm"):
    from tasks import build_task
    from train.config import TrainConfig
    from train.methods import METHODS, StepContext

    config = TrainConfig(method=method, task=task_name, model="tiny", mlm=mlm_name, word_budget=BUDGET, top_k=5,
                         attack_eps=EPS, pgd_steps=STEPS, pgd_step_size=EPS / 2)
    task = build_task(task_name)
    frozen = model.frozen_copy() if method == "fare" else None
    return METHODS[method](StepContext(forward=None, model=model, task=task, config=config,
                                       pgd_generator=torch.Generator().manual_seed(0), frozen=frozen))


def training_cells():
    for family in FAMILIES:
        for method in ("tecoa", "fare", "mat"):
            yield family, "retrieval", method, False, False
        yield family, "retrieval", "mat", False, True
    yield "tiny-albef", "retrieval", "mat", True, False
    yield "tiny-albef", "retrieval", "tecoa", True, False
    for checkpointing in (False, True):
        yield "tiny-captioner", "captioning", "tecoa", False, checkpointing
        yield "tiny-captioner", "captioning", "mat", False, checkpointing
    for family in ("tiny-blip", "tiny-albef"):
        yield family, "grounding", "mat", False, False
    yield "tiny-albef", "grounding", "mat", False, True


def precision_cells():
    for cell in training_cells():
        yield (*cell, "fp32")
    for precision in ("amp_bf16", "amp_fp16"):  # the step's autocast (`--precision`), which the inner attacks run in
        yield "tiny-clip", "retrieval", "mat", False, False, precision
        yield "tiny-albef", "retrieval", "mat", True, False, precision
        yield "tiny-captioner", "captioning", "mat", False, False, precision
        yield "tiny-albef", "grounding", "mat", False, False, precision


@pytest.mark.parametrize("family,task,method,momentum,checkpointing,precision", list(precision_cells()))
def test_the_trainers_inner_attacks_keep_the_contract(family, task, method, momentum, checkpointing, precision):
    from models.half_precision import autocast

    model = training_model(family, task, momentum)
    if checkpointing:  # --grad-checkpointing: the checkpointed modules stay in training mode during the attack
        model.set_grad_checkpointing(True)
    if momentum:  # a staged batch and a queue with entries: the attack must leave both
        model.stage_for_queue(torch.randn(2, model.image_queue.shape[1]), torch.randn(2, model.text_queue.shape[1]),
                              torch.tensor([7, 8]))
    step = method_of(method, model, task)
    images = clean_images()
    texts, keys = CAPTIONS[:3], torch.arange(3)
    kept = (images.clone(), list(texts), keys.clone())
    state = model_state(model)
    if method == "fare":
        from train.attacks import pgd_linf
        from train.methods import attacked_as_evaluated, fare_loss

        with torch.no_grad():
            target = step.ctx.frozen.encode_image(images, normalize=False)
        with attacked_as_evaluated(model):
            adversarial = pgd_linf(images, lambda x: fare_loss(model.encode_image(x, normalize=False), target), EPS,
                                   STEPS, EPS / 2, True, step.ctx.pgd_generator)
        adversarial_texts = texts
    else:
        with autocast("cpu", precision):
            adversarial_texts = step._attack_text(images, texts, keys) if method == "mat" else texts
            tokens = model.tokenize(adversarial_texts)
            kept_tokens = [None if t is None else t.clone() for t in (tokens.input_ids, tokens.attention_mask)]
            adversarial = step._pgd(images, tokens, keys, adversarial_texts)
        for before, after in zip(kept_tokens, (tokens.input_ids, tokens.attention_mask)):
            assert (before is None and after is None) or torch.equal(before, after), "the attack changed its tokens"
    assert_state_unchanged(state, model)
    assert torch.equal(images, kept[0]) and texts == kept[1] and torch.equal(keys, kept[2])
    assert float(adversarial.min()) >= 0 and float(adversarial.max()) <= 1
    assert 0 < float((adversarial - images).abs().max()) <= EPS + 1e-6
    assert len(adversarial_texts) == len(texts)
    for before, after in zip(texts, adversarial_texts):
        changed = [(a, b) for a, b in zip(before.split(), after.split()) if a != b]
        assert len(before.split()) == len(after.split()) and len(changed) <= BUDGET, (before, after)
        assert not any(token in after for token in SPECIAL), (before, after)


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("tower", ("image", "text"))
def test_the_inner_attacks_leave_a_locked_tower_frozen(family, tower):
    """--lock-image / --lock-text (and --grad-checkpointing): the frozen tower stays frozen, without gradients."""
    model = training_model(family, "retrieval")
    for parameter in model.tower_parameters(tower):
        parameter.requires_grad_(False)
        parameter.grad = None
    model.set_grad_checkpointing(True)
    step = method_of("mat", model, "retrieval")
    state = model_state(model)
    images, keys = clean_images(), torch.arange(3)
    texts = step._attack_text(images, CAPTIONS[:3], keys)
    step._pgd(images, model.tokenize(texts), keys, texts)
    assert_state_unchanged(state, model)
    assert not any(p.requires_grad for p in model.tower_parameters(tower))


def batched_cells():
    for family in ("tiny-clip", "tiny-albef"):
        for protocol in PROTOCOLS if family == "tiny-albef" else ("project", "sga"):
            for name in ("pgd", "bert-attack", "sep", "co-attack", "sga"):
                yield family, name, protocol


@pytest.mark.parametrize("family,name,protocol", list(batched_cells()))
def test_a_batch_is_attacked_as_its_images_one_at_a_time(family, name, protocol, mlm):
    """Issue 19: the batched attacks give the adversarial examples of a per-image loop (deterministic
    settings: no random start, no SGA noise); pixels up to the rare sign a batch's rounding flips."""
    from train.attacks import build_attack

    model = model_of(family)
    options = dict(eps=EPS, steps=STEPS, budget=BUDGET, top_k=5, random_start=False, noise_std=0.0, protocol=protocol)
    images = clean_images()
    batched = build_attack(name, model, mlm=mlm, **options)(images, CAPTIONS, PAIRING)
    texts, pixels = [], []
    for image in range(len(images)):
        own = [t for t, i in zip(CAPTIONS, PAIRING.tolist()) if i == image]
        result = build_attack(name, model, mlm=mlm, **options)(images[image:image + 1], own, torch.zeros(len(own), dtype=torch.long))
        texts += result.texts
        pixels.append(result.images)
    assert list(batched.texts) == texts
    if protocol == "co-attack" and name in ("pgd", "sep"):
        return  # its image step (KL away from the clean image) has no gradient at the clean image: no deterministic start
    differing = int((torch.cat(pixels) != batched.images).sum())
    assert differing <= 0.01 * images.numel(), (differing, images.numel())


@pytest.mark.parametrize("task,name", [("grounding", "bert-attack"), ("grounding", "co-attack"), ("grounding", "sga"),
                                       ("captioning", "prompt-pgd")])
def test_a_grounding_or_captioning_batch_is_attacked_as_its_images_one_at_a_time(task, name, mlm):
    from train.attacks.captioning import build_caption_attack
    from train.attacks.grounding import build_grounding_attack

    if task == "grounding":
        model = model_of("tiny-albef")

        def build():
            return build_grounding_attack(name, model, eps=EPS, steps=STEPS, budget=BUDGET, top_k=5, mlm=mlm,
                                          random_start=False, noise_std=0.0)
    else:
        model = model_of("tiny-captioner", kind="captioning", prompt="a picture of")

        def build():
            return build_caption_attack(name, model, eps=EPS, steps=STEPS, budget=BUDGET, top_k=5, mlm=mlm,
                                        random_start=False)
    images = clean_images()
    batched = build()(images, CAPTIONS, PAIRING)
    texts, prompts, pixels = [], [], []
    for image in range(len(images)):
        own = [t for t, i in zip(CAPTIONS, PAIRING.tolist()) if i == image]
        result = build()(images[image:image + 1], own, torch.zeros(len(own), dtype=torch.long))
        texts += result.texts
        prompts += result.info.get("prompts", [])
        pixels.append(result.images)
    assert list(batched.texts) == texts and batched.info.get("prompts", []) == prompts
    assert torch.equal(torch.cat(pixels), batched.images)


def with_dropout(model):
    for module in model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.1  # the real BERTs' (ALBEF, BLIP); the twins have none
    return model


@pytest.mark.parametrize("task", ["retrieval", "captioning", "grounding"])
def test_an_evaluation_runs_the_models_in_eval_mode_and_leaves_their_modes(task, tmp_path):
    """`evaluate`, `evaluate_captioning` and `evaluate_grounding` from Python on a model in training mode (one
    just trained, with its dropout): each evaluated it in training mode (retrieval, captioning: every
    encoding and attack with dropout on, other numbers than `train eval`'s) or left it in eval mode (grounding)."""
    from augment.world.writer import write_sample

    attacks, options = ["clean", "pgd"], dict(eps=EPS, steps=STEPS)

    def report_of(model):
        if task == "retrieval":
            from augment.sources import load_source
            from train.evaluate import evaluate

            if not (tmp_path / "world").exists():
                write_sample(tmp_path / "world", n=12, seed=0)
            return evaluate(model, load_source(str(tmp_path / "world"))[0], split="all", attacks=attacks, limit=4,
                            batch_size=2, progress=False, attack_options=options)
        if task == "captioning":
            from augment.sources import load_source
            from train.evaluate_captioning import evaluate_captioning

            if not (tmp_path / "world").exists():
                write_sample(tmp_path / "world", n=12, seed=0)
            return evaluate_captioning(model, load_source(str(tmp_path / "world"))[0], split="all", attacks=attacks,
                                       limit=2, batch_size=2, progress=False, attack_options=options, meteor=False,
                                       generation={"num_beams": 1, "max_length": 8, "min_length": 2})
        from augment.referring import world_grounding
        from train.evaluate_grounding import evaluate_grounding

        return evaluate_grounding(model, world_grounding(seed=5, n=3), attacks=attacks, attack_options=options)

    def load():
        from models import load_model

        if task == "captioning":
            return with_dropout(load_model("tiny-captioner", device="cpu", kind="captioning"))
        return with_dropout(load_model("tiny-albef", device="cpu"))

    def numbers(report):
        return {name: {k: v for k, v in entry.items() if k != "seconds"} for name, entry in report["attacks"].items()}

    expected = numbers(report_of(load()))  # loaded in eval mode, as `train eval` loads it
    model = load().train()
    model.visual_encoder.eval() if task != "captioning" else None  # a tower the caller keeps in eval mode stays so
    modes = {name: module.training for name, module in model.named_modules()}
    assert numbers(report_of(model)) == expected
    assert {name: module.training for name, module in model.named_modules()} == modes
