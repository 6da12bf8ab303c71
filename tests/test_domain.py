"""The pure domain: models, catalog, settings, transitions, input parsing."""

from __future__ import annotations

import pytest
from pydantic import BaseModel, ValidationError

from domain import errors, transitions
from domain.model import (
    DeviceKind,
    LiveMigrationBlocker,
    Nc,
    NcBizStatus,
    PowerState,
    Vm,
    VmStatus,
    live_migration_blockers,
)
from domain.operations import InputRefused, NcLockInput, OpsState, ReasonCategory, parse_input
from domain.opscodes import CATALOG, ApprovalPolicy, OpsCode, spec_for
from domain.settings import (
    NcDeepOfflineSettings,
    NcForcedRebootSettings,
    NcLockSettings,
    NcReOnlineSettings,
    VmResidueCleanupSettings,
)
from domain.transitions import NcAction, TransitionRefused

S = NcBizStatus


def make_nc(**overrides: object) -> Nc:
    fields: dict[str, object] = {
        "nc_id": "14783-4",
        "nc_ip": "10.1.2.3",
        "hostname": "nc-a",
        "sn": "SN1",
        "region_id": "cn-qd-d01",
        "zone_id": "cn-qd-d01-a",
        "cluster_id": "ECS-CPU-A-8976",
        "biz_status": S.FREE,
        "cpu_model": "Xeon-8269CY",
        "software_version": "3.5.2",
        "vcpu_total": 96,
        "memory_gib_total": 384,
    }
    fields.update(overrides)
    return Nc.model_validate(fields)


def make_vm(**overrides: object) -> Vm:
    fields: dict[str, object] = {
        "vm_id": "i-8qe00ybpqhvtg",
        "nc_id": "14783-4",
        "region_id": "cn-qd-d01",
        "status": VmStatus.RUNNING,
        "instance_type": "ecs.g6.large",
        "vcpu": 2,
        "memory_gib": 8,
    }
    fields.update(overrides)
    return Vm.model_validate(fields)


# ---- catalog ----------------------------------------------------------------------------------------


def test_the_catalog_holds_every_opscode_of_the_domain_reference() -> None:
    codes = {c.value for c in CATALOG if c.numbered}
    assert codes == {
        "0x410A01", "0x400012", "0x400011", "0x400003", "0x40003000001001", "0x10001000008002",
        "0x3000000000802", "0x40003000001066", "0x400016", "0x400018", "0x30000000001005",
        "0x40001000008001", "0x4000A000000008", "0x4000A000000007", "0x30003000001001",
        "0x99001000000001", "0x30000000000408", "0x8000000000001",
    }  # fmt: skip
    assert {c.value for c in CATALOG if not c.numbered} == {"WholeHostMigration", "DiskLiveMigration"}
    assert all(spec.code is code for code, spec in CATALOG.items())


def test_workflow_types_are_unique() -> None:
    types = [spec.workflow_type for spec in CATALOG.values()]
    assert len(types) == len(set(types))


def test_the_catalog_marks_what_has_a_workflow_as_implemented() -> None:
    assert [c for c, s in CATALOG.items() if s.implemented] == [
        OpsCode.NC_LOCK,
        OpsCode.NC_FORCED_REBOOT,
        OpsCode.NC_RE_ONLINE,
        OpsCode.NC_DEEP_OFFLINE,
        OpsCode.NC_DEEP_OFFLINE_COLD,
        OpsCode.VM_RESIDUE_CLEANUP,
        OpsCode.WILD_VM_CLEANUP,
        OpsCode.AUTO_UNLOCK_AFTER_LOCK,
        OpsCode.WHOLE_HOST_MIGRATION,
        OpsCode.DISK_LIVE_MIGRATION,
    ]


def test_an_operation_without_an_opscode_number_is_known_by_its_name() -> None:
    assert OpsCode.parse("wholehostmigration") is OpsCode.WHOLE_HOST_MIGRATION
    assert OpsCode.parse("DiskLiveMigration") is OpsCode.DISK_LIVE_MIGRATION
    assert not OpsCode.WHOLE_HOST_MIGRATION.numbered
    assert OpsCode.parse("0X400003") is OpsCode.NC_DEEP_OFFLINE
    with pytest.raises(ValueError, match="not a hexadecimal code"):
        OpsCode.parse("WholeHost")


def test_auto_unlock_is_manual_but_never_approved() -> None:
    spec = CATALOG[OpsCode.AUTO_UNLOCK_AFTER_LOCK]
    assert spec.allow_manual_report and not spec.manual_report_needs_approval
    assert spec.approval_policy is ApprovalPolicy.NEVER


@pytest.mark.parametrize("text", ["0x410A01", "0x410a01", "410A01", " 0X410a01 "])
def test_opscodes_parse_as_people_type_them(text: str) -> None:
    assert OpsCode.parse(text) is OpsCode.NC_LOCK
    assert spec_for(text).workflow_type == "NcLock"


@pytest.mark.parametrize("text", ["0x999999", "lock", ""])
def test_unknown_opscodes_are_named_in_the_error(text: str) -> None:
    with pytest.raises(ValueError, match="unknown opscode"):
        OpsCode.parse(text)


# ---- settings ---------------------------------------------------------------------------------------


def test_settings_accept_the_products_names_and_defaults() -> None:
    reboot = NcForcedRebootSettings.model_validate({"alertRuleName": "nc_hang_exception", "needDumpCn": 1})
    assert reboot.alert_rule_name == "nc_hang_exception"
    assert (reboot.need_dump_cn, reboot.need_limit, reboot.fvt, reboot.pre_lock) == (1, 1, 0, 0)

    online = NcReOnlineSettings.model_validate({"NcReOnline": 600, "ReOnline.ignoreStatus": True})
    assert (online.nc_re_online_seconds, online.ignore_status, online.parallel) == (600, True, 4)

    cleanup = VmResidueCleanupSettings.model_validate({"vm": "i-8qe00ybpqhvtg", "foreCleanWildVm": True})
    assert cleanup.force_clean_wild_vm and cleanup.vm == "i-8qe00ybpqhvtg"

    offline = NcDeepOfflineSettings()
    assert (offline.rate, offline.downtime, offline.parallel) == (80, 300, 4)
    assert not offline.no_check_image and not offline.no_check_load


def test_settings_serialise_back_under_the_products_names() -> None:
    dumped = NcForcedRebootSettings(need_limit=0).model_dump(by_alias=True)
    assert dumped["needLimit"] == 0 and "needDumpCn" in dumped and "alertRuleName" in dumped


@pytest.mark.parametrize(
    ("model", "raw", "field"),
    [
        (NcLockSettings, {"preLock": 2}, "preLock"),
        (NcForcedRebootSettings, {"needLimit": "yes"}, "needLimit"),
        (NcReOnlineSettings, {"parallel": 0}, "parallel"),
        (NcReOnlineSettings, {"NcReOnline": -1}, "NcReOnline"),
        (NcDeepOfflineSettings, {"downtime": 150}, "downtime"),
        (NcDeepOfflineSettings, {"downtime": 2001}, "downtime"),
        (VmResidueCleanupSettings, {"vm": "vm-1"}, "vm"),
        (NcLockSettings, {"prelock": 0}, "prelock"),
    ],
)
def test_settings_out_of_range_or_unknown_are_refused_naming_the_setting(
    model: type[BaseModel], raw: dict[str, object], field: str
) -> None:
    with pytest.raises(ValidationError) as caught:
        model.model_validate(raw)
    assert field in str(caught.value)


# ---- transitions ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("action", "current", "expected"),
    [
        (NcAction.LOCK, S.FREE, S.MLOCK),
        (NcAction.RESERVE_LOCK, S.FREE, S.RLOCK),
        (NcAction.UNLOCK, S.MLOCK, S.FREE),
        (NcAction.UNLOCK, S.RLOCK, S.FREE),
        (NcAction.UNLOCK, S.NO_HEARTBEAT, S.FREE),
        (NcAction.BRING_ONLINE, S.NC_DOWN, S.FREE),
        (NcAction.BRING_ONLINE, S.INITIALIZING, S.FREE),
        (NcAction.REBOOT, S.FREE, S.NC_DOWN),
        (NcAction.REBOOT, S.MLOCK, S.NC_DOWN),
        (NcAction.RE_ONLINE, S.NC_DOWN, S.FREE),
    ],
)
def test_allowed_transitions(action: NcAction, current: NcBizStatus, expected: NcBizStatus) -> None:
    assert transitions.can_apply(action, current)
    assert transitions.apply(action, current) is expected


@pytest.mark.parametrize(
    ("action", "current"),
    [
        (NcAction.LOCK, S.MLOCK),
        (NcAction.LOCK, S.OFFLINE),
        (NcAction.LOCK, S.NC_DOWN),
        (NcAction.UNLOCK, S.FREE),
        (NcAction.UNLOCK, S.OFFLINE),
        (NcAction.RE_ONLINE, S.FREE),
        (NcAction.RE_ONLINE, S.MLOCK),
        (NcAction.REBOOT, S.OFFLINE),
        (NcAction.BRING_ONLINE, S.OFFLINE),
    ],
)
def test_refused_transitions_name_the_status(action: NcAction, current: NcBizStatus) -> None:
    assert not transitions.can_apply(action, current)
    with pytest.raises(TransitionRefused) as caught:
        transitions.apply(action, current)
    assert current.value in str(caught.value) and action.value in str(caught.value)


def test_only_free_hosts_are_schedulable() -> None:
    assert [s for s in S if s.schedulable] == [S.FREE]


def test_power_states_settle_only_on_or_off() -> None:
    assert {p for p in PowerState if p.settled} == {PowerState.ON, PowerState.OFF}


# ---- models and live-migration eligibility ------------------------------------------------------------


def test_an_nc_reports_its_free_capacity() -> None:
    nc = make_nc(vcpu_used=90, memory_gib_used=100)
    assert (nc.vcpu_free, nc.memory_gib_free) == (6, 284)


@pytest.mark.parametrize("bad", ["10.1.2", "10.1.2.300", "host-a", "", "::1"])
def test_malformed_nc_ips_are_refused(bad: str) -> None:
    with pytest.raises(ValidationError, match="not a valid IPv4 address"):
        make_nc(nc_ip=bad)


def test_malformed_nc_and_vm_ids_are_refused() -> None:
    with pytest.raises(ValidationError, match="not an NC id"):
        make_nc(nc_id="nc-1")
    with pytest.raises(ValidationError, match="not an instance id"):
        make_vm(vm_id="vm-1")


def test_a_plain_running_vm_can_be_live_migrated() -> None:
    assert live_migration_blockers(make_vm(), make_nc(), make_nc(nc_id="14783-5", nc_ip="10.1.2.4")) == []


def test_every_reason_a_vm_cannot_be_live_migrated_is_named() -> None:
    vm = make_vm(
        status=VmStatus.STOPPED,
        has_local_disk=True,
        devices=[DeviceKind.GPU],
        has_trunk_nic=True,
        created_before_v33=True,
        restarted_since_v33=False,
    )
    target = make_nc(nc_id="14783-5", nc_ip="10.1.2.4", cpu_model="EPYC-7T83", software_version="3.4.0")
    assert set(live_migration_blockers(vm, make_nc(), target)) == set(LiveMigrationBlocker)


def test_a_pre_v33_vm_that_was_restarted_can_move() -> None:
    assert (
        live_migration_blockers(make_vm(created_before_v33=True, restarted_since_v33=True), make_nc()) == []
    )


# ---- operation input ----------------------------------------------------------------------------------


def lock_input(**overrides: object) -> dict[str, object]:
    raw: dict[str, object] = {
        "nc_ip": "10.1.2.3",
        "requester": "alice",
        "reason_category": "hardware",
        "reason": "CPU MCE",
        "ticket": "CHG-1",
        "settings": {"alertRuleName": "hardware_exception_alarm", "preLock": 0},
    }
    raw.update(overrides)
    return raw


def test_lock_input_as_typed_in_the_ui_parses() -> None:
    request = parse_input(NcLockInput, lock_input())
    assert request.nc_ip == "10.1.2.3"
    assert request.reason_category is ReasonCategory.HARDWARE
    assert request.settings.alert_rule_name == "hardware_exception_alarm"


def test_malformed_ip_is_refused_as_invalid_input_naming_the_field() -> None:
    with pytest.raises(InputRefused) as caught:
        parse_input(NcLockInput, lock_input(nc_ip="10.1.2.999"))
    assert caught.value.error_type == errors.INVALID_INPUT
    assert "nc_ip" in str(caught.value) and "10.1.2.999" in str(caught.value)


def test_malformed_settings_are_refused_as_invalid_settings() -> None:
    with pytest.raises(InputRefused) as caught:
        parse_input(NcLockInput, lock_input(settings={"preLock": "maybe"}))
    assert caught.value.error_type == errors.INVALID_SETTINGS
    assert "settings.preLock" in str(caught.value)


def test_unknown_reason_category_and_missing_requester_are_both_named() -> None:
    raw = lock_input(reason_category="boredom")
    del raw["requester"]
    with pytest.raises(InputRefused) as caught:
        parse_input(NcLockInput, raw)
    assert "reason_category" in str(caught.value) and "requester" in str(caught.value)


def test_input_that_is_not_an_object_is_refused() -> None:
    with pytest.raises(InputRefused, match="JSON object"):
        parse_input(NcLockInput, ["10.1.2.3"])


def test_final_states() -> None:
    assert not OpsState.RUNNING.final and not OpsState.PENDING_APPROVAL.final
    assert OpsState.SUCCEEDED.final and OpsState.REFUSED.final and OpsState.ABANDONED.final
