"""The manual's role model and IAM mapping, through the hooks, on a real PostgreSQL 16."""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import Awaitable, Callable

import pytest
from hypothesis import given
from hypothesis import strategies as st

from dsql_magic.emulator.engine import Engine
from dsql_magic.emulator.errors import DsqlError
from dsql_magic.emulator.iam import VerifiedIdentity
from dsql_magic.emulator.policy import make_hook
from dsql_magic.emulator.roles import (
    MAPPING_COLUMNS,
    is_iam_arn,
    parse_iam_command,
    principal_arns,
)
from tests.fix_dialect_pg import HookSession, hook_session

ARN = "arn:aws:iam::012345678912:role/example"


def _identity(arn: str | None, user: str) -> VerifiedIdentity:
    return VerifiedIdentity(
        access_key_id="AKIAEXAMPLEEXAMPLE00",
        arn=arn,
        action="DbConnect",
        user=user,
        host="localhost",
        expires_at=dt.datetime.now(dt.timezone.utc) + dt.timedelta(minutes=15),
    )


def _run(
    engine: Engine,
    scenario: Callable[[HookSession], Awaitable[None]],
    user: str = "admin",
    identity: object = None,
) -> None:
    async def main() -> None:
        async with hook_session(engine, [make_hook()], user, identity=identity) as s:
            await scenario(s)

    asyncio.run(main())


async def _fails(s: HookSession, sql: str) -> DsqlError:
    with pytest.raises(DsqlError) as info:
        await s.run(sql)
    return info.value


def test_manual_role_example_and_mappings_view(dialect_engine: Engine) -> None:
    async def scenario(s: HookSession) -> None:
        await s.run("CREATE ROLE example WITH LOGIN")
        tag = await s.run(f"AWS IAM GRANT example TO '{ARN}'")
        assert tag == "AWS IAM GRANT"
        await s.run("CREATE SCHEMA myschema")
        await s.run("GRANT USAGE ON SCHEMA myschema TO example")
        await s.run("GRANT SELECT, INSERT, UPDATE ON ALL TABLES IN SCHEMA myschema TO example")
        rows = await s.rows("SELECT * FROM sys.iam_pg_role_mappings WHERE pg_role_name = 'example'")
        assert len(rows) == 1
        iam_oid, arn, role_oid, role_name, grantor_oid, grantor = rows[0]
        assert (arn, role_name, grantor) == (ARN, "example", "admin")
        assert iam_oid and role_oid and grantor_oid
        cols = await s._internal("SELECT * FROM sys.iam_pg_role_mappings LIMIT 0")
        assert cols[-1].columns == MAPPING_COLUMNS
        err = await _fails(s, "DROP ROLE example")
        assert err.sqlstate == "2BP01"
        assert err.message == "role example cannot be dropped because some objects depend on it"
        assert await s.run(f"AWS IAM REVOKE example FROM '{ARN}'") == "AWS IAM REVOKE"
        assert await s.rows(
            "SELECT count(*) FROM sys.iam_pg_role_mappings WHERE pg_role_name = 'example'"
        ) == [("0",)]
        await s.run("REVOKE ALL ON ALL TABLES IN SCHEMA myschema FROM example")
        await s.run("REVOKE USAGE ON SCHEMA myschema FROM example")
        await s.run("DROP ROLE example")

    _run(dialect_engine, scenario)


def test_iam_grant_errors(dialect_engine: Engine) -> None:
    async def scenario(s: HookSession) -> None:
        await s.run("CREATE ROLE nologin_r")
        err = await _fails(s, f"AWS IAM GRANT nologin_r TO '{ARN}'")
        assert err.message == "role nologin_r must have the LOGIN attribute"
        err = await _fails(s, f"AWS IAM GRANT no_such_role TO '{ARN}'")
        assert err.message == 'role "no_such_role" does not exist'
        await s.run("CREATE ROLE arn_r WITH LOGIN")
        err = await _fails(s, "AWS IAM GRANT arn_r TO 'not-an-arn'")
        assert err.message == "IAM role must look like an IAM ARN"
        err = await _fails(s, "AWS IAM GRANT arn_r TO 'arn:aws:s3:::bucket'")
        assert err.message == "IAM role must look like an IAM ARN"
        err = await _fails(s, f"AWS IAM GRANT arn_r FROM '{ARN}'")
        assert err.sqlstate == "42601"
        err = await _fails(s, f"AWS IAM REVOKE arn_r FROM '{ARN}'")
        assert err.sqlstate == "42704"

    _run(dialect_engine, scenario)


def test_iam_grant_needs_admin_and_non_admin_limits(dialect_engine: Engine) -> None:
    async def setup(s: HookSession) -> None:
        await s.run("CREATE ROLE plain_user WITH LOGIN")

    _run(dialect_engine, setup)

    async def as_plain(s: HookSession) -> None:
        err = await _fails(s, f"AWS IAM GRANT plain_user TO '{ARN}'")
        assert (err.sqlstate, err.message) == (
            "42501",
            "permission denied to grant IAM trust with role plain_user",
        )
        err = await _fails(s, "CREATE SCHEMA mine")
        assert (err.sqlstate, err.message) == ("42501", "permission denied for database postgres")
        err = await _fails(s, "CREATE TABLE public.mine (id int PRIMARY KEY)")
        assert err.sqlstate == "42501"

    _run(dialect_engine, as_plain, user="plain_user")


def test_admin_cannot_be_changed(dialect_engine: Engine) -> None:
    async def scenario(s: HookSession) -> None:
        for sql in (
            "ALTER ROLE admin WITH NOLOGIN",
            "ALTER ROLE admin SET search_path = other",
            "ALTER ROLE admin RENAME TO boss",
            "DROP ROLE admin",
        ):
            err = await _fails(s, sql)
            assert (err.sqlstate, err.message) == ("42501", "permission denied to alter role")

    _run(dialect_engine, scenario)


def test_iam_grant_rolls_back_with_its_transaction(dialect_engine: Engine) -> None:
    async def scenario(s: HookSession) -> None:
        await s.run("CREATE ROLE txn_r WITH LOGIN")
        await s.run("BEGIN")
        await s.run(f"AWS IAM GRANT txn_r TO '{ARN}'")
        err = await _fails(s, "CREATE TABLE after_iam (id int PRIMARY KEY)")
        assert err.message == "multiple ddl statements not supported in a transaction"
        assert await s.run("COMMIT") == "ROLLBACK"
        assert await s.rows(
            "SELECT count(*) FROM sys.iam_pg_role_mappings WHERE pg_role_name = 'txn_r'"
        ) == [("0",)]

    _run(dialect_engine, scenario)


def test_custom_role_connects_only_when_mapped(dialect_engine: Engine) -> None:
    mapped = "arn:aws:iam::111122223333:role/Analyst"

    async def setup(s: HookSession) -> None:
        await s.run("CREATE ROLE analyst WITH LOGIN")
        await s.run(f"AWS IAM GRANT analyst TO '{mapped}'")

    _run(dialect_engine, setup)

    async def ok(s: HookSession) -> None:
        assert await s.rows("SELECT current_user") == [("analyst",)]

    _run(dialect_engine, ok, "analyst", _identity(mapped, "analyst"))
    assumed = "arn:aws:sts::111122223333:assumed-role/Analyst/notebook-session"
    _run(dialect_engine, ok, "analyst", _identity(assumed, "analyst"))
    with pytest.raises(DsqlError) as info:
        other = "arn:aws:iam::111122223333:role/Other"
        _run(dialect_engine, ok, "analyst", _identity(other, "analyst"))
    assert info.value.fatal
    assert (info.value.sqlstate, info.value.message) == (
        "28000",
        "unable to accept connection, access denied",
    )


def test_parse_iam_command_on_tokens() -> None:
    cmd = parse_iam_command(f"AWS IAM GRANT \"My Role\" TO '{ARN}';")
    assert (cmd.action, cmd.role, cmd.arn) == ("GRANT", "My Role", ARN)
    cmd = parse_iam_command(f"aws iam revoke Example /* c */ from '{ARN}'")
    assert (cmd.action, cmd.role, cmd.tag) == ("REVOKE", "example", "AWS IAM REVOKE")
    for bad in (
        "AWS IAM GRANT TO 'x'",
        f"AWS IAM GRANT r TO '{ARN}' extra",
        "AWS IAM GRANT r TO arn",
        f"AWS IAM GRANT 'r' TO '{ARN}'",
    ):
        with pytest.raises(DsqlError) as info:
            parse_iam_command(bad)
        assert info.value.sqlstate == "42601"


def test_arn_shapes() -> None:
    assert is_iam_arn(ARN)
    assert is_iam_arn("arn:aws:iam::012345678912:user/alice")
    assert is_iam_arn("arn:aws-us-gov:iam::012345678912:role/path/to/r")
    for bad in (
        "arn:aws:iam::12345:role/x",
        "arn:aws:iam:us-east-1:012345678912:role/x",
        "arn:aws:sts::012345678912:assumed-role/x/y",
        "arn:aws:iam::012345678912:group/x",
        "arn:aws:iam::012345678912:role/",
    ):
        assert not is_iam_arn(bad), bad
    assert "arn:aws:iam::1:role/R" in principal_arns("arn:aws:sts::1:assumed-role/R/s")


@given(
    role=st.from_regex(r"[a-z_][a-z0-9_]{0,20}", fullmatch=True),
    name=st.from_regex(r"[A-Za-z0-9+=,.@_-]{1,30}", fullmatch=True),
    account=st.from_regex(r"[0-9]{12}", fullmatch=True),
    action=st.sampled_from(["GRANT", "REVOKE"]),
)
def test_parse_iam_command_round_trip(role: str, name: str, account: str, action: str) -> None:
    arn = f"arn:aws:iam::{account}:role/{name}"
    word = "TO" if action == "GRANT" else "FROM"
    cmd = parse_iam_command(f"AWS IAM {action} \"{role}\" {word} '{arn}'")
    assert (cmd.action, cmd.role, cmd.arn) == (action, role, arn)
    assert is_iam_arn(cmd.arn)


@given(st.text(max_size=80))
def test_parse_iam_command_never_crashes(tail: str) -> None:
    try:
        parse_iam_command("AWS IAM GRANT " + tail)
    except DsqlError as err:
        assert err.sqlstate == "42601"


def test_admin_is_not_a_superuser(dialect_engine: Engine) -> None:
    """admin owns public and creates schemas and roles, but cannot change others' objects."""

    async def setup(s: HookSession) -> None:
        assert await s.rows(
            "SELECT rolsuper, rolcreaterole FROM pg_roles WHERE rolname = 'admin'"
        ) == [("f", "t")]
        assert await s.rows(
            "SELECT nspowner::regrole::text FROM pg_namespace WHERE nspname = 'public'"
        ) == [("admin",)]
        await s.run("CREATE ROLE owner_r WITH LOGIN")
        await s.run("CREATE SCHEMA owner_s")
        await s.run("GRANT USAGE, CREATE ON SCHEMA owner_s TO owner_r")
        for sql in (
            "GRANT CREATE ON SCHEMA public TO owner_r",
            "GRANT ALL ON SCHEMA public TO owner_r",
        ):
            err = await _fails(s, sql)
            assert (err.sqlstate, err.message) == ("42501", "permission denied for schema public")
        await s.run("GRANT USAGE ON SCHEMA public TO owner_r")

    _run(dialect_engine, setup)

    async def as_owner(s: HookSession) -> None:
        await s.run("CREATE TABLE owner_s.mine (id int PRIMARY KEY)")

    _run(dialect_engine, as_owner, user="owner_r")

    async def admin_again(s: HookSession) -> None:
        err = await _fails(s, "ALTER TABLE owner_s.mine ADD COLUMN x int")
        assert err.sqlstate == "42501"  # must be owner of table mine

    _run(dialect_engine, admin_again)
