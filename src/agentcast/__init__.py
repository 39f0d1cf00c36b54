"""agentcast: every step an AI agent takes, live on its user's screen — in order,
exactly once, across reconnects, restarts and processes.

The engine (this package's core) is the bridge — the only way events are
emitted — over a durable per-thread event log, plus the agent API and the
runner. See ``docs/`` for the Python API, the event contract and operations.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .agents import (
        Agent,
        AgentRegistry,
        AgentResult,
        AgentSettings,
        RunContext,
        ToolError,
        ToolSpec,
        ToolTimeout,
        builtin_registry,
        tool,
    )
    from .bridge import AgentWebSocketBridge, Bridge, HealthReport
    from .config import EngineSettings
    from .engine import Engine, get_bridge, get_engine
    from .errors import AgentcastError, CloseCode, ErrorCode
    from .events import Event, EventType, decode_event
    from .gateway.app import create_app
    from .lifecycle import BridgeState
    from .runner import Runner, RunTicket

__version__ = "0.2.0"

# Public names are imported on first use, so ``import agentcast`` stays cheap
# and importing one part (say, the events) does not load all the others.
_LAZY = {
    "Agent": "agents", "AgentRegistry": "agents", "AgentResult": "agents",
    "AgentSettings": "agents", "RunContext": "agents", "ToolError": "agents",
    "ToolSpec": "agents", "ToolTimeout": "agents", "builtin_registry": "agents", "tool": "agents",
    "AgentWebSocketBridge": "bridge", "Bridge": "bridge", "HealthReport": "bridge",
    "EngineSettings": "config", "Engine": "engine", "get_bridge": "engine",
    "get_engine": "engine", "AgentcastError": "errors",
    "CloseCode": "errors", "ErrorCode": "errors", "Event": "events", "EventType": "events",
    "decode_event": "events", "BridgeState": "lifecycle", "Runner": "runner",
    "RunTicket": "runner", "create_app": "gateway.app",
}  # fmt: skip


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'agentcast' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


__all__ = [
    "Agent",
    "AgentRegistry",
    "AgentResult",
    "AgentSettings",
    "AgentWebSocketBridge",
    "AgentcastError",
    "Bridge",
    "BridgeState",
    "CloseCode",
    "Engine",
    "EngineSettings",
    "ErrorCode",
    "Event",
    "EventType",
    "HealthReport",
    "RunContext",
    "RunTicket",
    "Runner",
    "ToolError",
    "ToolSpec",
    "ToolTimeout",
    "__version__",
    "builtin_registry",
    "create_app",
    "decode_event",
    "get_bridge",
    "get_engine",
    "tool",
]
