"""Name -> plugin registries (models, defenses, attacks), in the spirit of timm's ``register_model``.

A plugin is one file with one decorator; an unknown name is answered with the list of valid ones.
"""
from __future__ import annotations

import difflib
from typing import Callable, Generic, TypeVar

from lab.errors import LabError

T = TypeVar("T")


class Registry(Generic[T]):
    def __init__(self, kind: str):
        self.kind = kind
        self._items: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        def decorator(obj: T) -> T:
            if name in self._items:
                raise RuntimeError(f"{self.kind} {name!r} registered twice")
            self._items[name] = obj
            return obj

        return decorator

    def names(self) -> list[str]:
        return sorted(self._items)

    def __contains__(self, name: str) -> bool:
        return name in self._items

    def get(self, name: str) -> T:
        if name not in self._items:
            hint = difflib.get_close_matches(str(name), self.names(), n=1)
            did_you_mean = f" (did you mean {hint[0]!r}?)" if hint else ""
            raise LabError(f"unknown {self.kind} {name!r}{did_you_mean}; valid: {', '.join(self.names())}")
        return self._items[name]
