"""Property tests (hypothesis) of residue classification: whatever the fleet looks like, a process whose VM
the control plane places on its host is never marked for destruction, and nothing is destroyed while its
guest may still work unless the VM is released and ``foreCleanWildVm`` says so."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from domain.model import Vm, VmStatus
from domain.residue import Verdict, classify

HOSTS = ["100-1", "100-2", "100-3"]

records = st.one_of(
    st.none(),
    st.builds(
        Vm,
        vm_id=st.just("i-abcdef01"),
        nc_id=st.sampled_from(HOSTS),
        region_id=st.just("r"),
        status=st.sampled_from(list(VmStatus)),
        instance_type=st.just("ecs.g6.large"),
        vcpu=st.integers(1, 64),
        memory_gib=st.integers(1, 512),
    ),
)


@given(
    host=st.sampled_from(HOSTS),
    record=records,
    process_state=st.sampled_from(["running", "paused", "shutoff"]),
    guest_active=st.booleans(),
    force=st.booleans(),
)
def test_an_authoritative_vm_is_never_marked_for_destruction(
    host: str, record: Vm | None, process_state: str, guest_active: bool, force: bool
) -> None:
    plan = classify(
        nc_id=host,
        vm_id="i-abcdef01",
        pid=1,
        process_state=process_state,
        guest_active=guest_active,
        record=record,
        force_clean_wild_vm=force,
    )
    if record is not None and record.nc_id == host and record.status is not VmStatus.RELEASED:
        assert plan.verdict is Verdict.AUTHORITATIVE and not plan.destroy
    if record is None:
        assert not plan.destroy
    if plan.destroy and (guest_active or process_state == "running"):
        # The only destroy of a possibly working process: a released VM, forced.
        assert force and record is not None and record.status is VmStatus.RELEASED
    if plan.destroy:
        assert plan.verdict in (Verdict.RESIDUE_ELSEWHERE, Verdict.RESIDUE_RELEASED)
