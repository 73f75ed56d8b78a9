"""Attacks shared by training and evaluation; one call signature (see `base.Attack`).

`build_attack(name, victim, **options)` builds any of `ATTACK_NAMES` from flat options (what the
command lines pass); the classes can also be built directly.
"""
from __future__ import annotations

from typing import Sequence

import torch

from train.attacks.base import Attack, AttackResult, ClipVictim
from train.attacks.multimodal import CO_ATTACK_ALPHA, SGA, SGA_NOISE_STD, SGA_SCALES, CoAttack, SepAttack
from train.attacks.pgd import PGD, pgd_linf
from train.attacks.text import DEFAULT_TEXT_BATCH, BertAttack, SynonymAttack, WordSubstitutionAttack

ATTACK_NAMES = ("clean", "pgd", "bert-attack", "synonym", "sep", "co-attack", "sga")
TEXT_CANDIDATES = ("mlm", "wordnet")


class NoAttack(Attack):
    """The identity: clean images and captions (the `clean` row of an evaluation)."""

    modality = "none"
    name = "clean"

    def __call__(self, images: torch.Tensor, texts: Sequence[str], image_of_text: torch.Tensor | None = None) -> AttackResult:
        return AttackResult(images=images, texts=list(texts), info={})


def build_attack(
    name: str,
    victim: ClipVictim,
    *,
    objective: str = "pair",
    eps: float = 2 / 255,
    steps: int = 10,
    step_size: float = 0.5 / 255,
    random_start: bool = True,
    seed: int | None = None,
    candidates: str = "mlm",
    mlm: str | tuple = "default",
    top_k: int = 10,
    budget: int = 1,
    max_length: int = 30,
    guide: str = "image",
    words_per_round: int = 1,
    text_batch: int = DEFAULT_TEXT_BATCH,
    mlm_batch: int = 32,
    scales: Sequence[float] = SGA_SCALES,
    noise_std: float = SGA_NOISE_STD,
    alpha: float = CO_ATTACK_ALPHA,
) -> Attack:
    """An attack by name, defaults = the papers' protocol (see README: reference protocol).

    Image part (pgd, sep, co-attack, sga): `eps`, `steps`, `step_size` on [0, 1] pixels,
    `random_start`, `seed` (seeds the random start and SGA's noise). Text part (bert-attack,
    synonym, sep, co-attack, sga): `candidates` "mlm" (masked LM `mlm`: a name or a loaded
    `(model, tokenizer)`) or "wordnet" (the `synonym` attack always uses WordNet), `top_k`,
    `budget` (words per caption), `max_length`, `guide`, `words_per_round`, `text_batch`,
    `mlm_batch`. SGA: `scales`, `noise_std`. Co-Attack: `alpha`.
    """
    if name not in ATTACK_NAMES:
        raise ValueError(f"unknown attack {name!r}; expected one of {', '.join(ATTACK_NAMES)}")
    if candidates not in TEXT_CANDIDATES:
        raise ValueError(f"unknown text candidates {candidates!r}; expected one of {TEXT_CANDIDATES}")
    if name == "clean":
        return NoAttack(victim, objective)

    def image_attack() -> PGD:
        generator = torch.Generator().manual_seed(seed) if seed is not None else None
        return PGD(victim, eps=eps, steps=steps, step_size=step_size, random_start=random_start,
                   objective=objective, generator=generator)

    def text_attack(source: str) -> WordSubstitutionAttack:
        common = dict(top_k=top_k, budget=budget, max_length=max_length, guide=guide,
                      words_per_round=words_per_round, text_batch=text_batch, objective=objective)
        if source == "wordnet":
            return SynonymAttack(victim, **common)
        return BertAttack(victim, mlm=mlm, mlm_batch=mlm_batch, **common)

    if name == "pgd":
        return image_attack()
    if name == "bert-attack":
        return text_attack(candidates)
    if name == "synonym":
        return text_attack("wordnet")
    parts = dict(image_attack=image_attack(), text_attack=text_attack(candidates), objective=objective)
    if name == "sep":
        return SepAttack(victim, **parts)
    if name == "co-attack":
        return CoAttack(victim, alpha=alpha, **parts)
    return SGA(victim, scales=scales, noise_std=noise_std, **parts)


__all__ = [
    "ATTACK_NAMES", "Attack", "AttackResult", "BertAttack", "ClipVictim", "CoAttack", "NoAttack", "PGD", "SGA",
    "SepAttack", "SynonymAttack", "WordSubstitutionAttack", "build_attack", "pgd_linf",
]
