"""The pure helpers behind OCC and the jobs hook: rewrites, counts, names, the session bind."""

from __future__ import annotations

import postgast
import pytest
from hypothesis import given
from hypothesis import strategies as st

from dsql_magic.emulator import jobs_hook, occ, session
from dsql_magic.emulator.errors import DsqlError
from dsql_magic.emulator.statements import split_statements


def _one(sql: str):  # type: ignore[no-untyped-def]
    (stmt,) = split_statements(sql)
    return stmt


def test_strip_locking_keeps_the_query_and_its_parameters() -> None:
    plain = occ._strip_locking("SELECT id, balance FROM acct WHERE id = $1 FOR UPDATE")
    assert plain == "SELECT id, balance FROM acct WHERE id = $1"
    nested = occ._strip_locking(
        "SELECT * FROM (SELECT id FROM a FOR KEY SHARE) s JOIN b USING (id) FOR UPDATE OF b"
    )
    assert nested is not None and "FOR" not in nested.upper().replace("FROM", "")


def test_count_sql_follows_the_where_clause() -> None:
    assert (
        occ._count_sql("UPDATE acct SET balance = balance - $1 WHERE id = $2")
        == "SELECT count(*) FROM acct WHERE id = $2"
    )
    assert occ._count_sql("DELETE FROM t USING u WHERE t.id = u.id AND u.k = 3") == (
        "SELECT count(*) FROM t, u WHERE t.id = u.id AND u.k = 3"
    )
    assert occ._count_sql("UPDATE t SET v = 1") == "SELECT count(*) FROM t"
    assert occ._count_sql("INSERT INTO t VALUES (1)") is None
    assert occ._count_sql("WITH x AS (SELECT 1) UPDATE t SET v = 1") is None


def test_values_count_and_target_table() -> None:
    assert occ._values_count(_one("INSERT INTO t VALUES (1), (2), (3)")) == 3
    assert occ._values_count(_one("INSERT INTO t SELECT * FROM u")) == 1
    assert occ._target_table(_one("UPDATE s.t SET v = 1")) == "s.t"
    assert occ._target_table(_one("DELETE FROM t")) == "t"


def test_guard_covers_writes_and_locking_reads_only() -> None:
    hook = occ.OccHook()
    assert hook.guard(_one("UPDATE t SET v = 1"))
    assert hook.guard(_one("SELECT * FROM t FOR UPDATE"))
    assert hook.guard(_one("SELECT * FROM t FOR KEY SHARE"))
    assert hook.guard(_one("ALTER TABLE t ADD COLUMN c int"))
    assert not hook.guard(_one("SELECT * FROM t"))
    assert not hook.guard(_one("COPY t FROM STDIN"))
    assert not hook.guard(_one("CREATE INDEX ASYNC ON t (v)"))


def test_inject_call_is_recognised_and_validated() -> None:
    hook = occ.OccHook()
    reply = hook._configure_injection(
        occ._inject_call(_one("SELECT sys.inject_conflicts(0.5, 't', 3)"))
    )
    assert reply.rows == [["conflict injection: rate 0.5 on t, seed 3"]]
    assert hook.injector.settings.tables == frozenset({"t"})
    assert occ._inject_call(_one("SELECT inject_conflicts(1)")) is None
    with pytest.raises(DsqlError) as info:
        hook._configure_injection(occ._inject_call(_one("SELECT sys.inject_conflicts(now())")))
    assert info.value.sqlstate == "22023"


def test_default_index_names_like_postgresql() -> None:
    tree = postgast.parse("CREATE INDEX ON t (a, lower(b), a) INCLUDE (c)")
    inner = tree.stmts[0].stmt.index_stmt
    assert jobs_hook._column_names(inner) == ["a", "expr", "a1", "c"]
    assert jobs_hook._make_name("users", "email", "idx") == "users_email_idx"
    assert jobs_hook._make_name("users", "email", "idx", "2") == "users_email_idx2"
    long = jobs_hook._make_name("t" * 60, "c" * 60, "idx")
    assert len(long) <= 63 and long.endswith("_idx")


def test_wait_call_forms() -> None:
    assert jobs_hook._wait_call(_one("SELECT sys.wait_for_job('abc')")) is not None
    assert jobs_hook._wait_call(_one("CALL sys.wait_for_job('abc')")) is not None
    assert jobs_hook._wait_call(_one("SELECT sys.wait_for_job('a'), 1")) is None
    assert jobs_hook._wait_call(_one("SELECT wait_for_job('a')")) is None


@given(
    st.lists(st.one_of(st.none(), st.binary(max_size=20)), max_size=5),
    st.lists(st.sampled_from([0, 1]), max_size=5),
)
def test_bind_tail_asks_for_text_results(params: list[bytes | None], formats: list[int]) -> None:
    def i16(n: int) -> bytes:
        return n.to_bytes(2, "big")

    body = i16(len(formats)) + b"".join(i16(f) for f in formats) + i16(len(params))
    for p in params:
        body += (-1).to_bytes(4, "big", signed=True) if p is None else len(p).to_bytes(4, "big") + p
    tail = body + i16(1) + i16(1)  # the client asked for binary results
    assert session._text_result_formats(tail) == body + i16(0)


def test_returning_of_a_deferred_statement_reads_the_snapshot() -> None:
    assert (
        occ._returning_sql("UPDATE a SET b = b - 1 WHERE id = $1 RETURNING id, b AS bal")
        == "SELECT id, b AS bal FROM a WHERE id = $1"
    )
    assert occ._returning_sql("DELETE FROM t USING u WHERE t.id = u.id RETURNING t.*") == (
        "SELECT t.* FROM t, u WHERE t.id = u.id"
    )
    assert occ._returning_sql("INSERT INTO t (id) VALUES (1) RETURNING id") == (
        "SELECT id FROM t WHERE false"
    )
    assert occ._returning_sql("UPDATE t SET v = 1") is None
    # $1 would be left untyped in the rewrite: refused
    assert occ._returning_sql("UPDATE a SET b = $1 WHERE id = $2 RETURNING id") is None
