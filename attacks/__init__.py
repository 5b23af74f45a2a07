"""Ways an unauthorised trainer tries to learn from protected data anyway. One file each, registered in ATTACKS;
importing this package imports every module in it (each registers its attack), and the registry adds third-party
ones (see lab/registry.py)."""
from attacks.base import ATTACKS, Attack, AttackContext, build_attack
from lab.registry import import_submodules

__all__ = ["ATTACKS", "Attack", "AttackContext", "build_attack"]

import_submodules(__name__, __path__)
