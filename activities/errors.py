"""Turns adapter and store failures into ``ApplicationError``s, in one place."""

from __future__ import annotations

from datetime import timedelta

from temporalio.exceptions import ApplicationError

from domain import errors
from houyi.errors import HouyiError


def from_houyi(error: HouyiError, *, delay_scale: float = 1.0) -> ApplicationError:
    """A Houyi failure as Temporal sees it: its type, whether a retry can help, and how soon.

    ``delay_scale`` shrinks the wait before a retry against a simulator that runs faster than real time.
    """
    delay = (
        timedelta(seconds=error.retry_after_seconds * delay_scale)
        if error.retryable and error.retry_after_seconds is not None
        else None
    )
    return ApplicationError(
        error.message,
        {"action": error.action, "code": error.code, "request_id": error.request_id},
        type=error.error_type,
        non_retryable=not error.retryable,
        next_retry_delay=delay,
    )


def store_unavailable(error: Exception) -> ApplicationError:
    return ApplicationError(f"operation store unavailable: {error}", type=errors.STORE_UNAVAILABLE)


def store_rejected(error: Exception) -> ApplicationError:
    """The database refused the data itself (a value it cannot hold, a limit): a retry would fail the same way,
    so the activity fails at once instead of spinning."""
    return ApplicationError(
        f"operation store rejected the write: {error}", type=errors.STORE_REJECTED, non_retryable=True
    )
