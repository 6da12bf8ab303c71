"""The reliability suite's two sizes: ``make test`` runs a reduced matrix within CI's budget,
``make test-full`` (OPSFLOW_RELIABILITY=full) every case."""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import TypeVar

T = TypeVar("T")

FULL = os.environ.get("OPSFLOW_RELIABILITY", "").strip().lower() == "full"


def matrix(cases: Sequence[T], reduced: Sequence[T]) -> Sequence[T]:
    """All ``cases`` under ``make test-full``; ``reduced`` (a subset chosen to cover each kind) otherwise."""
    assert set(map(repr, reduced)) <= set(map(repr, cases)), "the reduced matrix must be a subset"
    return cases if FULL else reduced
