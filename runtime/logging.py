"""structlog JSON logs for every process; stdlib records (the Temporal SDK's, ``workflow.logger``) go through
the same renderer, so one line format carries workflow id, opscode and host wherever they are bound."""

from __future__ import annotations

import logging
import sys
from collections.abc import MutableMapping
from typing import Any

import structlog
from temporalio import activity, workflow
from temporalio.worker import (
    ActivityInboundInterceptor,
    ExecuteActivityInput,
    Interceptor,
)

from domain.opscodes import CATALOG

_OPSCODE_BY_WORKFLOW_TYPE = {spec.workflow_type: spec.code.value for spec in CATALOG.values()}


def add_temporal_context(_: Any, __: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    """Binds workflow id, run id and opscode to every line logged in a workflow or an activity.

    ``workflow.logger`` and ``activity.logger`` pass them as a ``temporal_workflow`` / ``temporal_activity``
    extra; a structlog call inside an activity gets them from the activity's context.
    """
    context = event.pop("temporal_workflow", None) or event.pop("temporal_activity", None)
    if context is None and activity.in_activity():
        info = activity.info()
        context = {
            "workflow_id": info.workflow_id,
            "run_id": info.workflow_run_id,
            "workflow_type": info.workflow_type,
            "activity_type": info.activity_type,
            "attempt": info.attempt,
        }
    if context:
        for key in ("workflow_id", "run_id", "workflow_type", "activity_type", "attempt"):
            if key in context:
                event.setdefault(key, context[key])
        opscode = _OPSCODE_BY_WORKFLOW_TYPE.get(str(context.get("workflow_type")))
        if opscode:
            event.setdefault("opscode", opscode)
    return event


_SHARED: list[structlog.types.Processor] = [
    structlog.contextvars.merge_contextvars,
    structlog.stdlib.add_log_level,
    structlog.stdlib.add_logger_name,
    structlog.processors.TimeStamper(fmt="iso", utc=True),
]
_AFTER_EXTRAS: list[structlog.types.Processor] = [add_temporal_context]


def configure_logging(level: str = "INFO", *, json: bool = True) -> None:
    renderer: structlog.types.Processor = (
        structlog.processors.JSONRenderer() if json else structlog.dev.ConsoleRenderer(colors=False)
    )
    structlog.configure(
        processors=[*_SHARED, *_AFTER_EXTRAS, structlog.stdlib.ProcessorFormatter.wrap_for_formatter],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=True,
    )
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=[*_SHARED, structlog.stdlib.ExtraAdder(), *_AFTER_EXTRAS],
        processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            structlog.processors.format_exc_info,
            renderer,
        ],
    )
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(formatter)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # The SDK's loggers also append their context to the message; it is in the fields already.
    workflow.logger.workflow_info_on_message = False
    activity.logger.activity_info_on_message = False
    # aiohttp's access log would repeat every Houyi call; the call audit already keeps them.
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)


# Fields of an activity's input that name where it acts; bound to every line the activity logs.
_HOST_FIELDS = ("nc_ip", "nc_id", "hosts", "opscode", "disk_id")


class _BindActivityInput(ActivityInboundInterceptor):
    async def execute_activity(self, input: ExecuteActivityInput) -> Any:
        bound: dict[str, Any] = {}
        for arg in input.args[:1]:
            for field in _HOST_FIELDS:
                value = getattr(arg, field, None)
                if value is None or value == []:
                    continue
                if field == "hosts" and isinstance(value, list):
                    bound["nc_ip"] = ",".join(str(host) for host in value)
                elif field == "opscode":
                    bound["opscode"] = getattr(value, "value", value)
                else:
                    bound[field] = str(value)
        # Each activity runs in a task of its own, so these contextvars end with it.
        with structlog.contextvars.bound_contextvars(**bound):
            return await self.next.execute_activity(input)


class LogContextInterceptor(Interceptor):
    """Binds the host (``nc_ip``/``nc_id``), opscode and disk an activity works on to its log lines."""

    def intercept_activity(self, next: ActivityInboundInterceptor) -> ActivityInboundInterceptor:
        return _BindActivityInput(next)
