"""Houyi errors, classified once: what can be retried (and after how long) and what cannot."""

from __future__ import annotations

from domain import errors
from houyi.wire import Code

# "distribute lock fail" means the API was called too often: wait, then retry (DOMAIN.md).
THROTTLED_RETRY_AFTER_SECONDS = 30.0
UNAVAILABLE_RETRY_AFTER_SECONDS = 2.0


class HouyiError(Exception):
    """A call that did not succeed. ``error_type`` is one of ``domain.errors``."""

    error_type: str = errors.HOUYI_UNAVAILABLE
    retryable: bool = True
    retry_after_seconds: float | None = UNAVAILABLE_RETRY_AFTER_SECONDS

    def __init__(self, action: str, code: int, message: str, request_id: str = "") -> None:
        self.action = action
        self.code = code
        self.message = message
        self.request_id = request_id
        super().__init__(
            f"houyi {action} failed: code {code}: {message}"
            + (f" (request {request_id})" if request_id else "")
        )


class HouyiInvalidParameter(HouyiError):
    error_type = errors.HOUYI_INVALID_PARAMETER
    retryable = False
    retry_after_seconds = None


class HouyiNotFound(HouyiError):
    error_type = errors.HOUYI_NOT_FOUND
    retryable = False
    retry_after_seconds = None


class HouyiWrongState(HouyiError):
    error_type = errors.HOUYI_WRONG_STATE
    retryable = False
    retry_after_seconds = None


class HouyiUnsupported(HouyiError):
    error_type = errors.HOUYI_UNSUPPORTED
    retryable = False
    retry_after_seconds = None


class HouyiThrottled(HouyiError):
    error_type = errors.HOUYI_THROTTLED
    retry_after_seconds = THROTTLED_RETRY_AFTER_SECONDS


class HouyiUnavailable(HouyiError):
    """5xx answers, transport failures and timeouts."""


class HouyiProtocolError(HouyiError):
    """The answer could not be read; retrying may help (a proxy page, a truncated body)."""

    error_type = errors.HOUYI_PROTOCOL


_BY_CODE: dict[int, type[HouyiError]] = {
    Code.INVALID_PARAMETER: HouyiInvalidParameter,
    Code.NOT_FOUND: HouyiNotFound,
    Code.WRONG_STATE: HouyiWrongState,
    Code.UNSUPPORTED: HouyiUnsupported,
    Code.THROTTLED: HouyiThrottled,
}


def error_for(action: str, code: int, message: str, request_id: str = "") -> HouyiError:
    """The typed error for an envelope code other than 200."""
    cls = _BY_CODE.get(code)
    if cls is None:
        # Unknown 4xx codes are the caller's fault and will not improve on retry; 5xx and others may.
        cls = HouyiInvalidParameter if 400 <= code < 500 else HouyiUnavailable
    return cls(action, code, message, request_id)
