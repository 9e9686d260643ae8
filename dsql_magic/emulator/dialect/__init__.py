"""Aurora DSQL's dialect rules, loaded from the versioned data file ``rules.yaml``.

The rules say *what* DSQL refuses or rewrites (predicate + arguments, SQLSTATE, exact message,
source); `dsql_magic.emulator.policy` says *how* a predicate matches a parse tree. A new service
behaviour is an edit of ``rules.yaml``, not of code.

This module only reads and validates the data: it must not parse SQL or know any predicate's
meaning beyond its name.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import lru_cache
from importlib import resources
from typing import Any, Literal

import yaml

from ..errors import DsqlError

Action = Literal["refuse", "rewrite"]
_FIELDS = {
    "id",
    "predicate",
    "args",
    "sqlstate",
    "message",
    "detail",
    "action",
    "source",
    "refused",
    "accepted",
    "note",
}


class RulesError(ValueError):
    """The rules file is malformed (a bug in the data, caught at load and by the tests)."""


@dataclass(frozen=True)
class Rule:
    """One dialect rule: which statements it matches and what DSQL answers."""

    id: str
    predicate: str
    sqlstate: str
    message: str
    source: str
    args: dict[str, Any] = field(default_factory=dict)
    detail: str | None = None
    action: Action = "refuse"
    refused: tuple[str, ...] = ()
    accepted: tuple[str, ...] = ()
    note: str | None = None

    @property
    def assumed(self) -> bool:
        """True when DSQL's wording for this refusal was never recorded (a known difference)."""
        return self.source == "assumed"

    def format_message(self, params: dict[str, str]) -> str:
        """The message with its ``{placeholders}`` filled from what the predicate matched."""
        return self.message.format_map(params)

    def format_detail(self, params: dict[str, str]) -> str | None:
        """The detail text, filled like the message, or None."""
        return None if self.detail is None else self.detail.format_map(params)

    def error(self, **params: str) -> DsqlError:
        """This rule's refusal as a DsqlError, placeholders filled from ``params``."""
        return DsqlError(
            self.sqlstate, self.format_message(params), detail=self.format_detail(params)
        )


@dataclass(frozen=True)
class Difference:
    """A known difference from the real service, and why (for the fidelity document)."""

    id: str
    summary: str
    why: str


@dataclass(frozen=True)
class RuleSet:
    """All rules of one version of the data file, in file order."""

    version: str
    rules: tuple[Rule, ...]
    limits: tuple[Rule, ...] = ()
    differences: tuple[Difference, ...] = ()

    def by_id(self, rule_id: str) -> Rule:
        """The rule or limit called ``rule_id`` (KeyError if none)."""
        for rule in (*self.rules, *self.limits):
            if rule.id == rule_id:
                return rule
        raise KeyError(rule_id)


def _rule(raw: Any, index: int, *, limit: bool = False) -> Rule:
    if not isinstance(raw, dict):
        raise RulesError(f"rule #{index} is not a mapping")
    if limit:
        raw = {"predicate": "limit", **raw}
    unknown = set(raw) - _FIELDS
    if unknown:
        raise RulesError(f"rule {raw.get('id', index)!r}: unknown fields {sorted(unknown)}")
    if isinstance(raw.get("sqlstate"), int):  # YAML reads 54000 as a number
        raw = {**raw, "sqlstate": f"{raw['sqlstate']:05d}"}
    for key in ("id", "predicate", "sqlstate", "message", "source"):
        if not isinstance(raw.get(key), str) or not raw[key]:
            raise RulesError(f"rule {raw.get('id', index)!r}: {key!r} must be a non-empty string")
    sqlstate = str(raw["sqlstate"])
    if len(sqlstate) != 5 or not sqlstate.isalnum():
        raise RulesError(f"rule {raw['id']!r}: bad SQLSTATE {sqlstate!r}")
    source = raw["source"]
    if source not in {"observed", "assumed"} and not (
        source.startswith("L") and source[1:].isdigit()
    ):
        raise RulesError(f"rule {raw['id']!r}: source must be Lnnnn, observed or assumed")
    action = raw.get("action", "refuse")
    if action not in {"refuse", "rewrite"}:
        raise RulesError(f"rule {raw['id']!r}: action must be refuse or rewrite")
    return Rule(
        id=raw["id"],
        predicate=raw["predicate"],
        sqlstate=sqlstate,
        message=raw["message"],
        source=source,
        args=dict(raw.get("args") or {}),
        detail=raw.get("detail"),
        action=action,
        refused=tuple(raw.get("refused") or ()),
        accepted=tuple(raw.get("accepted") or ()),
        note=raw.get("note"),
    )


def parse_rules(text: str) -> RuleSet:
    """Validate and build a RuleSet from the YAML text of a rules file."""
    data = yaml.safe_load(text)
    if not isinstance(data, dict) or "rules" not in data or "version" not in data:
        raise RulesError("a rules file needs 'version' and 'rules'")
    rules = tuple(_rule(raw, i) for i, raw in enumerate(data["rules"]))
    limits = tuple(_rule(raw, i, limit=True) for i, raw in enumerate(data.get("limits") or ()))
    ids = [r.id for r in (*rules, *limits)]
    duplicates = sorted({i for i in ids if ids.count(i) > 1})
    if duplicates:
        raise RulesError(f"duplicate rule ids: {duplicates}")
    differences = []
    for raw in data.get("differences") or ():
        if not isinstance(raw, dict) or set(raw) != {"id", "summary", "why"}:
            raise RulesError(f"a difference needs exactly id, summary and why: {raw!r}")
        differences.append(Difference(str(raw["id"]), str(raw["summary"]), str(raw["why"])))
    return RuleSet(
        version=str(data["version"]),
        rules=rules,
        limits=limits,
        differences=tuple(differences),
    )


def rules_text() -> str:
    """The packaged rules file's text."""
    return resources.files(__name__).joinpath("rules.yaml").read_text(encoding="utf-8")


@lru_cache(maxsize=1)
def load_rules() -> RuleSet:
    """The packaged rules (read once per process)."""
    return parse_rules(rules_text())
