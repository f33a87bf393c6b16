"""Drop-in replacements for the packages idemp replaces, backed by its Rust core.

========================================  ==================================
original (PyPI)                           drop-in
========================================  ==================================
``agentidemp-py`` 0.1.0 (``agentidemp``)  :mod:`idemp.compat.agentidemp`
``llm-message-hash-py`` 0.1.0             :mod:`idemp.compat.llm_message_hash`
``idempotency`` 0.1.0                     :mod:`idemp.compat.idempotency`
========================================  ==================================

Move by changing one import (``from idemp.compat.agentidemp import sha256_hex``), or
keep every import as it is and call :func:`install` once at start-up::

    import idemp.compat
    idemp.compat.install()          # `import agentidemp` etc. now give the drop-ins

Each passes its original package's own test suite unchanged.
"""

from __future__ import annotations

import importlib
import pkgutil
import sys

__all__ = ["ALIASES", "install"]

#: Original import name -> drop-in module.
ALIASES: dict[str, str] = {
    "agentidemp": "idemp.compat.agentidemp",
    "llm_message_hash": "idemp.compat.llm_message_hash",
    "idempotency": "idemp.compat.idempotency",
}


def install(*names: str) -> None:
    """Makes ``import NAME`` (and ``import NAME.sub``) give the drop-in, for the
    given original names (default: all three). Every submodule is registered too, so
    ``from idempotency.stores import FileStore`` and ``idempotency.stores.FileStore``
    are the same class."""
    for name in names or tuple(ALIASES):
        target = ALIASES.get(name)
        if target is None:
            raise ValueError(f"no drop-in for {name!r} (known: {', '.join(ALIASES)})")
        module = importlib.import_module(target)
        sys.modules[name] = module
        for info in pkgutil.walk_packages(module.__path__, target + "."):
            sub = importlib.import_module(info.name)
            sys.modules[name + info.name[len(target):]] = sub
