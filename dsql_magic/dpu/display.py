"""How DPU figures are shown: a quiet per-cell badge, the ledger table with a session summary, and
a bar chart of DPU per cell.

Display objects only (``_repr_html_`` plus a plain ``__repr__``); the chart is inline SVG so it
needs no plotting library and survives in saved notebooks. Nothing here runs SQL or calls AWS.
"""

from __future__ import annotations

from collections.abc import Sequence
from html import escape
from typing import Any, Final

import pandas as pd

from dsql_magic.dpu.ledger import LedgerEntry

COLOURS: Final = {"compute": "#4c78a8", "read": "#f58518", "write": "#54a24b"}
_QUIET: Final = "font-size: 11px; opacity: 0.65; font-family: ui-monospace, Menlo, monospace"


def _dpu(value: float) -> str:
    return f"{value:.5f}"


def _usd(value: float | None) -> str:
    if value is None:
        return ""
    return f"≈ ${value:.6f}" if value < 0.01 else f"≈ ${value:,.4f}"


class DpuBadge:
    """One line under a cell: its DPU, by source, and the estimated cost."""

    def __init__(self, entries: Sequence[LedgerEntry], price_per_dpu: float) -> None:
        self.entries = list(entries)
        self.price = price_per_dpu

    def _line(self, entry: LedgerEntry) -> str:
        if entry.figures is None:
            return f"DPU: pending from {entry.source} (arrives within minutes; %dsql dpu to see it)"
        f = entry.figures
        parts = [
            f"DPU {_dpu(f.sum)}",
            f"(compute {_dpu(f.compute)} · read {_dpu(f.read)} · write {_dpu(f.write)})",
        ]
        if self.price > 0:
            parts.append(_usd(entry.cost(self.price)))
        parts.append(f"· {entry.source}")
        if entry.note:
            parts.append(f"· {entry.note}")
        return " ".join(p for p in parts if p)

    def __repr__(self) -> str:
        return "\n".join(self._line(e) for e in self.entries)

    def _repr_html_(self) -> str:
        lines = "".join(
            f'<div class="dsql-dpu-badge" style="{_QUIET}">{escape(self._line(e))}</div>'
            for e in self.entries
        )
        return lines


class LedgerFrame(pd.DataFrame):
    """The ledger as a DataFrame (columns include compute, read, write, total), shown with the
    session summary under it."""

    _metadata = ["summary"]  # noqa: RUF012 - pandas' subclassing protocol

    @property
    def _constructor(self) -> Any:
        return LedgerFrame

    @classmethod
    def build(cls, frame: pd.DataFrame, summary: pd.DataFrame) -> LedgerFrame:
        out = cls(frame)
        out.summary = summary
        return out

    def _summary(self) -> pd.DataFrame:
        summary = getattr(self, "summary", None)
        return summary if isinstance(summary, pd.DataFrame) else pd.DataFrame()

    def _repr_html_(self) -> str | None:
        body = self.to_html(max_rows=60, na_rep="–")
        summary = self._summary()
        if summary.empty:
            return body + "<p><i>No DPU recorded yet in this session.</i></p>"
        note = (
            "<p style='opacity: 0.7'>Session totals per source; sources are never added "
            "together (the emulator meter is exact for the emulator, EXPLAIN figures are "
            "statement estimates, CloudWatch is cluster-wide per minute).</p>"
        )
        return f"{body}<p><b>Session summary</b></p>{summary.to_html(index=False)}{note}"

    def __repr__(self) -> str:
        summary = self._summary()
        tail = (
            "\n\nno DPU recorded yet in this session"
            if summary.empty
            else "\n\nsession summary (per source):\n" + summary.to_string(index=False)
        )
        return super().__repr__() + tail


class DpuPlot:
    """DPU per cell as stacked bars (compute, read, write), one panel per source, in SVG."""

    def __init__(self, frame: pd.DataFrame, width: int = 640, height: int = 180) -> None:
        self.frame = frame[frame["total"].notna()] if "total" in frame else frame
        self.width = width
        self.height = height

    def svg(self) -> str:
        frame = self.frame
        if frame.empty:
            return "<p><i>No DPU recorded yet in this session.</i></p>"
        panels = []
        for source, part in frame.groupby("source", sort=False):
            panels.append(self._panel(str(source), part))
        return "".join(panels)

    def _panel(self, source: str, part: pd.DataFrame) -> str:
        w, h, left, bottom, top = self.width, self.height, 56, 22, 22
        peak = float(part["total"].max()) or 1.0
        n = len(part)
        slot = (w - left - 8) / max(n, 1)
        bar = max(min(slot * 0.7, 40.0), 2.0)
        scale = (h - bottom - top) / peak
        shapes: list[str] = []
        for i, row in enumerate(part.to_dict("records")):
            x = left + i * slot + (slot - bar) / 2
            y: float = h - bottom
            for key in ("compute", "read", "write"):
                value = float(row.get(key) or 0.0)
                height = value * scale
                if height > 0:
                    y -= height
                    shapes.append(
                        f'<rect x="{x:.1f}" y="{y:.1f}" width="{bar:.1f}" height="{height:.1f}" '
                        f'fill="{COLOURS[key]}"><title>cell {row["cell"]}: {key} {value:.5f} DPU'
                        "</title></rect>"
                    )
            label = "" if pd.isna(row["cell"]) else str(row["cell"])
            shapes.append(
                f'<text x="{x + bar / 2:.1f}" y="{h - 6}" font-size="10" '
                f'text-anchor="middle">{escape(label)}</text>'
            )
        legend = " ".join(f'<tspan fill="{c}">■</tspan> {k}' for k, c in COLOURS.items())
        return (
            f'<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" '
            f'style="font-family: sans-serif" role="img" '
            f'aria-label="DPU per cell, {escape(source)}">'
            f'<text x="{left}" y="14" font-size="12">DPU per cell · {escape(source)} · {legend}'
            "</text>"
            f'<text x="{left - 4}" y="{top + 4}" font-size="10" text-anchor="end">'
            f"{peak:.4f}</text>"
            f'<text x="{left - 4}" y="{h - bottom}" font-size="10" text-anchor="end">0</text>'
            f'<line x1="{left}" y1="{h - bottom}" x2="{w - 8}" y2="{h - bottom}" '
            'stroke="currentColor" stroke-opacity="0.4"/>'
            f"{''.join(shapes)}</svg>"
        )

    def _repr_html_(self) -> str:
        return self.svg()

    def __repr__(self) -> str:
        frame = self.frame
        if frame.empty:
            return "no DPU recorded yet in this session"
        lines = ["DPU per cell (compute/read/write):"]
        peak = float(frame["total"].max()) or 1.0
        for row in frame.to_dict("records"):
            total = float(row["total"])
            bar = "#" * max(1, round(40 * total / peak))
            lines.append(f"cell {row['cell']!s:>5} {total:.5f} {bar}  ({row['source']})")
        return "\n".join(lines)
