"""NC business-status transitions operators use (DOMAIN.md, "NC business status"), as pure functions."""

from __future__ import annotations

from enum import StrEnum

from domain.model import NcBizStatus

_S = NcBizStatus


class NcAction(StrEnum):
    LOCK = "lock"
    RESERVE_LOCK = "reserve_lock"
    UNLOCK = "unlock"
    BRING_ONLINE = "bring_online"
    REBOOT = "reboot"
    RE_ONLINE = "re_online"


# action -> (statuses it may start from, status it leads to)
_RULES: dict[NcAction, tuple[frozenset[NcBizStatus], NcBizStatus]] = {
    NcAction.LOCK: (frozenset({_S.FREE}), _S.MLOCK),
    NcAction.RESERVE_LOCK: (frozenset({_S.FREE}), _S.RLOCK),
    NcAction.UNLOCK: (frozenset({_S.MLOCK, _S.RLOCK, _S.NO_HEARTBEAT}), _S.FREE),
    NcAction.BRING_ONLINE: (
        frozenset({_S.MLOCK, _S.RLOCK, _S.NO_HEARTBEAT, _S.NC_DOWN, _S.INITIALIZING}),
        _S.FREE,
    ),
    # A forced reboot goes through OOB whatever the business status, except a host already removed.
    NcAction.REBOOT: (frozenset(set(_S) - {_S.OFFLINE}), _S.NC_DOWN),
    NcAction.RE_ONLINE: (frozenset({_S.NC_DOWN}), _S.FREE),
}


class TransitionRefused(ValueError):
    """The NC's current status does not allow the action."""

    def __init__(self, action: NcAction, current: NcBizStatus, allowed: frozenset[NcBizStatus]) -> None:
        self.action = action
        self.current = current
        self.allowed = allowed
        allowed_text = ", ".join(sorted(s.value for s in allowed))
        super().__init__(
            f"cannot {action.value} an NC in status {current.value} (allowed from: {allowed_text})"
        )


def allowed_from(action: NcAction) -> frozenset[NcBizStatus]:
    return _RULES[action][0]


def can_apply(action: NcAction, current: NcBizStatus) -> bool:
    return current in _RULES[action][0]


def apply(action: NcAction, current: NcBizStatus) -> NcBizStatus:
    """The status ``action`` leads to from ``current``; raises ``TransitionRefused`` if not allowed."""
    sources, target = _RULES[action]
    if current not in sources:
        raise TransitionRefused(action, current, sources)
    return target
