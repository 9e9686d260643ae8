"""Column types → pandas dtypes against real PostgreSQL 16, and the DsqlFrame display."""

from __future__ import annotations

import datetime as dt
import decimal
import uuid
from typing import Any

import pandas as pd

from dsql_magic.results import Column, CommandResult, DsqlFrame, to_dataframe
from tests.fix_pg import PgServer

TYPED = """
SELECT * FROM (VALUES
  (1::int2, 2::int4, 9007199254740993::int8, 1.5::float8, 12.345::numeric(10,3), true,
   'x'::text, '2026-01-02 03:04:05+02'::timestamptz, '2026-01-02 03:04:05'::timestamp,
   '2026-01-02'::date, 'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11'::uuid, '1 day 2 hours'::interval,
   '{"a": 1}'::jsonb),
  (NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL)
) AS v(i2, i4, i8, f8, num, b, t, tstz, ts, d, u, iv, j)
"""


def test_dtypes_are_faithful(connected: PgServer, magic: Any) -> None:
    df = magic(TYPED)
    assert isinstance(df, pd.DataFrame)
    dtypes = {k: str(v) for k, v in df.dtypes.items()}
    assert dtypes["i2"] == dtypes["i4"] == dtypes["i8"] == "Int64"
    assert df["i8"][0] == 9007199254740993  # exact: no trip through float
    assert df["i8"].isna()[1]
    assert dtypes["f8"] == "float64"
    assert dtypes["b"] == "boolean"
    assert df["num"][0] == decimal.Decimal("12.345") and isinstance(df["num"][0], decimal.Decimal)
    assert str(df["tstz"].dtype.tz) == "UTC"
    assert df["tstz"][0] == pd.Timestamp("2026-01-02 01:04:05", tz="UTC")
    assert df["ts"].dtype.kind == "M" and getattr(df["ts"].dtype, "tz", None) is None
    assert df["d"][0] == dt.date(2026, 1, 2)
    assert df["u"][0] == uuid.UUID("a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11")
    assert df["iv"][0] == pd.Timedelta(days=1, hours=2)
    assert df["j"][0] == {"a": 1}
    assert df["t"][0] == "x" and df["t"].isna()[1]


def test_numeric_as_float(connected: PgServer, magic: Any, dsql: Any) -> None:
    dsql.numeric_as = "float"
    df = magic("SELECT 1.25::numeric AS n UNION ALL SELECT NULL")
    assert str(df["n"].dtype) == "float64" and df["n"][0] == 1.25


def test_empty_result_keeps_columns_and_types(connected: PgServer, magic: Any) -> None:
    df = magic("SELECT 1::int8 AS a, 'x'::text AS b WHERE false")
    assert list(df.columns) == ["a", "b"] and len(df) == 0 and str(df["a"].dtype) == "Int64"


def test_duplicate_column_names_survive(connected: PgServer, magic: Any) -> None:
    df = magic("SELECT 1 AS a, 2 AS a")
    assert list(df.columns) == ["a", "a"]


def test_display_limit_note_and_full_frame() -> None:
    df = to_dataframe([Column("n", 23)], [(i,) for i in range(25)])
    frame = DsqlFrame.wrap(df, limit=10, notes=["succeeded after 1 retry"])
    assert len(frame) == 25
    text = repr(frame)
    assert "showing 10 of 25 rows" in text and "succeeded after 1 retry" in text
    assert "24" not in text.split("showing")[0].split()  # row 24 is not displayed
    html = frame._repr_html_()
    assert html is not None and "showing 10 of 25 rows" in html
    # Anything derived is a plain DataFrame with pandas' own display.
    assert type(frame.head(3)) is pd.DataFrame and type(frame[frame["n"] > 3]) is pd.DataFrame
    small = DsqlFrame.wrap(df.head(5), limit=10)
    assert "showing" not in repr(small)


def test_command_result_display() -> None:
    res = CommandResult(["CREATE TABLE", "INSERT 0 3"], ["note"])
    assert repr(res) == "CREATE TABLE\nINSERT 0 3\nnote"
    assert "INSERT 0 3" in res._repr_html_()


def test_arrays_and_records_stay_whole(connected: PgServer, magic: Any) -> None:
    df = magic("SELECT ARRAY[1, 2] AS a, ROW(1, 'x') AS r UNION ALL SELECT ARRAY[3], NULL")
    assert df["a"][0] == [1, 2] and df["a"][1] == [3]
    assert len(df) == 2 and df["r"].isna()[1]
