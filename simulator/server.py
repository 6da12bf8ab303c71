"""The simulator's HTTP server: the ``go2hyapi`` protocol for our client, a JSON admin API for tests.

Protocol: ``POST /go2hyapi/{action}`` with a form-encoded body (``houyi.wire``); the answer is always HTTP
200 with the XML envelope. Each call goes: unknown action? (400) → token required for a mutation? (400) →
answer remembered for the token? (replay, or wait for the first call still in progress) → injected fault?
→ act on the fleet.

Admin (JSON): ``GET /admin/ncs``, ``GET|PATCH /admin/ncs/{nc_ip or nc_id}``, ``GET|PATCH /admin/vms/{vm_id}``,
``GET /admin/disks/{disk_id}``, ``GET /admin/disk-migrations``, ``POST /admin/not-loaded``, ``POST /admin/residues``, ``GET|POST|DELETE /admin/faults``,
``POST /admin/reset``, ``GET /admin/counters``, ``GET /admin/events``, ``GET /admin/calls``, ``GET /healthz``.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections import Counter, deque
from pathlib import Path
from typing import Any

from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from domain.model import NcBizStatus, NcId, PowerState, VmId, VmStatus
from houyi.port import ProcessState
from houyi.wire import (
    CALLER_PARAM,
    SUCCESS_MSG,
    TOKEN_PARAM,
    Action,
    Code,
    Envelope,
    decode_params,
    encode_envelope,
)
from simulator.actions import HANDLERS, Call, Params
from simulator.errors import SimulatorError
from simulator.faults import FaultBook, FaultKind, FaultSpec
from simulator.fleet import DEMO_FLEET_PATH, Fleet
from simulator.idempotency import Outcome, TokenCache, fingerprint

logger = logging.getLogger("simulator")

CALL_LOG_SIZE = 2000
_MUTATING_ACTIONS = frozenset(action.value for action in Action if action.mutating)
# How long stop() lets in-flight calls (e.g. held by a latency or hang fault) finish before cancelling them.
SHUTDOWN_GRACE_SECONDS = 1.0


def _new_request_id() -> str:
    return str(uuid.uuid4())


def _error_envelope(code: int, message: str) -> Envelope:
    return Envelope(code=int(code), msg=message, request_id=_new_request_id())


class Generation:
    """Everything one reset gives a fresh copy of: the fleet, faults, remembered answers and counters.

    A call keeps the generation it arrived in until it answers, so a call held by a fault across a reset
    (a test that ended while a call was still in flight) acts on, and counts in, the world it came from,
    never in the next test's.
    """

    def __init__(self, fleet: Fleet, seed: int) -> None:
        self.fleet = fleet
        self.faults = FaultBook(seed)
        self.tokens = TokenCache()
        self.calls: dict[str, Counter[int]] = {}
        self.executed: Counter[str] = Counter()
        self.fault_hits: Counter[str] = Counter()
        self.inflight: Counter[str] = Counter()  # received and not answered yet, by action
        self.token_replays = 0
        self.call_log: deque[dict[str, Any]] = deque(maxlen=CALL_LOG_SIZE)

    def counters_json(self) -> dict[str, Any]:
        return {
            "calls": {
                action: {str(code): n for code, n in sorted(codes.items())}
                for action, codes in self.calls.items()
            },
            "executed": dict(self.executed),
            "fault_hits": dict(self.fault_hits),
            "token_replays": self.token_replays,
            "tokens_remembered": len(self.tokens),
            "inflight": {action: n for action, n in self.inflight.items() if n > 0},
            "fleet": self.fleet.totals(),
        }


class SimulatorState:
    """The server's state: the current generation, and how to load the next one on reset."""

    def __init__(
        self, fleet_path: Path, *, speed: float = 1.0, seed: int = 7, residue_rate: float | None = None
    ) -> None:
        self.fleet_path = fleet_path
        self.speed = speed
        self.seed = seed
        self.residue_rate = residue_rate
        self.current = self._load()

    def _load(self) -> Generation:
        fleet = Fleet.load(self.fleet_path, speed=self.speed, seed=self.seed, residue_rate=self.residue_rate)
        return Generation(fleet, self.seed)

    def reset(self) -> None:
        """Reload the fleet from its file; forget counters, faults, remembered answers and migrations."""
        self.current = self._load()

    @property
    def fleet(self) -> Fleet:
        return self.current.fleet

    @property
    def faults(self) -> FaultBook:
        return self.current.faults

    # ---- the protocol -----------------------------------------------------------------------------------

    async def answer(self, action_name: str, body: str) -> Envelope:
        params = decode_params(body)
        world = self.current
        world.inflight[action_name] += 1
        try:
            envelope = await self._answer(world, action_name, params)
        finally:
            world.inflight[action_name] -= 1
            if world.inflight[action_name] <= 0:
                del world.inflight[action_name]
        world.calls.setdefault(action_name, Counter())[envelope.code] += 1
        world.call_log.append(
            {
                "action": action_name,
                "code": envelope.code,
                "message": envelope.msg,
                "request_id": envelope.request_id,
                "caller": params.get(CALLER_PARAM, ""),
                "client_token": params.get(TOKEN_PARAM),
                "params": {k: v for k, v in params.items() if k not in (CALLER_PARAM, TOKEN_PARAM)},
            }
        )
        # Mutations and refusals are what a demo watcher wants to see; successful reads (polling) are noise.
        level = logging.INFO if action_name in _MUTATING_ACTIONS or not envelope.ok else logging.DEBUG
        logger.log(
            level, "%s %s -> %s %s", action_name, params.get(CALLER_PARAM, "-"), envelope.code, envelope.msg
        )
        return envelope

    async def _answer(self, world: Generation, action_name: str, params: dict[str, str]) -> Envelope:
        try:
            action = Action(action_name)
        except ValueError:
            return _error_envelope(Code.INVALID_PARAMETER, f"unknown action {action_name}")
        if not action.mutating:
            # Reads are answered fresh every time; a token on a read means nothing.
            return (await self._execute(world, action, params)).envelope
        token = params.get(TOKEN_PARAM, "").strip()
        if not token:
            return _error_envelope(Code.INVALID_PARAMETER, f"client_token is required for {action.value}")
        request = fingerprint(params)
        while (entry := world.tokens.get(token)) is not None:
            if entry.action is not action or entry.fingerprint != request:
                return _error_envelope(
                    Code.INVALID_PARAMETER,
                    f"client_token {token} reused with different parameters (first used for {entry.action.value})",
                )
            # Shielded: a repeat whose client goes away must not cancel the first call's answer.
            outcome = await asyncio.shield(entry.outcome)
            if outcome.cacheable:
                world.token_replays += 1
                return outcome.envelope
            # The first call did not act (an injected fault): this one may, unless another repeat got there first.
        entry = world.tokens.begin(token, action, request)
        outcome = Outcome(
            _error_envelope(Code.INTERNAL_ERROR, f"{action.value} was interrupted"), cacheable=False
        )
        try:
            outcome = await self._execute(world, action, params)
        finally:
            world.tokens.finish(token, entry, outcome)
        return outcome.envelope

    async def _execute(self, world: Generation, action: Action, params: dict[str, str]) -> Outcome:
        fleet = world.fleet
        fault = world.faults.hit(action, fleet.nc_ids_touched(params), params.get("vm_name"))
        if fault is not None:
            world.fault_hits[action.value] += 1
            if fault.kind is FaultKind.ERROR:
                return Outcome(_error_envelope(fault.code, fault.answer_message), cacheable=False)
            if fault.kind is FaultKind.HANG:
                await asyncio.sleep(fault.hang_seconds)
                return Outcome(_error_envelope(Code.TIMEOUT, fault.answer_message), cacheable=False)
            if fault.kind is FaultKind.LATENCY:
                await asyncio.sleep(fault.latency_seconds)
        call = Call(
            params=Params(params),
            caller=params.get(CALLER_PARAM, ""),
            stuck=fault is not None and fault.kind is FaultKind.STUCK,
        )
        world.executed[action.value] += 1
        try:
            data = HANDLERS[action](fleet, call)
        except SimulatorError as refusal:
            return Outcome(_error_envelope(refusal.code, refusal.message), cacheable=True)
        except Exception:
            logger.exception("simulator failed on %s %s", action.value, params)
            return Outcome(
                _error_envelope(Code.INTERNAL_ERROR, f"internal error in {action.value}"), cacheable=False
            )
        return Outcome(
            Envelope(code=Code.OK, msg=SUCCESS_MSG, request_id=_new_request_id(), data=data), cacheable=True
        )

    def counters_json(self) -> dict[str, Any]:
        return self.current.counters_json()


# ---- admin request bodies ---------------------------------------------------------------------------------


class NcPatch(BaseModel):
    model_config = ConfigDict(extra="forbid")

    biz_status: NcBizStatus | None = None
    power_state: PowerState | None = None
    load_high: bool | None = None


class VmPatch(BaseModel):
    model_config = ConfigDict(extra="forbid")

    status: VmStatus | None = None
    dirty_rate_mbps: int | None = Field(default=None, ge=0)
    image_supported: bool | None = None
    nc_id: NcId | None = None


class NotLoadedChange(BaseModel):
    model_config = ConfigDict(extra="forbid")

    dir: str
    count: int = Field(ge=0)
    after_next_check: bool = False


class ResiduePlant(BaseModel):
    model_config = ConfigDict(extra="forbid")

    nc_id: NcId
    vm_id: VmId
    state: ProcessState = ProcessState.PAUSED
    guest_active: bool = False


def _validation_message(error: ValidationError) -> str:
    return "; ".join(
        f"{'.'.join(str(part) for part in problem['loc']) or 'body'}: {problem['msg']}"
        for problem in error.errors()
    )


def _json_error(status: int, message: str) -> web.Response:
    return web.json_response({"error": message}, status=status)


async def _json_body(request: web.Request) -> Any:
    try:
        return await request.json()
    except ValueError:
        raise web.HTTPBadRequest(
            text='{"error": "body is not JSON"}', content_type="application/json"
        ) from None


_STATE_KEY = web.AppKey("simulator_state", SimulatorState)


def _state(request: web.Request) -> SimulatorState:
    return request.app[_STATE_KEY]


def _refusal_response(refusal: SimulatorError) -> web.Response:
    status = 404 if refusal.code == Code.NOT_FOUND else 400 if refusal.code == Code.INVALID_PARAMETER else 409
    return _json_error(status, refusal.message)


async def _go2hyapi(request: web.Request) -> web.Response:
    envelope = await _state(request).answer(request.match_info["action"], await request.text())
    return web.Response(body=encode_envelope(envelope), content_type="application/xml", charset="utf-8")


async def _healthz(request: web.Request) -> web.Response:
    state = _state(request)
    return web.json_response({"status": "ok", "fleet": state.fleet.name, "speed": state.speed})


async def _admin_ncs(request: web.Request) -> web.Response:
    return web.json_response(_state(request).fleet.admin_nc_summaries())


async def _admin_nc(request: web.Request) -> web.Response:
    return web.json_response(_state(request).fleet.admin_nc_detail(request.match_info["nc"]))


async def _admin_patch_nc(request: web.Request) -> web.Response:
    patch = NcPatch.model_validate(await _json_body(request))
    fleet = _state(request).fleet
    fleet.patch_nc(request.match_info["nc"], **patch.model_dump(exclude_none=True))
    return web.json_response(fleet.admin_nc_detail(request.match_info["nc"]))


async def _admin_vm(request: web.Request) -> web.Response:
    return web.json_response(_state(request).fleet.admin_vm(request.match_info["vm_id"]))


async def _admin_patch_vm(request: web.Request) -> web.Response:
    patch = VmPatch.model_validate(await _json_body(request))
    fleet = _state(request).fleet
    fleet.patch_vm(request.match_info["vm_id"], **patch.model_dump(exclude_none=True))
    return web.json_response(fleet.admin_vm(request.match_info["vm_id"]))


async def _admin_disk(request: web.Request) -> web.Response:
    return web.json_response(_state(request).fleet.admin_disk(request.match_info["disk_id"]))


async def _admin_disk_migrations(request: web.Request) -> web.Response:
    return web.json_response(_state(request).fleet.admin_disk_migrations())


async def _admin_set_not_loaded(request: web.Request) -> web.Response:
    change = NotLoadedChange.model_validate(await _json_body(request))
    fleet = _state(request).fleet
    fleet.set_not_loaded(change.dir, change.count, after_next_check=change.after_next_check)
    return web.json_response(
        {"dir": change.dir, "count": change.count, "after_next_check": change.after_next_check}
    )


async def _admin_plant_residue(request: web.Request) -> web.Response:
    plant = ResiduePlant.model_validate(await _json_body(request))
    fleet = _state(request).fleet
    fleet.plant_residue(plant.nc_id, plant.vm_id, state=plant.state, guest_active=plant.guest_active)
    return web.json_response(fleet.admin_nc_detail(plant.nc_id), status=201)


async def _admin_add_faults(request: web.Request) -> web.Response:
    body = await _json_body(request)
    items = body if isinstance(body, list) else [body]
    specs = [FaultSpec.model_validate(item) for item in items]
    book = _state(request).faults
    added = [book.add(spec).to_json() for spec in specs]
    return web.json_response({"faults": added}, status=201)


async def _admin_list_faults(request: web.Request) -> web.Response:
    return web.json_response({"faults": [fault.to_json() for fault in _state(request).faults.all()]})


async def _admin_clear_faults(request: web.Request) -> web.Response:
    _state(request).faults.clear()
    return web.json_response({"faults": []})


async def _admin_reset(request: web.Request) -> web.Response:
    state = _state(request)
    state.reset()
    return web.json_response({"reset": True, "fleet": state.fleet.summary()})


async def _admin_counters(request: web.Request) -> web.Response:
    return web.json_response(_state(request).counters_json())


async def _admin_events(request: web.Request) -> web.Response:
    return web.json_response({"events": _state(request).fleet.events})


async def _admin_migrations(request: web.Request) -> web.Response:
    return web.json_response(_state(request).fleet.live_migration_spans())


async def _admin_calls(request: web.Request) -> web.Response:
    action = request.query.get("action")
    calls = [call for call in _state(request).current.call_log if action is None or call["action"] == action]
    return web.json_response({"calls": calls})


@web.middleware
async def _admin_errors(request: web.Request, handler: Any) -> web.StreamResponse:
    """Admin refusals as JSON: a bad body is 400 naming the field, an unknown NC/VM/disk 404."""
    try:
        return await handler(request)
    except ValidationError as error:
        return _json_error(400, _validation_message(error))
    except SimulatorError as refusal:
        return _refusal_response(refusal)


def build_app(state: SimulatorState) -> web.Application:
    app = web.Application(middlewares=[_admin_errors])
    app[_STATE_KEY] = state
    app.router.add_post("/go2hyapi/{action}", _go2hyapi)
    app.router.add_get("/healthz", _healthz)
    app.router.add_get("/admin/ncs", _admin_ncs)
    app.router.add_get("/admin/ncs/{nc}", _admin_nc)
    app.router.add_patch("/admin/ncs/{nc}", _admin_patch_nc)
    app.router.add_get("/admin/vms/{vm_id}", _admin_vm)
    app.router.add_patch("/admin/vms/{vm_id}", _admin_patch_vm)
    app.router.add_get("/admin/disks/{disk_id}", _admin_disk)
    app.router.add_post("/admin/residues", _admin_plant_residue)
    app.router.add_get("/admin/disk-migrations", _admin_disk_migrations)
    app.router.add_post("/admin/not-loaded", _admin_set_not_loaded)
    app.router.add_post("/admin/faults", _admin_add_faults)
    app.router.add_get("/admin/faults", _admin_list_faults)
    app.router.add_delete("/admin/faults", _admin_clear_faults)
    app.router.add_post("/admin/reset", _admin_reset)
    app.router.add_get("/admin/counters", _admin_counters)
    app.router.add_get("/admin/events", _admin_events)
    app.router.add_get("/admin/calls", _admin_calls)
    app.router.add_get("/admin/migrations", _admin_migrations)
    return app


class RunningSimulator:
    """A simulator serving on a local port; ``fleet`` is the live fleet (a reset replaces it)."""

    def __init__(self, state: SimulatorState, runner: web.AppRunner, url: str) -> None:
        self.state = state
        self._runner = runner
        self.url = url

    @property
    def fleet(self) -> Fleet:
        return self.state.fleet

    @property
    def port(self) -> int:
        return int(self.url.rsplit(":", 1)[1])

    def reset(self) -> None:
        self.state.reset()

    async def stop(self) -> None:
        await self._runner.cleanup()


async def start_simulator(
    fleet_path: str | Path | None = None,
    *,
    host: str = "127.0.0.1",
    port: int = 0,
    speed: float = 1.0,
    seed: int = 7,
    residue_rate: float | None = None,
) -> RunningSimulator:
    """Serve the simulator in this event loop; ``port=0`` picks a free port (see ``.url``)."""
    state = SimulatorState(
        Path(fleet_path) if fleet_path is not None else DEMO_FLEET_PATH,
        speed=speed,
        seed=seed,
        residue_rate=residue_rate,
    )
    # handler_cancellation stays off: a call whose client gave up still acts, as on the real control plane.
    runner = web.AppRunner(
        build_app(state), shutdown_timeout=SHUTDOWN_GRACE_SECONDS, handler_cancellation=False, access_log=None
    )
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    await site.start()
    bound_host, bound_port = runner.addresses[0][:2]
    return RunningSimulator(state, runner, f"http://{bound_host}:{bound_port}")
