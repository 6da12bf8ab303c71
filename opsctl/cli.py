"""``opsctl``: operations from the shell. Talks to Temporal and the store directly (not to the intake).

    opsctl submit 0x410A01 --host 10.12.16.11,10.12.16.13 --reason-category hardware --reason "CPU MCE" --as alice
    opsctl status 0x410A01-10.12.16.11         opsctl watch 0x400003-10.12.48.11
    opsctl approve|reject ID --as approver1 [--comment ...]
    opsctl retry-step|skip-step ID --as admin [--step NAME]      opsctl cancel ID
    opsctl list [--host IP] [--opscode C] [--state S] [--since-hours N]
    opsctl config show flow-control|approval|alert-rules|windows
    opsctl config set-flow-control|set-approval|set-alert-rule|remove-alert-rule|set-window ...
    opsctl batch unlock|cancel|complete (--hosts IP,IP | --query 'VISIBILITY QUERY') --as NAME [--yes]

Tables by default, ``--json`` for scripts. Exit 0 done, 1 failed or refused, 2 bad usage. Environment as
the worker's: ``TEMPORAL_ADDRESS``, ``TEMPORAL_NAMESPACE``, ``OPSFLOW_TASK_QUEUE``, ``DATABASE_URL``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ipaddress
import json
import os
import sys
from collections.abc import Sequence
from datetime import UTC, datetime, time, timedelta
from typing import Any, NoReturn

from pydantic import BaseModel, ValidationError
from temporalio.client import Client, WorkflowExecutionStatus, WorkflowUpdateFailedError
from temporalio.common import WorkflowIDReusePolicy
from temporalio.exceptions import ApplicationError, WorkflowAlreadyStartedError
from temporalio.service import RPCError, RPCStatusCode

from domain.alerts import AlertRule
from domain.maintenance import MaintenanceWindow
from domain.operations import InputRefused, OpsState, describe_validation_error, parse_input
from domain.opscodes import CATALOG, OpsCode
from runtime.config import ConfigError, Settings
from runtime.logging import configure_logging
from runtime.temporal import connect
from store.embedded import resolve_database_url
from store.errors import StoreError
from store.intake import IntakeStore
from store.lifecycle import FlowControlRule
from store.maintenance import MaintenanceWindowStore
from store.repository import OperationStore
from workflows.lifecycle import (
    DecisionInput,
    DecisionResult,
    MarkCompleteInput,
    OperationStatus,
    StepCommandInput,
)

UNLOCK = OpsCode.AUTO_UNLOCK_AFTER_LOCK


class UsageError(Exception):
    """Bad input from the command line: exit 2 with the message."""


class Failed(Exception):
    """The command ran but what it asked for did not happen: exit 1 with the message."""


# ---- output ------------------------------------------------------------------------------------------


class Out:
    def __init__(self, as_json: bool) -> None:
        self.as_json = as_json

    def table(self, rows: list[dict[str, Any]], columns: Sequence[str]) -> None:
        if self.as_json:
            print(json.dumps(rows, default=str))
            return
        if not rows:
            print("(none)")
            return
        cells = [[_cell(row.get(c)) for c in columns] for row in rows]
        widths = [max(len(c), *(len(r[i]) for r in cells)) for i, c in enumerate(columns)]
        print("  ".join(c.upper().ljust(w) for c, w in zip(columns, widths, strict=True)).rstrip())
        for r in cells:
            print("  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)).rstrip())

    def value(self, data: Any, text: str) -> None:
        print(json.dumps(data, default=str) if self.as_json else text)


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, datetime):
        return f"{value:%Y-%m-%d %H:%M:%S}"
    if isinstance(value, list):
        return ",".join(str(v) for v in value)
    return str(value).replace("\n", " ")


def step_rows(status: OperationStatus) -> list[dict[str, Any]]:
    return [
        {
            "step": s.name,
            "status": s.status.value,
            "starts": s.start_count,
            "elapsed": f"{s.elapsed_seconds:.1f}s" if s.elapsed_seconds is not None else "",
            "message": s.message[:80],
        }
        for s in status.steps
    ]


STEP_COLUMNS = ("step", "status", "starts", "elapsed", "message")


def show_status(out: Out, workflow_id: str, status: OperationStatus) -> None:
    if out.as_json:
        print(status.model_dump_json())
        return
    hosts = ",".join(h.nc_ip for h in status.hosts) or "-"
    print(f"{workflow_id}  {status.opscode.value} {status.title}  state {status.state.value}  hosts {hosts}")
    if status.error:
        print(f"  error: {status.error}")
    for line in status.plan:
        print(f"  - {line}")
    if status.progress:
        print(f"  progress: {status.progress}")
    out.table(step_rows(status), STEP_COLUMNS)


# ---- the commands ------------------------------------------------------------------------------------


class Context:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.settings = Settings.from_env()
        self.out = Out(args.json)
        self._client: Client | None = None
        self._store: OperationStore | None = None

    async def client(self) -> Client:
        if self._client is None:
            try:
                self._client = await connect(self.settings.temporal)
            except RuntimeError as error:
                raise Failed(f"cannot reach Temporal at {self.settings.temporal_address}: {error}") from None
        return self._client

    async def store(self) -> OperationStore:
        if self._store is None:
            self._store = await OperationStore.connect(resolve_database_url(self.settings))
        return self._store

    async def close(self) -> None:
        if self._store is not None:
            await self._store.close()


def workflow_for(text: str) -> tuple[OpsCode, str, type[BaseModel]]:
    """An opscode or a workflow type name -> (opscode, workflow type, input model)."""
    from worker import WORKFLOWS
    from workflows.lifecycle import OperationWorkflow

    by_code = {
        cls.OPSCODE: cls for cls in WORKFLOWS if isinstance(cls, type) and issubclass(cls, OperationWorkflow)
    }
    for opscode, cls in by_code.items():
        if text.lower() == CATALOG[opscode].workflow_type.lower():
            return opscode, CATALOG[opscode].workflow_type, cls.INPUT
    try:
        opscode = OpsCode.parse(text)
    except ValueError as error:
        raise UsageError(str(error)) from None
    if opscode not in by_code:
        raise UsageError(f"opscode {opscode.value} ({CATALOG[opscode].title}) has no workflow yet")
    return opscode, CATALOG[opscode].workflow_type, by_code[opscode].INPUT


def parse_hosts(text: str) -> list[str]:
    hosts = [h.strip() for h in text.split(",") if h.strip()]
    if not hosts:
        raise UsageError("--hosts: no host given")
    for host in hosts:
        try:
            ipaddress.IPv4Address(host)
        except ValueError:
            raise UsageError(f"--hosts: {host!r} is not an IPv4 address") from None
    return hosts


def parse_settings(pairs: list[str]) -> dict[str, Any]:
    settings: dict[str, Any] = {}
    for pair in pairs:
        name, sep, raw = pair.partition("=")
        if not sep or not name:
            raise UsageError(f"--setting {pair!r}: write name=value")
        try:
            settings[name] = json.loads(raw)
        except json.JSONDecodeError:
            settings[name] = raw
    return settings


async def start(
    client: Client, task_queue: str, workflow_type: str, raw: dict[str, Any], workflow_id: str
) -> str:
    try:
        await client.start_workflow(
            workflow_type, raw, id=workflow_id, task_queue=task_queue,
            id_reuse_policy=WorkflowIDReusePolicy.ALLOW_DUPLICATE,
        )  # fmt: skip
        return "started"
    except WorkflowAlreadyStartedError:
        return "already running"


async def cmd_submit(ctx: Context) -> None:
    args = ctx.args
    opscode, workflow_type, model = workflow_for(args.opscode)
    fields = model.model_fields
    if "nc_ip" not in fields and "nc_ips" not in fields:
        raise UsageError(f"{workflow_type} does not take hosts; start it from the Temporal UI")
    hosts = parse_hosts(args.host)
    groups = [hosts] if "nc_ips" in fields else [[h] for h in hosts]
    planned = []
    for group in groups:
        raw: dict[str, Any] = {
            **({"nc_ips": group} if "nc_ips" in fields else {"nc_ip": group[0]}),
            "requester": args.requester,
            "reason_category": args.reason_category,
            "reason": args.reason,
            "ticket": args.ticket,
            "settings": parse_settings(args.setting),
        }
        try:
            parse_input(model, raw)
        except InputRefused as refused:
            raise UsageError(str(refused)) from None
        planned.append(
            (group, raw, f"{opscode.value}-{group[0]}" + (f"+{len(group) - 1}" if len(group) > 1 else ""))
        )
    client = await ctx.client()
    rows: list[dict[str, Any]] = []
    for group, raw, workflow_id in planned:
        outcome = await start(client, ctx.settings.task_queue, workflow_type, raw, workflow_id)
        rows.append({"workflow_id": workflow_id, "type": workflow_type, "hosts": group, "outcome": outcome})
    ctx.out.table(rows, ("workflow_id", "type", "hosts", "outcome"))
    if args.wait:
        failed = [
            r["workflow_id"]
            for r in rows
            if await watch(ctx, r["workflow_id"], quiet=True) is not OpsState.SUCCEEDED
        ]
        if failed:
            raise Failed(f"not succeeded: {', '.join(failed)}")


async def query_status(client: Client, workflow_id: str) -> OperationStatus:
    try:
        return await client.get_workflow_handle(workflow_id).query("status", result_type=OperationStatus)
    except RPCError as error:
        if error.status is RPCStatusCode.NOT_FOUND:
            raise Failed(f"no operation {workflow_id}") from None
        raise


async def cmd_status(ctx: Context) -> None:
    status = await query_status(await ctx.client(), ctx.args.workflow_id)
    show_status(ctx.out, ctx.args.workflow_id, status)


async def watch(ctx: Context, workflow_id: str, *, quiet: bool = False, interval: float = 1.0) -> OpsState:
    client = await ctx.client()
    handle = client.get_workflow_handle(workflow_id)
    shown: list[dict[str, Any]] | None = None
    while True:
        status = await query_status(client, workflow_id)
        rows = step_rows(status)
        if not quiet and (rows, status.state) != (shown, None):
            if rows != shown:
                print(
                    f"--- {datetime.now(UTC):%H:%M:%S} {workflow_id}: {status.state.value} {status.progress}".rstrip(),
                    flush=True,
                )
                ctx.out.table(rows, STEP_COLUMNS)
                shown = rows
        description = await handle.describe()
        if description.status is not WorkflowExecutionStatus.RUNNING:
            status = await query_status(client, workflow_id)
            if not quiet:
                print(
                    f"=== {workflow_id} ended {status.state.value}"
                    + (f": {status.error}" if status.error else ""),
                    flush=True,
                )
            return status.state
        await asyncio.sleep(interval)


async def cmd_watch(ctx: Context) -> None:
    state = await watch(ctx, ctx.args.workflow_id, interval=ctx.args.interval)
    if state is not OpsState.SUCCEEDED:
        raise Failed(f"{ctx.args.workflow_id} ended {state.value}")


async def cmd_decide(ctx: Context) -> None:
    args = ctx.args
    handle = (await ctx.client()).get_workflow_handle(args.workflow_id)
    try:
        result = await handle.execute_update(
            "decide",
            DecisionInput(approver=args.who, approve=args.command == "approve", comment=args.comment),
            result_type=DecisionResult,
        )
    except WorkflowUpdateFailedError as failed:
        cause = failed.cause
        raise Failed(
            f"{args.command} refused: {cause.message if isinstance(cause, ApplicationError) else cause}"
        ) from None
    except RPCError as error:
        raise Failed(f"{args.command} {args.workflow_id}: {error.message}") from None
    state = result.state
    if args.command == "reject" or result.approvals >= result.needed:
        # The vote is in; the operation leaves PendingApproval on its next workflow task.
        for _ in range(50):
            state = (await query_status(await ctx.client(), args.workflow_id)).state
            if state is not OpsState.PENDING_APPROVAL:
                break
            await asyncio.sleep(0.1)
    answer = {**result.model_dump(mode="json"), "state": state.value}
    ctx.out.value(
        answer, f"{args.workflow_id}: {state.value}, {result.approvals} of {result.needed} approval(s)"
    )


async def cmd_step_command(ctx: Context) -> None:
    args = ctx.args
    signal = {"retry-step": "retry_step", "skip-step": "skip_step", "abort": "abort"}[args.command]
    client = await ctx.client()
    before = await query_status(client, args.workflow_id)
    if before.state is not OpsState.STEP_FAILED:
        raise Failed(f"{args.workflow_id} is {before.state.value}: no step waits for an operator")
    await client.get_workflow_handle(args.workflow_id).signal(
        signal, StepCommandInput(operator=args.who, step=args.step, comment=args.comment)
    )
    for _ in range(50):
        await asyncio.sleep(0.1)
        after = await query_status(client, args.workflow_id)
        if len(after.refused_messages) > len(before.refused_messages):
            raise Failed(after.refused_messages[-1])
        if after.state is not OpsState.STEP_FAILED or after.steps != before.steps:
            break
    ctx.out.value(
        {"workflow_id": args.workflow_id, "sent": signal}, f"{args.workflow_id}: {signal} sent by {args.who}"
    )


async def cmd_cancel(ctx: Context) -> None:
    handle = (await ctx.client()).get_workflow_handle(ctx.args.workflow_id)
    try:
        await handle.cancel()
    except RPCError as error:
        raise Failed(f"cancel {ctx.args.workflow_id}: {error.message}") from None
    ctx.out.value(
        {"workflow_id": ctx.args.workflow_id, "cancel": "requested"},
        f"{ctx.args.workflow_id}: cancel requested",
    )


async def cmd_list(ctx: Context) -> None:
    args = ctx.args
    try:
        state = OpsState(args.state) if args.state else None
    except ValueError:
        raise UsageError(f"--state: one of {', '.join(s.value for s in OpsState)}") from None
    opscode = workflow_for(args.opscode)[0] if args.opscode else None
    since = datetime.now(UTC) - timedelta(hours=args.since_hours) if args.since_hours else None
    store = await ctx.store()
    records = await store.list_operations(
        state=state, opscode=opscode, nc_ip=args.host, limit=args.limit * 5 if since else args.limit
    )
    rows = [
        {
            "workflow_id": r.workflow_id,
            "opscode": r.opscode.value,
            "hosts": r.hosts,
            "state": r.state.value,
            "requester": r.requester,
            "source": r.source.value,
            "created": r.created_at,
        }
        for r in records
        if since is None or r.created_at >= since
    ][: args.limit]
    ctx.out.table(rows, ("workflow_id", "opscode", "hosts", "state", "requester", "source", "created"))


# ---- config ------------------------------------------------------------------------------------------


async def cmd_config(ctx: Context) -> None:
    args = ctx.args
    store = await ctx.store()
    what = getattr(args, "what", None)
    if args.config_command == "show":
        if what == "flow-control":
            flow_rules = [await store.lifecycle.flow_control_rule(c) for c in OpsCode]
            rows = [r.model_dump(mode="json") for r in flow_rules if r is not None]
            ctx.out.table(
                rows,
                (
                    "opscode",
                    "enabled",
                    "region_window_minutes",
                    "region_limit",
                    "cluster_window_minutes",
                    "cluster_limit",
                ),
            )
        elif what == "approval":
            policies = [await store.lifecycle.approval_policy(c) for c in OpsCode if CATALOG[c].implemented]
            rows = [p.model_dump(mode="json") for p in policies]
            ctx.out.table(
                rows,
                (
                    "opscode",
                    "allow_manual_report",
                    "manual_report_needs_approval",
                    "approvers",
                    "min_approvals",
                    "approval_timeout_minutes",
                ),
            )
        elif what == "alert-rules":
            rules = await IntakeStore.of(store).rules()
            rows = [r.model_dump(mode="json") for r in rules]
            ctx.out.table(
                rows,
                (
                    "name",
                    "alertname",
                    "match",
                    "opscode",
                    "host_label",
                    "reason_category",
                    "settings",
                    "enabled",
                ),
            )
        else:
            windows = await MaintenanceWindowStore.of(store).all_windows()
            rows = [{"cluster_id": w.cluster_id, "window": w.describe()} for w in windows]
            ctx.out.table(rows, ("cluster_id", "window"))
        return
    who = args.who
    try:
        if args.config_command == "set-flow-control":
            opscode = workflow_for(args.opscode)[0]
            current = await store.lifecycle.flow_control_rule(opscode)
            fields = current.model_dump() if current else {"opscode": opscode}
            for name in (
                "enabled",
                "region_window_minutes",
                "region_limit",
                "cluster_window_minutes",
                "cluster_limit",
            ):
                value = getattr(args, name)
                if value is not None:
                    fields[name] = value
            flow_rule = FlowControlRule.model_validate(fields)
            await store.lifecycle.set_flow_control_rule(flow_rule, updated_by=who)
            ctx.out.value(flow_rule.model_dump(mode="json"), f"flow control of {opscode.value} set")
        elif args.config_command == "set-approval":
            opscode = workflow_for(args.opscode)[0]
            changes = {
                name: value
                for name, value in {
                    "allow_manual_report": args.allow_manual_report,
                    "manual_report_needs_approval": args.needs_approval,
                    "approvers": args.approvers.split(",") if args.approvers else None,
                    "min_approvals": args.min_approvals,
                    "approval_timeout_minutes": args.timeout_minutes,
                }.items()
                if value is not None
            }
            if not changes:
                raise UsageError("set-approval: nothing to change")
            await store.lifecycle.set_approval_policy(opscode, updated_by=who, **changes)
            policy = await store.lifecycle.approval_policy(opscode)
            ctx.out.value(policy.model_dump(mode="json"), f"approval policy of {opscode.value} set")
        elif args.config_command == "set-alert-rule":
            rule = AlertRule(
                name=args.name,
                alertname=args.alertname,
                match=dict(parse_settings(args.match)),
                opscode=workflow_for(args.opscode)[0],
                host_label=args.host_label,
                reason_category=args.reason_category,
                settings=parse_settings(args.setting),
                enabled=not args.disabled,
                priority=args.priority,
            )
            await IntakeStore.of(store).set_rule(rule, updated_by=who)
            ctx.out.value(rule.model_dump(mode="json"), f"alert rule {rule.name} set")
        elif args.config_command == "remove-alert-rule":
            if not await IntakeStore.of(store).remove_rule(args.name):
                raise Failed(f"no alert rule {args.name}")
            ctx.out.value({"removed": args.name}, f"alert rule {args.name} removed")
        else:
            hour, _, minute = args.start.partition(":")
            window = MaintenanceWindow(
                cluster_id=args.cluster, weekday=args.weekday, start=time(int(hour), int(minute or 0)),
                duration_minutes=args.minutes, time_zone=args.tz,
            )  # fmt: skip
            await MaintenanceWindowStore.of(store).set_window(window, updated_by=who)
            ctx.out.value(
                {"cluster_id": window.cluster_id, "window": window.describe()},
                f"{window.cluster_id}: {window.describe()}",
            )
    except ValidationError as error:
        raise UsageError(describe_validation_error(error)) from None
    except ValueError as error:
        raise UsageError(str(error)) from None


# ---- batch -------------------------------------------------------------------------------------------


async def open_operations(client: Client, query: str) -> list[dict[str, Any]]:
    rows = []
    async for execution in client.list_workflows(f"({query}) AND ExecutionStatus = 'Running'"):
        attributes = execution.search_attributes
        rows.append(
            {
                "workflow_id": execution.id,
                "type": execution.workflow_type,
                "state": (attributes.get("OpsState") or ["-"])[0],
                "host": (attributes.get("NcIp") or ["-"])[0],
            }
        )
    return sorted(rows, key=lambda r: r["workflow_id"])


def confirm(count: int, what: str, assume_yes: bool) -> bool:
    if assume_yes:
        return True
    print(f"Proceed with {what} of {count}? [y/N] ", end="", flush=True)
    answer = sys.stdin.readline().strip().lower()
    if not sys.stdin.isatty():
        print(answer)  # a piped answer is not echoed: show it, so the log reads as a dialogue
    return answer in ("y", "yes")


async def cmd_batch(ctx: Context) -> None:
    args = ctx.args
    client = await ctx.client()
    if args.hosts and args.query:
        raise UsageError("give --hosts or --query, not both")
    if not args.hosts and not args.query:
        raise UsageError("give --hosts IP,IP,... or --query 'visibility query'")
    if args.action == "unlock":
        if args.hosts:
            hosts = parse_hosts(args.hosts)
        else:
            hosts = sorted({r["host"] for r in await open_operations(client, args.query) if r["host"] != "-"})
        rows = [
            {"host": h, "workflow_id": f"{UNLOCK.value}-{h}", "action": "unlock (-> free)"} for h in hosts
        ]
        ctx.out.table(rows, ("host", "workflow_id", "action"))
        if not rows or not confirm(len(rows), "unlock", args.yes):
            print("nothing done")
            return
        done = []
        for row in rows:
            raw = {
                "nc_ip": row["host"],
                "requester": args.who,
                "reason_category": "system",
                "reason": args.reason,
            }
            row["outcome"] = await start(client, ctx.settings.task_queue, "NcUnlock", raw, row["workflow_id"])
            done.append(row)
        if args.wait:
            for row in done:
                row["outcome"] = (await watch(ctx, row["workflow_id"], quiet=True)).value
        ctx.out.table(done, ("host", "workflow_id", "outcome"))
        if any(r["outcome"] not in ("started", "already running", OpsState.SUCCEEDED.value) for r in done):
            raise Failed("some unlocks did not succeed")
        return
    query = args.query or " OR ".join(f"NcIp = '{h}'" for h in parse_hosts(args.hosts))
    rows = await open_operations(client, query)
    if args.action == "complete":
        for row in rows:
            waiting = row["state"] in (OpsState.PENDING_APPROVAL.value, OpsState.STEP_FAILED.value)
            row["action"] = "mark complete" if waiting else "skip: not waiting for a person"
    else:
        for row in rows:
            row["action"] = "cancel"
    ctx.out.table(rows, ("workflow_id", "type", "state", "host", "action"))
    chosen = [r for r in rows if not r["action"].startswith("skip")]
    if not chosen or not confirm(len(chosen), args.action, args.yes):
        print("nothing done")
        return
    for row in chosen:
        handle = client.get_workflow_handle(row["workflow_id"])
        try:
            if args.action == "cancel":
                await handle.cancel()
            else:
                await handle.signal(
                    "mark_complete", MarkCompleteInput(operator=args.who, comment=args.reason)
                )
            row["outcome"] = "requested"
        except RPCError as error:
            row["outcome"] = f"failed: {error.message}"
    ctx.out.table(chosen, ("workflow_id", "host", "outcome"))


# ---- the parser --------------------------------------------------------------------------------------


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(prog="opsctl", description="ecs-opsflow operations from the shell")
    top.add_argument("--json", action="store_true", help="JSON instead of tables")
    commands = top.add_subparsers(dest="command", required=True)

    submit = commands.add_parser(
        "submit", help="start an operation per host (one for several where it takes several)"
    )
    submit.add_argument("opscode", help="0x400012, or a workflow type such as NcLock")
    submit.add_argument("--host", required=True, help="IP or IP,IP,...")
    submit.add_argument("--reason-category", required=True)
    submit.add_argument("--reason", default="")
    submit.add_argument("--as", dest="requester", required=True, help="the requester")
    submit.add_argument("--ticket")
    submit.add_argument("--setting", action="append", default=[], help="name=value (product names)")
    submit.add_argument("--wait", action="store_true", help="wait for the end; exit 1 unless Succeeded")

    for name in ("status", "watch", "cancel"):
        sub = commands.add_parser(name)
        sub.add_argument("workflow_id")
        if name == "watch":
            sub.add_argument("--interval", type=float, default=1.0)
    for name in ("approve", "reject"):
        sub = commands.add_parser(name)
        sub.add_argument("workflow_id")
        sub.add_argument("--as", dest="who", required=True)
        sub.add_argument("--comment", default="")
    for name in ("retry-step", "skip-step", "abort"):
        sub = commands.add_parser(name)
        sub.add_argument("workflow_id")
        sub.add_argument("--as", dest="who", required=True)
        sub.add_argument("--step")
        sub.add_argument("--comment", default="")

    listing = commands.add_parser("list", help="operations from the store, newest first")
    listing.add_argument("--host")
    listing.add_argument("--opscode")
    listing.add_argument("--state")
    listing.add_argument("--since-hours", type=float)
    listing.add_argument("--limit", type=int, default=50)

    config = commands.add_parser(
        "config", help="flow control, approval policies, alert rules, maintenance windows"
    )
    config_commands = config.add_subparsers(dest="config_command", required=True)
    show = config_commands.add_parser("show")
    show.add_argument("what", choices=["flow-control", "approval", "alert-rules", "windows"])
    flow = config_commands.add_parser("set-flow-control")
    flow.add_argument("opscode")
    flow.add_argument("--enabled", type=_bool)
    for name in ("region_window_minutes", "region_limit", "cluster_window_minutes", "cluster_limit"):
        flow.add_argument(f"--{name.replace('_', '-')}", dest=name, type=int)
    approval = config_commands.add_parser("set-approval")
    approval.add_argument("opscode")
    approval.add_argument("--allow-manual-report", type=_bool)
    approval.add_argument("--needs-approval", type=_bool)
    approval.add_argument("--approvers", help="names or groups, comma separated")
    approval.add_argument("--min-approvals", type=int)
    approval.add_argument("--timeout-minutes", type=int)
    rule = config_commands.add_parser("set-alert-rule")
    rule.add_argument("name")
    rule.add_argument("--alertname", required=True)
    rule.add_argument("--opscode", required=True)
    rule.add_argument("--reason-category", required=True)
    rule.add_argument("--host-label", default="nc_ip")
    rule.add_argument("--match", action="append", default=[], help="label=value the alert must carry")
    rule.add_argument("--setting", action="append", default=[])
    rule.add_argument("--priority", type=int, default=100)
    rule.add_argument("--disabled", action="store_true")
    removing = config_commands.add_parser("remove-alert-rule")
    removing.add_argument("name")
    window = config_commands.add_parser("set-window")
    window.add_argument("--cluster", required=True)
    window.add_argument("--weekday", type=int, required=True, help="0 = Monday")
    window.add_argument("--start", required=True, help="HH:MM")
    window.add_argument("--minutes", type=int, required=True)
    window.add_argument("--tz", default="UTC")
    for sub in (flow, approval, rule, removing, window):
        sub.add_argument("--as", dest="who", required=True, help="who changes it (recorded)")

    batch = commands.add_parser(
        "batch", help="the product's batch actions, with a preview and a confirmation"
    )
    batch.add_argument("action", choices=["unlock", "cancel", "complete"])
    batch.add_argument("--hosts", help="IP,IP,...")
    batch.add_argument("--query", help="a Temporal visibility query, e.g. \"OpsState='StepFailed'\"")
    batch.add_argument("--as", dest="who", required=True)
    batch.add_argument("--reason", default="batch action")
    batch.add_argument("--yes", action="store_true", help="do not ask")
    batch.add_argument("--wait", action="store_true", help="unlock: wait for each to end")
    return top


def _bool(text: str) -> bool:
    if text.lower() in ("1", "true", "yes", "on"):
        return True
    if text.lower() in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"{text!r} is not true/false")


HANDLERS = {
    "submit": cmd_submit,
    "status": cmd_status,
    "watch": cmd_watch,
    "cancel": cmd_cancel,
    "approve": cmd_decide,
    "reject": cmd_decide,
    "retry-step": cmd_step_command,
    "skip-step": cmd_step_command,
    "abort": cmd_step_command,
    "list": cmd_list,
    "config": cmd_config,
    "batch": cmd_batch,
}


async def run(args: argparse.Namespace) -> None:
    ctx = Context(args)
    try:
        await HANDLERS[args.command](ctx)
    finally:
        await ctx.close()


def leave(code: int, message: str = "") -> NoReturn:
    with contextlib.suppress(OSError):  # a closed pipe (opsctl list | head) is not an error
        if message:
            print(f"opsctl: {message}", file=sys.stderr)
        sys.stdout.flush()
        sys.stderr.flush()
    # Not sys.exit: the Temporal client's native runtime threads can abort the interpreter while it
    # finalizes ("PyGILState_Release ... finalizing", seen here); there is nothing left to clean up.
    os._exit(code)


def main(argv: list[str] | None = None) -> None:
    args = parser().parse_args(argv)
    configure_logging("WARNING")  # the store's and SDK's info lines are not opsctl's output
    try:
        asyncio.run(run(args))
    except BrokenPipeError:
        leave(0)
    except UsageError as error:
        leave(2, str(error))
    except ConfigError as error:
        leave(2, f"configuration: {error}")
    except Failed as error:
        leave(1, str(error))
    except StoreError as error:
        leave(1, f"store: {error}")
    except RPCError as error:
        leave(1, f"Temporal: {error.message}")
    leave(0)
