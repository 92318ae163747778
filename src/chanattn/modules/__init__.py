"""The attention modules. Each file implements one paper and registers its modules on import;
every file in this package is imported here, so a new module needs no other edit."""

from __future__ import annotations

import importlib
import pkgutil

for _info in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
    if not _info.name.startswith("_"):
        importlib.import_module(f"{__name__}.{_info.name}")

# The fast implementations of their formulas register themselves once the classes exist.
importlib.import_module("chanattn.fast")._register_builtin()
