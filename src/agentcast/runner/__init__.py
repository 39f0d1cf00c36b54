"""Executing runs: limits, queueing, timeouts, cancellation, crash recovery."""

from .runner import CancelResult, OnActive, Runner, RunState, RunTicket
from .scheduler import Scheduler, Slot

__all__ = ["CancelResult", "OnActive", "RunState", "RunTicket", "Runner", "Scheduler", "Slot"]
