"""Conflict injection: make chosen transactions fail at COMMIT with OC000, on purpose.

Retry logic is only tested when conflicts happen, and real conflicts need real races. This
module decides, deterministically from a seed, which committing transactions get a conflict:
by table (only writers of these tables) and by rate (this fraction of them). The decision is
made at COMMIT, so an injected conflict looks to the client exactly like a real one.

Set at start (``dsql-emulator serve --inject-conflicts "rate=0.3,table=accounts,seed=7"``, parsed
by `parse_spec`) and at run time from any connection::

    SELECT sys.inject_conflicts(0.3, 'accounts', 7);   -- rate, tables (comma list or NULL), seed
    SELECT sys.inject_conflicts(0);                     -- off
    SELECT sys.inject_conflicts();                      -- the settings, and how many so far

The OCC hook answers that call (it never reaches PostgreSQL). This module holds the settings and
the draws only: no SQL, no session, no I/O.
"""

from __future__ import annotations

import random
import threading
from collections.abc import Iterable
from dataclasses import dataclass


class InjectionSpecError(ValueError):
    """A conflict-injection setting that cannot be understood; the message says the format."""


SPEC_HELP = (
    "use comma-separated key=value pairs: rate=0.2 (0..1), table=NAME (repeatable), seed=N; "
    'e.g. "rate=0.2,table=accounts,seed=7"'
)


@dataclass(frozen=True)
class InjectionSettings:
    """Which writers conflict: ``tables`` (empty: any table) and ``rate`` (0 is off)."""

    rate: float = 0.0
    tables: frozenset[str] = frozenset()
    seed: int | None = None

    @property
    def enabled(self) -> bool:
        return self.rate > 0.0

    def describe(self) -> str:
        if not self.enabled:
            return "conflict injection off"
        where = ", ".join(sorted(self.tables)) if self.tables else "any table"
        seed = "" if self.seed is None else f", seed {self.seed}"
        return f"conflict injection: rate {self.rate:g} on {where}{seed}"


def _norm(table: str) -> str:
    name = table.strip().strip('"').lower()
    return name.removeprefix("public.")


def make_settings(
    rate: float, tables: Iterable[str] = (), seed: int | None = None
) -> InjectionSettings:
    """Validated settings. Tables are compared without ``public.`` and case-insensitively."""
    if not 0.0 <= rate <= 1.0:
        raise InjectionSpecError(f"rate {rate} is out of range: {SPEC_HELP}")
    names = frozenset(_norm(t) for t in tables if t.strip())
    return InjectionSettings(float(rate), names, seed)


def parse_spec(spec: str) -> InjectionSettings:
    """Parse the ``--inject-conflicts`` value. A table without a rate means every writer of it."""
    rate: float | None = None
    tables: list[str] = []
    seed: int | None = None
    for part in (p.strip() for p in spec.split(",")):
        if not part:
            continue
        key, sep, value = part.partition("=")
        key = key.strip().lower()
        if not sep:
            raise InjectionSpecError(f"{part!r} is not key=value: {SPEC_HELP}")
        try:
            if key == "rate":
                rate = float(value)
            elif key in ("table", "tables"):
                tables.extend(value.split("|"))
            elif key == "seed":
                seed = int(value)
            else:
                raise InjectionSpecError(f"unknown key {key!r}: {SPEC_HELP}")
        except ValueError as exc:
            if isinstance(exc, InjectionSpecError):
                raise
            raise InjectionSpecError(f"bad value in {part!r}: {SPEC_HELP}") from exc
    if rate is None:
        rate = 1.0 if tables else 0.0
    return make_settings(rate, tables, seed)


class Injector:
    """Draws conflicts for committing transactions, reproducibly for a given seed."""

    def __init__(self, settings: InjectionSettings | None = None) -> None:
        self._lock = threading.Lock()
        self.configure(settings or InjectionSettings())
        self.injected = 0

    def configure(self, settings: InjectionSettings) -> None:
        """Replace the settings and restart the draws from the seed."""
        with self._lock:
            self.settings = settings
            self._random = random.Random(settings.seed)

    def should_conflict(self, tables_written: Iterable[str]) -> bool:
        """Whether a transaction that wrote these tables fails at COMMIT."""
        settings = self.settings
        if not settings.enabled:
            return False
        written = {_norm(t) for t in tables_written}
        if not written:
            return False
        if settings.tables and not (written & settings.tables):
            return False
        with self._lock:
            hit = settings.rate >= 1.0 or self._random.random() < settings.rate
            if hit:
                self.injected += 1
            return hit
