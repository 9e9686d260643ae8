"""Read an EXPLAIN, in any of the shapes users meet, into the plan model.

Accepted: Aurora DSQL's text (also as quoted in the manual, with its wrapped lines and rulers), the
emulator's, PostgreSQL's text, ``FORMAT JSON`` from either (as a string or already decoded), and the
rows a cursor returns for an EXPLAIN. Anything else raises `PlanParseError`, a `ValueError` with a
message saying what to paste instead; no other exception escapes `parse_plan`.

This module is pure: no database, no rendering, no I/O.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping, Sequence
from typing import Any, Final

from dsql_magic.explain.model import CONDITION_LABELS, DPU_KEYS, Condition, Plan, PlanNode

__all__ = ["PlanParseError", "parse_plan"]

#: JSON plans deeper than this are refused (a real plan is a few dozen levels at most).
MAX_DEPTH: Final = 500

_HINT: Final = "Pass the whole output of EXPLAIN (text or FORMAT JSON), one plan per call."

#: Node types that only Aurora DSQL prints; seeing one marks the plan as DSQL's.
DSQL_NODE_TYPES: Final = frozenset(
    {"Full Scan", "Storage Scan", "B-Tree Scan", "Storage Lookup", "B-Tree Lookup"}
)

#: DSQL's storage-layer nodes, which read one storage object (a table or an index).
_STORAGE_NODE_TYPES: Final = DSQL_NODE_TYPES - {"Full Scan"}

#: Node types a plan may start with when costs are off (``EXPLAIN (COSTS OFF)``).
_KNOWN_ROOT_WORDS: Final = frozenset(
    {
        "Aggregate", "Append", "Bitmap", "B-Tree", "CTE", "Custom", "Delete", "Foreign",
        "Full", "Function", "Gather", "Group", "GroupAggregate", "Hash", "HashAggregate",
        "Incremental", "Index", "Insert", "Limit", "LockRows", "Materialize", "Memoize",
        "Merge", "MixedAggregate", "Named", "Nested", "Parallel", "ProjectSet", "Recursive",
        "Result", "Sample", "Seq", "SetOp", "Sort", "Storage", "Subquery", "Table", "Tid",
        "Unique", "Update", "Values", "WindowAgg", "WorkTable",
    }
)  # fmt: skip

_FOOTER_KEYS: Final = (
    "Planning Time",
    "Execution Time",
    "Query Identifier",
    "Statement DPU Estimate",
    "Planning",
    "Serialization",
    "JIT",
    "Settings",
    "Trigger",
)
_FOOTER_RE: Final = re.compile(
    r"^\s*(?P<key>"
    + "|".join(re.escape(k) for k in _FOOTER_KEYS)
    + r")(?P<rest>[^:]*):(?P<value>.*)$"
)
_DPU_LINE_RE: Final = re.compile(
    r"^\s*(?P<key>Compute|Read|Write|Total|MultiRegionWrite|Multi-Region Write)\s*:\s*"
    r"(?P<value>[0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?)\s*(?:DPU)?"
    r"(?:\s*\(\s*Transaction minimum:\s*(?P<min>[0-9]*\.?[0-9]+)\s*\))?\s*$",
    re.IGNORECASE,
)
_NUM: Final = r"[-+]?[0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?"
_COST_RE: Final = re.compile(
    rf"\(cost=(?P<sc>{_NUM})\.\.(?P<tc>{_NUM})\s+rows=(?P<rows>{_NUM})\s+width=(?P<width>\d+)\)"
)
_ACTUAL_RE: Final = re.compile(
    rf"\(actual\s+(?:time=(?P<st>{_NUM})\.\.(?P<tt>{_NUM})\s+)?rows=(?P<rows>{_NUM})"
    rf"\s+loops=(?P<loops>\d+)\)"
)
_NEVER_RE: Final = re.compile(r"\(never executed\)")
_FIGURES_START_RE: Final = re.compile(r"\s*\((?:cost=|actual\b|never executed\))")
_WRAPPED_CONT_RE: Final = re.compile(r"^\s*(?:\(actual\b|\(cost=|rows=|width=|time=|loops=)")
_OPEN_FIGURES_RE: Final = re.compile(r"\((?:cost=|actual\b)[^)]*$")
_RULER_RE: Final = re.compile(r"^\s*-{3,}\s*$")
_ROWCOUNT_RE: Final = re.compile(r"^\s*\(\d+ rows?\)\s*$")
_HEAD_RE: Final = re.compile(
    r"^(?P<type>.+?)(?:\s+\((?P<sub>[^()]*)\))?(?:\s+using\s+(?P<index>\S+))?(?:\s+on\s+(?P<rel>.+))?$"
)
_IDENT: Final = r'(?:"(?:[^"]|"")*"|[^\s."]+)'
_QUALIFIED_RE: Final = re.compile(
    rf"^(?P<name>{_IDENT}(?:\.{_IDENT})*)(?:\s+(?P<alias>{_IDENT}))?$"
)
_IDENT_RE: Final = re.compile(_IDENT)
_LABEL_RE: Final = re.compile(r"^(?:SubPlan|InitPlan|CTE)\b")
_PROPERTY_RE: Final = re.compile(r"^(?P<key>[A-Za-z][A-Za-z0-9 _/().-]*?):\s?(?P<value>.*)$")


class PlanParseError(ValueError):
    """The input is not an EXPLAIN plan this parser can read."""


def parse_plan(source: object) -> Plan:
    """Parse EXPLAIN output (text, JSON text, decoded JSON, or cursor rows) into a `Plan`."""
    try:
        return _parse_any(source)
    except PlanParseError:
        raise
    except RecursionError:
        raise PlanParseError(f"This plan is nested too deeply to read. {_HINT}") from None


def _parse_any(source: object) -> Plan:
    if isinstance(source, bytes | bytearray | memoryview):
        try:
            source = bytes(source).decode("utf-8")
        except UnicodeDecodeError:
            raise PlanParseError(f"EXPLAIN output must be UTF-8 text. {_HINT}") from None
    if isinstance(source, str):
        stripped = source.strip()
        if stripped[:1] in ("[", "{"):
            try:
                decoded = json.loads(stripped)
            except (ValueError, RecursionError) as exc:
                raise PlanParseError(
                    f"This looks like JSON but does not decode ({_short(str(exc))}). {_HINT}"
                ) from None
            return _parse_json(decoded)
        return _parse_text(source)
    if isinstance(source, Mapping):
        return _parse_json(source)
    if isinstance(source, Sequence):
        return _parse_rows(source)
    raise PlanParseError(f"Cannot read a plan from a {type(source).__name__}. {_HINT}")


def _parse_rows(rows: Sequence[Any]) -> Plan:
    """Cursor rows: one text line per row, or one row holding the JSON document."""
    items = [r[0] if isinstance(r, tuple | list) and len(r) == 1 else r for r in rows]
    if items and all(isinstance(i, str) for i in items):
        if len(items) == 1 and items[0].strip()[:1] in ("[", "{"):
            return _parse_any(items[0])
        return _parse_text("\n".join(items))
    if len(items) == 1 and isinstance(items[0], Mapping | list):
        return _parse_json(items[0])
    if items and all(isinstance(i, Mapping) for i in items):
        return _parse_json(list(items))
    raise PlanParseError(f"Cannot read a plan from these rows. {_HINT}")


# --------------------------------------------------------------------------------------------- text


def _logical_lines(text: str) -> list[str]:
    """Drop rulers and headers; rejoin node lines that a PDF or a narrow terminal wrapped."""
    out: list[str] = []
    for raw in text.splitlines():
        line = raw.rstrip()
        if not line.strip() or _RULER_RE.match(line) or _ROWCOUNT_RE.match(line):
            continue
        if line.strip() == "QUERY PLAN":
            continue
        if out and (_OPEN_FIGURES_RE.search(out[-1]) or _is_wrapped_figures(out[-1], line)):
            out[-1] = out[-1] + " " + line.strip()
            continue
        out.append(line)
    return out


def _is_wrapped_figures(previous: str, line: str) -> bool:
    if not _WRAPPED_CONT_RE.match(line):
        return False
    # Only a node header continues on a figures line.
    return bool(_COST_RE.search(previous) or previous.lstrip().startswith("->"))


def _parse_text(text: str) -> Plan:
    lines = _logical_lines(text)
    if not lines:
        raise PlanParseError(f"The EXPLAIN output is empty. {_HINT}")
    first = lines[0].strip()
    if first.startswith("->"):
        first = first[2:].strip()
    if not _looks_like_root(first):
        raise PlanParseError(
            f"This does not look like an EXPLAIN plan: its first line {_short(first)!r} is not "
            f"a plan node. {_HINT}"
        )
    root = _parse_header(first)
    plan = Plan(root=root, source_format="text")
    stack: list[tuple[int, PlanNode]] = [(-1, root)]
    pending_label: str | None = None
    in_footer = False
    footer_block: str | None = None
    for line in lines[1:]:
        footer = _FOOTER_RE.match(line)
        if footer and not line.lstrip().startswith("->"):
            in_footer = True
            footer_block = _read_footer(plan, footer)
            continue
        if in_footer:
            _read_footer_line(plan, line, footer_block)
            continue
        body = line.lstrip()
        if body.startswith("->"):
            column = len(line) - len(body)
            while len(stack) > 1 and stack[-1][0] >= column:
                stack.pop()
            node = _parse_header(body[2:].strip())
            if pending_label is not None:
                node.parent_relationship, pending_label = pending_label, None
            stack[-1][1].children.append(node)
            stack.append((column, node))
            continue
        if _LABEL_RE.match(body) and ":" not in body:
            pending_label = body
            continue
        _add_property(stack[-1][1], body)
    return _finish(plan)


def _looks_like_root(line: str) -> bool:
    if _COST_RE.search(line) or _ACTUAL_RE.search(line) or _NEVER_RE.search(line):
        return True
    word = line.split(" ", 1)[0]
    return word in _KNOWN_ROOT_WORDS and not _PROPERTY_RE.match(line)


def _parse_header(line: str) -> PlanNode:
    start = _FIGURES_START_RE.search(line)
    head = line[: start.start()].strip() if start else line.strip()
    node = _node_from_head(head or line.strip())
    cost = _COST_RE.search(line)
    if cost:
        node.startup_cost = _float(cost["sc"])
        node.total_cost = _float(cost["tc"])
        node.estimated_rows = _float(cost["rows"])
        node.width = int(cost["width"])
    actual = _ACTUAL_RE.search(line)
    if actual:
        if actual["st"] is not None:
            node.actual_startup_ms = _float(actual["st"])
            node.actual_total_ms = _float(actual["tt"])
        node.actual_rows = _float(actual["rows"])
        node.loops = int(actual["loops"])
    if _NEVER_RE.search(line):
        # As FORMAT JSON says it: zero loops, zero rows.
        node.never_executed, node.loops, node.actual_rows = True, 0, 0.0
    return node


def _node_from_head(head: str) -> PlanNode:
    match = _HEAD_RE.match(head)
    if not match:  # pragma: no cover - the pattern accepts any non-empty text
        return PlanNode(node_type=head)
    node = PlanNode(node_type=match["type"].strip(), subtype=match["sub"], index=match["index"])
    if match["index"]:
        node.index = _unquote(match["index"])
    rel = match["rel"]
    if rel:
        schema, name, alias = _split_relation(rel.strip())
        if node.node_type == "Bitmap Index Scan" and not node.index:
            node.index = name
        else:
            node.schema, node.relation, node.alias = schema, name, alias
    return node


def _split_relation(text: str) -> tuple[str | None, str, str | None]:
    match = _QUALIFIED_RE.match(text)
    if not match:
        return None, text, None
    parts = [_unquote(p) for p in _IDENT_RE.findall(match["name"])]
    alias = _unquote(match["alias"]) if match["alias"] else None
    schema = ".".join(parts[:-1]) or None
    return schema, parts[-1], alias


def _unquote(ident: str) -> str:
    if len(ident) >= 2 and ident[0] == ident[-1] == '"':
        return ident[1:-1].replace('""', '"')
    return ident


def _add_property(node: PlanNode, body: str) -> None:
    match = _PROPERTY_RE.match(body)
    if not match:
        node.properties.append(("", body))
        return
    _set_property(node, match["key"].strip(), match["value"].strip())


def _set_property(node: PlanNode, key: str, value: str) -> None:
    node.properties.append((key, value))
    kind = CONDITION_LABELS.get(key)
    if kind is not None:
        node.conditions.append(Condition(kind=kind, text=value, label=key))
    elif key == "Projections":
        node.projections = tuple(_split_list(value))
    elif key == "Output":
        node.output = tuple(_split_list(value))


def _split_list(value: str) -> list[str]:
    """Split a comma list, keeping commas inside parentheses and quotes."""
    items: list[str] = []
    depth = 0
    quote: str | None = None
    current: list[str] = []
    for ch in value:
        if quote:
            if ch == quote:
                quote = None
        elif ch in "'\"":
            quote = ch
        elif ch == "(":
            depth += 1
        elif ch == ")":
            depth = max(depth - 1, 0)
        elif ch == "," and depth == 0:
            items.append("".join(current).strip())
            current = []
            continue
        current.append(ch)
    tail = "".join(current).strip()
    if tail:
        items.append(tail)
    return [i for i in items if i]


def _read_footer(plan: Plan, match: re.Match[str]) -> str | None:
    """Record one footer line; return the block name when the lines after it belong to it."""
    key = (match["key"] + match["rest"]).strip()
    value = match["value"].strip()
    if key == "Statement DPU Estimate":
        plan.dpu = dict.fromkeys(DPU_KEYS)
        plan.dsql = True
        return key
    plan.footer.append((key, value))
    if key == "Planning Time":
        plan.planning_ms = _ms(value)
    elif key == "Execution Time":
        plan.execution_ms = _ms(value)
    elif key == "Query Identifier":
        plan.query_identifier = value
    return key if not value else None


def _read_footer_line(plan: Plan, line: str, block: str | None) -> None:
    dpu = _DPU_LINE_RE.match(line)
    if block == "Statement DPU Estimate" and dpu and plan.dpu is not None:
        key = dpu["key"].lower().replace("-", "").replace(" ", "")
        key = "multiregionwrite" if key == "multiregionwrite" else key
        assert isinstance(plan.dpu, dict)
        plan.dpu[key] = _float(dpu["value"])
        if dpu["min"] is not None:
            assert isinstance(plan.dpu_minimums, dict)
            plan.dpu_minimums[key] = _float(dpu["min"])
        return
    plan.footer.append((block or "", line.strip()))


def _ms(value: str) -> float | None:
    match = re.match(rf"^\s*({_NUM})\s*ms\s*$", value)
    return _float(match[1]) if match else None


def _float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise PlanParseError(f"The plan holds a figure that is not a finite number: {text!r}.")
    return value


# --------------------------------------------------------------------------------------------- JSON

_JSON_NODE_FIELDS: Final = frozenset(
    {
        "Node Type", "Relation Name", "Schema", "Alias", "Index Name", "Startup Cost",
        "Total Cost", "Plan Rows", "Plan Width", "Actual Startup Time", "Actual Total Time",
        "Actual Rows", "Actual Loops", "Output", "Projections", "Parent Relationship",
        "Subplan Name", "Plans",
    }
)  # fmt: skip


def _parse_json(doc: object) -> Plan:
    if isinstance(doc, list):
        if len(doc) != 1:
            raise PlanParseError(
                f"A JSON plan is a list with exactly one object; this one has {len(doc)} items. "
                f"{_HINT}"
            )
        doc = doc[0]
    if not isinstance(doc, Mapping):
        raise PlanParseError(f"A JSON plan must be an object with a 'Plan' key. {_HINT}")
    top: Mapping[str, Any] = doc
    node_doc = top.get("Plan", top if "Node Type" in top else None)
    if not isinstance(node_doc, Mapping):
        raise PlanParseError(f"This JSON has no 'Plan' object. {_HINT}")
    plan = Plan(root=_json_node(node_doc, 0), source_format="json")
    for key, value in top.items():
        if key == "Plan" or not isinstance(key, str):
            continue
        if key == "Planning Time":
            plan.planning_ms = _json_num(value, key)
        elif key == "Execution Time":
            plan.execution_ms = _json_num(value, key)
        elif key == "Query Identifier":
            plan.query_identifier = str(value)
        elif key.lower() in ("statement dpu estimate", "dpu estimate", "dpu"):
            _json_dpu(plan, value)
            continue
        elif "Node Type" in top:
            continue
        plan.footer.append((key, _json_text(value)))
    return _finish(plan)


def _json_node(doc: Mapping[str, Any], depth: int) -> PlanNode:
    if depth > MAX_DEPTH:
        raise PlanParseError(f"This plan is nested too deeply to read. {_HINT}")
    node_type = doc.get("Node Type")
    if not isinstance(node_type, str) or not node_type.strip():
        raise PlanParseError(f"A JSON plan node has no 'Node Type' string. {_HINT}")
    node = _node_from_head(_text_node_type(doc, node_type.strip()))
    node.relation = _json_str(doc, "Relation Name") or node.relation
    node.schema = _json_str(doc, "Schema") or node.schema
    node.alias = _json_str(doc, "Alias") or node.alias
    node.index = _json_str(doc, "Index Name") or node.index
    if node.alias == node.relation:  # JSON repeats the name as the alias; text does not
        node.alias = None
    if node.node_type in _STORAGE_NODE_TYPES and node.relation is None and node.index:
        # Text prints "Storage Scan on <object>" whether it is a table or an index; the model
        # keeps that object in `relation` for storage nodes, from either format.
        node.relation, node.index = node.index, None
    node.parent_relationship = _json_str(doc, "Subplan Name") or _json_str(
        doc, "Parent Relationship"
    )
    node.startup_cost = _json_num(doc.get("Startup Cost"), "Startup Cost")
    node.total_cost = _json_num(doc.get("Total Cost"), "Total Cost")
    node.estimated_rows = _json_num(doc.get("Plan Rows"), "Plan Rows")
    width = _json_num(doc.get("Plan Width"), "Plan Width")
    node.width = int(width) if width is not None else None
    node.actual_startup_ms = _json_num(doc.get("Actual Startup Time"), "Actual Startup Time")
    node.actual_total_ms = _json_num(doc.get("Actual Total Time"), "Actual Total Time")
    node.actual_rows = _json_num(doc.get("Actual Rows"), "Actual Rows")
    loops = _json_num(doc.get("Actual Loops"), "Actual Loops")
    if loops is not None:
        node.loops = int(loops)
        node.never_executed = loops == 0
    node.output = tuple(_json_list(doc.get("Output")))
    node.projections = tuple(_json_list(doc.get("Projections")))
    for key, value in doc.items():
        if not isinstance(key, str) or key in _JSON_NODE_FIELDS:
            continue
        if key in CONDITION_LABELS:
            for text in _json_list(value):
                node.properties.append((key, text))
                node.conditions.append(Condition(kind=CONDITION_LABELS[key], text=text, label=key))
            continue
        node.properties.append((key, _json_text(value)))
    children = doc.get("Plans", [])
    if not isinstance(children, list):
        raise PlanParseError(f"'Plans' of a JSON plan node must be a list. {_HINT}")
    for child in children:
        if not isinstance(child, Mapping):
            raise PlanParseError(f"Each entry of 'Plans' must be a plan node object. {_HINT}")
        node.children.append(_json_node(child, depth + 1))
    return node


def _text_node_type(doc: Mapping[str, Any], node_type: str) -> str:
    """Name a JSON node as the text format would (PostgreSQL's explain.c folds these fields in)."""
    strategy = doc.get("Strategy")
    if node_type == "Aggregate" and isinstance(strategy, str):
        node_type = _AGG_NAMES.get(strategy, node_type)
    elif node_type == "SetOp" and strategy == "Hashed":
        node_type = "HashSetOp"
    elif node_type == "ModifyTable" and isinstance(doc.get("Operation"), str):
        node_type = doc["Operation"]
    join = doc.get("Join Type")
    if isinstance(join, str) and join != "Inner":
        if node_type == "Nested Loop":
            node_type = f"Nested Loop {join} Join"
        elif node_type.endswith(" Join"):
            node_type = f"{node_type[: -len(' Join')]} {join} Join"
    if doc.get("Scan Direction") == "Backward":
        node_type += " Backward"
    if doc.get("Parallel Aware") is True:
        node_type = "Parallel " + node_type
    return node_type


_AGG_NAMES: Final = {
    "Plain": "Aggregate",
    "Sorted": "GroupAggregate",
    "Hashed": "HashAggregate",
    "Mixed": "MixedAggregate",
}


def _json_dpu(plan: Plan, value: object) -> None:
    if not isinstance(value, Mapping):
        raise PlanParseError("'Statement DPU Estimate' must be an object (Compute, Read, …).")
    dpu: dict[str, float | None] = dict.fromkeys(DPU_KEYS)
    minimums: dict[str, float] = {}
    for key, figure in value.items():
        name = str(key).lower().replace(" dpu", "").replace("-", "").replace(" ", "")
        if name.endswith("transactionminimum"):  # "Read Transaction Minimum": 0.00375
            minimums[name.removesuffix("transactionminimum")] = _json_req_num(figure, str(key))
            continue
        if isinstance(figure, Mapping):
            minimum = next((v for k, v in figure.items() if "minimum" in str(k).lower()), None)
            if minimum is not None:
                minimums[name] = _json_req_num(minimum, f"{key} minimum")
            figure = next((v for k, v in figure.items() if "minimum" not in str(k).lower()), None)
        if isinstance(figure, str):
            match = _DPU_LINE_RE.match(f"{name}: {figure}") if name in DPU_KEYS else None
            if match is None:
                raise PlanParseError(f"DPU figure {key!r} is not a number: {_short(figure)!r}.")
            dpu[name] = _float(match["value"])
            if match["min"] is not None:
                minimums[name] = _float(match["min"])
            continue
        dpu[name] = _json_num(figure, str(key))
    plan.dpu = dpu
    plan.dpu_minimums = minimums
    plan.dsql = True


def _json_str(doc: Mapping[str, Any], key: str) -> str | None:
    value = doc.get(key)
    if value is None:
        return None
    if not isinstance(value, str):
        raise PlanParseError(f"'{key}' of a JSON plan node must be a string. {_HINT}")
    return value


def _json_num(value: object, key: str) -> float | None:
    if value is None:
        return None
    return _json_req_num(value, key)


def _json_req_num(value: object, key: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        if isinstance(value, str):
            try:
                return _float(value.strip().removesuffix("DPU").strip())
            except ValueError:
                pass
        raise PlanParseError(f"'{key}' must be a number, not {_short(repr(value))}. {_HINT}")
    number = float(value)
    if not math.isfinite(number):
        raise PlanParseError(f"'{key}' must be a finite number. {_HINT}")
    return number


def _json_list(value: object) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        return [value]
    if isinstance(value, list):
        return [_json_text(v) for v in value]
    return [_json_text(value)]


def _json_text(value: object) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, list):
        return ", ".join(_json_text(v) for v in value)
    try:
        return json.dumps(value, default=str)
    except (ValueError, TypeError, RecursionError):
        return str(value)


# ------------------------------------------------------------------------------------------- common


def _finish(plan: Plan) -> Plan:
    """Number the nodes and decide whether this is a DSQL plan."""
    for i, node in enumerate(plan.root.walk()):
        node.id = i
        if (
            node.node_type in DSQL_NODE_TYPES
            or node.projections
            or any(c.kind == "storage" for c in node.conditions)
        ):
            plan.dsql = True
    return plan


def _short(text: str, limit: int = 80) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"
