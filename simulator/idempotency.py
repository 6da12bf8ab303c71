"""Answers remembered by client token, as the control plane does: a repeated token gets the first answer.

An entry is created when the first call with a token starts, and holds a future its answer lands in; a
repeat that arrives meanwhile waits on that future instead of acting a second time. Answers that say the
action did not happen (injected faults, internal errors) are dropped, so the next call with the token acts.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from dataclasses import dataclass

from houyi.wire import CALLER_PARAM, TOKEN_PARAM, Action, Envelope

Fingerprint = tuple[tuple[str, str], ...]


def fingerprint(params: Mapping[str, str]) -> Fingerprint:
    """What must match for a repeat to be the same request: every parameter but the token and the caller."""
    return tuple(
        sorted((name, value) for name, value in params.items() if name not in (TOKEN_PARAM, CALLER_PARAM))
    )


@dataclass(frozen=True)
class Outcome:
    envelope: Envelope
    cacheable: bool  # False when the action did not happen, so a retry with the token must act


@dataclass
class TokenEntry:
    action: Action
    fingerprint: Fingerprint
    outcome: asyncio.Future[Outcome]


class TokenCache:
    def __init__(self) -> None:
        self._entries: dict[str, TokenEntry] = {}

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, token: str) -> TokenEntry | None:
        return self._entries.get(token)

    def begin(self, token: str, action: Action, request: Fingerprint) -> TokenEntry:
        entry = TokenEntry(
            action=action, fingerprint=request, outcome=asyncio.get_running_loop().create_future()
        )
        self._entries[token] = entry
        return entry

    def finish(self, token: str, entry: TokenEntry, outcome: Outcome) -> None:
        if not entry.outcome.done():
            entry.outcome.set_result(outcome)
        if not outcome.cacheable and self._entries.get(token) is entry:
            del self._entries[token]
