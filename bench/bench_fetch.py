"""Fetching into a DataFrame: 100 rows and 1,000,000 rows x 7 mixed columns.

Compared with psycopg ``fetchall`` + ``DataFrame.from_records`` (the baseline) and
``pandas.read_sql`` over SQLAlchemy. Targets (issue 2): within 1.2x of the baseline and ahead of
``pandas.read_sql``. ``--quick`` fetches 100,000 rows instead of 1,000,000.
"""

from __future__ import annotations

from collections.abc import Callable

import pandas as pd

from bench._pg import compare, running, table

SETUP = """
DROP TABLE IF EXISTS bench_fetch;
CREATE TABLE bench_fetch AS
SELECT g::int8 AS id,
       (g % 1000)::int4 AS small,
       g * 0.5::float8 AS ratio,
       (g % 100000)::numeric(12, 2) / 7 AS amount,
       'name-' || g AS label,
       timestamptz '2026-01-01' + g * interval '1 second' AS at,
       g % 2 = 0 AS flag
FROM generate_series(1, %(n)s) AS g;
ALTER TABLE bench_fetch ADD PRIMARY KEY (id);
ANALYZE bench_fetch;
"""


def run(quick: bool) -> str:
    big = 100_000 if quick else 1_000_000
    sections = ["## Fetch into a DataFrame (7 mixed columns)", ""]
    with running() as b:
        conn = b.magic_connection()
        with conn.cursor() as cur:
            cur.execute(SETUP.replace("%(n)s", str(big)))
        import sqlalchemy

        engine = sqlalchemy.create_engine(b.sqlalchemy_url())
        sa_conn = engine.connect()
        shell = b.shell
        for rows, label in ((100, "100 rows"), (big, f"{big:,} rows")):
            sql = f"SELECT * FROM bench_fetch ORDER BY id LIMIT {rows}"

            def baseline(sql: str = sql) -> object:
                with conn.cursor() as cur:
                    cur.execute(sql)
                    cols = [d.name for d in cur.description or ()]
                    return pd.DataFrame.from_records(cur.fetchall(), columns=cols)

            def magic(sql: str = sql) -> object:
                return shell.run_cell_magic("dsql", "", sql)

            def read_sql(sql: str = sql) -> object:
                return pd.read_sql(sql, sa_conn)

            fns: dict[str, Callable[[], object]] = {
                "base": baseline,
                "magic": magic,
                "read": read_sql,
            }
            if rows <= 1000:
                t = compare(fns, 100 if quick else 300)
            else:
                t = compare(fns, 1, repeat=3 if quick else 5)
            t_base, t_magic, t_read = t["base"], t["magic"], t["read"]
            sections += [
                f"### {label}",
                "",
                table(
                    [
                        ("psycopg fetchall + DataFrame.from_records (baseline)", t_base, "1.00x"),
                        (
                            "`%%dsql` (typed: Int64, Decimal, UTC, boolean)",
                            t_magic,
                            f"{t_magic / t_base:.2f}x",
                        ),
                        (
                            "`pandas.read_sql` (SQLAlchemy + psycopg)",
                            t_read,
                            f"{t_read / t_base:.2f}x",
                        ),
                    ]
                ),
                "",
                f"- `%%dsql` / baseline: **{t_magic / t_base:.2f}x** (target <= 1.2x): "
                + ("met" if t_magic / t_base <= 1.2 else "NOT met")
                + f"; `%%dsql` vs `read_sql`: {'ahead' if t_magic < t_read else 'behind'}"
                f" ({t_read / t_magic:.2f}x)",
                "",
            ]
        sa_conn.close()
        engine.dispose()
    sections.append(
        "The baseline's dtypes are less faithful (int columns with NULLs become float64, "
        "booleans with NULLs object); `%%dsql` converts by SQL type."
    )
    return "\n".join(sections)
