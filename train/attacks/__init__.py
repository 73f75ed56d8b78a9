"""Attacks shared by training and evaluation; one call signature (see `base.Attack`).

`build_attack(name, victim, settings, **options)` (`factory`) builds any of `ATTACK_NAMES` from
an `AttackSettings` (`settings`; and/or flat options, what command lines pass), following the
settings' `protocol` (`protocols.PROTOCOL_CHOICES`); the classes can also be built directly.

Names are imported on first use, so `from train.attacks import ATTACK_NAMES` (command-line help,
configs) does not load torch.
"""
from __future__ import annotations

import importlib

from train.attacks.settings import ATTACK_DEFAULTS, ATTACK_NAMES, PROTOCOLS, TEXT_CANDIDATES, AttackSettings

_LAZY = {
    "Attack": "base", "AttackResult": "base", "NoAttack": "base",
    "PGD": "pgd", "pgd_linf": "pgd",
    "BertAttack": "text", "SynonymAttack": "text", "WordSubstitutionAttack": "text", "DEFAULT_TEXT_BATCH": "text",
    "SGA": "multimodal", "CoAttack": "multimodal", "SepAttack": "multimodal", "SGA_SCALES": "multimodal",
    "SGA_NOISE_STD": "multimodal", "CO_ATTACK_ALPHA": "multimodal",
    "PROTOCOL_CHOICES": "protocols", "ProtocolChoices": "protocols",
    "build_attack": "factory", "resolve_settings": "factory",
}


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(f"train.attacks.{_LAZY[name]}"), name)
    raise AttributeError(f"module 'train.attacks' has no attribute {name!r}")


__all__ = ["ATTACK_DEFAULTS", "ATTACK_NAMES", "PROTOCOLS", "TEXT_CANDIDATES", "AttackSettings", *_LAZY]
