"""What the store raises, so callers never match on asyncpg's exception classes.

Activities turn ``StoreUnavailable`` into a retryable ``ApplicationError`` (activities.errors); the
others mean the request itself is wrong and retrying it cannot help.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import asyncpg

from domain import errors


class StoreError(Exception):
    """A store failure that is neither unavailability nor a constraint; carries the driver's error."""

    retryable: bool = False


class StoreUnavailable(StoreError):
    """The database cannot be reached or cannot serve us right now; the same call may succeed later."""

    error_type = errors.STORE_UNAVAILABLE
    retryable = True


class StoreConflict(StoreError):
    """The write contradicts what is stored: a constraint rejected it, or it would rewrite a final state."""

    def __init__(self, message: str, *, constraint: str | None = None) -> None:
        super().__init__(message)
        self.constraint = constraint


class OperationNotFound(StoreError):
    def __init__(self, workflow_id: str) -> None:
        super().__init__(f"no operation recorded for workflow {workflow_id!r}")
        self.workflow_id = workflow_id


# Errors after which the database (or the way to it) is temporarily unusable, not the request wrong.
_UNAVAILABLE = (
    asyncpg.PostgresConnectionError,  # lost or refused connection (SQLSTATE class 08)
    asyncpg.exceptions.OperatorInterventionError,  # class 57: cannot connect now, shutdown, cancelled query
    asyncpg.exceptions.InsufficientResourcesError,  # class 53: too many connections, disk full, out of memory
    asyncpg.exceptions.TransactionRollbackError,  # class 40: deadlock or serialization failure; a retry succeeds
    OSError,  # socket refused, socket file missing, host unreachable
    TimeoutError,  # connect or pool-acquire timeout (an OSError too, named for the reader)
)


@contextmanager
def translated_errors(doing: str) -> Iterator[None]:
    """Re-raises driver errors met while ``doing`` something as the store's own exceptions."""
    try:
        yield
    except StoreError:
        raise
    except _UNAVAILABLE as error:
        raise StoreUnavailable(
            f"database unavailable while {doing}: {type(error).__name__}: {error}"
        ) from error
    except asyncpg.IntegrityConstraintViolationError as error:
        constraint = getattr(error, "constraint_name", None)
        raise StoreConflict(f"{doing} rejected: {error}", constraint=constraint) from error
    except (asyncpg.PostgresError, asyncpg.InterfaceError) as error:
        raise StoreError(f"{doing} failed: {type(error).__name__}: {error}") from error
