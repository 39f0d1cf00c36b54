"""The bridge's lifecycle as a transition table (docs/architecture.md invariant 8).

::

    UNINITIALIZED ─▶ INITIALIZING ─▶ ACTIVE ⇄ DEGRADED ─▶ FAILED
                          │                                 │
                          └─▶ FAILED          FAILED ─▶ ACTIVE (log is back)
    any state ─▶ CLOSED (shutdown)

Only the moves in :data:`TRANSITIONS` are legal; :meth:`Lifecycle.transition`
raises :class:`~agentcast.errors.InvalidTransition` for anything else, so a
bug shows up as an error instead of a quietly wrong state.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from enum import StrEnum
from typing import Final

from .errors import InvalidTransition

__all__ = ["TRANSITIONS", "BridgeState", "Lifecycle", "StateObserver"]

logger = logging.getLogger(__name__)


class BridgeState(StrEnum):
    """States of the bridge; ``/readyz`` is 200 only in ACTIVE."""

    UNINITIALIZED = "uninitialized"
    INITIALIZING = "initializing"
    ACTIVE = "active"
    DEGRADED = "degraded"
    FAILED = "failed"
    CLOSED = "closed"


S = BridgeState
TRANSITIONS: Final[dict[BridgeState, frozenset[BridgeState]]] = {
    S.UNINITIALIZED: frozenset({S.INITIALIZING, S.CLOSED}),
    # An init that times out or whose probe fails ends FAILED; it may be retried.
    S.INITIALIZING: frozenset({S.ACTIVE, S.FAILED, S.CLOSED}),
    S.ACTIVE: frozenset({S.DEGRADED, S.CLOSED}),
    S.DEGRADED: frozenset({S.ACTIVE, S.FAILED, S.CLOSED}),
    # FAILED keeps retrying at the longest interval and comes back when the log does.
    S.FAILED: frozenset({S.ACTIVE, S.INITIALIZING, S.CLOSED}),
    S.CLOSED: frozenset(),
}

#: Called with ``(old, new, reason)`` after every transition.
StateObserver = Callable[[BridgeState, BridgeState, str], None]


class Lifecycle:
    """Holds the current state and enforces the table."""

    def __init__(self) -> None:
        self._state = BridgeState.UNINITIALIZED
        self._observers: list[StateObserver] = []
        self.reason = ""

    @property
    def state(self) -> BridgeState:
        """The current state."""
        return self._state

    def can(self, new: BridgeState) -> bool:
        """Whether moving to ``new`` is legal now."""
        return new in TRANSITIONS[self._state]

    def add_observer(self, observer: StateObserver) -> None:
        """Register ``observer``; it is called after each transition."""
        self._observers.append(observer)

    def transition(self, new: BridgeState, reason: str = "") -> None:
        """Move to ``new`` or raise :class:`InvalidTransition`.

        Observers that raise are logged and skipped: a broken observer must
        not leave the state half-changed.
        """
        old = self._state
        if new not in TRANSITIONS[old]:
            raise InvalidTransition(f"illegal bridge transition {old} -> {new}")
        self._state = new
        self.reason = reason
        for observer in list(self._observers):
            try:
                observer(old, new, reason)
            except Exception:
                logger.exception("bridge state observer failed")
