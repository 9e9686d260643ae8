"""The client-side splitter and ``:param`` scanner: examples, then properties with hypothesis."""

from __future__ import annotations

import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dsql_magic.sqlsplit import SqlScanError, split_sql


def texts(sql: str) -> list[str]:
    return [s.text for s in split_sql(sql)]


@pytest.mark.parametrize(
    ("sql", "expected"),
    [
        ("SELECT 1; SELECT 2;", ["SELECT 1", "SELECT 2"]),
        ("SELECT ';'; SELECT 2", ["SELECT ';'", "SELECT 2"]),
        ("SELECT 'it''s; fine'", ["SELECT 'it''s; fine'"]),
        ("SELECT E'a\\';b'; SELECT 3", ["SELECT E'a\\';b'", "SELECT 3"]),
        ("SELECT e'\\\\'; SELECT 4", ["SELECT e'\\\\'", "SELECT 4"]),
        # Not an E-string: a backslash is an ordinary character in standard strings.
        ("SELECT 'a\\'; SELECT 5", ["SELECT 'a\\'", "SELECT 5"]),
        ('SELECT 1 AS "a;b"; SELECT 2', ['SELECT 1 AS "a;b"', "SELECT 2"]),
        ("SELECT $$a;b$$; SELECT 2", ["SELECT $$a;b$$", "SELECT 2"]),
        ("SELECT $fn$ $$;$$ $fn$; SELECT 2", ["SELECT $fn$ $$;$$ $fn$", "SELECT 2"]),
        ("SELECT $1; SELECT 2", ["SELECT $1", "SELECT 2"]),
        ("SELECT 1 -- a; comment\n; SELECT 2", ["SELECT 1 -- a; comment", "SELECT 2"]),
        ("/* a; /* nested; */ still; */ SELECT 1", ["/* a; /* nested; */ still; */ SELECT 1"]),
        ("; ; -- only a comment\n;", []),
        ("SELECT a$b; SELECT 2", ["SELECT a$b", "SELECT 2"]),
    ],
)
def test_split_examples(sql: str, expected: list[str]) -> None:
    assert texts(sql) == expected


def test_params_casts_and_slices() -> None:
    (stmt,) = split_sql("SELECT :a::int, x::text, arr[lo:hi], arr[1:2], ':no', :b, :a")
    assert stmt.params == ("a", "b")
    assert stmt.query == "SELECT %(a)s::int, x::text, arr[lo:hi], arr[1:2], ':no', %(b)s, %(a)s"


def test_percent_doubled_only_when_params() -> None:
    (with_param,) = split_sql("SELECT '100%' LIKE :p")
    assert with_param.query == "SELECT '100%%' LIKE %(p)s"
    (without,) = split_sql("SELECT '100%'")
    assert without.query == "SELECT '100%'" and without.params == ()


def test_params_not_found_in_strings_comments_dollar_quotes() -> None:
    sql = "SELECT ':a', \":b\", $$ :c $$, E':d' -- :e\n /* :f */ , :g"
    (stmt,) = split_sql(sql)
    assert stmt.params == ("g",)


def test_first_word_and_transaction_control() -> None:
    stmts = split_sql(
        "/* c */ begin; insert into t values (1); -- x\n commit; END; start transaction"
    )
    assert [s.first_word for s in stmts] == ["BEGIN", "INSERT", "COMMIT", "END", "START"]
    assert [s.is_transaction_control for s in stmts] == [True, False, True, True, True]


@pytest.mark.parametrize("sql", ["SELECT 'open", "SELECT $$ open", "SELECT /* open", 'SELECT "x'])
def test_unterminated_is_a_clear_error(sql: str) -> None:
    with pytest.raises(SqlScanError, match="unterminated"):
        split_sql(sql)


# ---- properties --------------------------------------------------------------------------

_names = st.from_regex(r"[a-z_][a-z0-9_]{0,8}", fullmatch=True)
_safe_text = st.text(alphabet=st.sampled_from(list("ab ;:'\"$-*/%\\\n")), max_size=12)


@st.composite
def fragment(draw: st.DrawFn) -> tuple[str, list[str]]:
    """One lexical piece of a statement and the parameters it contains."""
    kind = draw(
        st.sampled_from(
            ["ident", "num", "str", "estr", "dollar", "line", "block", "cast", "param", "qident"]
        )
    )
    body = draw(_safe_text)
    if kind == "ident":
        return draw(_names).upper() if draw(st.booleans()) else draw(_names), []
    if kind == "num":
        return str(draw(st.integers(0, 10**6))), []
    if kind == "str":
        return "'" + body.replace("'", "''") + "'", []
    if kind == "estr":
        escaped = body.replace("\\", "\\\\").replace("'", "\\'")
        return "E'" + escaped + "'", []
    if kind == "dollar":
        tag = draw(st.sampled_from(["", "q", "fn_1"]))
        if f"${tag}$" in body or body.endswith("$"):
            body = body.replace("$", "")
        return f"${tag}${body}${tag}$", []
    if kind == "line":
        return "--" + body.replace("\n", " ") + "\n", []
    if kind == "block":
        return "/*" + body.replace("*/", "").replace("/*", "").rstrip("/*") + " */", []
    if kind == "cast":
        return "x::" + draw(_names), []
    if kind == "qident":
        return '"' + body.replace('"', '""') + '"', []
    name = draw(_names)
    return ":" + name, [name]


@st.composite
def statement(draw: st.DrawFn) -> tuple[str, list[str]]:
    pieces = draw(st.lists(fragment(), min_size=1, max_size=8))
    text = "SELECT " + " ".join(p for p, _ in pieces)
    params = [n for _, names in pieces for n in names]
    return text, params


@given(st.lists(statement(), min_size=1, max_size=5), st.sampled_from([";", ";\n", " ; "]))
@settings(max_examples=300, deadline=None)
def test_split_recovers_statements_and_params(stmts: list[tuple[str, list[str]]], sep: str) -> None:
    sql = sep.join(text for text, _ in stmts)
    got = split_sql(sql)
    assert [s.text for s in got] == [text.strip() for text, _ in stmts]
    assert [list(s.params) for s in got] == [list(dict.fromkeys(p)) for _, p in stmts]


@given(st.lists(statement(), min_size=1, max_size=3))
@settings(max_examples=200, deadline=None)
def test_query_is_text_with_placeholders(stmts: list[tuple[str, list[str]]]) -> None:
    for s in split_sql(";".join(text for text, _ in stmts)):
        if s.params:
            back = re.sub(r"%\((\w+)\)s", r":\1", s.query).replace("%%", "%")
            assert back == s.text
        else:
            assert s.query == s.text


@given(st.text(max_size=60))
@settings(max_examples=300, deadline=None)
def test_any_text_splits_or_says_why(sql: str) -> None:
    try:
        got = split_sql(sql)
    except SqlScanError as exc:
        assert "unterminated" in str(exc)
        return
    pos = 0
    for s in got:  # statements are pieces of the input, in order
        found = sql.find(s.text, pos)
        assert found >= 0
        pos = found + len(s.text)
