"""Ways a data owner protects audio. One file each; importing this package registers them all."""
from defenses.base import DEFENSES, Defense, Protection, build_defense
from defenses import ar_noise, classwise_noise, cuda, noise_patch, none, poscuda  # noqa: F401  (registration)

__all__ = ["DEFENSES", "Defense", "Protection", "build_defense"]
