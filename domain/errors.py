"""Every error type the service raises, as constants in one place.

Workflows and activities raise ``ApplicationError(type=<one of these>)``; retry policies, tests and
the intake match on these names, never on exception class names.
"""

from typing import Final

# Input and policy refusals: nothing was touched.
INVALID_INPUT: Final = "InvalidInput"
INVALID_SETTINGS: Final = "InvalidSettings"
UNKNOWN_OPSCODE: Final = "UnknownOpsCode"
NC_NOT_FOUND: Final = "NcNotFound"
VM_NOT_FOUND: Final = "VmNotFound"
NC_WRONG_STATUS: Final = "NcWrongStatus"

# Houyi answers, classified once in houyi.errors.
HOUYI_INVALID_PARAMETER: Final = "HouyiInvalidParameter"
HOUYI_NOT_FOUND: Final = "HouyiNotFound"
HOUYI_WRONG_STATE: Final = "HouyiWrongState"
HOUYI_UNSUPPORTED: Final = "HouyiUnsupported"
HOUYI_THROTTLED: Final = "HouyiThrottled"
HOUYI_UNAVAILABLE: Final = "HouyiUnavailable"
HOUYI_PROTOCOL: Final = "HouyiProtocolError"

# Outcomes checked after an action.
ACTION_NOT_APPLIED: Final = "ActionNotApplied"

# Store.
STORE_UNAVAILABLE: Final = "StoreUnavailable"
STORE_CONFLICT: Final = "StoreConflict"

NON_RETRYABLE_REFUSALS: Final = frozenset(
    {
        INVALID_INPUT,
        INVALID_SETTINGS,
        UNKNOWN_OPSCODE,
        NC_NOT_FOUND,
        VM_NOT_FOUND,
        NC_WRONG_STATUS,
        HOUYI_INVALID_PARAMETER,
        HOUYI_NOT_FOUND,
        HOUYI_WRONG_STATE,
        HOUYI_UNSUPPORTED,
    }
)
