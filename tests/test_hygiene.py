"""No token anywhere: after connects, errors and queries, search every place a secret could leak.

Outputs (stdout/stderr of the cells), IPython history (inputs and outputs), the user namespace,
every log record at DEBUG (ours, psycopg's, botocore's), and the text, repr and rendering of every
exception raised, including their causes.
"""

from __future__ import annotations

import logging
from typing import Any

import pytest
from IPython.core.interactiveshell import InteractiveShell

from tests.fix_pg import PgServer

MARKERS = ("X-Amz-Signature", "X-Amz-Credential", "X-Amz-Security-Token", "Action=DbConnect")


def _exception_texts(exc: BaseException | None) -> list[str]:
    out: list[str] = []
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        out += [str(exc), repr(exc), repr(exc.args)]
        render = getattr(exc, "_render_traceback_", None)
        if render is not None:
            out += list(render())
        exc = exc.__cause__ or exc.__context__
    return out


def test_no_token_leaks_anywhere(
    pg_server: PgServer,
    ip: InteractiveShell,
    dsql: Any,
    caplog: pytest.LogCaptureFixture,
    capsys: pytest.CaptureFixture[str],
) -> None:
    caplog.set_level(logging.DEBUG)
    cells = [
        f"%dsql connect {pg_server.connect_line('--name main')}",
        f"%dsql connect {pg_server.connect_line('--name other --user analyst')}",
        "%dsql connections",
        "%dsql use main",
        "x = 5",
        "%%dsql result\nSELECT :x AS x, current_user AS u",
        "result",
        "%dsql SELECT * FROM no_such_table",
        f"%dsql connect {pg_server.connect_line('--name bad --user denied')}",
        f"%dsql connect {pg_server.connect_line('--name badtls --sslrootcert /nonexistent.pem')}",
        "%dsql connect nosuchcluster0000000000 --region us-east-1 --port 1 --hostaddr 127.0.0.1",
        "%%dsql\nBEGIN; SELECT 1/0; COMMIT",
        "%dsql SELECT pg_terminate_backend(pg_backend_pid())",
        "df = %dsql SELECT 1 AS one",
        "df",
        "%dsql close other",
    ]
    errors: list[BaseException] = []
    for cell in cells:
        res = ip.run_cell(cell, store_history=True)
        if res.error_in_exec is not None:
            errors.append(res.error_in_exec)
    assert len(errors) >= 5  # the failures above really happened
    assert int(ip.user_ns["df"]["one"][0]) == 1  # and the session still works
    captured = capsys.readouterr()
    places: dict[str, list[str]] = {
        "stdout": [captured.out],
        "stderr": [captured.err],
        "history": [
            str(entry) for entry in ip.history_manager.get_range(raw=True, output=True, stop=None)
        ],
        "output history": [repr(v) for v in ip.history_manager.output_hist.values()],
        "user_ns": [repr(v) for k, v in ip.user_ns.items() if not k.startswith("__")],
        "logs": [caplog.text] + [r.getMessage() for r in caplog.records],
        "exceptions": [t for e in errors for t in _exception_texts(e)],
        "objects": [
            repr(dsql),
            repr(dsql.registry.describe()),
            *(repr(dsql.registry.get(n)) for n in dsql.registry.names()),
            *(repr(dsql.registry.get(n).target) for n in dsql.registry.names()),
            *(repr(dsql.registry.get(n).raw) for n in dsql.registry.names()),
            *(str(dsql.registry.get(n).raw.info.dsn) for n in dsql.registry.names()),
        ],
    }
    password = dsql.registry.get("main").raw.info.password
    assert password and "X-Amz-Signature" in password  # the connection did use a token
    for place, texts in places.items():
        for text in texts:
            for marker in (*MARKERS, password):
                assert marker not in text, f"{marker[:20]}... leaked into {place}"
