"""Configuration from the environment, read once at process start."""

from __future__ import annotations

import os
from pathlib import Path

from pydantic import BaseModel, Field

DEFAULT_TASK_QUEUE = "ecs-ops"


def _env(name: str, default: str) -> str:
    value = os.environ.get(name, "").strip()
    return value or default


def _env_int(name: str, default: int) -> int:
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    try:
        return int(raw)
    except ValueError:
        raise ValueError(f"environment variable {name}={raw!r} is not a whole number") from None


class Settings(BaseModel):
    temporal_address: str = "localhost:7233"
    temporal_namespace: str = "default"
    task_queue: str = DEFAULT_TASK_QUEUE
    database_url: str | None = None
    data_dir: Path = Path("var")
    houyi_url: str = "http://127.0.0.1:8090"
    houyi_timeout_seconds: float = 10.0
    worker_metrics_port: int = Field(default=9464, ge=0, le=65535)
    max_concurrent_activities: int = Field(default=100, ge=1)
    max_concurrent_workflow_tasks: int = Field(default=100, ge=1)
    log_level: str = "INFO"
    power_poll_seconds: float = Field(default=60.0, gt=0)
    migration_poll_seconds: float = Field(default=5.0, gt=0)
    time_scale: float = Field(default=1.0, gt=0, le=1.0)
    disk_poll_seconds: float = Field(default=5.0, gt=0)
    disk_slot_retry_seconds: float = Field(default=30.0, gt=0)
    # Cron of the disk recycle Schedule, in UTC; "off": the worker leaves the Schedule alone.
    recycle_schedule: str = "0 3 * * *"

    @classmethod
    def from_env(cls) -> Settings:
        return cls(
            temporal_address=_env("TEMPORAL_ADDRESS", "localhost:7233"),
            temporal_namespace=_env("TEMPORAL_NAMESPACE", "default"),
            task_queue=_env("OPSFLOW_TASK_QUEUE", DEFAULT_TASK_QUEUE),
            database_url=os.environ.get("DATABASE_URL", "").strip() or None,
            data_dir=Path(_env("OPSFLOW_DATA_DIR", "var")),
            houyi_url=_env("HOUYI_URL", "http://127.0.0.1:8090"),
            houyi_timeout_seconds=float(_env("HOUYI_TIMEOUT_SECONDS", "10")),
            worker_metrics_port=_env_int("WORKER_METRICS_PORT", 9464),
            max_concurrent_activities=_env_int("WORKER_MAX_CONCURRENT_ACTIVITIES", 100),
            max_concurrent_workflow_tasks=_env_int("WORKER_MAX_CONCURRENT_WORKFLOW_TASKS", 100),
            log_level=_env("OPSFLOW_LOG_LEVEL", "INFO"),
            power_poll_seconds=float(_env("OPSFLOW_POWER_POLL_SECONDS", "60")),
            migration_poll_seconds=float(_env("OPSFLOW_MIGRATION_POLL_SECONDS", "5")),
            # Against the simulator at speed N, 1/N: the real waits that model Houyi's shrink with it.
            time_scale=float(_env("OPSFLOW_TIME_SCALE", "1")),
            disk_poll_seconds=float(_env("OPSFLOW_DISK_POLL_SECONDS", "5")),
            disk_slot_retry_seconds=float(_env("OPSFLOW_DISK_SLOT_RETRY_SECONDS", "30")),
            recycle_schedule=_env("OPSFLOW_RECYCLE_SCHEDULE", "0 3 * * *"),
        )
