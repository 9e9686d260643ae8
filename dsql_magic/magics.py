"""The ``%dsql`` / ``%%dsql`` magics: parse arguments, dispatch, hand off. Nothing else lives here.

How to add a subcommand (``%dsql NAME …`` or ``%%dsql NAME`` + cell)
--------------------------------------------------------------------
Add ONE line to `SUBCOMMANDS` below: ``"name": "package.module:function"``. The module is imported
on first use (``%load_ext`` stays cheap). The function's signature is `Handler`::

    def handler(magic: DsqlMagic, args: str, cell: str | None) -> object

``args`` is the rest of the line after the subcommand word (parse it with `make_parser` /
`parse_args`, which turn mistakes into short usage errors); ``cell`` is the cell body for
``%%dsql NAME`` (None for the line form). Whatever it returns is the cell's output (return a
display object with ``_repr_html_`` and ``__repr__``, or None). Use ``magic.registry`` for
connections, ``magic.shell`` for the user namespace, ``magic.<trait>`` for configuration. Raise
`dsql_magic.errors.DsqlMagicError` subclasses for failures: they show short and fail the cell.

Anything else on a ``%dsql`` line is SQL. Configuration is traitlets on `DsqlMagic`
(``%config DsqlMagic.displaylimit = 20``); other parts may add traits here (one line each).

This module must not hold application logic (execution, conversion, parsing live in their own
modules), must not touch the network on load, and must never put a token anywhere.
"""

from __future__ import annotations

import argparse
import importlib
import inspect
import os
import re
import shlex
from collections.abc import Callable
from typing import Any

from IPython.core.magic import Magics, line_cell_magic, magics_class, no_var_expand
from IPython.core.magic_arguments import argument, magic_arguments, parse_argstring
from traitlets import Bool, Enum, Float, Int, Unicode, observe, validate

from dsql_magic.auth import TokenMinter, check_ttl
from dsql_magic.connections import (
    ConnectionRegistry,
    ConnectOptions,
    ConnectTarget,
    DsqlConnection,
    parse_target,
)
from dsql_magic.errors import DsqlMagicError, UsageProblem
from dsql_magic.execution import CellOutcome, RetryPolicy, parse_cell, run_cell
from dsql_magic.limits import DEFAULT_TOKEN_TTL_SECONDS
from dsql_magic.results import (
    CommandResult,
    DsqlFrame,
    Message,
    table,
    to_dataframe,
    to_polars,
)

Handler = Callable[["DsqlMagic", str, "str | None"], object]

# ---- the subcommand table: one line per subcommand ------------------------------------------
SUBCOMMANDS: dict[str, str] = {
    "connect": "dsql_magic.magics:cmd_connect",
    "connections": "dsql_magic.magics:cmd_connections",
    "use": "dsql_magic.magics:cmd_use",
    "close": "dsql_magic.magics:cmd_close",
    "clusters": "dsql_magic.controlplane:cmd_clusters",
    "explain": "dsql_magic.explain.magic:cmd_explain",
    "dpu": "dsql_magic.dpu.command:cmd_dpu",
    "emulator": "dsql_magic.emulator.magic_support:cmd_emulator",
    "jobs": "dsql_magic.jobs_magic:cmd_jobs",
    "wait": "dsql_magic.jobs_magic:cmd_wait",
}

_NO_CELL_ARGS = argparse.Namespace(
    var=None, conn=None, limit=None, no_retry=False, readonly=False, explain=None, dpu=False
)
_IDENT_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
# Options a line-form query may start with: name -> takes a value.
_QUERY_OPTIONS = {
    "--conn": True,
    "--limit": True,
    "--no-retry": False,
    "--readonly": False,
    "--dpu": False,
}


def resolve_handler(name: str) -> Handler:
    """The handler for a subcommand, importing its module on first use."""
    spec = SUBCOMMANDS[name]
    module_name, _, func = spec.partition(":")
    return getattr(importlib.import_module(module_name), func)


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> Any:  # argparse would exit the kernel
        raise UsageProblem(message, f"see %dsql {self.prog.split()[-1]} --help")


def make_parser(name: str, description: str) -> argparse.ArgumentParser:
    """A subcommand parser whose mistakes are short usage errors; ``--help`` is handled by
    `parse_args`."""
    return _Parser(prog=f"%dsql {name}", description=description, add_help=False)


def parse_args(parser: argparse.ArgumentParser, args: str) -> argparse.Namespace | Message:
    """Parse ``args`` (shell-like quoting); returns the help text as a Message for --help."""
    try:
        tokens = shlex.split(args)
    except ValueError as exc:
        raise UsageProblem(f"cannot parse arguments: {exc}", "check the quotes") from None
    if "--help" in tokens or "-h" in tokens:
        return Message(parser.format_help())
    return parser.parse_args(tokens)


@magics_class
class DsqlMagic(Magics):
    """Aurora DSQL magics (``%dsql``, ``%%dsql``); configure with ``%config DsqlMagic``."""

    displaylimit = Int(
        10, help="Rows shown for a result (the full DataFrame is still returned); 0 = all."
    ).tag(config=True)
    autoretry = Bool(True, help="Retry OCC conflicts (SQLSTATE 40001) when it is safe.").tag(
        config=True
    )
    max_retries = Int(5, help="How many times an OCC conflict is retried.").tag(config=True)
    short_errors = Bool(True, help="Show errors as short messages instead of tracebacks.").tag(
        config=True
    )
    numeric_as = Enum(
        ["decimal", "float"], "decimal", help="numeric columns as Decimal objects or float64."
    ).tag(config=True)
    token_ttl = Int(
        DEFAULT_TOKEN_TTL_SECONDS, help="Lifetime of each IAM token in seconds (connect only)."
    ).tag(config=True)
    sslmode = Unicode("verify-full", help="Default libpq sslmode for new connections.").tag(
        config=True
    )
    sslrootcert = Unicode(
        "system", help="Default CA for TLS verification: 'system' or a PEM file path."
    ).tag(config=True)
    dataframe = Enum(
        ["pandas", "polars"], "pandas", help="Result type: pandas, or polars when installed."
    ).tag(config=True)
    connect_timeout = Int(
        30, help="Seconds to wait for a connection (an idle cluster wakes up slowly)."
    ).tag(config=True)
    backoff_base = Float(0.02, help="First OCC retry delay in seconds (doubles each time).").tag(
        config=True
    )
    # DPU tracking (dsql_magic.dpu): price for cost estimates, the badge, CloudWatch.
    dpu_price_usd = Float(8e-6, help="USD per DPU for cost estimates (0 hides costs).").tag(
        config=True
    )
    dpu_badge = Bool(True, help="Show a small DPU badge under each cell that used DSQL.").tag(
        config=True
    )
    dpu_cloudwatch = Bool(True, help="Track real clusters' DPU from CloudWatch (per minute).").tag(
        config=True
    )
    cloudwatch_endpoint_url = Unicode("", help="CloudWatch endpoint override (emulator).").tag(
        config=True
    )

    def __init__(self, shell: Any = None, **kwargs: Any) -> None:
        super().__init__(shell=shell, **kwargs)
        self.registry = ConnectionRegistry()
        self.minter = TokenMinter()
        DsqlMagicError.short = self.short_errors

    # ---- traits ----------------------------------------------------------------------------
    @validate("displaylimit", "max_retries", "connect_timeout")
    def _non_negative(self, proposal: Any) -> int:
        value = int(proposal["value"])
        if value < 0:
            raise DsqlMagicError(f"{proposal['trait'].name} must be 0 or more, not {value}")
        return value

    @validate("token_ttl")
    def _valid_ttl(self, proposal: Any) -> int:
        return check_ttl(proposal["value"])

    @validate("dataframe")
    def _valid_dataframe(self, proposal: Any) -> str:
        if proposal["value"] == "polars":
            try:
                importlib.import_module("polars")
            except ImportError:
                raise UsageProblem(
                    "polars is not installed", "pip install 'dsql-magic[polars]'"
                ) from None
        return str(proposal["value"])

    @observe("short_errors")
    def _short_changed(self, change: Any) -> None:
        DsqlMagicError.short = bool(change["new"])

    # ---- the magic ---------------------------------------------------------------------------
    @no_var_expand
    @magic_arguments()
    @argument("var", nargs="?", help="Store the result in this Python variable (cell form).")
    @argument("--conn", help="Run on this named connection instead of the current one.")
    @argument("--limit", type=int, help="Rows to display for this cell.")
    @argument("--no-retry", action="store_true", help="Do not retry OCC conflicts.")
    @argument("--readonly", action="store_true", help="Run the cell in BEGIN READ ONLY.")
    @argument("--explain", nargs="?", const="plan", help="Show the plan ('analyze': run it).")
    @argument("--dpu", action="store_true", help="Also estimate DPU (EXPLAIN ANALYZE VERBOSE).")
    @line_cell_magic
    def dsql(self, line: str, cell: str | None = None) -> object:
        """Run SQL on Aurora DSQL, or a subcommand.

        Query forms::

            %%dsql [VAR] [--conn NAME] [--limit N] [--no-retry] [--readonly]
            SELECT ... WHERE id = :python_var;

            df = %dsql [--conn NAME] SELECT ...

        ``:name`` binds the Python variable ``name`` as a server-side parameter (``::`` casts
        are not parameters). The last result set is returned as a DataFrame; statements without
        results show their command tags. OCC conflicts (40001) are retried when safe.

        Subcommands (``%dsql NAME --help`` for each)::

            %dsql connect [TARGET] [--name N] [--region R] [--user U] [--profile P]
                          [--port 5432] [--hostaddr ADDR] [--token-ttl SECONDS]
                          [--sslmode verify-full] [--sslrootcert system|PATH] [--emulator]
            %dsql connections          list connections (no secrets)
            %dsql use NAME             make NAME the current connection
            %dsql close [NAME]         close one (default: current) connection
            %dsql clusters [--region R] [--profile P]   list clusters (control plane)

            %dsql explain [--analyze] [--keep] [--compare] SQL   plan as a widget
            %dsql dpu [--plot] [--clear]   DPU per cell (ledger) and session totals
            %%dsql --explain [analyze]     explain the cell instead of running it
            %%dsql --dpu                   also estimate the cell's DPU (runs it twice)

        Other parts register more subcommands (jobs, wait, emulator).
        Configuration: ``%config DsqlMagic`` lists the options.
        """
        word, _, rest = line.strip().partition(" ")
        if word in SUBCOMMANDS:
            return resolve_handler(word)(self, rest.strip(), cell)
        if line.strip() in ("--help", "-h", "help"):
            return Message(inspect.cleandoc(self.dsql.__doc__ or _USAGE))
        if cell is None:
            if not line.strip():
                return Message(_USAGE)
            options, sql = split_line_options(line)
            return self.run_query(sql, **options)
        args = parse_argstring(self.dsql, line) if line.strip() else _NO_CELL_ARGS
        if args.explain not in (None, "plan", "analyze"):  # `--explain VAR`: VAR is the variable
            args.var, args.explain = args.var or args.explain, "plan"
        if args.var is not None and not _IDENT_RE.match(args.var):
            raise UsageProblem(
                f"{args.var!r} is not a valid variable name", "use %%dsql NAME with NAME a word"
            )
        if args.explain:
            from dsql_magic.explain.magic import explain_cell

            return explain_cell(self, cell, mode=args.explain, conn=args.conn, var=args.var)
        return self.run_query(
            cell,
            var=args.var,
            conn=args.conn,
            limit=args.limit,
            no_retry=args.no_retry,
            readonly=args.readonly,
            dpu=args.dpu,
        )

    # ---- query path ----------------------------------------------------------------------
    def run_query(
        self,
        sql: str,
        *,
        var: str | None = None,
        conn: str | None = None,
        limit: int | None = None,
        no_retry: bool = False,
        readonly: bool = False,
        dpu: bool = False,
    ) -> object:
        """Run a cell's SQL and return what the cell shows (or store it in ``var``)."""
        connection = self.registry.get(conn)
        statements = parse_cell(sql, readonly=readonly)
        policy = RetryPolicy(
            enabled=self.autoretry and not no_retry,
            max_retries=self.max_retries,
            base=self.backoff_base,
        )
        namespace = self.shell.user_ns if self.shell is not None else {}
        from dsql_magic.dpu.command import begin_cell

        with begin_cell(self, connection, statements, namespace, estimate=dpu):
            outcome = run_cell(connection, statements, namespace, retry=policy)
        result = self.present(outcome, self.displaylimit if limit is None else limit)
        if var:
            namespace[var] = result
            notes = outcome.notes
            return Message("\n".join(notes)) if notes else None
        return result

    def present(self, outcome: CellOutcome, limit: int) -> object:
        """The cell's output for an outcome: a DataFrame (last result set) or command tags."""
        if outcome.columns is None:
            return CommandResult(outcome.tags, outcome.notes)
        notes = [*outcome.tags_after_result, *outcome.notes]
        if self.dataframe == "polars":
            for note in notes:  # a polars frame cannot carry them
                print(note)
            return to_polars(outcome.columns, outcome.rows)
        df = to_dataframe(outcome.columns, outcome.rows, numeric_as=self.numeric_as, cls=DsqlFrame)
        return DsqlFrame.wrap(df, limit=limit or None, notes=notes)

    def close_all(self) -> None:
        """Close every connection (``%unload_ext dsql_magic``)."""
        self.registry.close_all()


_USAGE = (
    "usage: %dsql connect TARGET | %dsql SELECT ... | %%dsql [VAR] + SQL cell\n"
    "       subcommands: " + ", ".join(SUBCOMMANDS) + " (see %dsql?)"
)


def split_line_options(line: str) -> tuple[dict[str, Any], str]:
    """Leading ``--options`` of a line-form query, and the SQL after them (left untouched)."""
    options: dict[str, Any] = {}
    rest = line.lstrip()
    while rest.startswith("--"):
        word, _, after = rest.partition(" ")
        if word not in _QUERY_OPTIONS:
            break  # e.g. a SQL comment "-- note"
        key = word[2:].replace("-", "_")
        if _QUERY_OPTIONS[word]:
            value, _, after = after.lstrip().partition(" ")
            if not value:
                raise UsageProblem(f"{word} needs a value", f"e.g. %dsql {word} NAME SELECT 1")
            if key == "limit":
                try:
                    options[key] = int(value)
                except ValueError:
                    raise UsageProblem(f"--limit {value!r} is not a number") from None
            else:
                options[key] = value
        else:
            options[key] = True
        rest = after.lstrip()
    return options, rest


# ---- core subcommands -------------------------------------------------------------------------
def _connect_parser() -> argparse.ArgumentParser:
    p = make_parser("connect", "Connect to an Aurora DSQL cluster with an IAM token.")
    p.add_argument(
        "target",
        nargs="?",
        help="cluster endpoint, cluster id, or postgresql:// URL (default: $DSQL_ENDPOINT)",
    )
    p.add_argument("--name", help="connection name (default: the cluster id or host)")
    p.add_argument("--region", help="AWS region (default: from the endpoint or AWS config)")
    p.add_argument("--user", help="database role (default: admin)")
    p.add_argument("--profile", help="AWS profile (default: $AWS_PROFILE or the default chain)")
    p.add_argument("--port", type=int, help="port (default: 5432)")
    p.add_argument("--hostaddr", help="IP address to dial; TLS still verifies the endpoint name")
    p.add_argument("--token-ttl", type=int, help="token lifetime in seconds (default: 900)")
    p.add_argument("--sslmode", help="libpq sslmode (default: verify-full)")
    p.add_argument("--sslrootcert", help="'system' or a CA file (default: system)")
    p.add_argument("--emulator", action="store_true", help="connect to the local emulator")
    p.add_argument("--data-dir", help="emulator data directory (default: per-user, persistent)")
    p.add_argument("--ephemeral", action="store_true", help="emulator with temporary data")
    return p


def cmd_connect(magic: DsqlMagic, args: str, cell: str | None) -> object:
    """``%dsql connect``: open (eagerly) and register a named connection."""
    ns = parse_args(_connect_parser(), args)
    if isinstance(ns, Message):
        return ns
    options = ConnectOptions(
        target=ns.target,
        name=ns.name,
        region=ns.region,
        user=ns.user,
        profile=ns.profile or os.environ.get("AWS_PROFILE") or None,
        port=ns.port,
        hostaddr=ns.hostaddr,
        token_ttl=check_ttl(ns.token_ttl if ns.token_ttl is not None else magic.token_ttl),
        sslmode=ns.sslmode or magic.sslmode,
        sslrootcert=ns.sslrootcert or magic.sslrootcert,
    )
    if ns.emulator:
        target = _emulator_target(options, data_dir=ns.data_dir, ephemeral=ns.ephemeral)
    else:
        target = _cluster_target(magic, options)
    name = options.name or target.label or target.cluster_id or target.host
    connection = DsqlConnection(name, target, magic.minter, connect_timeout=magic.connect_timeout)
    connection.open()
    magic.registry.add(connection)
    return Message(
        f"connected to {connection.display_host} as {target.user} ({target.region}); "
        f"connection {name!r} is current"
    )


def _emulator_target(
    options: ConnectOptions, *, data_dir: str | None = None, ephemeral: bool = False
) -> ConnectTarget:
    try:
        support = importlib.import_module("dsql_magic.emulator.magic_support")
    except ImportError:
        raise UsageProblem(
            "the emulator is not available", "pip install 'dsql-magic[emulator]'"
        ) from None
    return support.connect_target(options, data_dir=data_dir, ephemeral=ephemeral)


def _cluster_target(magic: DsqlMagic, options: ConnectOptions) -> ConnectTarget:
    raw = options.target or os.environ.get("DSQL_ENDPOINT", "")
    env_region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
    endpoint = parse_target(
        raw,
        region=options.region,
        user=options.user,
        port=options.port,
        default_region=env_region or _configured_region(magic, options.profile),
    )
    return ConnectTarget.from_endpoint(
        endpoint,
        hostaddr=options.hostaddr,
        sslmode=options.sslmode,
        sslrootcert=options.sslrootcert,
        profile=options.profile,
        token_ttl=options.token_ttl,
    )


def _configured_region(magic: DsqlMagic, profile: str | None) -> str | None:
    try:
        return magic.minter.default_region(profile)
    except Exception:  # no AWS config at all: the region must come from elsewhere
        return None


def cmd_connections(magic: DsqlMagic, args: str, cell: str | None) -> object:
    """``%dsql connections``: name, endpoint, user, region, age, state (no secrets)."""
    return table(magic.registry.describe(), "no connections (use %dsql connect)")


def cmd_use(magic: DsqlMagic, args: str, cell: str | None) -> object:
    """``%dsql use NAME``: make NAME the current connection."""
    name = args.strip()
    if not name:
        raise UsageProblem("which connection?", "usage: %dsql use NAME (see %dsql connections)")
    magic.registry.use(name)
    return Message(f"using connection {name!r}")


def cmd_close(magic: DsqlMagic, args: str, cell: str | None) -> object:
    """``%dsql close [NAME]``: close one connection (default: the current one)."""
    closed = magic.registry.close(args.strip() or None)
    current = magic.registry.current
    after = f"; current is now {current!r}" if current else ""
    return Message(f"closed connection {closed!r}{after}")
