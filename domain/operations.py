"""What every operation carries: who asked, why, where it came from, and how it ended."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Any, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from domain import errors
from domain.disk import DiskMigrationReport
from domain.evacuation import VmMove
from domain.model import DiskFormat, NcBizStatus, NcIp
from domain.opscodes import OpsCode
from domain.residue import ProcessPlan
from domain.settings import (
    NcDeepOfflineSettings,
    NcForcedRebootSettings,
    NcLockSettings,
    NcReOnlineSettings,
    NcUnlockSettings,
    VmResidueCleanupSettings,
    WholeHostMigrationSettings,
    WildVmCleanupSettings,
)


class ReasonCategory(StrEnum):
    """The product's reason categories for a manual report."""

    HARDWARE = "hardware"
    KERNEL = "kernel"
    NETWORK = "network"
    SYSTEM = "system"
    HANG = "hang"
    SECURITY = "security"
    INTERNAL_REBOOT = "internal_reboot"


class OperationSource(StrEnum):
    MANUAL = "manual"
    ALERT = "alert"
    SCHEDULE = "schedule"


class OpsState(StrEnum):
    """Where an operation stands; also the ``OpsState`` search attribute."""

    VALIDATING = "Validating"
    PENDING_APPROVAL = "PendingApproval"
    RUNNING = "Running"
    STEP_FAILED = "StepFailed"
    SUCCEEDED = "Succeeded"
    FAILED = "Failed"
    REFUSED = "Refused"
    REJECTED = "Rejected"
    ABANDONED = "Abandoned"
    CANCELLED = "Cancelled"
    EXPIRED = "Expired"

    @property
    def final(self) -> bool:
        return self not in (
            OpsState.VALIDATING,
            OpsState.PENDING_APPROVAL,
            OpsState.RUNNING,
            OpsState.STEP_FAILED,
        )


class OperationInput(BaseModel):
    """Who asks for an operation and why: the fields every operation's input shares."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    requester: str = Field(min_length=1, max_length=128)
    reason_category: ReasonCategory
    reason: str = Field(default="", max_length=2000)
    ticket: str | None = Field(default=None, max_length=128)
    source: OperationSource = OperationSource.MANUAL

    @property
    def settings_by_product_name(self) -> dict[str, Any]:
        """The settings under the product's names, as the operation row keeps them."""
        settings = getattr(self, "settings", None)
        return settings.model_dump(by_alias=True) if isinstance(settings, BaseModel) else {}


class OperationRequest(OperationInput):
    """Input of an operation on one host."""

    nc_ip: NcIp


class MultiHostRequest(OperationInput):
    """Input of an operation on several hosts at once (``nc_ips`` instead of ``nc_ip``)."""

    nc_ips: list[NcIp] = Field(min_length=1, max_length=200)

    @field_validator("nc_ips")
    @classmethod
    def _distinct(cls, nc_ips: list[str]) -> list[str]:
        repeated = sorted({ip for ip in nc_ips if nc_ips.count(ip) > 1})
        if repeated:
            raise ValueError(f"hosts listed more than once: {', '.join(repeated)}")
        return nc_ips


class NcLockInput(OperationRequest):
    """Input of ``NcLock`` (0x410A01), as typed in the Temporal UI."""

    settings: NcLockSettings = Field(default_factory=NcLockSettings)


class NcUnlockInput(OperationRequest):
    """Input of ``NcUnlock`` (0x4000A000000007)."""

    settings: NcUnlockSettings = Field(default_factory=NcUnlockSettings)


class NcForcedRebootInput(OperationRequest):
    """Input of ``NcForcedReboot`` (0x400012)."""

    settings: NcForcedRebootSettings = Field(default_factory=NcForcedRebootSettings)


class NcReOnlineInput(MultiHostRequest):
    """Input of ``NcReOnline`` (0x400011): one or many hosts."""

    settings: NcReOnlineSettings = Field(default_factory=NcReOnlineSettings)


class NcDeepOfflineInput(OperationRequest):
    """Input of ``NcDeepOffline`` (0x400003) and ``NcDeepOfflineCold`` (0x40003000001001)."""

    settings: NcDeepOfflineSettings = Field(default_factory=NcDeepOfflineSettings)


class WholeHostMigrationInput(OperationRequest):
    """Input of ``WholeHostMigration``."""

    settings: WholeHostMigrationSettings = Field(default_factory=WholeHostMigrationSettings)


class VmResidueCleanupInput(OperationRequest):
    """Input of ``VmResidueCleanup`` (0x10001000008002): a host, optionally one VM (setting ``vm``)."""

    settings: VmResidueCleanupSettings = Field(default_factory=VmResidueCleanupSettings)


class WildVmCleanupInput(OperationInput):
    """Input of ``WildVmCleanup`` (0x3000000000802): a cluster to sweep, or a list of hosts."""

    cluster_id: str | None = Field(default=None, min_length=1, max_length=128)
    nc_ips: list[NcIp] | None = Field(default=None, min_length=1, max_length=500)
    settings: WildVmCleanupSettings = Field(default_factory=WildVmCleanupSettings)

    @model_validator(mode="after")
    def _one_scope(self) -> WildVmCleanupInput:
        if (self.cluster_id is None) == (self.nc_ips is None):
            raise ValueError("give either cluster_id or nc_ips, not both and not neither")
        if self.nc_ips is not None and len(set(self.nc_ips)) != len(self.nc_ips):
            raise ValueError("hosts listed more than once")
        return self


class DiskLiveMigrationInput(OperationInput):
    """Input of ``DiskLiveMigration``: a cloud disk and the storage cluster it moves to."""

    disk_id: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
    dst_storage_cluster: str = Field(min_length=1, max_length=128)
    reason_category: ReasonCategory = ReasonCategory.SYSTEM
    # A migration never changes the disk: given, they must equal what the disk is (else refused).
    format: DiskFormat | None = None
    size_gib: int | None = Field(default=None, ge=1)


class HostOutcomeKind(StrEnum):
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    SKIPPED = "skipped"
    ABANDONED = "abandoned"
    UNTOUCHED = "untouched"


class HostOutcome(BaseModel):
    nc_ip: str
    nc_id: str
    region_id: str
    cluster_id: str
    status_before: NcBizStatus
    status_after: NcBizStatus | None = None
    outcome: HostOutcomeKind = HostOutcomeKind.UNTOUCHED
    message: str = ""


class OperationResult(BaseModel):
    """What every operation returns: how it ended, and what happened to each host."""

    operation_id: int | None
    workflow_id: str
    opscode: OpsCode
    state: OpsState
    hosts: list[HostOutcome]
    message: str = ""
    finished_at: datetime
    vms: list[VmMove] = Field(
        default_factory=list, description="per-VM record of an operation that moves VMs"
    )

    processes: list[ProcessPlan] = Field(
        default_factory=list, description="per-process record of a residue cleanup"
    )
    disk: DiskMigrationReport | None = Field(default=None, description="what a disk live migration did")

    @field_validator("hosts", "vms", "processes", mode="before")
    @classmethod
    def _null_is_empty(cls, value: Any) -> Any:
        # The temporal CLI prints an empty list as null (``-o json``).
        return [] if value is None else value


class InputRefused(ValueError):
    """Input that can never be accepted; ``error_type`` is ``InvalidSettings`` when only settings are wrong."""

    def __init__(self, error_type: str, message: str) -> None:
        self.error_type = error_type
        super().__init__(message)


def _nul_path(value: Any, path: str = "") -> str | None:
    """The path of the first string (value or key) holding a NUL character, if any."""
    if isinstance(value, str):
        return (path or "input") if "\x00" in value else None
    if isinstance(value, dict):
        for key, item in value.items():
            where = f"{path}.{key}" if path else str(key)
            if "\x00" in str(key):
                return where
            found = _nul_path(item, where)
            if found is not None:
                return found
    if isinstance(value, list):
        for index, item in enumerate(value):
            found = _nul_path(item, f"{path}.{index}" if path else str(index))
            if found is not None:
                return found
    return None


def describe_validation_error(error: ValidationError) -> str:
    """One clause per problem, naming the field by its path as the caller typed it."""
    problems = []
    for item in error.errors():
        where = ".".join(str(p) for p in item["loc"]) or "input"
        # Our own validators' messages stand alone; pydantic would prefix them with "Value error, ".
        message = (
            str(item["ctx"]["error"]) if item["type"] == "value_error" and "ctx" in item else item["msg"]
        )
        problems.append(f"{where}: {message}")
    return "; ".join(problems)


ModelT = TypeVar("ModelT", bound=BaseModel)


def parse_input(model: type[ModelT], raw: Any) -> ModelT:
    """Validates JSON-shaped input; raises ``InputRefused`` naming every problem."""
    if isinstance(raw, model):
        return raw
    if not isinstance(raw, dict):
        raise InputRefused(errors.INVALID_INPUT, f"input must be a JSON object, got {type(raw).__name__}")
    nul = _nul_path(raw)
    if nul is not None:
        # PostgreSQL cannot keep a NUL in text: refuse it here, naming where, rather than fail at the store.
        raise InputRefused(errors.INVALID_INPUT, f"invalid {model.__name__}: {nul} contains a NUL character")
    try:
        return model.model_validate(raw)
    except ValidationError as error:
        only_settings = all(item["loc"][:1] == ("settings",) for item in error.errors())
        error_type = errors.INVALID_SETTINGS if only_settings else errors.INVALID_INPUT
        raise InputRefused(
            error_type, f"invalid {model.__name__}: {describe_validation_error(error)}"
        ) from None
