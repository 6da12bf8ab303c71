"""Bearer tokens: who calls the intake, and what they may do.

Tokens are read from the JSON file named by ``OPSFLOW_TOKENS_FILE``:
``{"<token>": {"identity": "alice", "roles": ["submitter"]}, ...}``. Roles: ``submitter`` (reports),
``approver`` (approvals), ``alertmanager`` (the webhook), ``admin`` (everything, and submitting on
someone's behalf). A presented token is compared with every known one in constant time (no early exit on
the first match either), and no token ever reaches a log line or an answer.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from enum import StrEnum
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, ValidationError


class Role(StrEnum):
    SUBMITTER = "submitter"
    APPROVER = "approver"
    ALERTMANAGER = "alertmanager"
    ADMIN = "admin"


class Caller(BaseModel):
    model_config = ConfigDict(frozen=True)

    identity: str = Field(min_length=1, max_length=128)
    roles: frozenset[Role] = Field(min_length=1)

    def may(self, role: Role) -> bool:
        return role in self.roles or Role.ADMIN in self.roles


class TokenFileError(ValueError):
    pass


class Tokens:
    def __init__(self, callers: dict[str, Caller]) -> None:
        # Only digests are kept: equal-length values to compare, and no token left in memory dumps.
        self._by_digest = [(_digest(token), caller) for token, caller in callers.items()]

    @classmethod
    def load(cls, path: Path) -> Tokens:
        try:
            raw = json.loads(path.read_text(encoding="utf-8"))
        except OSError as error:
            raise TokenFileError(f"cannot read the tokens file {path}: {error.strerror}") from None
        except json.JSONDecodeError as error:
            raise TokenFileError(
                f"tokens file {path} is not JSON: {error.msg} at line {error.lineno}"
            ) from None
        if not isinstance(raw, dict) or not raw:
            raise TokenFileError(f"tokens file {path} must be a non-empty JSON object of token -> caller")
        callers = {}
        for index, (token, entry) in enumerate(raw.items(), start=1):
            if len(token) < 16:
                raise TokenFileError(f"tokens file {path}: token #{index} is shorter than 16 characters")
            try:
                callers[token] = Caller.model_validate(entry)
            except ValidationError as error:
                problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in error.errors())
                raise TokenFileError(f"tokens file {path}: entry #{index}: {problems}") from None
        return cls(callers)

    def caller(self, presented: str) -> Caller | None:
        digest = _digest(presented)
        found: Caller | None = None
        for known, caller in self._by_digest:
            if hmac.compare_digest(known, digest):
                found = caller
        return found


def _digest(token: str) -> bytes:
    return hashlib.sha256(token.encode("utf-8")).digest()
