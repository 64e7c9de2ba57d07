"""The techniques of the distillation double bind, one module each, registered by name.

`doublebind ls techniques` lists them; a recipe composes them under `stages:`.
"""

import importlib
import pkgutil

# Import every technique module so its @technique decorator registers it.
for _mod in pkgutil.iter_modules(__path__):
    if _mod.name != "base":
        importlib.import_module(f"{__name__}.{_mod.name}")
