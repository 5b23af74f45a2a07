"""Ways an unauthorised trainer tries to learn from protected data anyway. One file each, registered in ATTACKS."""
from lab.registry import Registry

ATTACKS: Registry = Registry("attack")

__all__ = ["ATTACKS"]
