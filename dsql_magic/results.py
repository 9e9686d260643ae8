"""Query results as DataFrames with faithful dtypes, and their display (limit, notes, tags).

Conversion is column-wise by PostgreSQL type OID, so a column's dtype depends on its SQL type and
never on whether it happens to contain NULLs: integers are nullable ``Int64``, booleans
``boolean``, ``timestamptz`` timezone-aware UTC, ``timestamp`` naive, ``interval`` timedelta,
``numeric`` ``Decimal`` (or float64 with ``numeric_as="float"``), ``uuid`` `uuid.UUID` objects,
text pandas' string dtype.

`DsqlFrame` is a pandas DataFrame that remembers the display limit and the notes of the cell
that made it (retries, command tags of later statements) and shows them; everything derived
from it (slices, copies, arithmetic) is a plain DataFrame. Display objects carry both
``_repr_html_`` and ``__repr__``. This module never prints and never touches a connection.
"""

from __future__ import annotations

import html
from collections.abc import Sequence
from dataclasses import dataclass, field
from operator import itemgetter
from typing import Any, ClassVar, cast

import numpy as np
import pandas as pd

# PostgreSQL type OIDs (pg_type.dat); stable across versions.
BOOL, BYTEA, INT8, INT2, INT4, OID = 16, 17, 20, 21, 23, 26
FLOAT4, FLOAT8, NUMERIC = 700, 701, 1700
DATE, TIME, TIMESTAMP, TIMESTAMPTZ, INTERVAL = 1082, 1083, 1114, 1184, 1186
_INTEGERS = frozenset({INT2, INT4, INT8, OID})
_FLOATS = frozenset({FLOAT4, FLOAT8})
NUMERIC_AS = ("decimal", "float")
_UTC = pd.DatetimeTZDtype(unit="us", tz="UTC")
_SMALL = 10_000  # below this many rows, fixed per-column costs dominate


@dataclass(frozen=True)
class Column:
    name: str
    type_oid: int


def _column(rows: Sequence[tuple[Any, ...]], i: int, dtype: Any) -> np.ndarray:
    """Column ``i`` of ``rows`` as a 1-D array (``fromiter`` never reads values as sequences)."""
    return np.fromiter(map(itemgetter(i), rows), dtype=dtype, count=len(rows))


def _convert(rows: Sequence[tuple[Any, ...]], i: int, oid: int, numeric_as: str) -> Any:
    """Column ``i`` converted by its type OID (fast path first, NULL-aware path on failure)."""
    n = len(rows)
    if oid in _INTEGERS:
        try:
            ints = _column(rows, i, np.int64)
        except TypeError:  # NULLs
            return pd.array(_column(rows, i, object), dtype="Int64")
        return pd.arrays.IntegerArray(ints, np.zeros(n, dtype=np.bool_))
    if oid in _FLOATS or (oid == NUMERIC and numeric_as == "float"):
        try:
            return _column(rows, i, np.float64)
        except TypeError:  # NULLs become NaN
            values = _column(rows, i, object)
            return np.array([np.nan if v is None else float(v) for v in values], np.float64)
    values = _column(rows, i, object)
    if oid == BOOL:
        if n and None not in values:
            return pd.arrays.BooleanArray(values.astype(np.bool_), np.zeros(n, dtype=np.bool_))
        return pd.array(values, dtype="boolean")
    if oid == TIMESTAMPTZ:
        if n < _SMALL:  # the extension-array constructor has less fixed cost
            return cast(Any, pd.arrays.DatetimeArray)._from_sequence(values, dtype=_UTC)
        # cache=False: result timestamps are mostly distinct, so pandas' cache only costs.
        return pd.to_datetime(values, utc=True, cache=False)
    if oid == TIMESTAMP:
        return pd.to_datetime(values, cache=False)
    if oid == INTERVAL:
        return pd.to_timedelta(values)
    return values


def to_dataframe(
    columns: Sequence[Column],
    rows: Sequence[tuple[Any, ...]],
    *,
    numeric_as: str = "decimal",
    cls: type[pd.DataFrame] = pd.DataFrame,
) -> pd.DataFrame:
    """A DataFrame (of class ``cls``) from rows as psycopg returns them, typed by column OIDs."""
    if not columns:
        return cls()
    arrays = [_convert(rows, i, col.type_oid, numeric_as) for i, col in enumerate(columns)]
    names = [c.name for c in columns]
    index = pd.RangeIndex(len(rows))
    if len(set(names)) == len(names):
        return cls(dict(zip(names, arrays, strict=True)), index=index, copy=False)
    # Duplicate names (``SELECT 1 AS a, 2 AS a``): build by position, then name the columns.
    df = cls(dict(enumerate(arrays)), index=index, copy=False)
    df.columns = pd.Index(names, dtype=object)
    return df


def to_polars(columns: Sequence[Column], rows: Sequence[tuple[Any, ...]]) -> Any:
    """A polars DataFrame straight from the rows (polars types them; duplicate names get ``_N``)."""
    import polars as pl

    names: list[str] = []
    for col in columns:
        name, k = col.name, 1
        while name in names:
            name, k = f"{col.name}_{k}", k + 1
        names.append(name)
    data = {
        name: pl.Series(name, list(map(itemgetter(i), rows)), strict=False)
        for i, name in enumerate(names)
    }
    return pl.DataFrame(data)


class DsqlFrame(pd.DataFrame):
    """The DataFrame a cell returns: displays at most ``displaylimit`` rows, with its notes."""

    _metadata: ClassVar[list[str]] = ["_dsql_limit", "_dsql_notes"]

    @property
    def _constructor(self) -> type[pd.DataFrame]:
        # Anything derived from the cell's result is an ordinary DataFrame.
        return pd.DataFrame

    @classmethod
    def wrap(cls, df: pd.DataFrame, *, limit: int | None, notes: Sequence[str] = ()) -> DsqlFrame:
        out = df if isinstance(df, DsqlFrame) else cls(df, copy=False)
        object.__setattr__(out, "_dsql_limit", limit)
        object.__setattr__(out, "_dsql_notes", list(notes))
        return out

    def _limit(self) -> int | None:
        limit = getattr(self, "_dsql_limit", None)
        return limit if limit and len(self) > limit else None

    def _all_notes(self) -> list[str]:
        notes: list[str] = []
        limit = self._limit()
        if limit is not None:
            notes.append(f"showing {limit} of {len(self)} rows")
        notes.extend(getattr(self, "_dsql_notes", None) or [])
        return notes

    def _shown(self) -> pd.DataFrame:
        limit = self._limit()
        return pd.DataFrame(self.head(limit) if limit is not None else self, copy=False)

    def _repr_html_(self) -> str | None:
        shown: Any = self._shown()  # pandas-stubs does not declare _repr_html_
        inner = shown._repr_html_()
        if inner is None:
            return None
        notes = "".join(
            f'<p class="dsql-note" style="margin:2px 0;font-size:90%;color:#666">'
            f"{html.escape(n)}</p>"
            for n in self._all_notes()
        )
        return inner + notes

    def __repr__(self) -> str:
        text = repr(self._shown())
        notes = self._all_notes()
        return text + ("\n" + "\n".join(notes) if notes else "")


@dataclass
class CommandResult:
    """What a cell without a result set shows: its statements' command tags (``INSERT 0 3``)."""

    tags: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def __repr__(self) -> str:
        return "\n".join([*self.tags, *self.notes]) or "OK"

    def _repr_html_(self) -> str:
        lines = [html.escape(t) for t in self.tags] + [
            f'<span style="color:#666">{html.escape(n)}</span>' for n in self.notes
        ]
        return "<pre>" + "\n".join(lines or ["OK"]) + "</pre>"


@dataclass
class Message:
    """A short text shown as the output of a subcommand (``connected to …``)."""

    text: str

    def __repr__(self) -> str:
        return self.text

    def _repr_html_(self) -> str:
        return f"<pre>{html.escape(self.text)}</pre>"


def table(rows: Sequence[dict[str, Any]], empty: str) -> pd.DataFrame | Message:
    """Listing subcommands (connections, clusters) return a DataFrame, or a message when empty."""
    if not rows:
        return Message(empty)
    return pd.DataFrame(list(rows))
