"""A cluster's maintenance windows, read from the store for a workflow that must wait for one to open."""

from __future__ import annotations

import structlog
from pydantic import AwareDatetime, BaseModel
from temporalio import activity

from activities.errors import store_rejected, store_unavailable
from domain.maintenance import MaintenanceWindow, WindowState, window_state
from store.errors import StoreError, StoreUnavailable
from store.maintenance import MaintenanceWindowStore

log = structlog.get_logger(__name__)


class WindowQuery(BaseModel):
    cluster_id: str
    # The workflow's clock (workflow.now()), not the worker's: the answer is recorded in the history.
    at: AwareDatetime


class WindowAnswer(BaseModel):
    cluster_id: str
    windows: list[MaintenanceWindow]  # as configured when asked
    state: WindowState | None  # None: the cluster has no window, so it never opens


class MaintenanceActivities:
    """Store-backed maintenance window reads; the window store is injected."""

    def __init__(self, windows: MaintenanceWindowStore) -> None:
        self._windows = windows

    @activity.defn(name="GetMaintenanceWindow")
    async def window_state(self, query: WindowQuery) -> WindowAnswer:
        """The cluster's windows and whether they are open at ``query.at`` (when they open, close).

        Raises a retryable ``StoreUnavailable`` ApplicationError when the store cannot be reached.
        """
        try:
            windows = await self._windows.windows_for(query.cluster_id)
        except StoreUnavailable as error:
            raise store_unavailable(error) from None
        except StoreError as error:
            raise store_rejected(error) from None
        state = window_state(windows, query.at)
        log.info(
            "maintenance window read",
            cluster_id=query.cluster_id,
            windows=len(windows),
            state=state.describe() if state else "no window",
        )
        return WindowAnswer(cluster_id=query.cluster_id, windows=windows, state=state)
