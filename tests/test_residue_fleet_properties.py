"""Property tests (hypothesis) of residue cleanup over generated fleets, against the real simulator over HTTP:
whatever residues a host carries (state, guest activity, released or living elsewhere), and whichever
records move onto the host between the plan and the destroys (a migration finishing meanwhile), the
inventory and the guarded destroy never destroy a process whose VM the control plane places on that host,
and every residue that stays one and is quiet is destroyed.

The activities run in the SDK's ``ActivityEnvironment``; tests/test_residue_cleanup.py runs the workflows."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from temporalio.testing import ActivityEnvironment

from activities.residue import DestroyInput, InventoryInput, ResidueActivities
from domain.model import VmStatus
from domain.residue import ProcessOutcome, Verdict
from houyi.http_client import HttpHouyiClient
from houyi.port import ProcessState
from simulator.evacuation_fleet import SOURCE_NC_ID, build_evacuation_fleet
from simulator.server import start_simulator
from store.repository import OperationStore

ELSEWHERE = "41000-10"  # the other cluster's host: the fleet places 6 VMs there

residue_kinds = st.fixed_dictionaries(
    {
        "planted": st.booleans(),
        "state": st.sampled_from([ProcessState.RUNNING, ProcessState.PAUSED, ProcessState.SHUTOFF]),
        "guest_active": st.booleans(),
        "released": st.booleans(),
        "moves_here": st.booleans(),
    }
)


@settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    residues=st.lists(residue_kinds, min_size=6, max_size=6),
    force=st.booleans(),
    own_vms=st.integers(1, 4),
    leaves=st.lists(st.booleans(), min_size=4, max_size=4),
)
async def test_cleanup_never_destroys_what_the_control_plane_places_on_the_host(
    store: OperationStore, residues: list[dict[str, object]], force: bool, own_vms: int, leaves: list[bool]
) -> None:
    spec = build_evacuation_fleet(own_vms, memory_choices=(4,))
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "fleet.json"
        path.write_text(json.dumps(spec), encoding="utf-8")
        running = await start_simulator(path, speed=1000.0)
    fleet = running.fleet
    try:
        elsewhere = sorted(vm.vm_id for vm in fleet.vms.values() if vm.nc_id == ELSEWHERE)
        own = sorted(vm.vm_id for vm in fleet.vms.values() if vm.nc_id == SOURCE_NC_ID)
        for vm_id, kind in zip(elsewhere, residues, strict=True):
            if not kind["planted"]:
                continue
            if kind["released"]:
                fleet.patch_vm(vm_id, status=VmStatus.RELEASED)
            fleet.plant_residue(
                SOURCE_NC_ID,
                vm_id,
                state=ProcessState(str(kind["state"])),
                guest_active=bool(kind["guest_active"]),
            )
        async with HttpHouyiClient(running.url, recorder=store) as houyi:
            activities = ResidueActivities(houyi)
            env = ActivityEnvironment()
            plans = await env.run(
                activities.inventory,
                InventoryInput(caller="prop", nc_id=SOURCE_NC_ID, force_clean_wild_vm=force),
            )
            assert not [p for p in plans if p.verdict is Verdict.AUTHORITATIVE and p.destroy]
            # Between plan and action: some residues' VMs are now placed here (a migration finished), and
            # some of the host's own VMs leave it.
            moved_here = set()
            for vm_id, kind in zip(elsewhere, residues, strict=True):
                if kind["planted"] and kind["moves_here"] and not kind["released"]:
                    fleet.patch_vm(vm_id, nc_id=SOURCE_NC_ID)
                    moved_here.add(vm_id)
            for vm_id, leave in zip(own, leaves, strict=False):
                if leave:
                    fleet.patch_vm(vm_id, nc_id=ELSEWHERE)
            outcomes: dict[str, ProcessOutcome] = {}
            for plan in plans:
                if plan.destroy:
                    done = await env.run(
                        activities.destroy,
                        DestroyInput(
                            caller="prop", step="DestroyResidues", nc_id=SOURCE_NC_ID, vm_id=plan.vm_id,
                            force_clean_wild_vm=force,
                        ),
                    )  # fmt: skip
                    outcomes[plan.vm_id] = done.outcome
    finally:
        await running.stop()

    counters = fleet.totals()
    assert counters["authoritative_destroyed"] == 0
    assert not any(outcomes.get(vm) is ProcessOutcome.DESTROYED for vm in moved_here)
    assert not any(outcomes.get(vm) is ProcessOutcome.DESTROYED for vm in own)
    planned = {p.vm_id for p in plans if p.destroy}
    assert {vm for vm, o in outcomes.items() if o is ProcessOutcome.DESTROYED} == planned - moved_here
    assert counters["residues_destroyed"] == len(planned - moved_here)
