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
POWER_NOT_SETTLED: Final = "PowerNotSettled"

# Evacuation: live and cold migration, emptiness before a power-off.
INSUFFICIENT_CAPACITY: Final = "InsufficientCapacity"
NO_MAINTENANCE_WINDOW: Final = "NoMaintenanceWindow"
MIGRATION_TIMED_OUT: Final = "MigrationTimedOut"
MIGRATION_STUCK: Final = "MigrationStuck"
MIGRATION_FAILED: Final = "MigrationFailed"
VMS_NOT_MOVED: Final = "VmsNotMoved"
NC_NOT_EMPTY: Final = "NcNotEmpty"

# Disk live migration: each limit its own refusal.
DISK_NOT_RIVER: Final = "DiskNotRiver"
DISK_SHARED: Final = "DiskShared"
DISK_TOO_LARGE: Final = "DiskTooLarge"
DISK_CHANGE_REFUSED: Final = "DiskChangeRefused"
DISK_SAME_CLUSTER: Final = "DiskSameStorageCluster"
DISK_CROSS_ZONE: Final = "DiskCrossZone"
DISK_OSS_DOMAIN_MISMATCH: Final = "DiskOssDomainMismatch"
STORAGE_CLUSTER_NAME_TOO_LONG: Final = "StorageClusterNameTooLong"
DISK_NOT_FOUND: Final = "DiskNotFound"
STORAGE_CLUSTER_NOT_FOUND: Final = "StorageClusterNotFound"
# Another operation holds the disk (a migration of it is already under way).
DISK_BUSY: Final = "DiskBusy"
# A cancel that cannot be honoured (a disk copy has no rollback): recorded, the operation goes on.
CANCEL_REFUSED: Final = "CancelRefused"
DISK_MIGRATION_FAILED: Final = "DiskMigrationFailed"
# The storage side refused to delete a source whose destination is not whole (checked with the delete).
DESTINATION_NOT_LOADED: Final = "DestinationNotLoaded"

# Lifecycle: leases, manual reports, approvals, operator commands.
HOST_BUSY: Final = "HostBusy"
MANUAL_REPORT_NOT_ALLOWED: Final = "ManualReportNotAllowed"
APPROVER_NOT_ALLOWED: Final = "ApproverNotAllowed"
SELF_APPROVAL: Final = "SelfApproval"
DUPLICATE_VOTE: Final = "DuplicateVote"
NOT_PENDING_APPROVAL: Final = "NotPendingApproval"
STEP_NOT_WAITING: Final = "StepNotWaiting"
# mark_complete sent to an operation that does not wait for a person.
OPERATION_NOT_WAITING: Final = "OperationNotWaiting"
STEP_NOT_SKIPPABLE: Final = "StepNotSkippable"
OPERATION_ABORTED: Final = "OperationAborted"
OPERATION_FAILED: Final = "OperationFailed"

# Store.
STORE_UNAVAILABLE: Final = "StoreUnavailable"
STORE_CONFLICT: Final = "StoreConflict"
STORE_REJECTED: Final = "StoreRejected"
