"""The one exception the simulator raises for a refused call: it becomes an envelope with that code."""

from __future__ import annotations

from houyi.wire import Code


class SimulatorError(Exception):
    """A call the simulated control plane refuses; ``code`` and ``message`` go into the envelope."""

    def __init__(self, code: Code, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def invalid_parameter(message: str) -> SimulatorError:
    return SimulatorError(Code.INVALID_PARAMETER, message)


def not_found(message: str) -> SimulatorError:
    return SimulatorError(Code.NOT_FOUND, message)


def wrong_state(message: str) -> SimulatorError:
    return SimulatorError(Code.WRONG_STATE, message)


def unsupported(message: str) -> SimulatorError:
    return SimulatorError(Code.UNSUPPORTED, message)


def throttled(message: str) -> SimulatorError:
    return SimulatorError(Code.THROTTLED, message)
