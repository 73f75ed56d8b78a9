"""`--protocol sga|co-attack`: each departure from the project's attacks, on hand-made cases.

A toy victim (linear image encoder over pooled pixels, bag-of-words text encoder) and a
hand-made WordPiece vocabulary keep every test well under a second; the echo masked LM predicts
the token it reads, so where the reference reads its predictions is visible.
"""
from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

from augment.seeds import derive_seed
from augment.words import Chunk, blip_pre_caption, pre_caption, preprocess_caption, split_chunk
from train.attacks import PROTOCOL_CHOICES, AttackSettings, build_attack
from train.attacks.base import kl_to
from train.attacks.multimodal import SGA, CoAttack, resized_views
from train.attacks.pgd import PGD, pgd_linf
from train.attacks.protocols import REFERENCE_FILTER_WORDS
from train.attacks.substitutes import MaskedLMSubstitutes, ReferenceMLMSubstitutes, combine_pieces
from train.attacks.text import WordSubstitutionAttack

EPS = 2 / 255
VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "a", "the", "dog", "cat", "red", "blue", "ball",
         "runs", "on", "grass", "behind", "sk", "##ate", "##board", "##s", "big", "small", "green", ",", "[unused0]"]


class ToyVictim:
    """Unit embeddings from a fixed linear map of 4x4-pooled pixels, and from summed word vectors."""

    def __init__(self, dim: int = 8):
        generator = torch.Generator().manual_seed(0)
        self.weight = torch.randn(3 * 16, dim, generator=generator)
        self.dim, self.device, self.logit_scale = dim, torch.device("cpu"), torch.tensor(10.0)

    def encode_image(self, pixels: torch.Tensor) -> torch.Tensor:
        return F.normalize(F.adaptive_avg_pool2d(pixels, 4).flatten(1) @ self.weight, dim=-1)

    def word(self, word: str) -> torch.Tensor:
        return torch.randn(self.dim, generator=torch.Generator().manual_seed(derive_seed("toy", word) % 2**31))

    def encode_text(self, texts, normalize: bool = True) -> torch.Tensor:
        raw = torch.stack([sum((self.word(w) for w in t.split()), torch.zeros(self.dim)) + 1e-3 for t in texts])
        return F.normalize(raw, dim=-1) if normalize else raw


class EchoMLM(torch.nn.Module):
    """Predicts the token it reads (logit +10), then the vocabulary by `base` scores."""

    def __init__(self, base: torch.Tensor):
        super().__init__()
        self.base = torch.nn.Parameter(base.clone(), requires_grad=False)
        self.config = SimpleNamespace(max_position_embeddings=512, name_or_path="echo")

    def forward(self, input_ids, attention_mask=None, **_):
        return SimpleNamespace(logits=self.base + 10 * F.one_hot(input_ids, len(self.base)).float())


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    from transformers import BertTokenizer

    vocab = tmp_path_factory.mktemp("vocab") / "vocab.txt"
    vocab.write_text("\n".join(VOCAB) + "\n")
    return BertTokenizer(str(vocab), do_lower_case=True)


def echo(tokenizer, favourites: dict[str, float]) -> EchoMLM:
    base = torch.zeros(len(VOCAB))
    for word, score in favourites.items():
        base[tokenizer.convert_tokens_to_ids(word)] = score
    return EchoMLM(base)


@pytest.fixture(scope="module")
def victim():
    return ToyVictim()


def images(count: int = 2) -> torch.Tensor:
    return torch.rand(count, 3, 16, 16, generator=torch.Generator().manual_seed(1))


# ----------------------------------------------------------------------------- settings and table


def test_settings_are_one_object_with_shared_defaults():
    from train.config import TrainConfig

    settings = AttackSettings()
    assert settings.pgd_step_size == pytest.approx(0.5 / 255)  # eps / 4 at the papers' eps
    assert settings.replace(eps=4 / 255).pgd_step_size == pytest.approx(1 / 255)
    train = TrainConfig()
    assert (train.attack_eps, train.pgd_steps, train.top_k, train.word_budget) == (settings.eps, settings.steps, settings.top_k, settings.budget)
    assert AttackSettings.from_options(attack_protocol="sga", objective="contrastive").protocol == "sga"
    assert AttackSettings.from_options(attack_protocol="sga", protocol="sga").protocol == "sga"
    with pytest.raises(ValueError, match="protocol and attack_protocol disagree \\('co-attack' vs 'sga'\\)"):
        AttackSettings.from_options(attack_protocol="sga", protocol="co-attack")
    with pytest.raises(ValueError, match="reference protocol"):
        AttackSettings(reference_bugs=True)
    with pytest.raises(ValueError, match="unknown protocol"):
        AttackSettings(protocol="albef")
    # the project protocol's own choices would be silently ignored under a reference protocol
    with pytest.raises(ValueError, match="^text guide 'text' is a project-protocol choice: under protocol sga"):
        AttackSettings(protocol="sga", guide="text")
    with pytest.raises(ValueError, match="^piece mode 'first' is a project-protocol choice: under protocol co-attack"):
        AttackSettings(protocol="co-attack", pieces="first")
    assert AttackSettings(protocol="project", guide="text", pieces="first").guide == "text"
    with pytest.raises(ValueError, match="alpha must not be negative"):
        AttackSettings(alpha=-1.0)
    # a study's YAML hands values over as written: a string "false" is true to a truth test
    with pytest.raises(ValueError, match="^reference_bugs must be true or false, got 'false'$"):
        AttackSettings(protocol="sga", reference_bugs="false")
    with pytest.raises(ValueError, match="^random_start must be true or false, got 1; steps must be a whole number, "
                                         "got 10.0; top_k must be a whole number, got True$"):
        AttackSettings(random_start=1, steps=10.0, top_k=True)


def test_attack_params_in_words_for_reports():
    from train.attacks.settings import describe_params

    params = {"eps": 2 / 255, "step_size": 1.25 / 255, "random_start": False, "scales": [0.5, 1.5], "alpha": 3.0,
              "target": None, "skipped": [], "image": {"eps": 4 / 255, "steps": 10}}
    assert describe_params(params) == ("eps 2/255, step_size 1.25/255, random_start no, scales 0.5/1.5, alpha 3, "
                                       "skipped none, image (eps 4/255, steps 10)")


def test_from_options_refuses_an_unknown_name_as_a_value_error_naming_it():
    """Guards from_options' own check: an unknown name is a ValueError naming it, which every caller turns into one
    line (without the check the constructor's TypeError reached the user as a traceback)."""
    with pytest.raises(ValueError, match=r"^unknown attack setting\(s\) epsilon; expected some of alpha, "):
        AttackSettings.from_options(epsilon=0.01, eps=0.01)


def test_every_clause_of_a_settings_message_names_its_flag():
    """Guards renamed_clauses: each clause of a message of several problems names its flag, not only the first."""
    from train.attacks.settings import with_flag_names

    with pytest.raises(ValueError) as info:
        AttackSettings(eps=2.0, top_k=0)
    assert with_flag_names(str(info.value)) == ("--attack-eps must lie in [0, 1], got 2.0; "
                                                "--top-k must be at least 1, got 0")


def test_the_pgd_step_is_the_given_one_else_a_quarter_of_eps():
    """Guards pgd_step_size: eps / 4 only when no step is given; a given step is kept as it is, 0 included (no
    entry point passes 0 today, but a step of 0 read as "not given" would attack at eps / 4 unasked)."""
    from train.attacks.settings import pgd_step_size

    assert pgd_step_size(8 / 255) == pytest.approx(2 / 255)
    assert [pgd_step_size(8 / 255, step) for step in (1 / 255, 0.0)] == [pytest.approx(1 / 255), 0.0]


def test_unset_options_and_older_spellings_are_read_alike_by_every_tasks_attacks():
    """Guards canonical_options' readers: an option left unset (None, an absent flag) means the default, not a
    value; `objective` / `attack_protocol` (older spellings of loss / protocol) are known names for captioning and
    grounding too (refuse_unknown_options), as for retrieval's from_options; a misspelt name is still refused."""
    from train.attacks.settings import ATTACK_DEFAULTS, refuse_unknown_options

    read = AttackSettings.from_options(eps=None, steps=None, step_size=None, objective="contrastive")
    assert read == ATTACK_DEFAULTS.replace(loss="contrastive")

    refuse_unknown_options({"objective": "pair", "attack_protocol": "project", "eps": 0.01}, "captioning")
    with pytest.raises(ValueError, match=r"^unknown grounding attack setting\(s\) epsilon; expected some of "):
        refuse_unknown_options({"objective": "pair", "epsilon": 0.01}, "grounding")


def test_attack_defaults_are_the_ones_the_readme_documents():
    """Guards ATTACK_DEFAULTS against a changed default: README's table of train eval's attacks documents eps 2/255, 10 PGD steps of
    eps/4, top 10 substitutes, 1 word, 30 tokens, SGA scales 0.5/0.75/1.25/1.5 with noise 0.05, Co-Attack alpha 3."""
    from train.attacks.settings import ATTACK_DEFAULTS

    d = ATTACK_DEFAULTS
    assert (d.eps, d.steps, d.pgd_step_size) == (pytest.approx(2 / 255), 10, pytest.approx(0.5 / 255))
    assert (d.top_k, d.budget, d.max_length) == (10, 1, 30)
    assert (d.scales, d.noise_std, d.alpha) == ((0.5, 0.75, 1.25, 1.5), 0.05, 3.0)
    assert (d.random_start, d.candidates, d.guide, d.loss, d.protocol) == (True, "mlm", "image", "pair", "project")


@pytest.mark.parametrize("changes, message", [
    ({"eps": -0.01}, r"^eps must lie in \[0, 1\], got -0.01$"), ({"eps": 1.01}, r"^eps must lie in \[0, 1\], got 1.01$"),
    ({"steps": -1}, "^steps must be at least 0, got -1$"), ({"budget": -1}, "^budget must be at least 0, got -1$"),
    ({"top_k": 0}, "^top_k must be at least 1, got 0$"), ({"max_length": 2}, "^max_length must be at least 3, got 2$"),
    ({"step_size": 0.0}, "^step_size must be positive and finite, got 0.0$"),
    ({"step_size": float("nan")}, "^step_size must be positive and finite, got nan$"),
    ({"step_size": float("inf")}, "^step_size must be positive and finite, got inf$"),
    ({"alpha": -0.5}, "alpha must not be negative"), ({"alpha": float("nan")}, "^Co-Attack's alpha must be finite, got nan$"),
    ({"scales": (0.5, 0.0)}, "^SGA scales must be positive finite numbers$"), ({"scales": ()}, "^SGA scales must be positive"),
    ({"scales": (0.5, float("nan"))}, "^SGA scales must be positive finite numbers$"),
    ({"noise_std": -0.01}, "^SGA's noise_std must be a non-negative finite number, got -0.01$"),
    ({"noise_std": float("nan")}, "^SGA's noise_std must be a non-negative finite number, got nan$"),
    ({"budget": 1.5}, "^budget must be a whole number, got 1.5$"),
    ({"max_length": 30.0}, "^max_length must be a whole number, got 30.0$"),
    ({"protocol": "co-attack", "guide": "text"}, "^text guide 'text' is a project-protocol choice: under protocol co-attack"),
    ({"protocol": "sga", "pieces": "first"}, "^piece mode 'first' is a project-protocol choice: under protocol sga"),
    ({"attacked_embedding": "multimodal"}, "^attacked embedding 'multimodal' is the Co-Attack code's fused-embedding"),
    ({"protocol": "sga", "attacked_embedding": "multimodal-cls"}, "^attacked embedding 'multimodal-cls' is the Co-Attack"),
])
def test_attack_settings_refuse_one_past_each_bound(changes, message):
    """Guards __post_init__'s refusals one step past each bound (the bounds themselves are accepted below)."""
    with pytest.raises(ValueError, match=message):
        AttackSettings(**changes)


def test_attack_settings_accept_each_bound_and_keep_sga_scales_as_floats():
    """Guards the bounds' edges: eps 0 and 1, no PGD step, no word changed, one substitute, 3 tokens, Co-Attack's
    alpha 0 and SGA's noise 0 are settings a user may give; the fused embeddings with protocol co-attack; scales given as a
    list (a study's YAML) become a tuple of floats, so settings compare and hash alike however given."""
    edges = AttackSettings(eps=0.0, steps=0, budget=0, top_k=1, max_length=3, alpha=0.0, scales=[1, 2], noise_std=0.0)
    assert (edges.eps, edges.steps, edges.budget, edges.top_k, edges.max_length, edges.alpha) == (0.0, 0, 0, 1, 3, 0.0)
    assert edges.noise_std == 0.0  # SGA's resized copies without noise
    assert AttackSettings(eps=1.0).eps == 1.0
    assert AttackSettings(protocol="co-attack", attacked_embedding="multimodal-cls").attacked_embedding == "multimodal-cls"
    assert edges.scales == (1.0, 2.0) and all(type(s) is float for s in edges.scales)
    assert hash(edges) == hash(edges.replace(scales=(1.0, 2.0)))


@pytest.mark.parametrize("family, sga_code", [("open_clip", 77), ("hf_clip", 77), ("albef", 30)])
def test_reference_protocols_read_their_max_length(victim, tokenizer, family, sga_code):
    """Per attack, as each code reads them: the Co-Attack code's BertAttack 30 (never passed one); the SGA
    code's TextAttacker 77 in its scripts that attack a CLIP, 30 in those that attack ALBEF/TCL."""
    mlm = (echo(tokenizer, {}), tokenizer, "echo")
    victim.family = family

    def length(protocol, attack):
        built = build_attack(attack, victim, mlm=mlm, protocol=protocol, steps=1)
        return (built if attack == "bert-attack" else built.text_attack).source.max_length

    assert {(p, a): length(p, a) for p in PROTOCOL_CHOICES for a in ("bert-attack", "sep", "co-attack", "sga")} == {
        ("project", "bert-attack"): 30, ("project", "sep"): 30, ("project", "co-attack"): 30, ("project", "sga"): 30,
        ("sga", "bert-attack"): sga_code, ("sga", "sep"): sga_code, ("sga", "co-attack"): 30, ("sga", "sga"): sga_code,
        ("co-attack", "bert-attack"): 30, ("co-attack", "sep"): 30, ("co-attack", "co-attack"): 30,
        ("co-attack", "sga"): sga_code,
    }
    assert build_attack("bert-attack", victim, mlm=mlm, protocol="sga", max_length=40).source.max_length == 40
    assert build_attack("sga", victim, mlm=mlm, protocol="co-attack", max_length=40).text_attack.source.max_length == 40


# ----------------------------------------------------------------------------- 7. captions


def test_pre_caption_is_the_reference_preprocessing():
    assert pre_caption("A Dog's ball, (red)!  Jumps-over/the <person>.") == "a dogs ball red jumps over the person"
    assert pre_caption(" ".join(["word"] * 40)) == " ".join(["word"] * 30)
    assert [PROTOCOL_CHOICES[p].caption_preprocess for p in ("project", "sga", "co-attack")] == ["none", "pre_caption", "pre_caption"]


def test_gallery_applies_the_protocols_caption_preprocessing():
    import datasets

    from train.eval_common import Gallery

    rows = datasets.Dataset.from_dict({"captions": [["A red Ball.", "Dog, running!"]], "split": ["test"]})
    assert Gallery.from_source(rows, "test").captions == ["A red Ball.", "Dog, running!"]
    assert Gallery.from_source(rows, "test", caption_preprocess="pre_caption").captions == ["a red ball", "dog running"]


def test_a_caption_the_preprocessing_empties_stops_before_any_attack_naming_it():
    import datasets

    from augment.errors import SourceError
    from train.eval_common import Gallery

    rows = datasets.Dataset.from_dict({"image_id": ["a", "b"], "captions": [["A red ball."], ["A dog.", "!!!"]],
                                       "split": ["test", "test"]})
    assert Gallery.from_source(rows, "test").captions[-1] == "!!!"  # as given, it is a caption
    with pytest.raises(SourceError, match=r"image 'b', caption 1 \('!!!'\): empty after --caption-preprocess pre_caption"):
        Gallery.from_source(rows, "test", caption_preprocess="pre_caption")
    with pytest.raises(SourceError, match=r"empty after pre_caption, --protocol sga's caption preprocessing "
                                          r"\(--caption-preprocess none keeps captions as given\); fix or drop"):
        Gallery.from_source(rows, "test", caption_preprocess="pre_caption", protocol_default="sga")


def test_blip_pre_caption_is_blips_reference_preprocessing():
    """salesforce/BLIP data/utils.py: lower case; . ! " ( ) * # : ; ~ become spaces (, ' ? - / kept);
    whitespace runs collapsed; stripped; the first max_words words (30 in its retrieval datasets)."""
    caption = 'A man\'s dog, running: "fast"!'
    # "a man's dog, running" + ":" " " '"' -> 3 spaces, "fast", '"' "!" -> 2 spaces: collapsed, stripped
    assert blip_pre_caption(caption) == "a man's dog, running fast"
    assert pre_caption(caption) == "a mans dog running fast"  # ALBEF's drops , ' and does not keep - /
    assert blip_pre_caption("Two men-at work/play (outside)!") == "two men-at work/play outside"
    assert blip_pre_caption("Two men-at work/play (outside)!", max_words=3) == "two men-at work/play"
    assert blip_pre_caption("A <person> on a.b; Is it?") == "a <person> on a b is it?"  # "." a space, not deleted
    assert blip_pre_caption("  A dog.\n") == "a dog"
    assert blip_pre_caption(" ".join(["Word."] * 40)) == " ".join(["word"] * 30)  # 30 words by default
    assert blip_pre_caption(" ".join(["word"] * 40), max_words=50) == " ".join(["word"] * 40)
    assert preprocess_caption(caption, "blip_pre_caption") == blip_pre_caption(caption)
    with pytest.raises(ValueError, match=r"unknown caption preprocessing 'blip'"):
        preprocess_caption(caption, "blip")


def test_gallery_applies_blips_caption_preprocessing():
    import datasets

    from augment.errors import SourceError
    from train.eval_common import Gallery

    rows = datasets.Dataset.from_dict({"image_id": ["a", "b"], "captions": [["A red Ball.", "Dog, running!"], ["???"]],
                                       "split": ["test", "test"]})
    assert Gallery.from_source(rows, "test", caption_preprocess="blip_pre_caption").captions == [
        "a red ball", "dog, running", "???"]  # BLIP keeps "?": a caption there, empty under ALBEF's
    with pytest.raises(SourceError, match=r"image 'b', caption 0 \('\?\?\?'\): empty after --caption-preprocess pre_caption"):
        Gallery.from_source(rows, "test", caption_preprocess="pre_caption")


@pytest.mark.parametrize("how, as_given", [("none", False), (None, False), ("pre_caption", True),
                                           ("blip_pre_caption", True)])
def test_captions_already_cleaned_are_read_as_given(how, as_given):
    """Either cleaning runs once, on the gallery: inside the evaluation a model that cleans captions itself
    (ALBEF) reads them as given, so ALBEF's pre_caption does not run over captions BLIP's has cleaned."""
    import contextlib

    from train.evaluate import captions_read_as_given

    entered = []

    class Model:
        @contextlib.contextmanager
        def captions_as_given(self):
            entered.append(self)
            yield

    model = Model()
    with captions_read_as_given(how, model, model):  # victim and attacker the same: entered once
        pass
    assert entered == ([model] if as_given else [])


# ----------------------------------------------------------------------------- 1-2. SGA


class GuideSpy(WordSubstitutionAttack):
    """Records the image embeddings each text step is guided by; changes nothing."""

    def __init__(self, victim):
        super().__init__(victim, substitutes=None, budget=0)
        self.guides = []

    def perturb(self, texts, image_emb, image_of_text, prepared=None):
        self.guides.append(image_emb.clone())
        return list(texts), [[] for _ in texts]


@pytest.mark.parametrize("protocol", ["project", "sga"])
def test_sga_first_text_step_guide(victim, tokenizer, protocol):
    pixels = images()
    attack = build_attack("sga", victim, mlm=(echo(tokenizer, {}), tokenizer, "echo"), protocol=protocol, steps=1, seed=0)
    spy = GuideSpy(victim)
    attack.text_attack = spy
    attack(pixels, ["red ball", "blue dog"], torch.tensor([0, 1]))
    clean = victim.encode_image(pixels)
    views = torch.stack([victim.encode_image(v) for v in [pixels, *resized_views(pixels, attack.scales, mode=attack.views)]]).mean(0)
    expected = clean if protocol == "sga" else views
    assert torch.allclose(spy.guides[0], expected, atol=1e-6)
    assert not torch.allclose(spy.guides[0], views if protocol == "sga" else clean, atol=1e-4)


def test_sga_views_reference_unclamped_without_antialiasing_vs_project_clamped():
    from torchvision.transforms import InterpolationMode
    from torchvision.transforms.functional import resize

    checker = torch.zeros(1, 3, 16, 16)
    checker[..., 8:] = 1  # a sharp edge: bicubic upsampling overshoots it
    reference = resized_views(checker, (0.5, 1.5), mode="reference")
    project = resized_views(checker, (0.5, 1.5), mode="clamped")
    assert min(float(v.min()) for v in reference) < 0 or max(float(v.max()) for v in reference) > 1  # bicubic overshoot kept
    assert all(float(v.min()) >= 0 and float(v.max()) <= 1 for v in project)
    # the SGA code's Resize(BICUBIC) under the torchvision it pins (0.15: no antialiasing on tensors)
    for view, scale in zip(reference, (0.5, 1.5)):
        small = [int(scale * 16)] * 2
        by_hand = resize(resize(checker, small, InterpolationMode.BICUBIC, antialias=False).clamp(0, 1), [16, 16],
                         InterpolationMode.BICUBIC, antialias=False)
        assert torch.allclose(view, by_hand, atol=1e-6)
        antialiased = resize(resize(checker, small, InterpolationMode.BICUBIC, antialias=True).clamp(0, 1), [16, 16],
                             InterpolationMode.BICUBIC, antialias=True)
        assert not torch.allclose(view, antialiased, atol=1e-3)  # torchvision >= 0.17's default differs
    assert {p: PROTOCOL_CHOICES[p].sga_views for p in PROTOCOL_CHOICES} == {"project": "clamped", "sga": "reference", "co-attack": "reference"}


# ----------------------------------------------------------------------------- 3. text scores


def test_reference_text_attack_ignores_the_image(victim, tokenizer):
    mlm = (echo(tokenizer, {"cat": 3, "blue": 2, "grass": 1}), tokenizer, "echo")
    captions = ["a red dog", "the blue ball"]
    for protocol in ("sga", "co-attack"):
        attack = build_attack("bert-attack", victim, mlm=mlm, protocol=protocol)
        assert (attack.guide, attack.importance, attack.needs_image) == ("text-kl", "kl", False)
        first = attack(images(), captions, torch.tensor([0, 1])).texts
        other = attack(torch.zeros(2, 3, 16, 16), captions, torch.tensor([0, 1])).texts
        assert first == other and first != captions
    assert build_attack("bert-attack", victim, mlm=mlm).needs_image
    # the score is the KL divergence of softmaxed embeddings (torch's KLDivLoss as the reference calls it)
    a, b = F.normalize(torch.randn(3, 8), dim=-1), F.normalize(torch.randn(3, 8), dim=-1)
    expected = torch.nn.KLDivLoss(reduction="none")(b.log_softmax(-1), a.softmax(-1)).sum(-1)
    assert torch.allclose(kl_to(a, b), expected, atol=1e-6)


@pytest.mark.parametrize("bugs", [False, True])
def test_sga_code_text_kl_reads_embeddings_before_normalisation(victim, tokenizer, bugs, monkeypatch):
    """SGA's TextAttacker.attack (BERT-Attack and Sep's text under `sga`) scores KL over its CLIP wrapper's
    `text_embed` (not normalised); its importance compares that with unit masked embeddings (`text_feat`):
    a reference bug. Co-Attack's code and SGA's own text steps read unit embeddings."""
    mlm = (echo(tokenizer, {"cat": 3, "blue": 2, "grass": 1}), tokenizer, "echo")
    kinds = {(p, a): (lambda built: (built if a == "bert-attack" else built.text_attack).embedding)(
        build_attack(a, victim, mlm=mlm, protocol=p, steps=1)) for p in ("sga", "co-attack")
        for a in ("bert-attack", "sep", "co-attack", "sga")}
    assert kinds == {("sga", "bert-attack"): "raw", ("sga", "sep"): "raw", ("sga", "co-attack"): "unit",
                     ("sga", "sga"): "unit", **{("co-attack", a): "unit" for a in ("bert-attack", "sep", "co-attack", "sga")}}
    # the synonym attack (and BERT-Attack with WordNet candidates) takes its protocol's BERT-Attack choices
    from train.attacks import SynonymAttack

    for protocol, embedding in (("sga", "raw"), ("co-attack", "unit")):
        for built in (build_attack("synonym", victim, protocol=protocol),
                      build_attack("bert-attack", victim, protocol=protocol, candidates="wordnet")):
            assert isinstance(built, SynonymAttack) and built.embedding == embedding
    attack = build_attack("bert-attack", victim, mlm=mlm, protocol="sga", reference_bugs=bugs)
    captions = ["a red dog", "the blue ball"]
    calls = []
    encode = victim.encode_text
    # monkeypatch: the victim is the module's, so the recording wrapper must go even when an assert fails
    monkeypatch.setattr(victim, "encode_text",
                        lambda texts, normalize=True: calls.append((list(texts), normalize)) or encode(texts, normalize))
    prepared = attack.prepare(captions)
    assert torch.allclose(prepared.clean_emb, encode(captions, normalize=False))  # not unit
    assert not torch.allclose(prepared.clean_emb.norm(dim=-1), torch.ones(2))
    masked = [normalize for texts, normalize in calls[1:] if any("[UNK]" in t for t in texts)]
    assert masked and all(m == bugs for m in masked)  # the bug: unit masked embeddings against the raw clean one
    before_search = len(calls)
    adversarial, _ = attack.perturb(captions, None, torch.tensor([0, 1]), prepared=prepared)
    candidates = calls[before_search:]
    assert candidates and all(normalize is False for _, normalize in candidates)  # every candidate scored raw too
    assert adversarial != captions and attack.params()["embedding"] == "raw" + (" (masked: unit)" if bugs else "")
    # Sep's PGD still gets unit caption embeddings
    sep = build_attack("sep", victim, mlm=mlm, protocol="sga", steps=1)
    seen = []
    perturb = sep.image_attack.perturb
    sep.image_attack.perturb = lambda imgs, text_emb, pairing: seen.append(text_emb) or perturb(imgs, text_emb, pairing)
    sep(images(), captions, torch.tensor([0, 1]))
    assert torch.allclose(seen[0].norm(dim=-1), torch.ones(2), atol=1e-5)


def test_reference_word_list_and_whole_word_replacement(tokenizer):
    project = MaskedLMSubstitutes(echo(tokenizer, {}), tokenizer)
    reference = ReferenceMLMSubstitutes(echo(tokenizer, {}), tokenizer)
    assert project.replaceable(split_chunk("behind")) and not reference.replaceable(Chunk("", "behind", ""))
    assert "behind" in REFERENCE_FILTER_WORDS and "," in REFERENCE_FILTER_WORDS
    assert project.replacement(split_chunk("Dog,", possessive=True), "cat") == "Cat,"
    assert reference.split("dog,  cat") == ["dog,", "", "cat"] and reference.replacement(Chunk("", "Dog,", ""), "cat") == "cat"


# ----------------------------------------------------------------------------- 4-5. Sep and Co-Attack


def test_co_attack_protocol_pgd_and_sep_are_unsupervised(victim, tokenizer):
    mlm = (echo(tokenizer, {}), tokenizer, "echo")
    pixels = images()
    for name in ("pgd", "sep"):
        attack = build_attack(name, victim, mlm=mlm, protocol="co-attack", seed=0)
        pgd = attack if name == "pgd" else attack.image_attack
        assert (pgd.loss, pgd.start) == ("image-kl", "positive")
        assert pgd.step_size == pytest.approx(EPS / 10 * 1.25)  # 0.25/255
    make = lambda: build_attack("pgd", victim, protocol="co-attack", seed=0)  # noqa: E731
    one = make()(pixels, ["red ball", "blue dog"], torch.tensor([0, 1])).images
    two = make()(pixels, ["green grass", "small cat"], torch.tensor([0, 1])).images
    assert torch.equal(one, two) and not torch.equal(one, pixels)
    sga_pgd = build_attack("pgd", victim, protocol="sga")
    assert (sga_pgd.loss, sga_pgd.start, sga_pgd.step_size) == ("pair", "symmetric", pytest.approx(0.5 / 255))


def test_positive_start_is_not_clamped_before_the_first_step():
    ones = torch.ones(1, 3, 4, 4)
    seen = {}

    def record(kind):
        def loss(adv):
            seen.setdefault(kind, adv.detach().clone())
            return adv.sum() * 0
        return loss

    out = pgd_linf(ones, record("positive"), EPS, 1, EPS, generator=torch.Generator().manual_seed(0), start="positive")
    pgd_linf(ones, record("symmetric"), EPS, 1, EPS, generator=torch.Generator().manual_seed(0))
    assert float(seen["positive"].max()) > 1 and float(seen["positive"].min()) >= 1
    assert float(seen["symmetric"].max()) <= 1
    assert float(out.max()) <= 1  # the range is enforced after every step


class CopySpy(PGD):
    """Returns each copy shifted by its row index / 1000, and records what it was given."""

    def run(self, images, loss_fn):
        self.given = images.clone()
        loss_fn(images)  # the loss must accept the batch of copies
        return images + torch.arange(len(images)).view(-1, 1, 1, 1) / 1000


def test_co_attack_per_pair_attacks_every_copy_and_keeps_the_last(victim, tokenizer):
    pixels = images(3)
    pairing = torch.tensor([0, 1, 0, 1, 0])  # image 2 has no caption
    spy = CopySpy(victim)
    attack = CoAttack(victim, image_attack=spy, text_attack=GuideSpy(victim), mode="per-pair")
    out = attack(pixels, ["a", "b", "c", "d", "e"], pairing).images
    assert torch.equal(spy.given, pixels[pairing])  # one copy per (image, caption) pair
    assert torch.allclose(out[0], pixels[0] + 4 / 1000) and torch.allclose(out[1], pixels[1] + 3 / 1000)
    assert torch.equal(out[2], pixels[2])
    built = build_attack("co-attack", victim, mlm=(echo(tokenizer, {}), tokenizer, "echo"), protocol="sga")
    assert built.mode == "per-pair" and built.image_attack.step_size == pytest.approx(EPS / 10 * 1.25)
    assert build_attack("co-attack", victim, mlm=(echo(tokenizer, {}), tokenizer, "echo")).mode == "per-image"


# ----------------------------------------------------------------------------- 6. multi-piece words


def test_multi_piece_words_combine_pieces_ranked_by_perplexity(tokenizer):
    torch.manual_seed(0)
    from transformers import BertConfig, BertForMaskedLM

    model = BertForMaskedLM(BertConfig(vocab_size=len(VOCAB), hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                                       intermediate_size=32, max_position_embeddings=64)).eval()
    predictions = [torch.tensor([[16, 7, 8, 9, 10], [17, 18, 19, 11, 12]]), torch.tensor([[7, 8, 9, 1], [18, 19, 17, 2]])]
    combined = combine_pieces(model, tokenizer, predictions, drop_ids=set(tokenizer.all_special_ids))

    def by_hand(ids):  # the reference: one forward per combination set, sorted by perplexity
        combos = [list(c) for c in __import__("itertools").product(*ids[:, :4].tolist())][:24]
        combos = [c for c in combos if not set(c) & set(tokenizer.all_special_ids)]
        with torch.no_grad():
            logits = model(torch.tensor(combos)).logits
        ppl = [float(F.cross_entropy(logit, torch.tensor(c)).exp()) for logit, c in zip(logits, combos)]
        return [tokenizer.convert_tokens_to_string(tokenizer.convert_ids_to_tokens(combos[i])).strip()
                for i in sorted(range(len(combos)), key=ppl.__getitem__)]

    assert combined == [by_hand(p) for p in predictions]
    assert "skate" in combined[0] and len(combined[0]) == 16 and len(combined[1]) == 9  # [UNK]/[CLS] combos dropped


def test_multi_piece_substitutes_read_from_the_head_at_their_pieces_equal_the_whole_forwards(tokenizer, monkeypatch):
    """A BERT masked LM's head runs only at the words' pieces (`masked_lm_top_k`): a multi-piece word's
    pieces too, with the same combined substitutes as from every token's logits."""
    import train.attacks.substitutes as substitutes_module
    from transformers import BertConfig, BertForMaskedLM

    torch.manual_seed(0)
    model = BertForMaskedLM(BertConfig(vocab_size=len(VOCAB), hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                                       intermediate_size=32, max_position_embeddings=64)).eval()
    captions = [[split_chunk(w, possessive=True) for w in text.split()]
                for text in ("a skateboard on grass", "a cat on a skateboard", "grass")]
    combined_pieces, library = [], substitutes_module.combine_pieces

    def spy(model, tokenizer, piece_predictions, *args, **kwargs):
        combined_pieces.append([tuple(p.shape) for p in piece_predictions])
        return library(model, tokenizer, piece_predictions, *args, **kwargs)

    sources = [MaskedLMSubstitutes(model, tokenizer, top_k=5, pieces=pieces) for pieces in ("combine", "first")]
    sources += [ReferenceMLMSubstitutes(model, tokenizer, top_k=5, reference_bugs=bugs) for bugs in (False, True)]
    for source in sources:
        monkeypatch.setattr(substitutes_module, "combine_pieces", spy)
        found = source.substitutes(captions)
        monkeypatch.setattr(substitutes_module, "ROW_WISE_HEADS", ())  # every token's logits
        assert source.substitutes(captions) == found and any(found)
        monkeypatch.undo()
    # "skateboard" (three pieces) in two captions, each piece's top 5, from the head and the whole forward,
    # by the project's reading (pieces="first" combines nothing) and the reference's, with and without its bugs
    assert combined_pieces == [[(3, 5), (3, 5)]] * 6


def test_multi_piece_word_gets_combined_substitutes(tokenizer):
    mlm = echo(tokenizer, {"sk": 3, "##ate": 2.5, "##board": 2, "cat": 1})
    caption = [split_chunk(w, possessive=True) for w in "a skateboard on grass".split()]
    assert tokenizer.tokenize("skateboard") == ["sk", "##ate", "##board"]
    combined = MaskedLMSubstitutes(mlm, tokenizer, top_k=4).substitutes([caption])[0]
    first = MaskedLMSubstitutes(mlm, tokenizer, top_k=4, pieces="first").substitutes([caption])[0]
    # combinations of the pieces' top 4 (sk, ##ate, ##board, cat at each piece), whole words only
    assert combined[1] and "skboardate" in combined[1]
    assert all(w.isalpha() and w != "skateboard" for w in combined[1])
    assert first[1] == ["sk", "cat"]  # the first piece's top 4 (sk, ##ate, ##board, cat) as words


# ----------------------------------------------------------------------------- 11. ALBEF/TCL's [CLS] states


@pytest.fixture(scope="module")
def albef_pair():
    """tiny-albef (image and text [CLS] states 48 and 32 wide) and, from the same config with the
    vision width made 32, an ALBEF whose states are as wide as each other (as ALBEF's and TCL's, 768)."""
    import copy

    from models import load_model
    from models.albef.model import AlbefModel

    torch.manual_seed(0)
    twin = load_model("tiny-albef")
    config = copy.deepcopy(twin.config)
    config["vision_width"] = config["bert"]["encoder_width"] = config["bert"]["hidden_size"]
    return twin, AlbefModel(config, twin.tokenizer, name="albef-equal-widths").eval()


def test_co_attack_code_reads_albefs_encoder_cls_states(albef_pair, tokenizer):
    """The Co-Attack code's attacks on ALBEF/TCL (`--cls`) read `image_embed[:, 0]` / `text_embed[:, 0]`, the
    encoders' outputs before the ITC projection; the SGA code's attacks read the ITC embeddings."""
    from train.attacks.unprojected import UnprojectedVictim

    _, model = albef_pair
    mlm = (echo(tokenizer, {}), tokenizer, "echo")
    readers = {(p, a): type(build_attack(a, model, mlm=mlm, protocol=p, steps=1).victim).__name__
               for p in PROTOCOL_CHOICES for a in ("pgd", "bert-attack", "synonym", "sep", "co-attack", "sga")}
    view, itc = "UnprojectedVictim", "AlbefModel"
    assert readers == {**{("project", a): itc for a in ("pgd", "bert-attack", "synonym", "sep", "co-attack", "sga")},
                       **{("co-attack", a): view for a in ("pgd", "bert-attack", "synonym", "sep", "co-attack")},
                       ("co-attack", "sga"): itc, ("sga", "co-attack"): view,
                       **{("sga", a): itc for a in ("pgd", "bert-attack", "synonym", "sep", "sga")}}
    pixels = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(2))
    captions = ["a red dog on the grass", "the blue ball"]
    states = UnprojectedVictim(model)
    with torch.no_grad():
        hidden, _ = model._text_hidden(model.tokenize(captions))
        assert torch.equal(states.encode_image(pixels, normalize=False), model.image_features(pixels)[:, 0])
        assert torch.equal(states.encode_text(captions, normalize=False), hidden[:, 0])
        assert torch.allclose(states.encode_text(captions).norm(dim=-1), torch.ones(2))
        # not the ITC embedding before normalisation: the projection is left out
        assert states.encode_text(captions, normalize=False).shape[-1] != model.encode_text(captions, normalize=False).shape[-1]
    # BERT-Attack: KL over the raw text states (the Co-Attack code's BertAttack never normalises them), and
    # the mixed-importance bug stays the SGA code's
    attack = build_attack("bert-attack", model, mlm=mlm, protocol="co-attack", reference_bugs=True)
    assert (attack.embedding, attack.masked_unit) == ("raw", False)
    assert torch.allclose(attack.prepare(captions).clean_emb, hidden[:, 0])
    # PGD (the code's run_trades): away from the clean image's raw state
    pgd = build_attack("pgd", model, protocol="co-attack", seed=0)
    assert (pgd.loss, pgd.embedding) == ("image-kl", "raw") and pgd.params()["embeddings_from"] == "encoder-cls"
    seen = []
    encode = states.encode_image
    pgd.victim.encode_image = lambda x, normalize=True: seen.append(normalize) or encode(x, normalize)
    pgd(pixels, captions, torch.tensor([0, 1]))
    assert seen and not any(seen)
    co = build_attack("co-attack", model, mlm=mlm, protocol="co-attack", budget=0)
    assert (co.mode, co.embedding) == ("per-pair", "raw") and "before normalisation" in co.params()["image"]["loss"]
    # its image step maximises the code's objective over these states (run_before_fusion, adv=4)
    from train.attacks.multimodal import co_attack_pair_objective

    objectives = []
    co.image_attack.run = lambda copies, loss_fn: objectives.append(loss_fn) or copies
    co(pixels, captions, torch.tensor([0, 1]))
    adversarial = (pixels + 0.01).clamp(0, 1)
    with torch.no_grad():
        expected = co_attack_pair_objective(states.encode_image(adversarial, normalize=False),
                                            states.encode_image(pixels, normalize=False),
                                            states.encode_text(captions), 3.0, "raw").mean()
        assert torch.allclose(objectives[0](adversarial), expected, atol=1e-5)


def test_co_attack_code_objective_on_cls_states_normalises_only_the_cross_modal_term():
    """run_before_fusion: KL(clean image state || adv) over the states as they are, plus alpha times the KL
    between the normalised attacked-caption and adversarial image states."""
    from train.attacks.multimodal import co_attack_pair_objective

    generator = torch.Generator().manual_seed(3)
    adv, clean, text = (torch.randn(4, 6, generator=generator) * 3 for _ in range(3))
    criterion = torch.nn.KLDivLoss(reduction="batchmean")
    expected = [criterion(adv[i:i + 1].log_softmax(-1), clean[i:i + 1].softmax(-1))
                + 3.0 * criterion(F.normalize(adv[i:i + 1], dim=-1).log_softmax(-1),
                                  F.normalize(text[i:i + 1], dim=-1).softmax(-1)) for i in range(4)]
    raw = co_attack_pair_objective(adv, clean, text, 3.0, "raw")
    assert torch.allclose(raw, torch.stack(expected), atol=1e-6)
    assert torch.allclose(co_attack_pair_objective(adv, clean, text * 5, 3.0, "raw"), raw, atol=1e-6)
    assert not torch.allclose(co_attack_pair_objective(adv, clean * 5, text, 3.0, "raw"), raw, atol=1e-3)
    unit = co_attack_pair_objective(adv, clean, text, 3.0)
    assert torch.allclose(unit, kl_to(clean, adv) + 3.0 * kl_to(text, adv)) and not torch.allclose(unit, raw)


def test_co_attack_on_albef_with_unequal_state_widths_reads_itc_and_says_so(albef_pair, tokenizer, caplog):
    """tiny-albef's states are 48 and 32 wide: Co-Attack's cross-modal KL cannot compare them (the code
    would fail), so that attack reads the ITC embeddings, with a warning; the others still read the states."""
    twin, _ = albef_pair
    mlm = (echo(tokenizer, {}), tokenizer, "echo")
    with caplog.at_level("WARNING", logger="train.attacks.factory"):
        co = build_attack("co-attack", twin, mlm=mlm, protocol="co-attack")
    assert type(co.victim).__name__ == "AlbefModel" and co.embedding == "unit"
    # the report says it too, not only the log
    assert co.params()["embeddings_from"] == "itc (the encoders' [CLS] states differ in width)"
    assert "widths differ (image 48, text 32)" in caplog.text
    assert build_attack("sep", twin, mlm=mlm, protocol="co-attack").params()["embeddings_from"] == "encoder-cls"
    pixels = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(4))
    result = co(pixels, ["a red dog", "the blue ball"], torch.tensor([0, 1]))
    assert float((result.images - pixels).abs().max()) <= EPS + 1e-6


# ----------------------------------------------------------------------------- 13. transfer hand-over


def test_sga_transfer_hand_over_floors_to_8_bits_and_resizes_as_the_scripts():
    """The SGA transfer scripts' `t_test_transform`: to ALBEF/TCL through an 8-bit PIL image (floored,
    PIL's bicubic); to a CLIP the tensor's bicubic without antialiasing, unclamped."""
    import numpy as np
    from PIL import Image

    from train.eval_common import sga_scripts_hand_over, to_victim_resolution

    levels = torch.randint(0, 255, (2, 3, 8, 8), generator=torch.Generator().manual_seed(0)).float()
    images = (levels + 0.7) / 255  # off the 8-bit grid: 0.7 of a level above each
    assert torch.allclose(sga_scripts_hand_over(images, 8, clip_victim=False), levels / 255, atol=1e-7)  # floored
    assert torch.equal(to_victim_resolution(images, 8), images)  # the project hands float pixels over
    for size in (5, 12):  # shrinking and enlarging: PIL's bicubic on the floored 8-bit image
        handed = sga_scripts_hand_over(images, size, clip_victim=False)
        for image, levels_of_image in zip(handed, levels):
            by_pil = Image.fromarray(levels_of_image.permute(1, 2, 0).numpy().astype(np.uint8)).resize((size, size), Image.BICUBIC)
            assert torch.equal(image, torch.from_numpy(np.array(by_pil)).permute(2, 0, 1).float() / 255)
    edge = torch.zeros(1, 3, 8, 8)
    edge[..., 4:] = 1  # bicubic overshoots a sharp edge
    enlarged = sga_scripts_hand_over(edge, 12, clip_victim=True)
    assert float(enlarged.min()) < 0 and float(enlarged.max()) > 1  # not clamped
    assert torch.allclose(enlarged, F.interpolate(edge, size=(12, 12), mode="bicubic", align_corners=False), atol=1e-6)
    noise = torch.rand(1, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    shrunk = sga_scripts_hand_over(noise, 7, clip_victim=True)
    assert torch.allclose(shrunk, F.interpolate(noise, size=(7, 7), mode="bicubic", align_corners=False), atol=1e-6)
    assert not torch.allclose(shrunk, to_victim_resolution(noise, 7), atol=1e-3)  # no antialiasing
    assert torch.equal(sga_scripts_hand_over(images, 8, clip_victim=True), images)  # the same size: as it is
    assert {p: c.transfer_hand_over for p, c in PROTOCOL_CHOICES.items()} == {
        "project": "project", "sga": "sga-scripts", "co-attack": "project"}


# ----------------------------------------------------------------------------- reference bugs


@pytest.mark.parametrize("bugs", [False, True])
def test_reference_mlm_reading_and_its_bugs(tokenizer, bugs):
    # "red" at position 2 ([CLS] a red ...): the echo MLM predicts the token it reads first
    # [unused0]: a BERT vocabulary's placeholder, no special token to the tokenizer; kept only as the reference keeps it
    mlm = echo(tokenizer, {"[UNK]": 5, "[unused0]": 4.5, "blue": 4, "green": 0.5, "big": 0.2, "small": 0.1})
    source = ReferenceMLMSubstitutes(mlm, tokenizer, top_k=7, reference_bugs=bugs)
    found = source.substitutes([[Chunk("", w, "") for w in "a red ball".split()]])[0]
    if bugs:
        # read one position early: "red" gets the predictions at "a" (echoed "a" is a filter word);
        # [UNK] is accepted; the list stops at the first raw logit below 0.3 ("big")
        assert found[1] == ["[UNK]", "[unused0]", "blue", "green"]
        assert found[2][0] == "red"  # "ball" gets the echo of "red"
    else:
        assert found[1] == ["blue", "green", "big", "small"]  # echo of "red" = the word itself, dropped
        assert "red" not in found[2]


class RecordingMLM(EchoMLM):
    """The echo MLM, keeping the ids it was given."""

    def forward(self, input_ids, attention_mask=None, **_):
        self.seen = input_ids.clone()
        return super().forward(input_ids)


@pytest.mark.parametrize("bugs", [False, True])
def test_reference_mlm_reads_albef_tokens_without_sep_to_the_last_piece(tokenizer, bugs):
    """Both codes pass ALBEF's tokenizer: [CLS] + max_length - 1 pieces, no [SEP], padded to max_length.
    The last piece read (max_length - 2, counted without [CLS]) is still a word's own."""
    mlm = RecordingMLM(echo(tokenizer, {"blue": 4, "green": 3}).base)
    words = "red ball dog cat grass".split()
    source = ReferenceMLMSubstitutes(mlm, tokenizer, top_k=3, max_length=5, reference_bugs=bugs)
    found = source.substitutes([[Chunk("", w, "") for w in words]])[0]
    ids = tokenizer.convert_tokens_to_ids
    assert mlm.seen.tolist() == [[ids("[CLS]"), ids("red"), ids("ball"), ids("dog"), ids("cat")]]
    # "cat" (piece 3 = max_length - 2) is read: at its own row (the echo of itself dropped), or with
    # the bug at the row before (the echo of "dog"); "grass" was truncated away
    assert found[3] == (["dog", "blue", "green"] if bugs else ["blue", "green"]) and 4 not in found
    short = ReferenceMLMSubstitutes(mlm, tokenizer, top_k=3, max_length=8, reference_bugs=bugs)
    short.substitutes([[Chunk("", "red", "")]])
    assert mlm.seen.tolist() == [[ids("[CLS]"), ids("red")] + [ids("[PAD]")] * 6]


def test_reference_joins_pieces_as_albefs_tokenizer():
    from train.attacks.substitutes import reference_join

    assert reference_join(["big", ","]) == "big ," and reference_join(["sk", "##ate", "##board"]) == "skateboard"
    assert reference_join(["man", "'", "s"]) == "man ' s"


def test_multi_piece_substitutes_use_the_readings_join(tokenizer):
    from train.attacks.substitutes import reference_join

    mlm = echo(tokenizer, {"big": 3, ",": 2})
    predictions = [torch.tensor([[tokenizer.convert_tokens_to_ids("big")], [tokenizer.convert_tokens_to_ids(",")]])]
    assert combine_pieces(mlm, tokenizer, predictions, join=reference_join) == [["big ,"]]
    assert combine_pieces(mlm, tokenizer, predictions) == [[tokenizer.convert_tokens_to_string(["big", ","]).strip()]]
    assert ReferenceMLMSubstitutes(mlm, tokenizer).join is reference_join and MaskedLMSubstitutes(mlm, tokenizer).join is None


def test_mean_gradient_scaling_bug_only_on_request(victim, tokenizer):
    pixels = images(1)
    zero = lambda adv: adv.sum() * 0  # noqa: E731
    infinite = lambda adv: (adv * float("inf")).sum()  # noqa: E731
    run = lambda loss, bug: pgd_linf(pixels, loss, EPS, 1, EPS, random_start=False, scale_by_mean_gradient=bug)  # noqa: E731
    # an all-zero gradient: 0 / 0 = NaN, and torch's sign(NaN) = 0, so both leave the image as it is
    assert torch.equal(run(zero, True), pixels) and torch.equal(run(zero, False), pixels)
    # an infinite gradient: inf / inf = NaN -> no step with the bug; the plain sign steps by eps
    assert torch.equal(run(infinite, True), pixels)
    assert float((run(infinite, False) - pixels).max()) > EPS / 2
    mlm = (echo(tokenizer, {}), tokenizer, "echo")
    assert build_attack("sga", victim, mlm=mlm, protocol="sga", reference_bugs=True).image_attack.scale_by_mean_gradient
    assert not build_attack("sga", victim, mlm=mlm, protocol="sga").image_attack.scale_by_mean_gradient
    assert isinstance(build_attack("sga", victim, mlm=mlm, protocol="co-attack"), SGA)
    # SGA's image step is the SGA code's ImageAttacker under either reference protocol, and so is PGD under sga
    assert build_attack("sga", victim, mlm=mlm, protocol="co-attack", reference_bugs=True).image_attack.scale_by_mean_gradient
    assert build_attack("pgd", victim, protocol="sga", reference_bugs=True).scale_by_mean_gradient
    assert not build_attack("pgd", victim, protocol="co-attack", reference_bugs=True).scale_by_mean_gradient  # Co-Attack's


# ----------------------------------------------------------------------------- the command


@pytest.mark.parametrize("protocol, bugs", [("sga", False), ("co-attack", True)])
def test_train_eval_runs_every_attack_under_the_reference_protocols(sample_world_dir, tmp_path, protocol, bugs):
    """The issue's Done-when: `train eval --protocol sga|co-attack` runs all six attacks; each attack's
    recorded parameters are the protocol's (tiny-clip with random weights: the wiring, not the numbers)."""
    import json

    from train.cli import main as train_main

    out = tmp_path / "eval"
    attacks = ["clean", "pgd", "bert-attack", "sep", "co-attack", "sga"]
    assert train_main(["eval", "tiny-clip", "--source", str(sample_world_dir), "--split", "test", "--attacks", ",".join(attacks),
                       "--pgd-steps", "2", "--top-k", "3", "--limit", "4", "--captions-per-image", "2",
                       "--protocol", protocol, *(["--reference-bugs"] if bugs else []), "--out", str(out),
                       "--no-progress"]) == 0
    report = json.loads((out / "eval.json").read_text())
    assert list(report["attacks"]) == attacks
    assert report["settings"]["attack_options"]["protocol"] == protocol
    # options left to the protocol are not recorded as the project's defaults (the text guide was "image")
    assert not {"guide", "max_length", "step_size"} & set(report["settings"]["attack_options"])
    assert report["settings"]["caption_preprocess"] == "pre_caption"  # the reference codes' captions
    params = {name: report["attacks"][name]["params"] for name in attacks[1:]}
    for name in attacks[1:]:
        entry = report["attacks"][name]
        assert entry.get("linf_max", 0.0) <= EPS + 1e-6 and entry.get("words_changed_max", 0) <= 1, name
    text = params["bert-attack"]
    assert (text["guide"], text["importance"], text["reading"], text["reference_bugs"]) == ("text-kl", "kl", "reference", bugs)
    # each reference protocol runs the other paper's attack as that paper's code does
    assert params["sga"]["first_guide"] == "clean" and params["sga"]["views"] == "reference"
    assert params["co-attack"]["mode"] == "per-pair" and params["co-attack"]["image"]["start"] == "positive"
    assert params["co-attack"]["image"]["step_size"] == pytest.approx(EPS / 2 * 1.25)  # eps / steps x 1.25
    assert params["pgd"]["loss"] == ("image-kl" if protocol == "co-attack" else "pair")  # SGA's PGD is the project's
    assert params["sga"]["image"]["scale_by_mean_gradient"] == bugs  # SGA's ImageAttacker, in either protocol
    # what each part maximised: the text guides use no attack loss; per-pair Co-Attack its KL terms
    assert "loss" not in text and "loss" not in params["sep"]["text"] and "loss" not in params["co-attack"]
    assert params["co-attack"]["image"]["loss"] == "KL(clean image || adv) + alpha * KL(attacked caption || adv)"
    # eval.md says under which protocol the numbers were measured, and with what each attack ran
    table = (out / "eval.md").read_text()
    assert f"attack protocol `{protocol}`" + (" with the reference code's bugs" if bugs else ";") in table
    assert "captions preprocessed: pre_caption" in table
    assert "- `bert-attack`: source mlm-reference, mlm tiny-mlm, top_k 3," in table
    assert "- `pgd`: " + ("loss image-kl" if protocol == "co-attack" else "loss pair") + ", eps 2/255, steps 2," in table


def test_mean_gradient_scaling_divides_each_image_by_its_own_mean():
    """Guards BS's un-run M13 (audit BX): the bug's division by the whole batch's mean absolute gradient passed every
    test, each of one image; one image's infinite gradient then made every other image of its batch skip the step."""
    pixels = images(2)
    one_infinite = lambda adv: (adv[0] * float("inf")).sum() + adv[1].sum()  # noqa: E731
    moved = pgd_linf(pixels, one_infinite, EPS, 1, EPS, random_start=False, scale_by_mean_gradient=True) - pixels
    assert torch.equal(moved[0], torch.zeros_like(moved[0]))  # inf / inf: NaN, whose sign is 0
    assert float(moved[1].max()) > EPS / 2  # its own mean is 1: the plain step up


def test_train_eval_accepts_blips_caption_preprocessing(sample_world_dir, tmp_path, capsys):
    """`--caption-preprocess blip_pre_caption` (to compare with BLIP's reference evaluation) runs and is
    recorded; the protocol's default stays; an unknown value is refused before anything loads."""
    import json

    from train.cli import main as train_main

    out = tmp_path / "eval"
    assert train_main(["eval", "tiny-clip", "--source", str(sample_world_dir), "--split", "test", "--attacks", "clean",
                       "--limit", "2", "--captions-per-image", "1", "--caption-preprocess", "blip_pre_caption",
                       "--out", str(out), "--no-progress"]) == 0
    report = json.loads((out / "eval.json").read_text())
    assert report["settings"]["caption_preprocess"] == "blip_pre_caption"
    assert report["settings"]["attack_options"].get("protocol", "project") == "project"
    assert "captions preprocessed: blip_pre_caption" in (out / "eval.md").read_text()
    capsys.readouterr()
    with pytest.raises(SystemExit) as stopped:
        train_main(["eval", "tiny-clip", "--source", str(tmp_path / "missing"), "--caption-preprocess", "blip",
                    "--out", str(tmp_path / "other")])
    assert stopped.value.code == 2
    assert "invalid choice: 'blip'" in capsys.readouterr().err and not (tmp_path / "other").exists()


def test_reference_bugs_need_a_reference_protocol(sample_world_dir, tmp_path, capsys):
    from train.cli import main as train_main

    assert train_main(["eval", "tiny-clip", "--source", str(sample_world_dir), "--split", "test", "--attacks", "clean",
                       "--limit", "2", "--reference-bugs", "--out", str(tmp_path / "eval")]) == 2
    assert "--reference-bugs needs --protocol sga or co-attack" in capsys.readouterr().err


@pytest.mark.parametrize("guide", ["text", "image"])  # `image` too: the default, but it would be ignored
def test_text_guide_under_a_reference_protocol_is_refused_before_loading(tmp_path, capsys, guide):
    from train.cli import main as train_main

    # a missing source: the refusal must come before the model or the data is read
    assert train_main(["eval", "tiny-clip", "--source", str(tmp_path / "missing"), "--protocol", "co-attack",
                       "--text-guide", guide, "--out", str(tmp_path / "eval")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: --text-guide is a project-protocol choice: under --protocol co-attack") and "\n" not in err
    assert not (tmp_path / "eval").exists()


# ----------------------------------------------------------------------------- 14. grounding: Co-Attack's GroundingEval.py


def test_grounding_attacks_one_copy_of_the_image_per_expression(victim, tokenizer):
    """Co-Attack's grounding script attacks each (image, expression) pair on its own copy of the image
    (its data loader's rows are pairs): in one batch of copies, each copy depends on its own expression
    only (another expression changed leaves it as it was), the two expressions of one image ground in
    different copies, and the texts are those each pair alone gets. SGA keeps one copy per image."""
    from train.attacks.grounding_protocols import IMAGE_PER_TEXT, build_reference_grounding_attack

    mlm = (echo(tokenizer, {"blue": 3.0, "cat": 2.0}), tokenizer, "echo")
    images = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(5))
    texts = ["a red dog", "the red ball", "a dog on grass"]
    other = [texts[0], "a blue cat", texts[2]]  # the first image's second expression changed
    pairing = torch.tensor([0, 0, 1])
    options = dict(protocol="co-attack", mlm=mlm, steps=3, eps=8 / 255, seed=0)
    for name in ("pgd", "sep", "co-attack"):
        attack = build_reference_grounding_attack(name, victim, objective="itm", **options)  # the objective is unread
        result = attack(images, texts, pairing)
        changed = build_reference_grounding_attack(name, victim, **options)(images, other, pairing)
        assert result.info[IMAGE_PER_TEXT] and result.images.shape == (3, 3, 16, 16), name
        assert float((result.images - images[pairing]).abs().max()) <= 8 / 255 + 1e-6, name
        assert not torch.allclose(result.images[0], result.images[1]), name  # one image, two copies
        for t in (0, 2):
            assert torch.equal(result.images[t], changed.images[t]) and result.texts[t] == changed.texts[t], (name, t)
        # only Co-Attack's image step reads the (attacked) expression: PGD and Sep's run_trades do not
        assert torch.equal(result.images[1], changed.images[1]) == (name != "co-attack"), name
        alone = [build_reference_grounding_attack(name, victim, **options)(images[pairing[t]][None], [texts[t]]).texts[0]
                 for t in range(3)]
        assert result.texts == alone, name
        assert attack.params()["image_copies"] == "per-expression"
    sga = build_reference_grounding_attack("sga", victim, **options)
    result = sga(images, texts, pairing)
    assert torch.equal(result.images[0], result.images[1]) and not torch.equal(result.images[1], result.images[2])
    assert sga.params()["image_copies"] == "per-image"
    text = build_reference_grounding_attack("bert-attack", victim, **options)(images, texts, pairing)
    assert IMAGE_PER_TEXT not in text.info and torch.equal(text.images, images)  # pixels untouched, one per image
    with pytest.raises(ValueError, match="no reference grounding code for protocol 'sga'"):
        build_reference_grounding_attack("pgd", victim, protocol="sga")


def test_grounding_under_co_attack_cleans_expressions_first():
    """Its data loader applies `pre_caption` to every expression, clean ones too; one cleaned away is
    named before any model runs."""
    import dataclasses

    from augment.referring import world_grounding
    from train.evaluate_grounding import _expression_texts, evaluate_grounding

    data = world_grounding(seed=4, n=2)
    data.expressions[0] = dataclasses.replace(data.expressions[0], text="The RED star, left!")
    assert _expression_texts(data, "pre_caption")[0] == "the red star left"
    assert _expression_texts(data, "none")[0] == "The RED star, left!"
    assert _expression_texts(data, "blip_pre_caption")[0] == "the red star, left"  # BLIP keeps ","
    data.expressions[1] = dataclasses.replace(data.expressions[1], text="?!")
    # no --caption-preprocess given: the message says whose default emptied it and how to keep captions as given
    with pytest.raises(ValueError, match=r"expression .* \('\?!'\): empty after pre_caption, --protocol co-attack's "
                                         r"caption preprocessing \(--caption-preprocess none keeps captions as given\); "
                                         r"fix or drop that expression$"):
        evaluate_grounding(None, data, attacks=["clean"], attack_options={"protocol": "co-attack"})
    with pytest.raises(ValueError, match=r"expression .* \('\?!'\): empty after --caption-preprocess pre_caption"):
        evaluate_grounding(None, data, attacks=["clean"], attack_options={"protocol": "co-attack"},
                           caption_preprocess="pre_caption")
    # an expression empty as given: no preprocessing to name (said "empty after none, --protocol project's ...")
    data.expressions[1] = dataclasses.replace(data.expressions[1], text=" ")
    with pytest.raises(ValueError, match=r"expression .* \(' '\): empty; fix or drop that expression$"):
        evaluate_grounding(None, data, attacks=["clean"], attack_options={})
    with pytest.raises(ValueError, match="--protocol sga has no grounding evaluation"):
        evaluate_grounding(None, data, attacks=["clean"], attack_options={"protocol": "sga"})


def test_train_eval_grounding_runs_every_attack_under_co_attack(grounding_world_dir, tmp_path, capsys, monkeypatch):
    """`train eval --task grounding --protocol co-attack`: each attack as Co-Attack's grounding code runs it,
    each expression grounded in its own attacked copy (tiny-albef with random weights: the wiring); the
    grounding-only and SGA-protocol refusals are one line."""
    import json

    import train.evaluate_grounding as evaluation
    from train.attacks.grounding_protocols import PairCopiesAttack
    from train.cli import main as train_main

    crafted, grounded, current = {}, {}, []
    call, ground = PairCopiesAttack.__call__, evaluation.ground

    def crafting(self, *args, **kwargs):
        result = call(self, *args, **kwargs)
        crafted.setdefault(self.name, result.images.detach().clone())
        current.append(self.name)
        return result

    def grounding(model, pixels, texts, *args, **kwargs):
        grounded.setdefault(current[-1], pixels.detach().clone())  # the first after crafting: every expression
        return ground(model, pixels, texts, *args, **kwargs)

    monkeypatch.setattr(PairCopiesAttack, "__call__", crafting)
    monkeypatch.setattr(evaluation, "ground", grounding)

    out = tmp_path / "eval"
    attacks = ["clean", "pgd", "bert-attack", "sep", "co-attack", "sga"]
    common = ["eval", "tiny-albef", "--task", "grounding", "--source", str(grounding_world_dir), "--split", "test",
              "--limit", "2", "--no-progress"]
    assert train_main([*common, "--attacks", ",".join(attacks), "--pgd-steps", "2", "--top-k", "3",
                       "--protocol", "co-attack", "--out", str(out)]) == 0
    report = json.loads((out / "eval.json").read_text())
    assert list(report["attacks"]) == attacks and "Co-Attack's grounding code" in report["procedure"]
    for name in ("pgd", "co-attack", "sga"):  # one batch: every expression grounded in its copy
        assert len(crafted[name]) == report["data"]["expressions"] and torch.equal(grounded[name], crafted[name]), name
    assert report["settings"]["caption_preprocess"] == "pre_caption"
    options = report["settings"]["attack_options"]
    assert options["protocol"] == "co-attack" and not {"objective", "step_size"} & set(options)
    params = {name: report["attacks"][name]["params"] for name in attacks[1:]}
    assert params["pgd"]["loss"] == "image-kl" and params["pgd"]["image_copies"] == "per-expression"
    assert params["co-attack"]["mode"] == "per-pair" and params["co-attack"]["image"]["step_size"] == pytest.approx(EPS / 2 * 1.25)
    assert params["bert-attack"]["guide"] == "text-kl" and params["sga"]["image_copies"] == "per-image"
    for name in attacks[1:]:
        assert report["attacks"][name].get("linf", 0.0) <= EPS + 1e-6, name
    assert "attack protocol `co-attack`" in (out / "eval.md").read_text()
    # GroundingFusionEval.py: the same copies, the fusion encoder's output attacked
    fused = tmp_path / "fused"
    assert train_main([*common, "--attacks", "clean,pgd", "--pgd-steps", "1", "--protocol", "co-attack",
                       "--attacked-embedding", "multimodal", "--out", str(fused)]) == 0
    fused_pgd = json.loads((fused / "eval.json").read_text())["attacks"]["pgd"]["params"]
    assert fused_pgd["embeddings_from"] == "fusion-encoder" and fused_pgd["image_copies"] == "per-expression"

    for extra, message in [(["--protocol", "sga"], "--protocol sga has no grounding evaluation to reproduce"),
                           (["--protocol", "co-attack", "--grounding-objective", "heat"],
                            "--grounding-objective is a project-protocol choice"),
                           # its default too: set, it would be ignored (as --text-guide image under a protocol)
                           (["--protocol", "co-attack", "--grounding-objective", "itm"],
                            "--grounding-objective is a project-protocol choice"),
                           (["--reference-bugs"], "--reference-bugs needs --protocol sga or co-attack"),
                           (["--protocol", "co-attack", "--attacked-embedding", "multimodal", "--attacks", "pgd,sga"],
                            "the Co-Attack code's fused-embedding attacks are")]:
        assert train_main([*common, *extra, "--out", str(tmp_path / "refused")]) == 2, extra
        err = capsys.readouterr().err.strip()
        assert message in err and "\n" not in err and "Traceback" not in err, extra
        assert not (tmp_path / "refused").exists()
