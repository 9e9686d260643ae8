"""dsql-magic: Jupyter magics, EXPLAIN widgets, DPU tracking and a local emulator for Aurora DSQL.

Loading the extension registers the magics and nothing else: no network, no credentials, no
emulator. Everything heavier happens on first use.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

__version__ = "0.1.0"

if TYPE_CHECKING:
    from IPython.core.interactiveshell import InteractiveShell


def load_ipython_extension(ipython: InteractiveShell) -> None:
    """Register ``%dsql`` / ``%%dsql`` (called by ``%load_ext dsql_magic``)."""
    from dsql_magic.magics import DsqlMagic

    ipython.register_magics(DsqlMagic)


def unload_ipython_extension(ipython: InteractiveShell) -> None:
    """Close every connection the magics opened (called by ``%unload_ext dsql_magic``)."""
    from dsql_magic.magics import DsqlMagic

    magics = ipython.magics_manager.registry.get("DsqlMagic")
    if isinstance(magics, DsqlMagic):
        magics.close_all()
