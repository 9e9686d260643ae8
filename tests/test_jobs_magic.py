"""``%dsql jobs`` and ``%dsql wait`` through a real IPython shell against the emulator."""

from __future__ import annotations

import re
from collections.abc import Iterator

import pandas as pd
import pytest
from IPython.core.interactiveshell import InteractiveShell

from dsql_magic.emulator import magic_support
from dsql_magic.errors import UsageProblem
from tests.fix_shell import Magic

pytestmark = [pytest.mark.emulator, pytest.mark.timeout(180)]


@pytest.fixture
def connected(magic: Magic) -> Iterator[Magic]:
    magic_support.stop()
    magic(line="connect --emulator --ephemeral")
    try:
        yield magic
    finally:
        magic_support.stop()


def _run(magic: Magic, sql: str) -> object:
    for _ in range(5):  # a catalog change elsewhere: OC001 once, then the retry works
        try:
            return magic(sql)
        except Exception as exc:  # the magic's own retry may be off for DDL
            if "OC001" not in str(exc):
                raise
    raise AssertionError(sql)


def test_jobs_and_wait(connected: Magic, capsys: pytest.CaptureFixture[str]) -> None:
    magic = connected
    _run(magic, "CREATE TABLE things (id int PRIMARY KEY, name text)")
    _run(magic, "INSERT INTO things SELECT g, 'n' || g FROM generate_series(1, 200) g")
    created = _run(magic, "CREATE INDEX ASYNC things_name ON things (name)")
    assert isinstance(created, pd.DataFrame)
    job_id = created["job_id"][0]
    assert re.fullmatch(r"[a-z2-7]{26}", job_id)
    done = magic(line=f"wait {job_id}")
    assert repr(done) == f"job {job_id} completed"
    assert f"job {job_id}" in capsys.readouterr().err  # the tqdm progress line
    frame = magic(line="jobs")
    assert isinstance(frame, pd.DataFrame)
    assert list(frame.columns) == [
        "job_id",
        "status",
        "details",
        "job_type",
        "class_id",
        "object_id",
        "object_name",
        "start_time",
        "update_time",
    ]
    row = frame[frame["job_id"] == job_id].iloc[0]
    assert (row["status"], row["job_type"], row["object_name"]) == (
        "completed",
        "INDEX_BUILD",
        "public.things_name",
    )
    builds = magic(line="jobs --type index_build")
    assert set(builds["job_type"]) == {"INDEX_BUILD"}


def test_wait_takes_a_variable(connected: Magic, ip: InteractiveShell) -> None:
    magic = connected
    _run(magic, "CREATE TABLE gadgets (id int PRIMARY KEY, name text)")
    # What a notebook holds after `%%dsql job`: the one-row DataFrame, or the id as a string.
    ip.user_ns["job"] = _run(magic, "CREATE INDEX ASYNC gadgets_name ON gadgets (name)")
    job_id = ip.user_ns["job"]["job_id"][0]
    assert repr(magic(line="wait job")) == f"job {job_id} completed"
    ip.user_ns["the_id"] = job_id
    assert repr(magic(line="wait the_id")) == f"job {job_id} completed"


def test_wait_reports_a_failed_build(connected: Magic) -> None:
    magic = connected
    _run(magic, "CREATE TABLE dup (id int PRIMARY KEY, email text)")
    _run(magic, "INSERT INTO dup VALUES (1, 'a'), (2, 'a')")
    job_id = _run(magic, "CREATE UNIQUE INDEX ASYNC dup_email ON dup (email)")["job_id"][0]
    out = magic(line=f"wait {job_id} --timeout 60")
    assert repr(out) == (
        f"job {job_id} failed: Found duplicate key while validating index for UCVs"
    )


def test_wait_refuses_bad_ids(connected: Magic) -> None:
    with pytest.raises(UsageProblem, match="not a job id"):
        connected(line="wait nope")
    with pytest.raises(UsageProblem, match="no job"):
        connected(line="wait aaaaaaaaaaaaaaaaaaaaaaaaaa")
