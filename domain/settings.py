"""Per-opscode settings, under the product's own setting names, with their defaults and ranges.

Each model accepts the product's names (``preLock``, ``NcReOnline``, ``ReOnline.ignoreStatus`` ...) and
the Python names; unknown names are refused so that a typo never silently falls back to a default.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from domain.model import NcId, VmId

Flag = Literal[0, 1]


class OpsSettings(BaseModel):
    """Settings every opscode shares."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True, frozen=True)

    alert_rule_name: str | None = Field(
        default=None, alias="alertRuleName", max_length=256, description="the alert rule that triggered it"
    )
    pre_lock: Flag = Field(default=0, alias="preLock", description="0 = lock the host first, 1 = do not")


class NcLockSettings(OpsSettings):
    """0x410A01. The lock is the operation itself; ``preLock`` is accepted and recorded."""


class NcUnlockSettings(OpsSettings):
    """0x4000A000000007."""


class NcForcedRebootSettings(OpsSettings):
    """0x400012."""

    fvt: Flag = Field(default=0, description="0 = production")
    need_dump_cn: Flag = Field(
        default=0, alias="needDumpCn", description="dump the controller node's memory first"
    )
    need_limit: Flag = Field(
        default=1, alias="needLimit", description="1 = subject to flow control, 0 = bypass"
    )


class NcReOnlineSettings(OpsSettings):
    """0x400011."""

    fvt: Flag = 0
    nc_re_online_seconds: int = Field(
        default=0,
        ge=0,
        le=7 * 24 * 3600,
        alias="NcReOnline",
        description="seconds to wait after the host's reboot before re-onlining it",
    )
    parallel: int = Field(default=4, ge=1, le=64, description="hosts re-onlined at once")
    ignore_status: bool = Field(
        default=False, alias="ReOnline.ignoreStatus", description="skip the control plane's status check"
    )


class LiveMigrationSettings(OpsSettings):
    """How VMs leave a host by live migration (DOMAIN.md, "Live migration (Houyi)")."""

    parallel: int = Field(default=4, ge=1, le=16, description="migrations at once per host")
    rate: int = Field(default=80, ge=1, le=10_000, description="live-migration rate, MB/s")
    downtime: int = Field(default=300, ge=200, le=2000, description="allowed VM pause, ms")
    no_check_image: bool = Field(default=False, description="force an image not on the supported list")
    no_check_load: bool = Field(default=False, description="bypass the load pre-check")
    live_retries: int = Field(
        default=1,
        ge=0,
        le=5,
        alias="liveMigrateRetries",
        description="new attempts after a migration times out, before the VM is moved cold",
    )


class AfterColdMigration(StrEnum):
    START = "start"
    STOP = "stop"
    KEEP = "keep"


class NcDeepOfflineSettings(LiveMigrationSettings):
    """0x400003 and 0x40003000001001."""

    need_limit: Flag = Field(default=1, alias="needLimit")
    target: NcId | None = Field(
        default=None, description="nc_id every VM should go to; the scheduler picks when left out"
    )
    cold_forced: bool = Field(
        default=True,
        alias="coldForced",
        description="cold migration continues on error (the product's forced)",
    )
    after_cold_migration: AfterColdMigration = Field(
        default=AfterColdMigration.KEEP,
        alias="afterColdMigration",
        description="state of a cold-migrated VM on arrival: start, stop, or keep the state it had",
    )
    only_power_on_specified: Flag = Field(
        default=0,
        alias="onlyPowerOnSpecifiedNc",
        description="1 = power the host on again only if it carried VMs or carries a storage node",
    )


class WholeHostMigrationSettings(LiveMigrationSettings):
    """Whole-host migration: every VM, by the scheduler's rules; no chosen target."""


class VmResidueCleanupSettings(OpsSettings):
    """0x10001000008002 and 0x3000000000802."""

    vm: VmId | None = Field(default=None, description="only this instance")
    force_clean_wild_vm: bool = Field(
        default=False,
        alias="foreCleanWildVm",
        description="true: clean a released VM without checking its process; false: check the process first",
    )


class WildVmCleanupSettings(VmResidueCleanupSettings):
    """0x3000000000802: a sweep over many hosts."""

    parallel: int = Field(default=4, ge=1, le=32, description="hosts cleaned at once")
