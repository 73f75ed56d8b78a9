"""`build_attack`: any attack by name, as an `AttackSettings` and its protocol make it."""
from __future__ import annotations

import dataclasses
import logging

import torch

from train.attacks.base import Attack, NoAttack
from train.attacks.fused import READING_OF, FusedCoAttack, FusedPGD, FusedSepAttack, FusedTextAttack, FusedVictim
from train.attacks.multimodal import SGA, CoAttack, SepAttack
from train.attacks.pgd import PGD
from train.attacks.protocols import (
    PROTOCOL_CHOICES,
    ProtocolChoices,
    co_attack_schedule,
    follows_sga_code,
    reads_cls_states,
    reference_max_length,
    sga_image_attacker,
)
from train.attacks.settings import ATTACK_DEFAULTS, ATTACK_NAMES, FUSED_ATTACKS, AttackSettings, canonical_options
from train.attacks.substitutes import load_masked_lm
from train.attacks.text import BertAttack, SynonymAttack, WordSubstitutionAttack
from train.attacks.unprojected import UnprojectedVictim

log = logging.getLogger(__name__)
# what a report says Co-Attack read where the Co-Attack code's [CLS] reading cannot work (widths differ)
ITC_FALLBACK = "itc (the encoders' [CLS] states differ in width)"


def resolve_settings(settings: AttackSettings | None = None, attack: str | None = None, family: str | None = None,
                     **options) -> AttackSettings:
    """`settings` (default `ATTACK_DEFAULTS`) with flat `options` on top; under a reference protocol
    the MLM tokens `attack` reads on a victim of `family` are that code's (`reference_max_length`)
    unless `max_length` is given."""
    base = settings or ATTACK_DEFAULTS
    options = canonical_options(options)  # before the merge: an older spelling would meet base's current one
    merged = AttackSettings.from_options(**{**dataclasses.asdict(base), **options}) if options else base
    reference = reference_max_length(merged.protocol, attack, family)
    if reference is not None and "max_length" not in options and base.max_length == ATTACK_DEFAULTS.max_length:
        merged = merged.replace(max_length=reference)
    return merged


def build_attack(name: str, victim, settings: AttackSettings | None = None, *, seed: int | None = None,
                 mlm: str | tuple = "default", **options) -> Attack:
    """An attack by name, as `settings.protocol` makes it (defaults = the papers' protocol, README).

    `seed` seeds PGD's random start and SGA's noise; `mlm` is a masked-LM name or a loaded
    `(model, tokenizer[, name])` shared by several attacks; `options` are `AttackSettings` fields.
    """
    if name not in ATTACK_NAMES:
        raise ValueError(f"unknown attack {name!r}; expected one of {', '.join(ATTACK_NAMES)}")
    s = resolve_settings(settings, name, getattr(victim, "family", None), **options)
    choices: ProtocolChoices = PROTOCOL_CHOICES[s.protocol]
    if name == "clean":
        return NoAttack(victim, s.loss)
    fused = s.attacked_embedding != "unimodal"
    if fused and name not in FUSED_ATTACKS:
        raise ValueError(f"{name}: the Co-Attack code's fused-embedding attacks are {', '.join(FUSED_ATTACKS[1:])}; "
                         f"evaluate {name} without attacked embedding {s.attacked_embedding}")
    if s.candidates == "mlm" and name in ("bert-attack", "sep", "co-attack", "sga") and isinstance(mlm, str) and s.budget:
        mlm = load_masked_lm(mlm, victim.device, victim)  # one MLM for both text attacks of a protocol
    # the Co-Attack code reads ALBEF/TCL's encoders' [CLS] states, not the ITC embeddings (its attacks only)
    cls_states = not fused and reads_cls_states(s.protocol, name, getattr(victim, "family", None)) \
        and getattr(victim, "has_cls_states", False)  # a duck-typed victim without them keeps its embeddings
    if cls_states and name == "co-attack" and len(set(widths := victim.cls_state_widths())) > 1:
        # its image step compares image and caption states: the code needs equal widths (ALBEF's and TCL's: 768)
        log.warning("%s: Co-Attack reads the ITC embeddings, not the encoders' [CLS] states as the Co-Attack code "
                    "does: their widths differ (image %d, text %d)", victim.name or victim.family, *widths)
        cls_states = False
        itc_fallback = True
    else:
        itc_fallback = False
    if cls_states:
        victim = UnprojectedVictim(victim)

    def generator() -> torch.Generator | None:
        return torch.Generator().manual_seed(seed) if seed is not None else None

    def image_attack(kind: str) -> PGD:
        """kind: "pgd" (the protocol's PGD), "sga" (SGA's image attacker), "co-attack" (Co-Attack's)."""
        common = dict(eps=s.eps, steps=s.steps, random_start=s.random_start, generator=generator())
        if co_attack_schedule(s.protocol, name):
            # the Co-Attack code: step eps / steps x 1.25, start in [0, eps]
            step = s.eps / max(s.steps, 1) * 1.25
            unsupervised = kind == "pgd"
            return PGD(victim, step_size=step, start="positive", **common, loss="image-kl" if unsupervised else s.loss,
                       embedding="raw" if unsupervised and cls_states else "unit")
        nan_bug = s.reference_bugs and sga_image_attacker(s.protocol, name)
        loss = choices.pgd if kind == "pgd" and choices.pgd == "image-kl" else s.loss
        return PGD(victim, step_size=s.pgd_step_size, loss=loss, scale_by_mean_gradient=nan_bug, **common)

    def text_attack(guide: str | None = None) -> WordSubstitutionAttack:
        guide = guide or s.guide
        common = dict(top_k=s.top_k, budget=s.budget, max_length=s.max_length, guide=guide,
                      words_per_round=s.words_per_round, text_batch=s.text_batch, loss=s.loss,
                      importance=choices.importance)
        # the SGA code's TextAttacker.attack (BERT-Attack, Sep's text under `sga`; the synonym attack takes its
        # choices) reads its CLIP wrapper's embeddings before normalisation, and the Co-Attack code ALBEF/TCL's
        # text [CLS] states as they are; SGA's own text steps (image-guided) and Co-Attack's code on a CLIP unit ones
        sga_code = follows_sga_code(s.protocol, name)
        raw = s.reference and (sga_code or cls_states) and guide == "text-kl"
        common["embedding"] = "raw" if raw else "unit"
        if s.candidates == "wordnet" or name == "synonym":
            return SynonymAttack(victim, **common)
        # mixed-importance is the SGA code's TextAttacker's bug; the Co-Attack code's BertAttack reads one kind
        return BertAttack(victim, mlm=mlm, mlm_batch=s.mlm_batch, pieces=s.pieces, reading=choices.mlm_reading,
                          reference_bugs=s.reference_bugs, masked_unit=s.reference_bugs and sga_code, **common)

    if fused:  # the Co-Attack code's RetrievalFusionEval.py: its schedule, its substitutes, the fused embedding
        reading = FusedVictim(victim, READING_OF[s.attacked_embedding], unnormalised_text_pixels=s.reference_bugs)
        schedule = image_attack("co-attack")

        def fused_text() -> FusedTextAttack:
            return FusedTextAttack(reading, text_attack(choices.text_guide).source, budget=s.budget,
                                   words_per_round=s.words_per_round, text_batch=s.text_batch, name=name)

        if name == "pgd":
            return FusedPGD(reading, schedule)
        if name in ("bert-attack", "synonym"):
            return fused_text()
        if name == "sep":
            return FusedSepAttack(reading, schedule, fused_text())
        return FusedCoAttack(reading, schedule, fused_text(), alpha=s.alpha)
    if name == "pgd":
        return image_attack("pgd")
    if name in ("bert-attack", "synonym"):
        return text_attack(choices.text_guide)
    if name == "sep":
        return SepAttack(victim, image_attack=image_attack("pgd"), text_attack=text_attack(choices.text_guide), loss=s.loss)
    if name == "co-attack":
        attack = CoAttack(victim, image_attack=image_attack("co-attack"), text_attack=text_attack(choices.text_guide),
                          alpha=s.alpha, loss=s.loss, mode=choices.co_attack, embedding="raw" if cls_states else "unit")
        if itc_fallback:  # the warning goes to the log; the report says it too
            attack.embeddings_from = ITC_FALLBACK
        return attack
    # SGA's text steps are image-guided in every protocol (the SGA code's img_guided_attack)
    return SGA(victim, image_attack=image_attack("sga"), text_attack=text_attack("image" if s.reference else None),
               scales=s.scales, noise_std=s.noise_std, loss=s.loss, first_guide=choices.sga_first_guide,
               views=choices.sga_views)
