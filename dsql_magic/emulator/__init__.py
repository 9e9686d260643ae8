"""The embedded Aurora DSQL emulator: a local cluster speaking the PostgreSQL wire protocol.

``from dsql_magic.emulator import Emulator`` is the Python API (`api.Emulator`); ``dsql-emulator
serve`` the command line (`cli`). Names are resolved lazily so that importing this package (which
every ``dsql_magic.emulator.*`` import does) loads nothing heavy.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .api import Emulator, EmulatorError, EmulatorInfo
    from .config import EmulatorConfig

__all__ = ["Emulator", "EmulatorConfig", "EmulatorError", "EmulatorInfo"]

_LAZY = {
    "Emulator": "api",
    "EmulatorError": "api",
    "EmulatorInfo": "api",
    "EmulatorConfig": "config",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(f"{__name__}.{module}"), name)
