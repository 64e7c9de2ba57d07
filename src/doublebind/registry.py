"""One small registry: task families, behaviours, scorers (and later techniques) by name.

    @register("family", "copy")
    class Copy: ...

`doublebind ls` lists everything here; configs name entries by these keys.
"""

from __future__ import annotations

import importlib
from typing import Any, Callable

from doublebind.errors import ConfigError

_REGISTRY: dict[str, dict[str, Any]] = {}


def register(kind: str, name: str) -> Callable[[Any], Any]:
    """Register an object under (kind, name); the object is returned unchanged."""

    def deco(obj: Any) -> Any:
        table = _REGISTRY.setdefault(kind, {})
        if name in table:
            raise ValueError(f"duplicate {kind} name: {name}")
        table[name] = obj
        return obj

    return deco


def get(kind: str, name: str) -> Any:
    """Look up a registered object; an unknown name is a ConfigError listing the known ones."""
    _load_builtins(kind)
    table = _REGISTRY.get(kind, {})
    if name not in table:
        known = ", ".join(sorted(table)) or "none"
        raise ConfigError(f"unknown {kind} '{name}' (known: {known})")
    return table[name]


def names(kind: str) -> list[str]:
    _load_builtins(kind)
    return sorted(_REGISTRY.get(kind, {}))


def kinds() -> list[str]:
    _load_builtins()
    return sorted(_REGISTRY)


def describe(kind: str, name: str) -> str:
    """First line of the registered object's docstring."""
    doc = (get(kind, name).__doc__ or "").strip()
    return doc.splitlines()[0] if doc else ""


# Where the built-in entries of each kind are registered. The registry sits at the bottom of
# the package, so it names these modules instead of importing them: they import it. A lookup
# loads only its own kind's modules, so a config can check a family name while the config
# module itself is still being imported.
BUILTINS = {
    "family": ("doublebind.world.tasks",),
    "behavior": ("doublebind.world.behaviors",),
    "scorer": ("doublebind.evals.scorers",),
    "technique": ("doublebind.techniques",),
    "config": ("doublebind.llm.config", "doublebind.posttrain", "doublebind.benign"),
    "organism": ("doublebind.organisms.domain", "doublebind.llm.organism", "doublebind.posttrain",
                 "doublebind.benign"),
}


_LOADED: set[str] = set()  # kinds whose modules were imported (a summary looks up names ~10^5 times)


def _load_builtins(kind: str | None = None) -> None:
    # Importing the modules runs their @register decorators. Once imported (or being imported:
    # a module partway through its own import is in sys.modules, and importing it again would
    # return it as it is) a kind's modules need no second look.
    for k, modules in BUILTINS.items():
        if (kind is None or k == kind) and k not in _LOADED:
            for module in modules:
                importlib.import_module(module)
            _LOADED.add(k)
