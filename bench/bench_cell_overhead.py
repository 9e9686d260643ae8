"""Per-cell overhead: ``%%dsql SELECT 1`` against the other ways to run one tiny query.

All methods hit the same embedded PostgreSQL over TCP loopback. ``raw psycopg`` and
``psycopg + DataFrame`` use the magic's own connection. Targets (issue 2): under 0.5 ms above
psycopg + DataFrame, and at least 2x faster than JupySQL.
"""

from __future__ import annotations

import pandas as pd

from bench._pg import compare, running, table


def run(quick: bool) -> str:
    n = 200 if quick else 2000
    with running() as b:
        conn = b.magic_connection()
        shell = b.shell

        def raw() -> object:
            with conn.cursor() as cur:
                cur.execute("SELECT 1")
                return cur.fetchall()

        def raw_df() -> object:
            with conn.cursor() as cur:
                cur.execute("SELECT 1")
                cols = [d.name for d in cur.description or ()]
                return pd.DataFrame.from_records(cur.fetchall(), columns=cols)

        def magic() -> object:
            return shell.run_cell_magic("dsql", "", "SELECT 1")

        import sqlalchemy

        engine = sqlalchemy.create_engine(b.sqlalchemy_url())
        sa_conn = engine.connect()

        def read_sql() -> object:
            return pd.read_sql("SELECT 1", sa_conn)

        shell.run_line_magic("load_ext", "sql")
        shell.run_line_magic("config", "SqlMagic.displaycon = False")
        shell.run_line_magic("config", "SqlMagic.feedback = 0")
        shell.run_line_magic("sql", b.sqlalchemy_url())

        def jupysql() -> object:
            return shell.run_line_magic("sql", "SELECT 1")

        fast = compare({"raw": raw, "df": raw_df, "magic": magic}, n)
        slow = compare({"jupysql": jupysql, "read": read_sql}, max(n // 4, 50))
        t_raw, t_df, t_magic = fast["raw"], fast["df"], fast["magic"]
        t_jupy, t_read = slow["jupysql"], slow["read"]
        sa_conn.close()
        engine.dispose()

    def vs(t: float) -> str:
        return f"{t / t_df:.2f}x psycopg+DataFrame"

    rows = [
        ("raw psycopg (execute + fetchall)", t_raw, f"{t_raw / t_df:.2f}x"),
        ("psycopg + DataFrame.from_records (baseline)", t_df, "1.00x"),
        ("`%%dsql SELECT 1`", t_magic, vs(t_magic)),
        ("JupySQL `%sql SELECT 1`", t_jupy, vs(t_jupy)),
        ("`pandas.read_sql` (SQLAlchemy + psycopg)", t_read, vs(t_read)),
    ]
    over = (t_magic - t_df) * 1000
    verdict = [
        f"- `%%dsql` overhead above psycopg + DataFrame: **{over:.3f} ms** (target < 0.5 ms): "
        + ("met" if over < 0.5 else "NOT met"),
        f"- JupySQL / `%%dsql`: **{t_jupy / t_magic:.1f}x** (target >= 2x): "
        + ("met" if t_jupy / t_magic >= 2 else "NOT met"),
        f"- `pandas.read_sql` / `%%dsql`: {t_read / t_magic:.1f}x",
    ]
    return "\n".join(
        [
            "## Per-cell overhead (`SELECT 1`)",
            "",
            f"Mean per call, best of 7 interleaved rounds of {n} calls; same server, TCP loopback.",
            "",
            table(rows),
            "",
            *verdict,
        ]
    )
