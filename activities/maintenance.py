"""The maintenance window of a cluster, read from the store for a workflow that must wait for it."""

from __future__ import annotations

from datetime import datetime

import structlog
from pydantic import BaseModel
from temporalio import activity

from activities.errors import store_unavailable
from domain.maintenance import MaintenanceWindow, WindowState, window_state
from store.errors import StoreUnavailable
from store.maintenance import MaintenanceWindowStore

log = structlog.get_logger(__name__)


class WindowQuery(BaseModel):
    cluster_id: str
    at: datetime  # the workflow's clock: the answer is recorded in its history, so replay sees the same


class WindowAnswer(BaseModel):
    cluster_id: str
    windows: list[MaintenanceWindow]
    state: WindowState | None  # None: the cluster has no window


class MaintenanceActivities:
    def __init__(self, windows: MaintenanceWindowStore) -> None:
        self._windows = windows

    @activity.defn(name="GetMaintenanceWindow")
    async def window_state(self, query: WindowQuery) -> WindowAnswer:
        try:
            windows = await self._windows.windows_for(query.cluster_id)
        except StoreUnavailable as error:
            raise store_unavailable(error) from None
        state = window_state(windows, query.at)
        log.info(
            "maintenance window", cluster_id=query.cluster_id, state=state.describe() if state else "none"
        )
        return WindowAnswer(cluster_id=query.cluster_id, windows=windows, state=state)
