"""The operation store against a real PostgreSQL: one fresh database per test (tests/fixtures/pg.py)."""

from __future__ import annotations

import asyncio
import socket
from datetime import UTC, datetime
from typing import Any

import asyncpg
import pytest

from domain.operations import OperationSource, OpsState, ReasonCategory
from domain.opscodes import OpsCode
from houyi.port import CallRecorder, HouyiCallRecord
from store.db import Migration, create_pool, load_migrations, migrate
from store.errors import OperationNotFound, StoreConflict, StoreError, StoreUnavailable, translated_errors
from store.repository import TABLES, AuditEntry, AuditResult, NewOperation, OperationStore

HOST_A = "10.0.0.1"
HOST_B = "10.0.0.2"
HOST_C = "10.0.0.3"


def new_operation(workflow_id: str, **overrides: Any) -> NewOperation:
    fields: dict[str, Any] = {
        "workflow_id": workflow_id,
        "run_id": "run-1",
        "opscode": OpsCode.NC_LOCK,
        "workflow_type": "NcLock",
        "hosts": [HOST_A],
        "nc_ids": ["14783-4"],
        "region_id": "cn-qd-d01",
        "cluster_id": "ECS-CPU-A-8976",
        "source": OperationSource.MANUAL,
        "requester": "alice",
        "reason_category": ReasonCategory.HARDWARE,
        "reason": "fan failure",
        "ticket": "CHG-1",
        "settings": {"preLock": 0},
    }
    fields.update(overrides)
    return NewOperation(**fields)


def houyi_call(caller: str, action: str, **overrides: Any) -> HouyiCallRecord:
    fields: dict[str, Any] = {
        "action": action,
        "request_id": f"req-{caller}-{action}",
        "code": 200,
        "message": "successful",
        "caller": caller,
        "token": None,
        "latency_ms": 12.5,
        "params": {"nc_ip": HOST_A},
        "started_at": datetime(2024, 5, 1, 8, 30, 15, 123456, tzinfo=UTC),
    }
    fields.update(overrides)
    return HouyiCallRecord(**fields)


def closed_tcp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


# ---- migrations ---------------------------------------------------------------------------------


async def test_migrations_apply_in_order_once_and_a_second_run_applies_nothing(database_url: str) -> None:
    versions = [m.version for m in load_migrations()]
    conn = await asyncpg.connect(database_url)
    try:
        assert await migrate(conn) == versions
        assert await migrate(conn) == []
        recorded = await conn.fetch("SELECT version, name FROM schema_migrations ORDER BY version")
        tables = {
            row["tablename"]
            for row in await conn.fetch("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")
        }
    finally:
        await conn.close()
    assert [(r["version"], r["name"]) for r in recorded] == [(m.version, m.name) for m in load_migrations()]
    assert set(TABLES) <= tables


async def test_two_concurrent_migrations_apply_each_version_once(database_url: str) -> None:
    first, second = await asyncpg.connect(database_url), await asyncpg.connect(database_url)
    try:
        applied_by_first, applied_by_second = await asyncio.gather(migrate(first), migrate(second))
        recorded = await first.fetchval("SELECT count(*) FROM schema_migrations")
    finally:
        await first.close()
        await second.close()
    all_versions = [m.version for m in load_migrations()]
    assert not set(applied_by_first) & set(applied_by_second)
    assert sorted(applied_by_first + applied_by_second) == all_versions
    assert recorded == len(all_versions)


async def test_a_failing_migration_rolls_back_whole_and_keeps_the_earlier_ones(database_url: str) -> None:
    migrations = [
        Migration(1, "first", "CREATE TABLE first_table (x int)"),
        Migration(2, "broken", "CREATE TABLE half_made (x int); SELECT 1 / 0"),
    ]
    conn = await asyncpg.connect(database_url)
    try:
        with pytest.raises(StoreError, match="division by zero"):
            await migrate(conn, migrations)
        recorded = [r["version"] for r in await conn.fetch("SELECT version FROM schema_migrations")]
        half_made = await conn.fetchval("SELECT to_regclass('half_made')")
        first_table = await conn.fetchval("SELECT to_regclass('first_table')")
    finally:
        await conn.close()
    assert recorded == [1]
    assert half_made is None
    assert first_table is not None


# ---- operations ---------------------------------------------------------------------------------


async def test_recording_an_operation_returns_the_stored_row_in_the_validating_state(
    store: OperationStore,
) -> None:
    record = await store.record_operation(new_operation("wf-1"))

    assert record.id > 0
    assert record.workflow_id == "wf-1"
    assert record.opscode is OpsCode.NC_LOCK
    assert record.hosts == [HOST_A]
    assert record.source is OperationSource.MANUAL
    assert record.reason_category is ReasonCategory.HARDWARE
    assert record.state is OpsState.VALIDATING
    assert record.finished_at is None
    assert record.created_at.tzinfo is not None
    assert await store.get_operation("wf-1") == record


async def test_recording_the_same_workflow_twice_keeps_one_row_and_does_not_overwrite_it(
    store: OperationStore,
) -> None:
    first = await store.record_operation(new_operation("wf-1"))
    again = await store.record_operation(
        new_operation("wf-1", requester="bob", reason="retried", run_id="run-2")
    )

    assert again == first
    assert (await store.count_rows())["operations"] == 1


async def test_recording_the_same_workflow_concurrently_keeps_one_row(store: OperationStore) -> None:
    records = await asyncio.gather(*(store.record_operation(new_operation("wf-1")) for _ in range(8)))

    assert len({r.id for r in records}) == 1
    assert (await store.count_rows())["operations"] == 1


async def test_recording_a_known_workflow_id_under_another_opscode_is_a_conflict(
    store: OperationStore,
) -> None:
    await store.record_operation(new_operation("wf-1"))

    with pytest.raises(StoreConflict, match="already recorded as opscode 0x410A01"):
        await store.record_operation(new_operation("wf-1", opscode=OpsCode.NC_FORCED_REBOOT))


async def test_an_unknown_workflow_has_no_operation(store: OperationStore) -> None:
    assert await store.get_operation("never-started") is None


async def test_operations_are_listed_newest_first_and_filtered_by_state_opscode_and_host(
    store: OperationStore,
) -> None:
    await store.record_operation(new_operation("a", hosts=[HOST_A]))
    await store.set_operation_state("a", OpsState.RUNNING)
    await store.record_operation(new_operation("b", opscode=OpsCode.NC_FORCED_REBOOT, hosts=[HOST_B]))
    await store.record_operation(new_operation("c", hosts=[HOST_A, HOST_C]))
    await store.set_operation_state("c", OpsState.SUCCEEDED)

    async def ids(**filters: Any) -> list[str]:
        return [r.workflow_id for r in await store.list_operations(**filters)]

    assert await ids() == ["c", "b", "a"]
    assert await ids(state=OpsState.RUNNING) == ["a"]
    assert await ids(opscode=OpsCode.NC_LOCK) == ["c", "a"]
    assert await ids(nc_ip=HOST_A) == ["c", "a"]
    assert await ids(opscode=OpsCode.NC_LOCK, nc_ip=HOST_C) == ["c"]
    assert await ids(nc_ip="10.9.9.9") == []
    assert await ids(limit=1) == ["c"]


async def test_a_final_state_stamps_finished_at_and_stores_the_result(store: OperationStore) -> None:
    await store.record_operation(new_operation("wf-1"))
    running = await store.set_operation_state("wf-1", OpsState.RUNNING)
    assert running.finished_at is None

    done = await store.set_operation_state(
        "wf-1", OpsState.SUCCEEDED, result={"status_before": "free", "status_after": "mlock"}
    )

    assert done.state is OpsState.SUCCEEDED
    assert done.finished_at is not None
    assert done.finished_at >= done.created_at
    assert done.result == {"status_before": "free", "status_after": "mlock"}


async def test_setting_the_same_final_state_again_changes_nothing(store: OperationStore) -> None:
    await store.record_operation(new_operation("wf-1"))
    failed = await store.set_operation_state(
        "wf-1", OpsState.FAILED, error_type="HouyiUnavailable", error_message="down"
    )

    again = await store.set_operation_state(
        "wf-1", OpsState.FAILED, error_type="Other", error_message="later"
    )

    assert again == failed


async def test_a_final_state_cannot_be_replaced_by_another(store: OperationStore) -> None:
    await store.record_operation(new_operation("wf-1"))
    await store.set_operation_state("wf-1", OpsState.SUCCEEDED)

    with pytest.raises(StoreConflict, match="already ended Succeeded"):
        await store.set_operation_state("wf-1", OpsState.RUNNING)
    current = await store.get_operation("wf-1")
    assert current is not None and current.state is OpsState.SUCCEEDED


async def test_a_failed_step_retried_back_to_running_clears_its_error_and_keeps_the_result(
    store: OperationStore,
) -> None:
    await store.record_operation(new_operation("wf-1"))
    await store.set_operation_state(
        "wf-1", OpsState.STEP_FAILED, error_type="HouyiThrottled", error_message="busy", result={"step": 3}
    )

    running = await store.set_operation_state("wf-1", OpsState.RUNNING)

    assert (running.state, running.error_type, running.error_message) == (OpsState.RUNNING, None, None)
    assert running.result == {"step": 3}
    assert running.finished_at is None


async def test_setting_the_state_of_an_unknown_workflow_raises_operation_not_found(
    store: OperationStore,
) -> None:
    with pytest.raises(OperationNotFound):
        await store.set_operation_state("never-started", OpsState.RUNNING)


async def test_every_ops_state_passes_the_state_check(store: OperationStore) -> None:
    for state in OpsState:
        record = await store.record_operation(new_operation(f"wf-{state.value}", state=state))
        assert record.state is state
        assert (record.finished_at is not None) == state.final


async def test_the_state_check_rejects_an_unknown_state_as_a_conflict(store: OperationStore) -> None:
    await store.record_operation(new_operation("wf-1"))

    async with store.pool.acquire() as conn:
        with pytest.raises(StoreConflict) as raised, translated_errors("forcing a bad state"):
            await conn.execute("UPDATE operations SET state = 'Paused' WHERE workflow_id = 'wf-1'")

    assert raised.value.constraint == "operations_state_check"
    assert isinstance(raised.value.__cause__, asyncpg.CheckViolationError)


# ---- audit --------------------------------------------------------------------------------------


async def test_an_audit_entry_with_a_dedupe_key_is_written_once(store: OperationStore) -> None:
    entry = AuditEntry(
        action="lock_nc",
        result=AuditResult.OK,
        workflow_id="wf-1",
        opscode=OpsCode.NC_LOCK,
        nc_ip=HOST_A,
        request_id="req-1",
        params={"nc_id": "14783-4", "status": "mlock"},
        operator="alice",
        reason="fan failure",
        ticket="CHG-1",
        dedupe_key="wf-1/lock_nc",
    )

    await store.record_audit(entry)
    await store.record_audit(entry)

    [recorded] = await store.list_audit(workflow_id="wf-1")
    assert recorded.model_dump(exclude={"id", "at"}) == entry.model_dump(exclude={"at"})
    assert recorded.at.tzinfo is not None


async def test_audit_entries_without_a_dedupe_key_are_all_written(store: OperationStore) -> None:
    refusal = AuditEntry(
        action="refuse", result=AuditResult.REFUSED, nc_ip=HOST_A, error_type="NcWrongStatus"
    )

    await store.record_audit(refusal)
    await store.record_audit(refusal)

    assert len(await store.list_audit(nc_ip=HOST_A)) == 2


async def test_audit_entries_are_listed_by_workflow_and_host_in_write_order(store: OperationStore) -> None:
    at = datetime(2024, 5, 1, 9, 0, tzinfo=UTC)
    await store.record_audit(
        AuditEntry(action="lock_nc", result=AuditResult.OK, workflow_id="wf-1", nc_ip=HOST_A)
    )
    await store.record_audit(
        AuditEntry(action="approve", result=AuditResult.OK, workflow_id="wf-2", nc_ip=HOST_B)
    )
    await store.record_audit(
        AuditEntry(action="unlock_nc", result=AuditResult.FAILED, workflow_id="wf-1", nc_ip=HOST_A, at=at)
    )

    by_workflow = await store.list_audit(workflow_id="wf-1")
    assert [e.action for e in by_workflow] == ["lock_nc", "unlock_nc"]
    assert by_workflow[1].at == at
    assert [e.action for e in await store.list_audit(nc_ip=HOST_B)] == ["approve"]
    assert [e.action for e in await store.list_audit()] == ["lock_nc", "approve", "unlock_nc"]


# ---- control-plane calls -------------------------------------------------------------------------


async def test_houyi_calls_are_recorded_and_listed_by_caller_and_action(store: OperationStore) -> None:
    recorder: CallRecorder = store  # the Houyi client is given the store as its call recorder
    lock = houyi_call("wf-1", "LockNc", token="wf-1/lock", params={"nc_id": "14783-4", "status": "mlock"})
    failed = houyi_call("wf-1", "DescribeNc", code=0, message="connection refused", latency_ms=10001.0)
    other = houyi_call("wf-2", "DescribeNc")

    for call in (lock, failed, other):
        await recorder.record_houyi_call(call)

    assert await store.list_houyi_calls(caller="wf-1") == [lock, failed]
    assert await store.list_houyi_calls(action="DescribeNc") == [failed, other]
    assert await store.list_houyi_calls(caller="wf-2", action="LockNc") == []


# ---- JSONB ----------------------------------------------------------------------------------------


async def test_jsonb_values_round_trip_as_python_values(store: OperationStore) -> None:
    settings = {
        "alertRuleName": "hardware_exception_alarm",
        "preLock": 1,
        "nested": {"values": [1, 2.5, None, True, "主机"], "empty": {}},
    }
    await store.record_operation(new_operation("wf-1", settings=settings))
    at = datetime(2024, 5, 1, 9, 0, tzinfo=UTC)
    done = await store.set_operation_state("wf-1", OpsState.SUCCEEDED, result={"vms": [], "finished": at})

    assert done.settings == settings
    # datetimes are written as ISO text: JSON has no date type.
    assert done.result == {"vms": [], "finished": at.isoformat()}
    async with store.pool.acquire() as conn:
        # Stored as JSON objects, not as JSON strings holding encoded text.
        kind, rule = await conn.fetchrow(
            "SELECT jsonb_typeof(settings), settings ->> 'alertRuleName' FROM operations WHERE workflow_id = 'wf-1'"
        )
        assert (kind, rule) == ("object", "hardware_exception_alarm")
        assert await conn.fetchval("SELECT $1::jsonb -> 'a'", {"a": {"b": [1]}}) == {"b": [1]}


# ---- inspection -----------------------------------------------------------------------------------


# What the migrations seed: the recommended flow control and approval rows and the '*' defaults.
SEEDED_ROWS = {
    "flow_control_rules": 8,
    "approval_policies": 8,
    "storm_breakers": 1,
    "capacity_guards": 1,
    "disk_migration_limits": 1,
    "alert_rules": 2,
}


async def test_count_rows_counts_every_table_and_reads_leave_it_unchanged(store: OperationStore) -> None:
    assert await store.count_rows() == {**dict.fromkeys(TABLES, 0), **SEEDED_ROWS}

    await store.record_operation(new_operation("wf-1"))
    await store.record_audit(AuditEntry(action="lock_nc", result=AuditResult.OK, workflow_id="wf-1"))
    await store.record_houyi_call(houyi_call("wf-1", "LockNc"))
    before = await store.count_rows()
    await store.get_operation("wf-1")
    await store.list_operations()
    await store.list_audit()
    await store.list_houyi_calls()

    assert await store.count_rows() == before
    assert before == {
        **dict.fromkeys(TABLES, 0),
        **SEEDED_ROWS,
        "operations": 1,
        "audit_log": 1,
        "houyi_calls": 1,
    }


# ---- unavailability -------------------------------------------------------------------------------


async def test_a_missing_socket_directory_raises_store_unavailable() -> None:
    with pytest.raises(StoreUnavailable, match="database unavailable"):
        await OperationStore.connect(
            "postgresql://postgres:@/opsflow?host=/nonexistent/opsflow-socket", timeout=2
        )


async def test_a_closed_port_raises_store_unavailable() -> None:
    with pytest.raises(StoreUnavailable):
        await OperationStore.connect(
            f"postgresql://postgres:@127.0.0.1:{closed_tcp_port()}/opsflow", timeout=2
        )


async def test_an_exhausted_pool_raises_store_unavailable_after_the_acquire_timeout(
    database_url: str,
) -> None:
    store = await OperationStore.connect(database_url, min_size=1, max_size=1, acquire_timeout=0.2)
    try:
        async with store.pool.acquire():
            with pytest.raises(StoreUnavailable, match="TimeoutError"):
                await store.get_operation("wf-1")
        assert await store.get_operation("wf-1") is None  # usable again once a connection is free
    finally:
        await store.close()


async def test_a_closed_store_raises_store_unavailable(database_url: str) -> None:
    store = await OperationStore.connect(database_url)
    await store.close()

    with pytest.raises(StoreUnavailable, match="store is closed"):
        await store.record_operation(new_operation("wf-1"))


async def test_a_connection_the_server_terminates_mid_query_is_reported_unavailable(
    database_url: str,
) -> None:
    victim, admin = await asyncpg.connect(database_url), await asyncpg.connect(database_url)
    try:
        pid = await victim.fetchval("SELECT pg_backend_pid()")

        async def slow_query() -> None:
            with translated_errors("waiting"):
                await victim.execute("SELECT pg_sleep(10)")

        query = asyncio.create_task(slow_query())
        await asyncio.sleep(0.1)  # let the query reach the server
        assert await admin.fetchval("SELECT pg_terminate_backend($1)", pid)
        with pytest.raises(StoreUnavailable):
            await query
    finally:
        await victim.close()
        await admin.close()


async def test_a_connection_goes_back_to_the_pool_without_a_reset_round_trip_but_rolled_back(
    database_url: str,
) -> None:
    """store.db.keep_session: giving a connection back sends no query unless a transaction is left open,
    and then only the rollback (the default reset sent four statements after every store call)."""
    pool = await create_pool(database_url, min_size=1, max_size=1)
    try:
        sent: list[str] = []
        async with pool.acquire() as conn:
            conn.add_query_logger(lambda record: sent.append(record.query))
            await conn.fetchval("SELECT 1")
        async with pool.acquire() as conn:
            assert sent == ["SELECT 1"]
            await conn.execute("BEGIN")
            await conn.execute("CREATE TEMP TABLE left_open (x int)")
        async with pool.acquire() as conn:
            assert sent[-1] == "ROLLBACK"
            assert not conn.is_in_transaction()
            assert await conn.fetchval("SELECT to_regclass('pg_temp.left_open')") is None
    finally:
        await pool.close()


# ---- group commit (store.batching) ------------------------------------------------------------------


async def test_concurrent_houyi_calls_and_audit_entries_are_written_in_few_statements_each_once_in_order(
    store: OperationStore,
) -> None:
    statements: list[str] = []
    original = store._insert_houyi_calls

    async def counted(calls: Any) -> list[None]:
        statements.append(f"{len(calls)} calls")
        return await original(calls)

    store._houyi_calls._write = counted
    await asyncio.gather(*(store.record_houyi_call(houyi_call(f"wf-{i}", "describe_nc")) for i in range(200)))
    recorded = await store.list_houyi_calls(action="describe_nc")
    assert [c.caller for c in recorded] == [f"wf-{i}" for i in range(200)]
    assert 1 <= len(statements) < 20, statements

    # Audit: a key repeated in one batch is inserted once (the first caller is told True), entries without a
    # key always; a key already in the table is dropped.
    assert await store.record_audit(AuditEntry(action="lock_nc", result=AuditResult.OK, dedupe_key="k-0"))
    entries = [
        AuditEntry(action="lock_nc", result=AuditResult.OK, workflow_id=f"wf-{i}", dedupe_key=f"k-{i % 50}")
        for i in range(100)
    ] + [AuditEntry(action="approve", result=AuditResult.OK, workflow_id="wf-x") for _ in range(3)]
    inserted = await asyncio.gather(*(store.record_audit(entry) for entry in entries))
    assert inserted == [0 < i < 50 for i in range(100)] + [True] * 3
    audit = await store.list_audit()
    assert len(audit) == 1 + 49 + 3
    assert [a.workflow_id for a in audit if a.action == "lock_nc"] == [None] + [
        f"wf-{i}" for i in range(1, 50)
    ]


async def test_a_row_the_database_refuses_fails_its_own_caller_and_the_rest_of_its_batch_is_written(
    store: OperationStore,
) -> None:
    calls = [houyi_call(f"wf-{i}", "notify") for i in range(10)]
    calls[4] = houyi_call("wf-4", "notify", code=2**40)  # no PostgreSQL integer holds it
    outcomes = await asyncio.gather(*(store.record_houyi_call(c) for c in calls), return_exceptions=True)
    assert [isinstance(o, StoreError) for o in outcomes] == [i == 4 for i in range(10)], outcomes
    assert [c.caller for c in await store.list_houyi_calls(action="notify")] == [
        f"wf-{i}" for i in range(10) if i != 4
    ]


async def test_closing_the_store_writes_what_is_queued_first(database_url: str) -> None:
    store = await OperationStore.connect(database_url)
    pending = [
        asyncio.ensure_future(store.record_houyi_call(houyi_call(f"wf-{i}", "lock_nc"))) for i in range(50)
    ]
    await asyncio.sleep(0)
    await store.close()
    await asyncio.gather(*pending)
    reopened = await OperationStore.connect(database_url)
    try:
        assert len(await reopened.list_houyi_calls(action="lock_nc")) == 50
    finally:
        await reopened.close()
