"""Injected faults: how the simulator misbehaves on purpose, per action, so tests can see our retries work.

A fault matches calls of one action (optionally only those about one NC or one VM). Each matching call is
hit with probability ``error_rate`` (drawn from a seeded RNG) until ``count`` calls have been hit. Kinds:

- ``error``: answer ``code``/``message`` at once, without acting (e.g. 429 "distribute lock fail");
- ``latency``: wait ``latency_seconds`` (real), then act: this is how a test holds a call in flight;
- ``hang``: wait ``hang_seconds`` (real), then answer 504 without acting (the client has usually given up);
- ``stuck``: ``live_migrate_vm`` only: the migration starts but never finishes and cannot be cancelled.

Answers caused by a fault are never cached against the client token: the action did not happen, so a retry
must be able to act.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_validator

from domain.model import NcId, VmId
from houyi.wire import Action, Code

MAX_DELAY_SECONDS = 600.0


class FaultKind(StrEnum):
    ERROR = "error"
    LATENCY = "latency"
    HANG = "hang"
    STUCK = "stuck"


class FaultSpec(BaseModel):
    """One fault as injected through ``POST /admin/faults``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    action: Action
    kind: FaultKind = FaultKind.ERROR
    code: int = Field(
        default=Code.UNAVAILABLE, ge=400, le=599, description="the envelope code of an error fault"
    )
    message: str = ""
    error_rate: float = Field(default=1.0, ge=0.0, le=1.0, description="chance that a matching call is hit")
    count: int | None = Field(default=None, ge=1, description="how many calls it hits; null: no limit")
    latency_seconds: float = Field(default=0.0, ge=0.0, le=MAX_DELAY_SECONDS)
    hang_seconds: float = Field(default=0.0, ge=0.0, le=MAX_DELAY_SECONDS)
    nc_id: NcId | None = Field(default=None, description="only calls about this NC")
    vm_name: VmId | None = Field(default=None, description="only calls about this VM")

    @model_validator(mode="after")
    def _kind_has_what_it_needs(self) -> FaultSpec:
        if self.kind is FaultKind.LATENCY and self.latency_seconds <= 0:
            raise ValueError("a latency fault needs latency_seconds > 0")
        if self.kind is FaultKind.HANG and self.hang_seconds <= 0:
            raise ValueError("a hang fault needs hang_seconds > 0")
        if self.kind is FaultKind.STUCK and self.action is not Action.LIVE_MIGRATE_VM:
            raise ValueError("a stuck fault applies to live_migrate_vm only")
        return self

    @property
    def answer_message(self) -> str:
        if self.message:
            return self.message
        if self.kind is FaultKind.HANG:
            return "request timed out"
        return f"injected fault on {self.action.value}"


@dataclass
class ActiveFault:
    fault_id: int
    spec: FaultSpec
    hits: int = 0

    @property
    def exhausted(self) -> bool:
        return self.spec.count is not None and self.hits >= self.spec.count

    def to_json(self) -> dict[str, Any]:
        remaining = None if self.spec.count is None else max(self.spec.count - self.hits, 0)
        return {
            "fault_id": self.fault_id,
            **self.spec.model_dump(mode="json"),
            "hits": self.hits,
            "remaining": remaining,
        }


class FaultBook:
    """The faults in force, in the order they were injected; the first one that hits a call applies."""

    def __init__(self, seed: int) -> None:
        # Its own stream, so injecting faults does not change the fleet's scheduling choices.
        self._rng = random.Random(f"faults/{seed}")
        self._faults: list[ActiveFault] = []
        self._next_id = 1

    def add(self, spec: FaultSpec) -> ActiveFault:
        fault = ActiveFault(fault_id=self._next_id, spec=spec)
        self._next_id += 1
        self._faults.append(fault)
        return fault

    def clear(self) -> None:
        self._faults.clear()

    def all(self) -> list[ActiveFault]:
        return list(self._faults)

    def hit(self, action: Action, nc_ids: set[str], vm_name: str | None) -> FaultSpec | None:
        """The fault that hits this call, if any (and count the hit)."""
        for fault in self._faults:
            spec = fault.spec
            if spec.action is not action or fault.exhausted:
                continue
            if spec.nc_id is not None and spec.nc_id not in nc_ids:
                continue
            if spec.vm_name is not None and spec.vm_name != vm_name:
                continue
            if spec.error_rate < 1.0 and self._rng.random() >= spec.error_rate:
                continue
            fault.hits += 1
            return spec
        return None
