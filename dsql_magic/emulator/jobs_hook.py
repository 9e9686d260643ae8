"""The statement hook for DSQL's asynchronous DDL and the ``sys`` job functions.

- ``CREATE [UNIQUE] INDEX ASYNC …`` answers at once with tag ``CREATE INDEX`` and one row,
  ``job_id``; the build runs in the cluster's `JobRunner` (``CREATE INDEX CONCURRENTLY`` on the
  runner's own connection), so it never blocks the client or other sessions.
- ``ALTER TABLE ASYNC … VALIDATE CONSTRAINT …`` answers likewise (tag ``ALTER TABLE``).
- ``ANALYZE [table]`` runs as ``ANALYZE`` jobs; the statement answers when they have finished,
  so statistics are there for the next query, as after DSQL's ANALYZE.
- ``DROP INDEX`` cancels a build in progress first; ``DROP INDEX``/``DROP TABLE`` are recorded as
  finished ``DROP`` jobs once committed, as DSQL lists them.
- ``SELECT sys.wait_for_job('<id>')`` (or ``CALL``) waits in asyncio, holding no backend and no
  snapshot, and answers ``t``/``f``.

The runner starts with the first connection of the cluster. This module speaks to the session
through the hook API only and to PostgreSQL through the runner; it must not import the server.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import weakref
from collections.abc import Sequence
from typing import Any

import postgast

from .errors import DsqlError
from .hooks import Reply, StatementContext, Synthetic
from .jobs import IndexBuild, JobNotFound, JobRunner, connector, is_job_id
from .statements import Statement

pb: Any = importlib.import_module("postgast.pg_query_pb2")

NAMEDATALEN = 64
BOOL_OID = 16
WAIT_TIMEOUT_SECONDS = 300.0  # then false: DSQL waits "until the job finishes or times out"
ANALYZE_TIMEOUT_SECONDS = 30.0  # then answered; the job goes on in the background
_DROPS = "jobs_drops"

_runners: weakref.WeakKeyDictionary[Any, JobRunner] = weakref.WeakKeyDictionary()
_start_lock: asyncio.Lock | None = None


async def runner_for(cluster: Any) -> JobRunner:
    """The cluster's job runner, started on first use (one per cluster)."""
    global _start_lock
    runner = _runners.get(cluster)
    if runner is not None:
        return runner
    if _start_lock is None:
        _start_lock = asyncio.Lock()
    async with _start_lock:
        runner = _runners.get(cluster)
        if runner is None:
            backend = cluster.backend
            runner = JobRunner(
                connector(
                    {
                        "host": str(backend.socket_dir),
                        "port": backend.port,
                        "user": backend.user,
                        "dbname": backend.database,
                        "options": "-c lock_timeout=0",
                    }
                ),
                on_catalog_change=cluster.bump_catalog_version,
            )
            await runner.start()
            _runners[cluster] = runner
            if hasattr(cluster, "add_shutdown"):  # stop the workers with the server
                cluster.add_shutdown(runner.stop)
    return runner


def _quote(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _error(sqlstate: str, message: str, hint: str | None = None) -> DsqlError:
    return DsqlError(sqlstate, message, hint=hint)


async def _resolve_table(ctx: StatementContext, relation: Any) -> tuple[str, str, int]:
    """(schema, table, oid) of a RangeVar, as the client's search_path resolves it."""
    text = _quote(relation.relname)
    if relation.schemaname:
        text = _quote(relation.schemaname) + "." + text
    rows = (
        await ctx.execute(
            "SELECT n.nspname, c.relname, c.oid::text, pg_has_role(c.relowner, 'USAGE')::text"
            " FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
            " WHERE c.oid = to_regclass($1)",
            [text],
        )
    )[0].rows
    if not rows:
        raise _error("42P01", f'relation "{relation.relname}" does not exist')
    schema, table, oid, owner = rows[0]
    if owner != "true":
        raise _error("42501", f"must be owner of table {table}")
    return str(schema), str(table), int(oid or 0)


def _column_names(inner: Any) -> list[str]:
    """PostgreSQL's ChooseIndexColumnNames: column names, ``expr`` for expressions, deduped."""
    names: list[str] = []
    for param in list(inner.index_params) + list(inner.index_including_params):
        elem = param.index_elem
        base = elem.indexcolname or elem.name or "expr"
        name, n = base, 0
        while name in names:
            n += 1
            name = f"{base}{n}"
        names.append(name)
    return names


def _make_name(table: str, addition: str, label: str, suffix: str = "") -> str:
    """PostgreSQL's makeObjectName: ``table_addition_label`` cut to fit NAMEDATALEN - 1."""
    limit = NAMEDATALEN - 1 - len(label) - len(suffix) - 2
    t, a = table, addition
    while len(t.encode()) + len(a.encode()) > limit:
        if len(t) > len(a):
            t = t[:-1]
        else:
            a = a[:-1]
    return f"{t}_{a}_{label}{suffix}" if a else f"{t}_{label}{suffix}"


async def _default_name(ctx: StatementContext, schema: str, table: str, inner: Any) -> str:
    """The name PostgreSQL (and DSQL) give an unnamed index: ``table_col1_col2_idx[N]``."""
    addition = "_".join(_column_names(inner))
    taken = {
        str(r[0])
        for r in (
            await ctx.execute(
                "SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
                " WHERE n.nspname = $1",
                [schema],
            )
        )[0].rows
    }
    n = 0
    while True:
        name = _make_name(table, addition, "idx", str(n) if n else "")
        if name not in taken:
            return name
        n += 1


def _wait_call(stmt: Statement) -> Any | None:
    """The argument node of ``SELECT sys.wait_for_job(x)`` / ``CALL sys.wait_for_job(x)``."""
    inner = stmt.inner
    call = None
    if stmt.node_name == "select_stmt" and inner is not None:
        if len(inner.target_list) != 1 or len(inner.from_clause) != 0:
            return None
        val = inner.target_list[0].res_target.val
        if val.WhichOneof("node") == "func_call":
            call = val.func_call
    elif stmt.node_name == "call_stmt" and inner is not None:
        call = inner.funccall
    if call is None:
        return None
    name = [n.string.sval.lower() for n in call.funcname]
    if name != ["sys", "wait_for_job"] or len(call.args) != 1:
        return None
    return call.args[0]


class JobsHook:
    """Answers DSQL's asynchronous statements with jobs (see the module docstring)."""

    async def on_connect(self, ctx: StatementContext) -> None:
        await runner_for(ctx.cluster)

    async def before(self, stmt: Statement, ctx: StatementContext) -> Reply | None:
        if stmt.is_async and stmt.node_name == "index_stmt":
            return await self._create_index(stmt, ctx)
        if stmt.is_async and stmt.node_name == "alter_table_stmt":
            return await self._validate(stmt, ctx)
        if stmt.node_name == "vacuum_stmt" and not stmt.inner.is_vacuumcmd:
            return await self._analyze(stmt, ctx)
        if stmt.node_name == "drop_stmt":
            return await self._before_drop(stmt, ctx)
        arg = _wait_call(stmt)
        if arg is not None:
            return await self._wait(arg, ctx)
        return None

    async def after_end(self, ctx: StatementContext, committed: bool) -> None:
        drops = ctx.txn.get(_DROPS)
        if committed and drops:
            runner = await runner_for(ctx.cluster)
            for oid in drops:
                await runner.record_drop(oid)

    # --- CREATE INDEX ASYNC -------------------------------------------------------------------

    async def _create_index(self, stmt: Statement, ctx: StatementContext) -> Reply:
        tree = postgast.parse(stmt.pg_text)
        inner = tree.stmts[0].stmt.index_stmt
        schema, table, _ = await _resolve_table(ctx, inner.relation)
        if inner.idxname:
            exists = (
                await ctx.execute(
                    "SELECT 1 FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
                    " WHERE n.nspname = $1 AND c.relname = $2",
                    [schema, inner.idxname],
                )
            )[0].rows
            if exists:
                if inner.if_not_exists:
                    return Synthetic(["job_id"], [], "CREATE INDEX")
                raise _error("42P07", f'relation "{inner.idxname}" already exists')
            name = inner.idxname
        else:
            name = await _default_name(ctx, schema, table, inner)
        inner.idxname = name
        inner.concurrent = True
        inner.if_not_exists = False
        inner.relation.schemaname = schema
        unique, nulls_not_distinct = inner.unique, inner.nulls_not_distinct
        create_sql = str(postgast.deparse(tree))
        fallback = None
        if unique:
            inner.unique = False
            inner.nulls_not_distinct = False
            fallback = str(postgast.deparse(tree))
        build = IndexBuild(schema, name, create_sql, unique, nulls_not_distinct, fallback)
        runner = await runner_for(ctx.cluster)
        job_id = await runner.submit_index_build(build)
        return Synthetic(["job_id"], [[job_id]], "CREATE INDEX")

    # --- ALTER TABLE ASYNC … VALIDATE CONSTRAINT -----------------------------------------------

    async def _validate(self, stmt: Statement, ctx: StatementContext) -> Reply:
        inner = stmt.inner
        cmds = [c.alter_table_cmd for c in inner.cmds]
        if len(cmds) != 1 or pb.AlterTableType.Name(cmds[0].subtype) != "AT_ValidateConstraint":
            raise _error(
                "0A000",
                "unsupported ALTER TABLE ASYNC statement",
                "ALTER TABLE ASYNC runs one VALIDATE CONSTRAINT as a job.",
            )
        schema, table, oid = await _resolve_table(ctx, inner.relation)
        constraint = cmds[0].name
        found = (
            await ctx.execute(
                "SELECT 1 FROM pg_constraint WHERE conrelid = $1 AND conname = $2",
                [oid, constraint],
            )
        )[0].rows
        if not found:
            raise _error("42704", f'constraint "{constraint}" of relation "{table}" does not exist')
        runner = await runner_for(ctx.cluster)
        job_id = await runner.submit_validate(oid, constraint, f"{schema}.{table}")
        return Synthetic(["job_id"], [[job_id]], "ALTER TABLE")

    # --- ANALYZE -------------------------------------------------------------------------------

    async def _analyze(self, stmt: Statement, ctx: StatementContext) -> Reply:
        targets: list[tuple[int, str]] = []
        for rel in stmt.inner.rels:
            schema, table, oid = await _resolve_table(ctx, rel.vacuum_relation.relation)
            targets.append((oid, f"{schema}.{table}"))
        if not stmt.inner.rels:
            rows = (
                await ctx.execute(
                    "SELECT c.oid::text, n.nspname || '.' || c.relname FROM pg_class c"
                    " JOIN pg_namespace n ON n.oid = c.relnamespace WHERE c.relkind = 'r'"
                    " AND n.nspname NOT IN ('pg_catalog', 'information_schema', 'sys')"
                    " AND n.nspname NOT LIKE 'pg\\_%' AND pg_has_role(c.relowner, 'USAGE')"
                )
            )[0].rows
            targets = [(int(oid or 0), str(name)) for oid, name in rows]
        runner = await runner_for(ctx.cluster)
        ids = [await runner.submit_analyze(oid, name) for oid, name in targets]
        for job_id in ids:
            # One still running after the timeout goes on in the background (sys.jobs).
            with contextlib.suppress(TimeoutError, JobNotFound):
                await runner.wait(job_id, timeout=ANALYZE_TIMEOUT_SECONDS)
        return Synthetic([], [], "ANALYZE")

    # --- DROP ----------------------------------------------------------------------------------

    async def _before_drop(self, stmt: Statement, ctx: StatementContext) -> Reply | None:
        """Cancel builds of dropped indexes; note dropped objects for their DROP jobs.

        An index whose build has not yet created its catalog entry (queued, or just starting)
        exists only as a job: dropping it cancels the job and answers ``DROP INDEX`` itself.
        """
        kind = pb.ObjectType.Name(stmt.inner.remove_type)
        if kind not in ("OBJECT_INDEX", "OBJECT_TABLE"):
            return None
        runner = await runner_for(ctx.cluster)
        only_jobs = kind == "OBJECT_INDEX"
        for obj in stmt.inner.objects:
            names = [item.string.sval for item in obj.list.items]
            if not names:
                continue
            found = await self._resolve(ctx, names)
            if found is None and kind == "OBJECT_INDEX":
                schema = names[0] if len(names) > 1 else await self._current_schema(ctx)
                qualified = f"{schema}.{names[-1]}"
                if await runner.cancel_for_object(qualified, None):
                    # The build may have committed its (invalid) catalog entry before it stopped.
                    # Ask the runner: this session's catalog snapshot may not show it yet. If it
                    # is there, PostgreSQL drops it (DROP takes a lock, which refreshes it).
                    oid = await runner.relation_oid(schema, names[-1])
                    if oid is None:
                        continue
                    found = (oid, qualified)
            if found is None:
                only_jobs = False
                continue
            only_jobs = False
            oid, qualified = found
            if kind == "OBJECT_INDEX":
                await runner.cancel_for_object(qualified, oid)
            ctx.txn.setdefault(_DROPS, []).append(oid)
        return Synthetic([], [], "DROP INDEX") if only_jobs else None

    async def _resolve(self, ctx: StatementContext, names: list[str]) -> tuple[int, str] | None:
        rows = (
            await ctx.execute(
                "SELECT c.oid::text, n.nspname || '.' || c.relname FROM pg_class c"
                " JOIN pg_namespace n ON n.oid = c.relnamespace"
                " WHERE c.oid = to_regclass($1)",
                [".".join(_quote(n) for n in names)],
            )
        )[0].rows
        return None if not rows else (int(rows[0][0] or 0), str(rows[0][1]))

    async def _current_schema(self, ctx: StatementContext) -> str:
        rows = (await ctx.execute("SELECT current_schema()"))[0].rows
        return str(rows[0][0]) if rows and rows[0][0] else "public"

    # --- sys.wait_for_job ----------------------------------------------------------------------

    async def _wait(self, arg: Any, ctx: StatementContext) -> Reply:
        kind = arg.WhichOneof("node")
        if kind == "type_cast":
            arg = arg.type_cast.arg
            kind = arg.WhichOneof("node")
        if kind == "param_ref":
            # sys.wait_for_job($1), as drivers send it: answered at Execute with the bound value.
            number = arg.param_ref.number

            async def resolve(values: Sequence[bytes | None]) -> Synthetic:
                if not 0 < number <= len(values) or values[number - 1] is None:
                    raise _error("22023", "sys.wait_for_job needs a job id, not NULL")
                raw = values[number - 1]
                assert raw is not None
                return await self._wait_for(raw.decode("utf-8", "replace"), ctx)

            return Synthetic(["wait_for_job"], [], "SELECT 1", types=[BOOL_OID], resolve=resolve)
        if kind != "a_const" or arg.a_const.WhichOneof("val") != "sval":
            raise _error(
                "22023",
                "sys.wait_for_job takes the job id as a string",
                "Write SELECT sys.wait_for_job('<job_id>'), or bind it as a parameter.",
            )
        return await self._wait_for(arg.a_const.sval.sval, ctx)

    async def _wait_for(self, job_id: str, ctx: StatementContext) -> Synthetic:
        if not is_job_id(job_id):
            raise _error("22023", f'invalid job id "{job_id}"')
        runner = await runner_for(ctx.cluster)
        try:
            row = await runner.get(job_id)
        except JobNotFound:
            raise _error("42704", f'job "{job_id}" does not exist') from None
        if ctx.in_transaction and row.job_type == "INDEX_BUILD" and row.status != "completed":
            raise _error(
                "0A000",
                "sys.wait_for_job cannot wait for an index build inside a transaction block in "
                "the emulator",
                "The build waits for open transactions to end: COMMIT or ROLLBACK first.",
            )
        try:
            ok = await runner.wait(job_id, timeout=WAIT_TIMEOUT_SECONDS)
        except TimeoutError:
            ok = False
        except JobNotFound:
            raise _error("42704", f'job "{job_id}" does not exist') from None
        return Synthetic(["wait_for_job"], [["t" if ok else "f"]], "SELECT 1", types=[BOOL_OID])


def make_hook(config: Any = None) -> JobsHook:
    return JobsHook()
