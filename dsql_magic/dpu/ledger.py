"""The DPU ledger: one entry per cell that touched DSQL, with its figures and where they came from.

A plain model. The sources (`sources.py`) produce `DpuFigures`; the magic records them here;
`display.py` shows them. Figures from different sources mean different things (an exact meter of
the emulator, a statement estimate, cluster-wide CloudWatch minutes), so every entry carries its
`source` label and `cluster_wide` flag, and totals are kept per source, never mixed. This module
runs no SQL, calls no AWS API and displays nothing.
"""

from __future__ import annotations

import datetime as dt
import itertools
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Final

if TYPE_CHECKING:
    import pandas as pd

#: Source labels, as shown next to every figure.
EMULATOR: Final = "emulator meter"
EXPLAIN: Final = "EXPLAIN ANALYZE VERBOSE estimate"
CLOUDWATCH: Final = "CloudWatch (cluster-wide)"

COLUMNS: Final = (
    "cell",
    "statements",
    "compute",
    "read",
    "write",
    "total",
    "cost_usd",
    "source",
    "connection",
    "sql",
    "at",
)

Clock = Callable[[], dt.datetime]


def _utcnow() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


@dataclass(frozen=True)
class DpuFigures:
    """Compute, Read, Write and Total DPU; Total is the sum unless the source reported it."""

    compute: float = 0.0
    read: float = 0.0
    write: float = 0.0
    total: float | None = None

    def __post_init__(self) -> None:
        if self.total is None:
            object.__setattr__(self, "total", self.compute + self.read + self.write)

    @property
    def sum(self) -> float:
        return float(self.total or 0.0)

    def __add__(self, other: DpuFigures) -> DpuFigures:
        return DpuFigures(
            self.compute + other.compute,
            self.read + other.read,
            self.write + other.write,
            self.sum + other.sum,
        )


@dataclass(frozen=True)
class LedgerEntry:
    """One cell's DPU as one source saw it. ``figures`` is None while CloudWatch lags."""

    id: int
    cell: int | None
    statements: int
    source: str
    figures: DpuFigures | None
    started: dt.datetime
    ended: dt.datetime
    connection: str | None = None
    sql: str = ""
    cluster_wide: bool = False
    note: str = ""

    @property
    def pending(self) -> bool:
        return self.figures is None

    def cost(self, price_per_dpu: float) -> float | None:
        """Estimated cost in USD at `price_per_dpu` (None when the figures are not in yet)."""
        return None if self.figures is None else self.figures.sum * price_per_dpu


@dataclass
class DpuLedger:
    """Every cell's DPU entries, in the order they were recorded."""

    clock: Clock = _utcnow
    entries: list[LedgerEntry] = field(default_factory=list)
    _ids: Iterator[int] = field(default_factory=lambda: itertools.count(1), repr=False)

    def record(
        self,
        *,
        source: str,
        figures: DpuFigures | None,
        cell: int | None = None,
        statements: int = 1,
        started: dt.datetime | None = None,
        ended: dt.datetime | None = None,
        connection: str | None = None,
        sql: str = "",
        cluster_wide: bool = False,
        note: str = "",
    ) -> LedgerEntry:
        now = self.clock()
        entry = LedgerEntry(
            id=next(self._ids),
            cell=cell,
            statements=statements,
            source=source,
            figures=figures,
            started=started or now,
            ended=ended or now,
            connection=connection,
            sql=_short_sql(sql),
            cluster_wide=cluster_wide,
            note=note,
        )
        self.entries.append(entry)
        return entry

    def fill(self, entry_id: int, figures: DpuFigures, note: str | None = None) -> LedgerEntry:
        """Fill in a pending entry (CloudWatch figures that arrived later)."""
        for i, entry in enumerate(self.entries):
            if entry.id == entry_id:
                changed = replace(entry, figures=figures, note=entry.note if note is None else note)
                self.entries[i] = changed
                return changed
        raise KeyError(entry_id)

    def renumber(self, entry_ids: set[int], cell: int) -> list[LedgerEntry]:
        """Give these entries their cell's number, once IPython has settled it."""
        changed = []
        for i, entry in enumerate(self.entries):
            if entry.id in entry_ids and entry.cell != cell:
                self.entries[i] = replace(entry, cell=cell)
            if entry.id in entry_ids:
                changed.append(self.entries[i])
        return changed

    def pending(self) -> list[LedgerEntry]:
        return [e for e in self.entries if e.pending]

    def clear(self) -> None:
        self.entries.clear()

    def totals(self) -> dict[str, DpuFigures]:
        """Session totals per source (figures from different sources are never added up)."""
        out: dict[str, DpuFigures] = {}
        for entry in self.entries:
            if entry.figures is not None:
                out[entry.source] = out.get(entry.source, DpuFigures()) + entry.figures
        return out

    def frame(self, price_per_dpu: float) -> pd.DataFrame:
        """The ledger as a DataFrame: one row per entry, columns `COLUMNS`."""
        import pandas as pd

        rows = []
        for e in self.entries:
            f = e.figures
            rows.append(
                {
                    "cell": e.cell,
                    "statements": e.statements,
                    "compute": None if f is None else f.compute,
                    "read": None if f is None else f.read,
                    "write": None if f is None else f.write,
                    "total": None if f is None else f.sum,
                    "cost_usd": e.cost(price_per_dpu),
                    "source": e.source,
                    "connection": e.connection,
                    "sql": e.sql,
                    "at": e.started,
                }
            )
        df = pd.DataFrame(rows, columns=list(COLUMNS))
        for column in ("compute", "read", "write", "total", "cost_usd"):
            df[column] = df[column].astype("float64")
        df["cell"] = df["cell"].astype("Int64")
        return df

    def summary(self, price_per_dpu: float) -> pd.DataFrame:
        """Session totals: one row per source, with entry counts and estimated cost."""
        import pandas as pd

        counts: dict[str, int] = {}
        for e in self.entries:
            if e.figures is not None:
                counts[e.source] = counts.get(e.source, 0) + 1
        rows = [
            {
                "source": source,
                "entries": counts[source],
                "compute": f.compute,
                "read": f.read,
                "write": f.write,
                "total": f.sum,
                "cost_usd": f.sum * price_per_dpu,
            }
            for source, f in self.totals().items()
        ]
        columns = ["source", "entries", "compute", "read", "write", "total", "cost_usd"]
        return pd.DataFrame(rows, columns=columns)


def _short_sql(sql: str, limit: int = 60) -> str:
    text = " ".join(sql.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"
