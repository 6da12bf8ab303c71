"""Maintenance windows: the weekly times a cluster may be disrupted (cold migrations run only inside them).

A window is a weekday, a local start time, a length and an IANA time zone. Each week it opens at that wall
clock time in its zone, so across a DST change it keeps its local hours (its UTC hours move by the shift).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime, time, timedelta
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import BaseModel, ConfigDict, Field, field_validator

WEEKDAYS = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")
# How far ahead a window is looked for, and how far a contiguous open span is followed (24x7 ends here).
HORIZON = timedelta(days=15)


class MaintenanceWindow(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    cluster_id: str = Field(min_length=1, max_length=128)
    weekday: int = Field(ge=0, le=6, description="0 = Monday ... 6 = Sunday")
    start: time
    duration_minutes: int = Field(ge=1, le=10080)
    time_zone: str = "UTC"

    @field_validator("time_zone")
    @classmethod
    def _known_zone(cls, value: str) -> str:
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"unknown time zone {value!r} (an IANA name such as Asia/Shanghai)") from None
        return value

    @field_validator("start")
    @classmethod
    def _naive_start(cls, value: time) -> time:
        if value.tzinfo is not None:
            raise ValueError("start is a wall-clock time in time_zone, without a zone of its own")
        return value

    def describe(self) -> str:
        return f"{WEEKDAYS[self.weekday]} {self.start:%H:%M} {self.time_zone} for {self.duration_minutes} min"

    def openings(self, since: datetime, until: datetime) -> list[tuple[datetime, datetime]]:
        """(opens, closes) in UTC of every occurrence that overlaps [since, until)."""
        zone = ZoneInfo(self.time_zone)
        spans: list[tuple[datetime, datetime]] = []
        first = since.astimezone(zone).date() - timedelta(days=7 + self.duration_minutes // 1440)
        day = first + timedelta(days=(self.weekday - first.weekday()) % 7)
        while True:
            opens = datetime.combine(day, self.start, zone).astimezone(UTC)
            if opens >= until:
                return spans
            closes = opens + timedelta(minutes=self.duration_minutes)
            if closes > since:
                spans.append((opens, closes))
            day = day + timedelta(days=7)


class WindowState(BaseModel):
    """Whether a cluster's maintenance window is open at a moment, and when it opens / closes (UTC)."""

    open_now: bool
    opens_at: datetime
    closes_at: datetime

    def describe(self) -> str:
        if self.open_now:
            return f"open until {self.closes_at:%Y-%m-%d %H:%M} UTC"
        return f"opens {self.opens_at:%Y-%m-%d %H:%M} UTC, closes {self.closes_at:%Y-%m-%d %H:%M} UTC"


def window_state(windows: Sequence[MaintenanceWindow], at: datetime) -> WindowState | None:
    """The state at ``at`` (aware); None without windows. Overlapping or touching windows merge into one
    span; a span is followed at most ``HORIZON`` ahead (a 24x7 configuration closes there)."""
    if at.tzinfo is None:
        raise ValueError("at must be timezone-aware")
    if not windows:
        return None
    at = at.astimezone(UTC)
    spans = sorted(span for w in windows for span in w.openings(at, at + HORIZON))
    merged: list[list[datetime]] = []
    for opens, closes in spans:
        if merged and opens <= merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], closes)
        else:
            merged.append([opens, closes])
    for opens, closes in merged:
        if closes <= at:
            continue
        closes = min(closes, at + HORIZON)
        if opens <= at:
            return WindowState(open_now=True, opens_at=at, closes_at=closes)
        return WindowState(open_now=False, opens_at=opens, closes_at=closes)
    return None
