"""Client-side SQL scanning: split a cell into statements and find its ``:name`` parameters.

A small tokenizer, not regular expressions: it knows PostgreSQL's lexical rules that matter for
splitting and binding — single-quoted strings (``''`` escape), ``E''`` strings (backslash escapes),
quoted identifiers, dollar quotes (``$tag$ … $tag$``), ``--`` and nested ``/* */`` comments, and
``::`` casts. A ``;`` outside all of these ends a statement; ``:name`` outside them is a parameter.

``:name`` is a parameter only where a value can start: not after an identifier character, ``)``,
``]`` or another ``:``, so ``a[lo:hi]`` array slices and ``x::int`` casts are left alone.

This module is pure (no I/O, no IPython, no psycopg) and must stay so: it runs before anything is
sent, and the emulator has its own parser on libpg_query. It never interpolates values into SQL;
it rewrites ``:name`` to psycopg's ``%(name)s`` placeholder so the value travels as a server-side
parameter.
"""

from __future__ import annotations

from dataclasses import dataclass

_IDENT_START = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ_")
_IDENT_CHARS = _IDENT_START | frozenset("0123456789$")
_PARAM_CHARS = _IDENT_START | frozenset("0123456789")
# A ":" right after one of these is a slice bound or a cast, not a parameter.
_NO_PARAM_AFTER = _IDENT_CHARS | frozenset(")]:")

TRANSACTION_START = frozenset({"BEGIN", "START"})
TRANSACTION_END = frozenset({"COMMIT", "END", "ROLLBACK", "ABORT"})


class SqlScanError(ValueError):
    """The cell's SQL is lexically incomplete (an unterminated quote or comment)."""


@dataclass(frozen=True)
class SqlStatement:
    """One statement of a cell, ready for psycopg.

    ``text`` is the statement as written (without the ``;``); ``query`` is what psycopg gets: the
    same text with ``:name`` turned into ``%(name)s`` and ``%`` doubled, or ``text`` itself when
    there are no parameters (then psycopg does no ``%`` processing).
    """

    text: str
    query: str
    params: tuple[str, ...]
    first_word: str  # upper-cased first keyword, "" when it does not start with a word

    @property
    def starts_transaction(self) -> bool:
        return self.first_word in TRANSACTION_START

    @property
    def ends_transaction(self) -> bool:
        return self.first_word in TRANSACTION_END

    @property
    def is_transaction_control(self) -> bool:
        return self.starts_transaction or self.ends_transaction


def _dollar_tag(sql: str, i: int) -> str | None:
    """The ``$tag$`` opening at ``sql[i]`` (which is ``$``), or None when it is not one."""
    j = i + 1
    n = len(sql)
    if j < n and sql[j] == "$":
        return "$$"
    if j < n and sql[j] in _IDENT_START:
        j += 1
        while j < n and sql[j] in _PARAM_CHARS:
            j += 1
        if j < n and sql[j] == "$":
            return sql[i : j + 1]
    return None


def _skip_quoted(sql: str, i: int, quote: str, backslash: bool) -> int:
    """Index just past the closing quote of a literal whose opening quote is at ``i``."""
    n = len(sql)
    j = i + 1
    while j < n:
        c = sql[j]
        if backslash and c == "\\":
            j += 2
            continue
        if c == quote:
            if j + 1 < n and sql[j + 1] == quote:
                j += 2
                continue
            return j + 1
        j += 1
    what = "identifier" if quote == '"' else "string"
    raise SqlScanError(f"unterminated quoted {what} starting at character {i + 1}")


def _skip_block_comment(sql: str, i: int) -> int:
    n = len(sql)
    depth = 0
    j = i
    while j < n:
        if sql.startswith("/*", j):
            depth += 1
            j += 2
        elif sql.startswith("*/", j):
            depth -= 1
            j += 2
            if depth == 0:
                return j
        else:
            j += 1
    raise SqlScanError(f"unterminated /* comment starting at character {i + 1}")


def _first_word(text: str) -> str:
    i = 0
    n = len(text)
    while i < n:
        if text[i].isspace():
            i += 1
        elif text.startswith("--", i):
            nl = text.find("\n", i)
            i = n if nl < 0 else nl + 1
        elif text.startswith("/*", i):
            i = _skip_block_comment(text, i)
        else:
            break
    j = i
    while j < n and text[j] in _PARAM_CHARS:
        j += 1
    return text[i:j].upper()


def _finish(text: str, pieces: list[str], params: list[str]) -> SqlStatement:
    query = "".join(pieces) if params else text
    ordered = tuple(dict.fromkeys(params))
    return SqlStatement(text=text, query=query, params=ordered, first_word=_first_word(text))


def _is_blank(text: str) -> bool:
    """True when ``text`` holds only whitespace and comments."""
    return _first_word(text) == "" and _strip_comments(text) == ""


def _strip_comments(text: str) -> str:
    out: list[str] = []
    i = 0
    n = len(text)
    while i < n:
        if text.startswith("--", i):
            nl = text.find("\n", i)
            i = n if nl < 0 else nl + 1
        elif text.startswith("/*", i):
            i = _skip_block_comment(text, i)
        else:
            out.append(text[i])
            i += 1
    return "".join(out).strip()


def split_sql(sql: str) -> list[SqlStatement]:
    """Split ``sql`` into statements; blank ones (only comments/whitespace) are dropped."""
    statements: list[SqlStatement] = []
    n = len(sql)
    start = 0
    pieces: list[str] = []  # the psycopg form of the current statement
    params: list[str] = []
    seg = 0  # start of the not-yet-copied verbatim run
    i = 0

    def flush_verbatim(upto: int) -> None:
        nonlocal seg
        if upto > seg:
            pieces.append(sql[seg:upto].replace("%", "%%"))
        seg = upto

    while i < n:
        c = sql[i]
        if c == "'":
            prev = sql[i - 1] if i > start else ""
            backslash = prev in ("e", "E") and (i - 1 == start or sql[i - 2] not in _IDENT_CHARS)
            i = _skip_quoted(sql, i, "'", backslash)
        elif c == '"':
            i = _skip_quoted(sql, i, '"', False)
        elif c == "-" and sql.startswith("--", i):
            nl = sql.find("\n", i)
            i = n if nl < 0 else nl + 1
        elif c == "/" and sql.startswith("/*", i):
            i = _skip_block_comment(sql, i)
        elif c == "$":
            prev = sql[i - 1] if i > start else ""
            tag = _dollar_tag(sql, i) if prev not in _IDENT_CHARS else None
            if tag is None:
                i += 1
            else:
                end = sql.find(tag, i + len(tag))
                if end < 0:
                    raise SqlScanError(
                        f"unterminated dollar-quoted string {tag} starting at character {i + 1}"
                    )
                i = end + len(tag)
        elif c == ":":
            if sql.startswith("::", i):
                i += 2
                continue
            prev = sql[i - 1] if i > start else ""
            j = i + 1
            if j < n and sql[j] in _IDENT_START and prev not in _NO_PARAM_AFTER:
                k = j + 1
                while k < n and sql[k] in _PARAM_CHARS:
                    k += 1
                name = sql[j:k]
                flush_verbatim(i)
                pieces.append(f"%({name})s")
                params.append(name)
                seg = k
                i = k
            else:
                i += 1
        elif c == ";":
            flush_verbatim(i)
            text = sql[start:i].strip()
            if text and not _is_blank(text):
                statements.append(_finish(text, _trim(pieces), params))
            start = seg = i + 1
            pieces = []
            params = []
            i += 1
        else:
            i += 1
    flush_verbatim(n)
    text = sql[start:].strip()
    if text and not _is_blank(text):
        statements.append(_finish(text, _trim(pieces), params))
    return statements


def _trim(pieces: list[str]) -> list[str]:
    """Strip the psycopg form the way the statement text is stripped."""
    joined = "".join(pieces).strip()
    return [joined]
