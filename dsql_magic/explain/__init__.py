"""EXPLAIN plans: parse DSQL's and PostgreSQL's output into a tree, and show it.

`parse_plan` and the model are pure and cheap to import; the renderers (text, HTML, widget) and
`command.explain` (which runs EXPLAIN on a connection) are imported from their modules on use.
"""

from __future__ import annotations

from dsql_magic.explain.model import Condition, Plan, PlanNode
from dsql_magic.explain.parse import PlanParseError, parse_plan

__all__ = ["Condition", "Plan", "PlanNode", "PlanParseError", "parse_plan"]
