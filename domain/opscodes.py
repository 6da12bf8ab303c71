"""The opscode catalog (DOMAIN.md, "The opscodes in scope" and "The rest of the product's catalog")."""

from __future__ import annotations

from enum import StrEnum

from pydantic import BaseModel, ConfigDict

from domain.settings import (
    NcDeepOfflineSettings,
    NcForcedRebootSettings,
    NcLockSettings,
    NcReOnlineSettings,
    NcUnlockSettings,
    OpsSettings,
    VmResidueCleanupSettings,
    WholeHostMigrationSettings,
    WildVmCleanupSettings,
)


class OpsCode(StrEnum):
    NC_LOCK = "0x410A01"
    NC_FORCED_REBOOT = "0x400012"
    NC_RE_ONLINE = "0x400011"
    NC_DEEP_OFFLINE = "0x400003"
    NC_DEEP_OFFLINE_COLD = "0x40003000001001"
    VM_RESIDUE_CLEANUP = "0x10001000008002"
    WILD_VM_CLEANUP = "0x3000000000802"
    NC_TEMPLATE_RECONFIG = "0x40003000001066"
    LOCAL_DISK_NC_DOWN = "0x400016"
    FORCED_DOWN_NC_MIGRATION = "0x400018"
    START_VM_AFTER_CRASH = "0x30000000001005"
    CLEAN_MOC_AFTER_CN_CRASH = "0x40001000008001"
    MEMORY_DEFRAG = "0x4000A000000008"
    AUTO_UNLOCK_AFTER_LOCK = "0x4000A000000007"
    START_VM = "0x30003000001001"
    LOCAL_DISK_ISOLATION_REPAIR = "0x99001000000001"
    QEMU_HOT_UPGRADE = "0x30000000000408"
    NC_OFFLINE_REPAIR = "0x8000000000001"
    # Console operations the product runs without an opscode number: known by their name.
    WHOLE_HOST_MIGRATION = "WholeHostMigration"
    DISK_LIVE_MIGRATION = "DiskLiveMigration"

    @property
    def numbered(self) -> bool:
        return self.value.startswith("0x")

    @classmethod
    def parse(cls, text: str) -> OpsCode:
        """Reads an opscode as people type it: any case, with or without ``0x``."""
        raw = text.strip()
        for code in cls:
            if not code.numbered and code.value.lower() == raw.lower():
                return code
        digits = raw[2:] if raw[:2].lower() == "0x" else raw
        try:
            value = int(digits, 16)
        except ValueError:
            raise ValueError(f"unknown opscode {text!r}: not a hexadecimal code") from None
        for code in cls:
            if code.numbered and int(code.value, 16) == value:
                return code
        raise ValueError(f"unknown opscode {text!r}")


class ApprovalPolicy(StrEnum):
    CONFIGURABLE = "configurable"
    NEVER = "never"


class OpsCodeSpec(BaseModel):
    model_config = ConfigDict(frozen=True, arbitrary_types_allowed=True)

    code: OpsCode
    workflow_type: str
    title: str
    description: str
    implemented: bool
    settings_model: type[OpsSettings]
    allow_manual_report: bool = True
    manual_report_needs_approval: bool = True
    approval_policy: ApprovalPolicy = ApprovalPolicy.CONFIGURABLE
    takes_host_out_of_service: bool = False


def _spec(code: OpsCode, workflow_type: str, title: str, description: str, **kw: object) -> OpsCodeSpec:
    kw.setdefault("settings_model", OpsSettings)
    kw.setdefault("implemented", False)
    return OpsCodeSpec(code=code, workflow_type=workflow_type, title=title, description=description, **kw)  # type: ignore[arg-type]


CATALOG: dict[OpsCode, OpsCodeSpec] = {
    s.code: s
    for s in (
        _spec(
            OpsCode.NC_LOCK,
            "NcLock",
            "[NE] lock NC -> done",
            "Locks the host (mlock) so no new VM lands on it, e.g. after a CPU or memory fault.",
            settings_model=NcLockSettings,
            implemented=True,
            takes_host_out_of_service=True,
        ),
        _spec(
            OpsCode.NC_FORCED_REBOOT,
            "NcForcedReboot",
            "NC forced reboot",
            "Reboots the host through OOB whether or not VMs are on it; afterwards the NC is nc_down.",
            settings_model=NcForcedRebootSettings,
            implemented=True,
            takes_host_out_of_service=True,
        ),
        _spec(
            OpsCode.NC_RE_ONLINE,
            "NcReOnline",
            "restore NC online",
            "After a reboot and once the fault is understood, moves the host nc_down -> free.",
            settings_model=NcReOnlineSettings,
            implemented=True,
        ),
        _spec(
            OpsCode.NC_DEEP_OFFLINE,
            "NcDeepOffline",
            "host deep offline with live migration",
            "Live-migrates every VM off the host, then reboots it (13 steps).",
            settings_model=NcDeepOfflineSettings,
            implemented=True,
            takes_host_out_of_service=True,
        ),
        _spec(
            OpsCode.NC_DEEP_OFFLINE_COLD,
            "NcDeepOfflineCold",
            "host deep offline without live migration",
            "Moves the VMs cold during the maintenance window, then reboots the host.",
            settings_model=NcDeepOfflineSettings,
            implemented=True,
            takes_host_out_of_service=True,
        ),
        _spec(
            OpsCode.VM_RESIDUE_CLEANUP,
            "VmResidueCleanup",
            "VM residue on NC cleanup",
            "Destroys VM processes left on a host that the control plane places elsewhere or has released.",
            settings_model=VmResidueCleanupSettings,
            implemented=True,
        ),
        _spec(
            OpsCode.WILD_VM_CLEANUP,
            "WildVmCleanup",
            "wild VM handling",
            "Sweeps a cluster or hosts for residue VMs and cleans them.",
            settings_model=WildVmCleanupSettings,
            implemented=True,
        ),
        _spec(
            OpsCode.NC_TEMPLATE_RECONFIG,
            "NcTemplateReconfig",
            "host template reconfiguration",
            "Re-applies the host template.",
            takes_host_out_of_service=True,
        ),
        _spec(
            OpsCode.LOCAL_DISK_NC_DOWN,
            "LocalDiskNcDown",
            "local-disk host down",
            "OOB restart of a local-disk host, then starts its VMs.",
            takes_host_out_of_service=True,
        ),
        _spec(
            OpsCode.FORCED_DOWN_NC_MIGRATION,
            "ForcedDownNcMigration",
            "forced down-host migration",
            "Moves the VMs of a down host elsewhere.",
            takes_host_out_of_service=True,
        ),
        _spec(
            OpsCode.START_VM_AFTER_CRASH,
            "StartVmAfterCrash",
            "start a VM after a crash",
            "Starts a crashed VM.",
        ),
        _spec(
            OpsCode.CLEAN_MOC_AFTER_CN_CRASH,
            "CleanMocAfterCnCrash",
            "clean MOC after a CN crash",
            "Cleans a MOC host after its controller node crashed.",
        ),
        _spec(OpsCode.MEMORY_DEFRAG, "MemoryDefrag", "memory defragmentation", "Defragments host memory."),
        _spec(
            OpsCode.AUTO_UNLOCK_AFTER_LOCK,
            "NcUnlock",
            "auto-unlock after a lock",
            "Unlocks a host locked earlier (mlock, rlock or no_heartbeat -> free); manual report allowed, "
            "approval not supported.",
            settings_model=NcUnlockSettings,
            manual_report_needs_approval=False,
            approval_policy=ApprovalPolicy.NEVER,
            implemented=True,
        ),
        _spec(OpsCode.START_VM, "StartVm", "start VM", "Starts a VM."),
        _spec(
            OpsCode.LOCAL_DISK_ISOLATION_REPAIR,
            "LocalDiskIsolationRepair",
            "local-disk isolation and repair",
            "Isolates a failed local disk and repairs it.",
        ),
        _spec(
            OpsCode.QEMU_HOT_UPGRADE,
            "QemuHotUpgrade",
            "qemu hot upgrade",
            "Upgrades qemu without stopping VMs.",
        ),
        _spec(
            OpsCode.NC_OFFLINE_REPAIR,
            "NcOfflineRepair",
            "host offline for repair",
            "Evacuates, takes the host offline, waits for a person to confirm the repair, brings it back.",
            takes_host_out_of_service=True,
        ),
        _spec(
            OpsCode.WHOLE_HOST_MIGRATION,
            "WholeHostMigration",
            "whole-host migration",
            "Locks the host and moves every VM off it by the scheduler's rules; unlocking stays a separate act.",
            settings_model=WholeHostMigrationSettings,
            implemented=True,
            takes_host_out_of_service=True,
        ),
        _spec(
            OpsCode.DISK_LIVE_MIGRATION,
            "DiskLiveMigration",
            "disk live migration",
            "Moves a river cloud disk to another storage cluster of its zone, online, after a snapshot; "
            "no rollback once the copy starts.",
            implemented=True,
        ),
    )
}


def spec_for(code: str | OpsCode) -> OpsCodeSpec:
    """The catalog entry for ``code``; raises ``ValueError`` naming the code when it is unknown."""
    return CATALOG[code if isinstance(code, OpsCode) else OpsCode.parse(code)]
