"""Ways an unauthorised trainer tries to learn from protected data anyway. One file each, registered in ATTACKS;
importing this package registers them all."""
from lab.registry import Registry

ATTACKS: Registry = Registry("attack")

from attacks import (  # noqa: E402,F401  (registration)
    adversarial_training, augment, clean_finetune, codec, early_stop, filter_retrain, mixed_position, partial,
    sharpen_lowpass,
)
from attacks.base import Attack, AttackContext, build_attack  # noqa: E402

__all__ = ["ATTACKS", "Attack", "AttackContext", "build_attack"]
