"""Maintenance windows: the weekly times a cluster may be disrupted (cold migrations run only inside them).

A window is a weekday, a local start time, a length and an IANA time zone. Pure: no I/O besides reading
the time zone database (zoneinfo).

How a window falls on the calendar (the choice made here):

- **Wall clock.** Each week it opens at ``start`` on ``weekday`` as the clock in ``time_zone`` shows it, so
  across a DST change it keeps its local hours and its UTC hours move by the shift (Sunday 02:00
  Europe/Berlin is 01:00 UTC in winter, 00:00 UTC in summer). People book windows in local time.
- **Elapsed length.** ``duration_minutes`` is real time from the opening: a 4-hour window that spans a
  DST change still lasts 4 hours (it closes at 05:00 or 07:00 on the local clock instead of 06:00).
- **A start that does not exist** that day (in the spring-forward gap, e.g. 02:30 Europe/Berlin on
  2026-03-29) opens as if the clock had not jumped yet: at the pre-change offset (01:30 UTC, which the
  local clock shows as 03:30). **A start that occurs twice** (autumn) opens at its first occurrence.
- The weekday is that of the local date, so a window crosses midnight and the end of the week freely
  (Sunday 22:00 for 240 minutes is open until Monday 02:00).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, time, timedelta
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, field_validator

WEEKDAYS = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")
WEEK = timedelta(days=7)
# How far a contiguous open span is followed from its opening (or from now when it is open): a window
# configuration that is always open (24x7) would otherwise have no end. closes_at is capped there.
HORIZON = timedelta(days=15)
MAX_DURATION_MINUTES = 7 * 24 * 60

# Keys zoneinfo loads but that mean "whatever this machine is set to": not a place, so not a window's zone.
_MACHINE_ZONES = frozenset({"localtime", "posixrules"})


def _zone(name: str) -> ZoneInfo:
    """The IANA zone ``name``; a ValueError naming it when this machine does not know it."""
    if name in _MACHINE_ZONES:
        raise ValueError(
            f"time zone {name!r} depends on the machine; name an IANA zone such as Asia/Shanghai"
        )
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError(f"unknown time zone {name!r} (an IANA name such as Asia/Shanghai or UTC)") from None


class MaintenanceWindow(BaseModel):
    """One weekly window of a cluster: opens ``weekday`` at ``start`` (wall clock in ``time_zone``) and
    stays open ``duration_minutes``. A cluster may have several; overlapping or touching ones merge."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    cluster_id: str = Field(min_length=1, max_length=128)
    weekday: int = Field(ge=0, le=6, description="0 = Monday ... 6 = Sunday, of the local date")
    start: time = Field(description="local wall-clock time in time_zone, without a zone of its own")
    duration_minutes: int = Field(ge=1, le=MAX_DURATION_MINUTES)
    time_zone: str = Field(default="UTC", description="IANA name, e.g. Asia/Shanghai")

    @field_validator("time_zone")
    @classmethod
    def _known_zone(cls, value: str) -> str:
        _zone(value)
        return value

    @field_validator("start")
    @classmethod
    def _naive_start(cls, value: time) -> time:
        if value.tzinfo is not None:
            raise ValueError("start is a wall-clock time in time_zone, without a zone of its own")
        return value

    def describe(self) -> str:
        """E.g. ``Thu 02:00 Asia/Shanghai for 240 min``."""
        return f"{WEEKDAYS[self.weekday]} {self.start:%H:%M} {self.time_zone} for {self.duration_minutes} min"

    def occurrences(self, since: datetime, until: datetime) -> list[tuple[datetime, datetime]]:
        """(opens, closes) in UTC of every occurrence open at some moment of [since, until), in order."""
        zone = _zone(self.time_zone)
        length = timedelta(minutes=self.duration_minutes)
        # An occurrence still open at `since` opened at most `length` before it; a day more covers the
        # zone's offset and a local date that steps back at a DST change.
        first = (since - length).astimezone(zone).date() - timedelta(days=1)
        day = first + timedelta(days=(self.weekday - first.weekday()) % 7)
        spans: list[tuple[datetime, datetime]] = []
        while True:
            opens = datetime.combine(day, self.start, tzinfo=zone).astimezone(UTC)  # fold=0: see module doc
            if opens >= until:
                return spans
            closes = opens + length
            if closes > since:
                spans.append((opens, closes))
            day += WEEK


class WindowState(BaseModel):
    """Whether a cluster's maintenance window is open at a moment, and the open span (UTC).

    ``opens_at`` is that moment when open now. ``closes_at`` ends the contiguous open span (overlapping
    and touching windows merge), at most ``HORIZON`` after ``opens_at``. ``opens_local`` is the opening on
    the clock of the window that opens the span (e.g. ``Thu 02:00 Asia/Shanghai``), when that zone is not
    UTC and the window is not open now; computed here so ``describe`` needs no time zone database.
    """

    model_config = ConfigDict(frozen=True)

    open_now: bool
    opens_at: AwareDatetime
    closes_at: AwareDatetime
    opens_local: str | None = None

    @field_validator("opens_at", "closes_at")
    @classmethod
    def _in_utc(cls, value: datetime) -> datetime:
        return value.astimezone(UTC)

    def describe(self) -> str:
        """E.g. ``open until 2026-11-25 06:00 UTC`` or
        ``opens 2026-11-25 18:00 UTC (Thu 02:00 Asia/Shanghai), closes 22:00 UTC``."""
        if self.open_now:
            return f"open until {self.closes_at:%Y-%m-%d %H:%M} UTC"
        same_day = self.closes_at.date() == self.opens_at.date()
        closes = f"{self.closes_at:%H:%M}" if same_day else f"{self.closes_at:%Y-%m-%d %H:%M}"
        local = f" ({self.opens_local})" if self.opens_local else ""
        return f"opens {self.opens_at:%Y-%m-%d %H:%M} UTC{local}, closes {closes} UTC"


@dataclass
class _Span:
    opens: datetime
    closes: datetime
    first: MaintenanceWindow  # the window whose occurrence opens the span


def window_state(windows: Sequence[MaintenanceWindow], at: datetime) -> WindowState | None:
    """The state of ``windows`` (one cluster's) at ``at``, which must be timezone-aware; None when there
    are no windows. A window is open from its opening included to its closing excluded."""
    if at.tzinfo is None or at.utcoffset() is None:
        raise ValueError(f"at must be timezone-aware, got the naive {at.isoformat()}")
    if not windows:
        return None
    at = at.astimezone(UTC)
    # Each window opens once a week (7 days +- a DST shift), so the next opening is within WEEK + 1 day,
    # and its span is followed HORIZON further: nothing later can change the answer.
    until = at + WEEK + timedelta(days=1) + HORIZON
    occurrences = sorted(
        ((opens, closes, window) for window in windows for opens, closes in window.occurrences(at, until)),
        key=lambda occurrence: (occurrence[0], occurrence[1]),
    )
    spans: list[_Span] = []
    for opens, closes, window in occurrences:
        if spans and opens <= spans[-1].closes:
            spans[-1].closes = max(spans[-1].closes, closes)
        else:
            spans.append(_Span(opens, closes, window))
    span = spans[0]  # occurrences() yields only those closing after `at`, and at least one per window
    if span.opens <= at:
        return WindowState(open_now=True, opens_at=at, closes_at=min(span.closes, at + HORIZON))
    zone = span.first.time_zone
    local = span.opens.astimezone(_zone(zone))
    return WindowState(
        open_now=False,
        opens_at=span.opens,
        closes_at=min(span.closes, span.opens + HORIZON),
        opens_local=None if zone == "UTC" else f"{WEEKDAYS[local.weekday()]} {local:%H:%M} {zone}",
    )
