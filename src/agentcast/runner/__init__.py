"""Executing runs: limits, queueing, timeouts, cancellation, crash recovery."""

from .runner import OnActive, Runner, RunState, RunTicket
from .scheduler import Scheduler, Slot

__all__ = ["OnActive", "RunState", "RunTicket", "Runner", "Scheduler", "Slot"]
