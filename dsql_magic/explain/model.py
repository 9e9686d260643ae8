"""The plan model: what an EXPLAIN says, independent of how it was printed.

`PlanNode` and `Plan` are plain dataclasses filled by `parse.py` and read by the renderers, the
advice rules and the DPU ledger. This module must not parse, render, or touch a database; it only
holds the data and the small derived figures every renderer needs (time share, misestimates).
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Final, Literal

ConditionKind = Literal["index", "storage", "processor"]

#: Where each condition label of an EXPLAIN sits in DSQL's three filtering levels (manual
#: L2576-2590): index conditions limit what is read, storage ``Filters`` what is sent to compute,
#: and anything the query processor evaluates runs after all rows were transferred.
CONDITION_LABELS: Final[Mapping[str, ConditionKind]] = {
    "Index Cond": "index",
    "Filters": "storage",
    "Storage Filter": "storage",
    "Filter": "processor",
    "Join Filter": "processor",
    "Recheck Cond": "processor",
    "Hash Cond": "processor",
    "Merge Cond": "processor",
}

#: The four figures of a ``Statement DPU Estimate`` block, in the manual's order.
DPU_KEYS: Final = ("compute", "read", "write", "total")

#: An estimate off by this factor or more (either way) is flagged as a misestimate.
MISESTIMATE_FACTOR: Final = 10.0


@dataclass(frozen=True)
class Condition:
    """One condition of a node and the level it runs at (`ConditionKind`)."""

    kind: ConditionKind
    text: str
    label: str = ""

    def __iter__(self) -> Iterator[str]:
        # Lets a condition unpack as the ``(kind, text)`` pair the issue specifies.
        yield self.kind
        yield self.text


@dataclass
class PlanNode:
    """One node of a plan tree; figures are None when the EXPLAIN did not print them."""

    node_type: str
    subtype: str | None = None  # "btree-table" in "Full Scan (btree-table)"
    relation: str | None = None  # for DSQL storage nodes: the table or index they read
    schema: str | None = None
    index: str | None = None
    alias: str | None = None
    startup_cost: float | None = None
    total_cost: float | None = None
    estimated_rows: float | None = None
    width: int | None = None
    actual_startup_ms: float | None = None
    actual_total_ms: float | None = None  # per loop, as PostgreSQL prints it
    actual_rows: float | None = None  # per loop, as PostgreSQL prints it
    loops: int | None = None
    never_executed: bool = False
    parent_relationship: str | None = None  # "InitPlan 1", "SubPlan 2", "Outer"…
    projections: tuple[str, ...] = ()
    output: tuple[str, ...] = ()
    conditions: list[Condition] = field(default_factory=list)
    properties: list[tuple[str, str]] = field(default_factory=list)
    children: list[PlanNode] = field(default_factory=list)
    id: int = 0  # pre-order position in its plan, 0 for the root

    @property
    def title(self) -> str:
        """The node as its header line names it, without the figures."""
        text = self.node_type + (f" ({self.subtype})" if self.subtype else "")
        if self.index and self.relation:
            text += f" using {self.index}"
        target = self.relation or self.index
        if target:
            schema = _quote(self.schema) + "." if self.schema else ""
            text += f" on {schema}{_quote(target)}"
            if self.alias and self.alias != target:
                text += f" {_quote(self.alias)}"
        return text

    def walk(self) -> Iterator[PlanNode]:
        """This node and every descendant, in pre-order."""
        stack = [self]
        while stack:
            node = stack.pop()
            yield node
            stack.extend(reversed(node.children))

    @property
    def inclusive_ms(self) -> float | None:
        """Time spent in this node and below, over all loops (None without ANALYZE timing)."""
        if self.actual_total_ms is None:
            return None
        return self.actual_total_ms * (self.loops or 1)

    @property
    def self_ms(self) -> float | None:
        """Time spent in this node alone: inclusive time minus its timed children's."""
        total = self.inclusive_ms
        if total is None:
            return None
        below = sum(c.inclusive_ms or 0.0 for c in self.children)
        return max(total - below, 0.0)

    @property
    def misestimate(self) -> float | None:
        """How far the row estimate was off (>= 1, either direction), or None if unknown."""
        if self.estimated_rows is None or self.actual_rows is None or self.never_executed:
            return None
        est = max(self.estimated_rows, 1.0)
        act = max(self.actual_rows, 1.0)
        return max(est / act, act / est)

    @property
    def misestimated(self) -> bool:
        ratio = self.misestimate
        return ratio is not None and ratio >= MISESTIMATE_FACTOR

    def conditions_of(self, kind: ConditionKind) -> list[str]:
        return [c.text for c in self.conditions if c.kind == kind]


_PLAIN_IDENT_RE: Final = re.compile(r"^[A-Za-z_][A-Za-z0-9_$]*$")


def _quote(name: str) -> str:
    """Quote an identifier the way EXPLAIN prints it when it is not a plain name."""
    if _PLAIN_IDENT_RE.match(name):
        return name
    return '"' + name.replace('"', '""') + '"'


@dataclass
class Plan:
    """A whole EXPLAIN: the tree plus the footer (timings, query id, DPU estimate)."""

    root: PlanNode
    source_format: Literal["text", "json"] = "text"
    dsql: bool = False  # printed by Aurora DSQL (or the emulator): storage nodes, DPU block…
    planning_ms: float | None = None
    execution_ms: float | None = None
    query_identifier: str | None = None
    #: The ``Statement DPU Estimate`` block: keys `DPU_KEYS`, a value None when its line is missing;
    #: the whole mapping is None when the plan has no DPU block.
    dpu: Mapping[str, float | None] | None = None
    #: ``(Transaction minimum: …)`` figures printed next to Read/Write, by key ("read", "write").
    dpu_minimums: Mapping[str, float] = field(default_factory=dict)
    footer: list[tuple[str, str]] = field(default_factory=list)

    def nodes(self) -> list[PlanNode]:
        """Every node in pre-order; ``nodes()[i].id == i``."""
        return list(self.root.walk())

    @property
    def analyzed(self) -> bool:
        """True when the plan carries actual figures (EXPLAIN ANALYZE)."""
        return any(n.actual_rows is not None or n.never_executed for n in self.root.walk())

    @property
    def total_ms(self) -> float | None:
        """The denominator of time shares: execution time, else the root's inclusive time."""
        if self.execution_ms is not None and self.execution_ms > 0:
            return self.execution_ms
        return self.root.inclusive_ms

    def time_share(self, node: PlanNode) -> float | None:
        """The fraction (0..1) of the statement's time spent in `node` alone."""
        total = self.total_ms
        own = node.self_ms
        if total is None or own is None or total <= 0:
            return None
        return min(own / total, 1.0)
