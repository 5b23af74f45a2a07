"""Ways a data owner protects audio. One file each; importing this package imports every module in it (each
registers its defense in DEFENSES), and the registry adds third-party ones (see lab/registry.py)."""
from defenses.base import DEFENSES, Defense, Protection, build_defense
from lab.registry import import_submodules

__all__ = ["DEFENSES", "Defense", "Protection", "build_defense"]

import_submodules(__name__, __path__)
