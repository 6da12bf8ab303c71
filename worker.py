"""The worker: runs every operation workflow and its activities on the ``ecs-ops`` task queue.

python worker.py            # configuration from the environment (runtime/config.py)
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import structlog
from temporalio.client import Client
from temporalio.service import RPCError
from temporalio.worker import Worker
from temporalio.worker.workflow_sandbox import SandboxedWorkflowRunner, SandboxRestrictions

from activities.disk import DEFAULT_DISK_POLL_SECONDS, DEFAULT_SLOT_RETRY_SECONDS, DiskActivities
from activities.evacuation import DEFAULT_MIGRATION_POLL_SECONDS, EvacuationActivities
from activities.lifecycle import LifecycleActivities
from activities.maintenance import MaintenanceActivities
from activities.nc import DEFAULT_POWER_POLL_SECONDS, NcActivities
from activities.operations import OperationActivities
from activities.residue import ResidueActivities
from houyi.http_client import HttpHouyiClient
from houyi.port import HouyiPort, StorageToolsPort
from runtime import search_attributes
from runtime.config import ConfigError, Settings
from runtime.logging import LogContextInterceptor, configure_logging
from runtime.metrics import METRICS, ServiceMetrics
from runtime.ops_server import OpsServer, loopback_port
from runtime.schedules import RECYCLE_SCHEDULE_ID, ensure_recycle_schedule
from runtime.temporal import connect, runtime_with_prometheus
from store.disk import DiskStore
from store.embedded import resolve_database_url
from store.errors import StoreUnavailable
from store.maintenance import MaintenanceWindowStore
from store.repository import OperationStore
from workflows.disk_live_migration import DiskLiveMigrationWorkflow
from workflows.disk_recycle import DiskRecycleWorkflow
from workflows.nc_deep_offline import NcDeepOfflineWorkflow
from workflows.nc_deep_offline_cold import NcDeepOfflineColdWorkflow
from workflows.nc_forced_reboot import NcForcedRebootWorkflow
from workflows.nc_lock import NcLockWorkflow
from workflows.nc_re_online import NcReOnlineWorkflow
from workflows.nc_unlock import NcUnlockWorkflow
from workflows.vm_residue_cleanup import VmResidueCleanupWorkflow, WildVmCleanupWorkflow
from workflows.whole_host_migration import WholeHostMigrationWorkflow

log = structlog.get_logger("worker")

WORKFLOWS: Sequence[type] = (
    NcLockWorkflow,
    NcUnlockWorkflow,
    NcForcedRebootWorkflow,
    NcReOnlineWorkflow,
    NcDeepOfflineWorkflow,
    NcDeepOfflineColdWorkflow,
    WholeHostMigrationWorkflow,
    VmResidueCleanupWorkflow,
    WildVmCleanupWorkflow,
    DiskLiveMigrationWorkflow,
    DiskRecycleWorkflow,
)


# The sandbox re-imports, for every new run, each module of the workflow that is not passed through. The
# workflow modules import all they run passed through already (workflows/lifecycle.py says why); passing the
# `workflows` package itself spares each run re-executing its workflow's module and re-applying
# `workflow.defn` to its class (a scan of every member of the class hierarchy: 2 ms of CPU per run). The
# sandbox's runtime checks of what workflow code calls stay on, and replay tests guard determinism.
def passthrough_runner(*modules: str) -> SandboxedWorkflowRunner:
    """The sandboxed runner with ``modules`` (and their submodules) passed through."""
    return SandboxedWorkflowRunner(
        restrictions=SandboxRestrictions.default.with_passthrough_modules(*modules)
    )


WORKFLOW_RUNNER = passthrough_runner("workflows")


def activities_for(
    client: Client,
    houyi: HouyiPort,
    store: OperationStore,
    *,
    power_poll_seconds: float = DEFAULT_POWER_POLL_SECONDS,
    migration_poll_seconds: float = DEFAULT_MIGRATION_POLL_SECONDS,
    time_scale: float = 1.0,
    disk_poll_seconds: float = DEFAULT_DISK_POLL_SECONDS,
    disk_slot_retry_seconds: float = DEFAULT_SLOT_RETRY_SECONDS,
    metrics: ServiceMetrics = METRICS,
) -> list[Any]:
    """Every activity, bound to its injected clients.

    ``time_scale`` shrinks the real waits that model Houyi's (migration deadlines, throttle back-off) when
    Houyi is the simulator running faster than real time; production leaves it at 1.
    """
    nc = NcActivities(houyi, power_poll_seconds=power_poll_seconds)
    operations = OperationActivities(store, metrics)
    lifecycle = LifecycleActivities(store, houyi, client, metrics)
    evacuation = EvacuationActivities(houyi, poll_seconds=migration_poll_seconds, time_scale=time_scale)
    maintenance = MaintenanceActivities(MaintenanceWindowStore.of(store))
    residue = ResidueActivities(houyi)
    # The HTTP adapter speaks both Houyi's API and the storage tools'; another HouyiPort must bring both.
    assert isinstance(houyi, StorageToolsPort), "the Houyi adapter must also provide the storage tools"
    disk = DiskActivities(
        houyi,
        houyi,
        DiskStore.of(store),
        poll_seconds=disk_poll_seconds,
        slot_retry_seconds=disk_slot_retry_seconds,
    )
    return [
        nc.describe_nc,
        nc.lock_nc,
        nc.unlock_nc,
        nc.set_nc_status,
        nc.dump_cn_memory,
        nc.power_cycle_nc,
        nc.wait_power_settled,
        operations.record_operation,
        operations.set_operation_state,
        operations.record_audit,
        lifecycle.load_policy,
        lifecycle.acquire_lease,
        lifecycle.release_lease,
        lifecycle.admit,
        lifecycle.admit_hosts,
        lifecycle.void_admissions,
        lifecycle.check_capacity,
        evacuation.list_cluster_ncs,
        evacuation.list_vm_processes,
        evacuation.read_vm_placements,
        evacuation.live_migrate_vm,
        evacuation.cancel_live_migrations,
        evacuation.correct_migration_status,
        evacuation.cold_migrate_vm,
        evacuation.reserve_ri_capacity,
        evacuation.release_ri_capacity,
        evacuation.publish_event,
        evacuation.notify,
        evacuation.power_off_empty_nc,
        evacuation.power_on_nc,
        maintenance.window_state,
        residue.inventory,
        residue.destroy,
        disk.read_disk_facts,
        disk.acquire_disk,
        disk.release_disk,
        disk.claim_copy_slot,
        disk.snapshot_disk,
        disk.start_disk_migration,
        disk.follow_disk_migration,
        disk.list_recycle_candidates,
        disk.recycle_task,
    ]


def build_worker(
    client: Client,
    task_queue: str,
    *,
    houyi: HouyiPort,
    store: OperationStore,
    max_concurrent_activities: int = 100,
    max_concurrent_workflow_tasks: int = 100,
    power_poll_seconds: float = DEFAULT_POWER_POLL_SECONDS,
    migration_poll_seconds: float = DEFAULT_MIGRATION_POLL_SECONDS,
    time_scale: float = 1.0,
    disk_poll_seconds: float = DEFAULT_DISK_POLL_SECONDS,
    disk_slot_retry_seconds: float = DEFAULT_SLOT_RETRY_SECONDS,
    metrics: ServiceMetrics = METRICS,
) -> Worker:
    return Worker(
        client,
        task_queue=task_queue,
        workflows=list(WORKFLOWS),
        workflow_runner=WORKFLOW_RUNNER,
        activities=activities_for(
            client,
            houyi,
            store,
            power_poll_seconds=power_poll_seconds,
            migration_poll_seconds=migration_poll_seconds,
            time_scale=time_scale,
            disk_poll_seconds=disk_poll_seconds,
            disk_slot_retry_seconds=disk_slot_retry_seconds,
            metrics=metrics,
        ),
        max_concurrent_activities=max_concurrent_activities,
        max_concurrent_workflow_tasks=max_concurrent_workflow_tasks,
        graceful_shutdown_timeout=timedelta(seconds=10),
        interceptors=[LogContextInterceptor()],
        # Cancellation reaches an activity with a heartbeat's answer: flush heartbeats at least every
        # second; a waiting activity beats every 2/5 of its heartbeat timeout (activities/heartbeat.py),
        # so cancelling an operation cancels its live migrations within about 2 s.
        max_heartbeat_throttle_interval=timedelta(seconds=1),
    )


OPEN_OPERATIONS_REFRESH_SECONDS = 15.0


class StartupError(Exception):
    """The worker cannot start: the message says why; no traceback helps an operator here."""


async def refresh_open_operations(
    store: OperationStore,
    metrics: ServiceMetrics,
    stop: asyncio.Event,
    every: float = OPEN_OPERATIONS_REFRESH_SECONDS,
) -> None:
    """Keeps the fleet-wide open-operation gauges current; a (opscode, state) that empties drops to 0."""
    shown: set[tuple[str, str]] = set()
    while not stop.is_set():
        try:
            rows = await store.open_operations()
        except StoreUnavailable as error:
            log.warning("cannot read open operations", error=str(error))
        else:
            now = {(row.opscode, row.state) for row in rows}
            for row in rows:
                metrics.operations_open.labels(row.opscode, row.state).set(row.open)
                metrics.operations_oldest.labels(row.opscode, row.state).set(row.oldest_seconds)
            for opscode, state in shown - now:
                metrics.operations_open.labels(opscode, state).set(0)
                metrics.operations_oldest.labels(opscode, state).set(0)
            shown |= now
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), timeout=every)


@dataclass(frozen=True)
class NamespaceSetup:
    added_search_attributes: list[str]
    schedule: str  # "created", "updated", "off", or "not checked: <why>" for the search attributes


async def ensure_namespace_setup(client: Client, settings: Settings) -> NamespaceSetup:
    """Search attributes and the recycle Schedule, created or brought in line: safe at every start."""
    added: list[str] = []
    try:
        added = await search_attributes.ensure_registered(client, settings.temporal_namespace)
        log.info("search attributes checked", added=added, namespace=settings.temporal_namespace)
    except RPCError as error:
        # A namespace we may not administer (e.g. a hosted one): its operators register them.
        log.warning("cannot check search attributes", error=str(error))
    schedule = "off"
    if settings.recycle_schedule.strip().lower() != "off":
        schedule = await ensure_recycle_schedule(client, settings.task_queue, settings.recycle_schedule)
        log.info(
            "disk recycle schedule " + schedule,
            schedule_id=RECYCLE_SCHEDULE_ID,
            cron=settings.recycle_schedule,
        )
    return NamespaceSetup(added_search_attributes=added, schedule=schedule)


async def run(settings: Settings, stop: asyncio.Event, metrics: ServiceMetrics = METRICS) -> None:
    database_url = resolve_database_url(settings)
    store = await OperationStore.connect(database_url)
    sdk_metrics_port = loopback_port() if settings.worker_metrics_port else None
    runtime = runtime_with_prometheus(f"127.0.0.1:{sdk_metrics_port}") if sdk_metrics_port else None
    try:
        client = await asyncio.wait_for(
            connect(settings.temporal, runtime=runtime), timeout=settings.temporal_connect_timeout_seconds
        )
    except TimeoutError:
        await store.close()
        raise StartupError(
            f"cannot reach Temporal at {settings.temporal_address} "
            f"(namespace {settings.temporal_namespace}, {settings.temporal.describe()}): no connection within "
            f"{settings.temporal_connect_timeout_seconds:g} s"
        ) from None
    except RuntimeError as error:
        await store.close()
        raise StartupError(
            f"cannot reach Temporal at {settings.temporal_address} "
            f"(namespace {settings.temporal_namespace}, {settings.temporal.describe()}): {error}"
        ) from None
    await ensure_namespace_setup(client, settings)
    worker_task: asyncio.Task[None] | None = None

    async def live() -> str | None:
        if worker_task is not None and worker_task.done():
            return "the worker stopped polling"
        return None

    async def ready() -> str | None:
        if worker_task is None:
            return "the worker has not started"
        if (problem := await live()) is not None:
            return problem
        try:
            await store.ping()
        except StoreUnavailable as error:
            return f"store: {error}"
        return None

    ops_server = (
        OpsServer(
            metrics.registry,
            sdk_metrics_url=f"http://127.0.0.1:{sdk_metrics_port}/metrics",
            live=live,
            ready=ready,
        )
        if settings.worker_metrics_port
        else None
    )
    if ops_server is not None:
        await ops_server.start("0.0.0.0", settings.worker_metrics_port)
    gauges = asyncio.create_task(refresh_open_operations(store, metrics, stop))
    try:
        async with HttpHouyiClient(
            settings.houyi_url,
            recorder=store,
            timeout_seconds=settings.houyi_timeout_seconds,
            metrics=metrics,
        ) as houyi:
            worker = build_worker(
                client,
                settings.task_queue,
                houyi=houyi,
                store=store,
                max_concurrent_activities=settings.max_concurrent_activities,
                max_concurrent_workflow_tasks=settings.max_concurrent_workflow_tasks,
                power_poll_seconds=settings.power_poll_seconds,
                migration_poll_seconds=settings.migration_poll_seconds,
                time_scale=settings.time_scale,
                disk_poll_seconds=settings.disk_poll_seconds,
                disk_slot_retry_seconds=settings.disk_slot_retry_seconds,
                metrics=metrics,
            )
            worker_task = asyncio.create_task(worker.run())
            log.info(
                "worker started",
                task_queue=settings.task_queue,
                temporal=settings.temporal_address,
                namespace=settings.temporal_namespace,
                temporal_connection=settings.temporal.describe(),
                houyi=settings.houyi_url,
                metrics_port=settings.worker_metrics_port,
            )
            stopping = asyncio.create_task(stop.wait())
            await asyncio.wait({worker_task, stopping}, return_when=asyncio.FIRST_COMPLETED)
            stopping.cancel()
            log.info("worker stopping")
            if not worker_task.done():
                await worker.shutdown()
            await worker_task  # a worker that failed raises here: the process exits non-zero
    finally:
        stop.set()
        await gauges
        if ops_server is not None:
            await ops_server.stop()
        await store.close()
    log.info("worker stopped")


def main() -> None:
    try:
        settings = Settings.from_env()
    except ConfigError as error:
        print(f"opsflow-worker: configuration error: {error}", file=sys.stderr)
        sys.exit(2)
    configure_logging(settings.log_level)

    async def _main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await run(settings, stop)

    try:
        asyncio.run(_main())
    except StartupError as error:
        log.error("worker cannot start", error=str(error))
        print(f"opsflow-worker: {error}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
