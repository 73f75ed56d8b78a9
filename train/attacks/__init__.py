"""Attacks shared by training and evaluation; one call signature (see `base.Attack`)."""
from train.attacks.base import Attack, AttackResult, ClipVictim
from train.attacks.pgd import PGD, pgd_linf

__all__ = ["Attack", "AttackResult", "ClipVictim", "PGD", "pgd_linf"]
