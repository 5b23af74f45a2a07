"""Name -> plugin registries (models, defenses, attacks), in the spirit of timm's ``register_model``, and how plugins
are found.

A plugin is one file with one decorator; an unknown name is answered with the list of valid ones. The core names no
plugin: a registry fills itself the first time anyone asks it for a name (``names``, ``get``, ``in``):

1. it imports its own package (``defenses``, ``attacks``, ``lab.models``), whose ``__init__`` imports every module
   in the package (:func:`import_submodules`: no hand-kept list; a new file is a new plugin);
2. then, once for all registries (:func:`load_plugins`), the modules of other installed packages: every entry point
   of the group ``lab.plugins`` (pyproject.toml: ``[project.entry-points."lab.plugins"] my_defense =
   "my_package.my_defense"``), and every module named in the environment variable ``LAB_PLUGINS``
   (comma-separated importable module names, for a plugin that is not packaged: a notebook, a test). Importing such
   a module registers its plugins with the same decorators the built-in ones use.

See docs/extending.md.
"""
from __future__ import annotations

import difflib
import importlib
import os
import pkgutil
from importlib.metadata import entry_points
from typing import Callable, Generic, Iterable, TypeVar

from lab.errors import LabError

T = TypeVar("T")

ENTRY_POINT_GROUP = "lab.plugins"
PLUGINS_ENV = "LAB_PLUGINS"

_plugins: list[str] | None = None  # the third-party plugin modules imported, once loaded


def import_submodules(package: str, path: Iterable[str]) -> None:
    """Import every module of a package (call it as ``import_submodules(__name__, __path__)`` at the end of the
    package's ``__init__``), in name order, so that each registers its plugins."""
    for info in sorted(pkgutil.iter_modules(list(path)), key=lambda m: m.name):
        importlib.import_module(f"{package}.{info.name}")


def _plugin_modules() -> list[tuple[str, str]]:
    """(where it was named, module) for every third-party plugin module: entry points first, then $LAB_PLUGINS."""
    found = [(f"entry point {ep.name!r} of group {ENTRY_POINT_GROUP!r}", ep.value.split(":")[0].strip())
             for ep in sorted(entry_points(group=ENTRY_POINT_GROUP), key=lambda e: (e.name, e.value))]
    found += [(f"${PLUGINS_ENV}", name.strip()) for name in os.environ.get(PLUGINS_ENV, "").split(",") if name.strip()]
    return found


def load_plugins() -> list[str]:
    """Import the third-party plugin modules (entry points of ``lab.plugins``, then ``$LAB_PLUGINS``), once per
    process; returns their names. A module that fails to import is a one-line LabError naming it (and it is tried
    again on the next call)."""
    global _plugins
    if _plugins is not None:
        return _plugins
    _plugins = []  # a registry asked while a plugin is being imported sees what is registered so far
    loaded: list[str] = []
    try:
        for where, module in _plugin_modules():
            try:
                importlib.import_module(module)
            except LabError:
                raise
            except Exception as e:
                raise LabError(f"plugin module {module!r} ({where}) failed to import: {type(e).__name__}: "
                               f"{str(e).splitlines()[0] if str(e) else ''}".rstrip(": ")) from None
            if module not in loaded:
                loaded.append(module)
    except BaseException:
        _plugins = None
        raise
    _plugins = loaded
    return _plugins


class Registry(Generic[T]):
    """Plugins of one kind by name. ``package``: the package whose modules hold the built-in ones (imported on the
    first question, with the third-party plugins, see the module docstring)."""

    def __init__(self, kind: str, package: str | None = None):
        self.kind = kind
        self.package = package
        self._items: dict[str, T] = {}
        self._retired: dict[str, str] = {}

    def register(self, name: str) -> Callable[[T], T]:
        def decorator(obj: T) -> T:
            if name in self._items and self._items[name] is not obj:
                first = getattr(self._items[name], "__module__", "?")
                raise LabError(f"{self.kind} {name!r} registered twice (by {first} and by "
                               f"{getattr(obj, '__module__', '?')})")
            self._items[name] = obj
            return obj

        return decorator

    def retire(self, name: str, instead: str) -> None:
        """A name that is gone: asking for it fails with ``instead`` (what to use now) rather than 'unknown'."""
        self._retired[name] = instead

    def discover(self) -> None:
        """Make sure the built-in plugins (this registry's package) and the third-party ones are registered."""
        if self.package is not None:
            importlib.import_module(self.package)
        load_plugins()

    def names(self) -> list[str]:
        self.discover()
        return sorted(self._items)

    def __contains__(self, name: str) -> bool:
        self.discover()
        return name in self._items

    def get(self, name: str) -> T:
        self.discover()
        if name not in self._items:
            if name in self._retired:
                raise LabError(f"{self.kind} {name!r} no longer exists: {self._retired[name]}")
            hint = difflib.get_close_matches(str(name), self.names(), n=1)
            did_you_mean = f" (did you mean {hint[0]!r}?)" if hint else ""
            raise LabError(f"unknown {self.kind} {name!r}{did_you_mean}; valid: {', '.join(self.names())}")
        return self._items[name]
