"""The one attack-settings object: what training, `train eval` and the study share.

`AttackSettings` holds every knob of the attacks with the project's defaults; the trainer's
config, the `train eval` options and the study's `eval` section all take their defaults from
`ATTACK_DEFAULTS`, so a default changes in one place.

PGD step: `step_size=None` means eps / 4 everywhere (training and evaluation). At the papers'
eps 2/255 that is their 0.5/255, and it scales with eps, so a larger training eps still reaches
the boundary within the same number of steps.

`protocol` says whose choices the attacks follow (README "Protocols" has the table):

* `project` (default): the project's attacks (module docs of `train.attacks.*`).
* `sga`: the choices of the SGA code (github:Zoky-2020/SGA, `attacker.py`): its SGA, its PGD
  (the SGA image attacker without scales) and its text attack scored by KL to the clean caption
  for BERT-Attack and Sep; Co-Attack as the Co-Attack code does it.
* `co-attack`: the choices of the Co-Attack code (github:adversarial-for-goodness/Co-Attack,
  `attack/`): unsupervised image attack (away from the clean image embedding, step eps/steps x
  1.25, start in [0, eps]) for PGD and Sep, KL-scored text attack, Co-Attack per (image, caption)
  pair; SGA as the SGA code does it.

`attacked_embedding` (with `co-attack` only): "unimodal" (default: what each attack reads above), or
the fusion encoder's output for each (image, caption) pair, as the Co-Attack code's
`RetrievalFusionEval.py` attacks ALBEF/TCL: "multimodal" (all its states, flattened; the code
without `--cls`) or "multimodal-cls" (its [CLS] state) (`train.attacks.fused`).

`reference_bugs=True` (only with a reference protocol) also reproduces the reference code's bugs
(see `REFERENCE_BUGS`); they are fixed otherwise.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

def pgd_step_size(eps: float, step_size: float | None = None) -> float:
    """The PGD step: `step_size` as given, or eps / 4 when it is None (module doc): the one rule every
    PGD here (retrieval, captioning, grounding; training and evaluation) follows."""
    return eps / 4 if step_size is None else step_size


ATTACK_NAMES = ("clean", "pgd", "bert-attack", "synonym", "sep", "co-attack", "sga")
PROTOCOLS = ("project", "sga", "co-attack")
# what the attacks read on a fusion model (`train.attacks.fused.READING_OF`)
ATTACKED_EMBEDDINGS = ("unimodal", "multimodal", "multimodal-cls")
# the attacks the Co-Attack code's fused-embedding script runs (`--adv 0-4`; the synonym attack is its
# text attack with WordNet's candidates)
FUSED_ATTACKS = ("clean", "pgd", "bert-attack", "synonym", "sep", "co-attack")
LOSSES = ("pair", "contrastive")
# the text guides a user chooses (--text-guide); `train.attacks.text.GUIDES` adds "text-kl", which
# only the reference protocols set
SELECTABLE_GUIDES = ("image", "text")
TEXT_CANDIDATES = ("mlm", "wordnet")
PIECE_MODES = ("combine", "first")

# the reference bugs `reference_bugs=True` brings back (each tested in tests/test_protocols.py)
REFERENCE_BUGS = {
    "mlm-offset": "the masked LM's predictions are read one position early (the [CLS] offset is missing)",
    "special-tokens": "[UNK], [SEP], [PAD], ... are accepted as substitute words",
    "logit-threshold": "single-piece substitutes stop at the first raw MLM logit below 0.3 (a bert-base scale)",
    "gradient-scaling": "SGA's image step divides the gradient by its mean absolute value: NaN for an all-zero or "
                        "infinite gradient (torch's sign(NaN) = 0, so that image skips the step)",
    "mixed-importance": "SGA's word importance compares the clean caption's embedding before normalisation with "
                        "the masked captions' unit ones",
    "fused-text-pixels": "the fused-embedding text attack (BertAttackFusion) reads the image encoder's output for "
                         "pixels it never normalised",
}


# older spellings of attack settings (command lines and study YAML written before the renames)
OLDER_SPELLINGS = {"objective": "loss", "attack_protocol": "protocol"}


def canonical_options(options: dict[str, Any]) -> dict[str, Any]:
    """`options` without None values and with `OLDER_SPELLINGS` under their current names: every
    reader (the settings, the evaluation's caption preprocessing, eval.md) then sees one name.
    An older and a current spelling with different values is an error."""
    out = {k: v for k, v in options.items() if v is not None}
    for old, new in OLDER_SPELLINGS.items():
        if old in out:
            spelt = out.pop(old)
            if out.setdefault(new, spelt) != spelt:
                raise ValueError(f"{new} and {old} disagree ({out[new]!r} vs {spelt!r})")
    return out


# the `train eval` flag of each attack option (eval.json's `settings.attack_options` and the
# API use the option names; messages to a command-line user use the flags)
OPTION_FLAGS = {"eps": "--attack-eps", "steps": "--pgd-steps", "step_size": "--pgd-step-size",
                "candidates": "--text-candidates", "budget": "--word-budget", "guide": "--text-guide",
                "scales": "--sga-scales", "alpha": "--co-alpha", "top_k": "--top-k", "max_length": "--max-length",
                "mlm": "--mlm", "protocol": "--protocol", "reference_bugs": "--reference-bugs",
                "attacked_embedding": "--attacked-embedding"}


def renamed_clauses(message: str, names: dict[str, str]) -> str:
    """`message` ("eps must ...; top_k ...") with each setting name that starts a clause as `names` spells it."""
    import re

    return re.sub(r"(^|; )(" + "|".join(names) + r")\b", lambda m: m.group(1) + names[m.group(2)], message)


def with_flag_names(message: str) -> str:
    """`message` with each option name that starts a clause ("eps must ...") as its flag."""
    return renamed_clauses(message, OPTION_FLAGS)


# the settings that count things (a YAML `steps: 10.0` or `true` is refused, not truncated or read as 1)
_WHOLE_NUMBERS = ("steps", "top_k", "budget", "max_length", "words_per_round", "text_batch", "mlm_batch")


@dataclass(frozen=True)
class AttackSettings:
    """Every attack knob with its default (the attack papers' protocol, see README)."""

    # image attack: L-inf PGD on [0, 1] pixels before normalisation
    eps: float = 2 / 255
    steps: int = 10
    step_size: float | None = None  # None: eps / 4
    random_start: bool = True
    # text attack: word substitutions
    candidates: str = "mlm"  # "mlm" (BERT-Attack) or "wordnet"
    top_k: int = 10
    budget: int = 1  # words changed per caption at most
    max_length: int = 30  # MLM tokens read per caption
    guide: str = "image"  # project protocol: score candidates against the image, or "text"
    pieces: str = "combine"  # words the MLM splits: combine the pieces' predictions, or "first" piece only
    words_per_round: int = 1
    text_batch: int = 256
    mlm_batch: int = 128  # captions per masked-LM call (train.attacks.substitutes.DEFAULT_MLM_BATCH)
    # multimodal attacks
    scales: tuple[float, ...] = (0.5, 0.75, 1.25, 1.5)  # SGA
    noise_std: float = 0.05  # SGA
    alpha: float = 3.0  # Co-Attack
    # what the attacks maximise ("pair": evaluation; "contrastive": MAT's inner maximisation)
    loss: str = "pair"
    protocol: str = "project"
    reference_bugs: bool = False
    attacked_embedding: str = "unimodal"  # or the fusion encoder's output: "multimodal", "multimodal-cls"

    def __post_init__(self) -> None:
        # types first: a study YAML's `reference_bugs: 'false'` is a string, which a truth test reads as on
        problems = [f"{name} must be true or false, got {getattr(self, name)!r}"
                    for name in ("random_start", "reference_bugs") if not isinstance(getattr(self, name), bool)]
        problems += [f"{name} must be a whole number, got {getattr(self, name)!r}" for name in _WHOLE_NUMBERS
                     if isinstance(getattr(self, name), bool) or not isinstance(getattr(self, name), int)]
        if problems:
            raise ValueError("; ".join(problems))
        if self.protocol not in PROTOCOLS:
            problems.append(f"unknown protocol {self.protocol!r}; expected one of {', '.join(PROTOCOLS)}")
        if self.loss not in LOSSES:
            problems.append(f"unknown attack loss {self.loss!r}; expected one of {LOSSES}")
        if self.guide not in SELECTABLE_GUIDES:
            problems.append(f"unknown text guide {self.guide!r}; expected one of {SELECTABLE_GUIDES}")
        if self.candidates not in TEXT_CANDIDATES:
            problems.append(f"unknown text candidates {self.candidates!r}; expected one of {TEXT_CANDIDATES}")
        if self.pieces not in PIECE_MODES:
            problems.append(f"unknown piece mode {self.pieces!r}; expected one of {PIECE_MODES}")
        if self.attacked_embedding not in ATTACKED_EMBEDDINGS:
            problems.append(f"unknown attacked embedding {self.attacked_embedding!r}; expected one of "
                            f"{', '.join(ATTACKED_EMBEDDINGS)}")
        elif self.attacked_embedding != "unimodal" and self.protocol != "co-attack":
            problems.append(f"attacked embedding {self.attacked_embedding!r} is the Co-Attack code's fused-embedding "
                            "attack: it needs protocol co-attack")
        if self.reference_bugs and self.protocol == "project":
            problems.append("reference_bugs needs a reference protocol (sga or co-attack)")
        # the project protocol's choices a reference protocol replaces by the reference code's: a
        # value other than the default would be silently ignored there
        if self.protocol != "project" and self.guide != "image":
            problems.append(f"text guide {self.guide!r} is a project-protocol choice: under protocol {self.protocol} the "
                            "text attacks score candidates as the reference code does (README: Protocols)")
        if self.protocol != "project" and self.pieces != "combine":
            problems.append(f"piece mode {self.pieces!r} is a project-protocol choice: under protocol {self.protocol} "
                            "multi-piece words are combined as the reference code does")
        if not 0 <= self.eps <= 1:
            problems.append(f"eps must lie in [0, 1], got {self.eps}")
        for name, least in (("steps", 0), ("budget", 0), ("top_k", 1), ("max_length", 3)):
            if getattr(self, name) < least:
                problems.append(f"{name} must be at least {least}, got {getattr(self, name)}")
        # NaN fails every comparison: `step_size <= 0` let a NaN step through (a study's eval.pgd_step_size: nan),
        # and PGD then made every attacked image NaN; the command lines refuse NaN and infinity already
        if self.step_size is not None and not 0 < self.step_size < math.inf:
            problems.append(f"step_size must be positive and finite, got {self.step_size}")
        if not self.scales or not all(0 < s < math.inf for s in self.scales):
            problems.append("SGA scales must be positive finite numbers")
        # resized_views adds noise only when noise_std > 0: a negative or NaN one meant no noise, silently
        if not 0 <= self.noise_std < math.inf:
            problems.append(f"SGA's noise_std must be a non-negative finite number, got {self.noise_std}")
        if self.alpha < 0:
            problems.append(f"Co-Attack's alpha must not be negative, got {self.alpha}")
        elif not self.alpha < math.inf:
            problems.append(f"Co-Attack's alpha must be finite, got {self.alpha}")
        if problems:
            raise ValueError("; ".join(problems))
        object.__setattr__(self, "scales", tuple(float(s) for s in self.scales))

    @property
    def pgd_step_size(self) -> float:
        return pgd_step_size(self.eps, self.step_size)

    @property
    def reference(self) -> bool:
        return self.protocol != "project"

    def replace(self, **changes: Any) -> "AttackSettings":
        return dataclasses.replace(self, **changes)

    @classmethod
    def from_options(cls, **options: Any) -> "AttackSettings":
        """From flat options (command lines, study YAML); unknown names are an error.

        `objective` and `attack_protocol` are accepted as older spellings of `loss` / `protocol`.
        """
        options = canonical_options(options)
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(options) - names)
        if unknown:
            raise ValueError(f"unknown attack setting(s) {', '.join(unknown)}; expected some of {', '.join(sorted(names))}")
        return cls(**options)


ATTACK_DEFAULTS = AttackSettings()


def refuse_unknown_options(options: dict[str, Any], task: str) -> None:
    """ValueError for option names no attack of any task reads: another task's builder ignores the
    retrieval attacks' own options (guide, scales, ...), and took a misspelt or flag-style name
    (`attack_eps`, `pgd_steps`) the same way: the attack ran at its default budget without a word."""
    names = {field.name for field in dataclasses.fields(AttackSettings)}
    unknown = sorted(set(canonical_options(options)) - names)
    if unknown:
        flags = {flag.lstrip("-").replace("-", "_"): name for name, flag in OPTION_FLAGS.items()}
        hints = [f"{key} (the option is {flags[key]})" if key in flags else key for key in unknown]
        raise ValueError(f"unknown {task} attack setting(s) {', '.join(hints)}; expected some of {', '.join(sorted(names))}")


# keys whose values are L-inf pixel budgets or steps: written as multiples of 1/255, as papers do
_PIXEL_KEYS = frozenset({"eps", "step_size"})


def _value_in_words(key: str, value: Any) -> str:
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        if key in _PIXEL_KEYS:
            return f"{round(value * 255, 4):g}/255"
        return f"{value:g}"
    if isinstance(value, (list, tuple)):
        return "/".join(_value_in_words(key, item) for item in value) if value else "none"
    if isinstance(value, dict):
        return f"({describe_params(value)})"
    return str(value)


def describe_params(params: dict) -> str:
    """One attack's `params()` as one line for a report ("eps 2/255, steps 10, ..."): every
    setting the attack ran with, nested parts (SGA's image and text attacks) in parentheses."""
    return ", ".join(f"{key} {_value_in_words(key, value)}" for key, value in params.items() if value is not None)
