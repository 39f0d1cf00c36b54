"""Agents, their registry, and how a run's return value becomes its final response.

An agent is anything with a ``name``, a ``description`` and an
``async run(ctx)``; most are plain ``async def`` functions wrapped by
:class:`FunctionAgent`. The registry maps names to agents and tools: the
runner resolves ``start_agent {agent}`` and ``ctx.delegate(agent, …)`` through
it, ``ctx.call_tool("name")`` finds tools in it, and ``GET /v1/agents`` lists
it. Registries are plain values — :func:`agentcast.agents.builtin_registry`
builds a new one on every call — so two servers (or two tests) never share
agents by accident.
"""

from __future__ import annotations

import builtins
import inspect
import logging
from collections.abc import Awaitable, Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any, Protocol, TypedDict, runtime_checkable

import msgspec

from ..errors import NotFound
from .context import RunContext
from .tools import ToolInfo, ToolSpec

logger = logging.getLogger(__name__)

__all__ = [
    "UNSET",
    "Agent",
    "AgentFn",
    "AgentInfo",
    "AgentRegistry",
    "AgentResult",
    "FunctionAgent",
    "result_text",
]

#: "No structured result": ``agent_completed`` then omits ``result``.
UNSET = msgspec.UNSET


@dataclass(frozen=True, slots=True)
class AgentResult:
    """What an agent may return instead of a string.

    Attributes:
        final_response: The text of ``agent_completed.final_response``.
        result: Optional structured output (``agent_completed.result``), any
            JSON value; :data:`UNSET` leaves it out of the event.
    """

    final_response: str
    result: Any = UNSET


#: What ``Agent.run`` may return: the final text, an :class:`AgentResult`, or
#: ``None`` to mean "everything I said with ``ctx.say``".
RunReturn = str | AgentResult | None
AgentFn = Callable[[RunContext], Awaitable[RunReturn]]


@runtime_checkable
class Agent(Protocol):
    """An agent: a name, a description for listings, and a ``run`` coroutine."""

    @property
    def name(self) -> str:
        """The name clients start it by."""
        ...

    @property
    def description(self) -> str:
        """One paragraph for ``GET /v1/agents`` and the web page."""
        ...

    async def run(self, ctx: RunContext) -> RunReturn:
        """Do the work for ``ctx.message``; see :data:`RunReturn`."""
        ...


@dataclass(frozen=True, slots=True)
class FunctionAgent:
    """An :class:`Agent` made of an ``async def agent(ctx)`` function."""

    fn: AgentFn
    name: str
    description: str = ""

    async def run(self, ctx: RunContext) -> RunReturn:
        """Call the function."""
        return await self.fn(ctx)


class AgentInfo(TypedDict):
    """An agent as listed by :meth:`AgentRegistry.describe`."""

    name: str
    description: str
    tools: builtins.list[ToolInfo]


@dataclass(frozen=True, slots=True)
class _Entry:
    agent: Agent
    description: str
    tools: tuple[str, ...] = field(default=())


class AgentRegistry:
    """Names → agents, and names → tools.

    A name is registered once: registering another agent or tool under a
    taken name raises ``ValueError`` instead of silently replacing it
    (:meth:`merge` can replace on request).
    """

    def __init__(self) -> None:
        self._agents: dict[str, _Entry] = {}
        self._tools: dict[str, ToolSpec[..., Any]] = {}
        self._closers: builtins.list[Callable[[], Awaitable[None]]] = []

    def __contains__(self, name: object) -> bool:
        return name in self._agents

    def __len__(self) -> int:
        return len(self._agents)

    def __iter__(self) -> Iterator[str]:
        return iter(self._agents)

    def __repr__(self) -> str:
        return f"<AgentRegistry agents={sorted(self._agents)} tools={sorted(self._tools)}>"

    # Public methods

    def register(
        self,
        agent_or_fn: Agent | AgentFn,
        *,
        name: str | None = None,
        description: str | None = None,
        tools: Iterable[ToolSpec[..., Any]] = (),
    ) -> Agent:
        """Register an agent (or an ``async def fn(ctx)``) and the tools it uses.

        Args:
            agent_or_fn: An :class:`Agent`, or a coroutine function wrapped in
                a :class:`FunctionAgent`.
            name: The registered name; defaults to the agent's ``name`` (the
                function's ``__name__``).
            description: Defaults to the agent's ``description`` (the
                function docstring's first paragraph).
            tools: Tools listed with the agent and added to the registry.

        Returns:
            The registered agent.

        Raises:
            ValueError: the name is taken or empty.
            TypeError: neither an Agent nor a coroutine function.
        """
        agent: Agent
        if isinstance(agent_or_fn, Agent):
            agent = agent_or_fn
        elif inspect.iscoroutinefunction(agent_or_fn):
            agent = FunctionAgent(
                agent_or_fn,
                name=name or agent_or_fn.__name__,
                description=description if description is not None else _summary(agent_or_fn),
            )
        else:
            raise TypeError(f"{agent_or_fn!r} is neither an Agent nor an async function")
        agent_name = name or agent.name
        if not agent_name:
            raise ValueError("an agent needs a name")
        if agent_name in self._agents:
            raise ValueError(f"an agent named {agent_name!r} is already registered")
        specs = tuple(tools) + tuple(getattr(agent, "tools", ()))
        for spec in specs:
            self.add_tool(spec)
        self._agents[agent_name] = _Entry(
            agent=agent,
            description=description if description is not None else agent.description,
            tools=tuple(dict.fromkeys(spec.name for spec in specs)),
        )
        return agent

    def agent(
        self,
        *,
        name: str | None = None,
        description: str | None = None,
        tools: Iterable[ToolSpec[..., Any]] = (),
    ) -> Callable[[AgentFn], AgentFn]:
        """Decorator form of :meth:`register`; the function is returned unchanged."""

        def decorate(fn: AgentFn) -> AgentFn:
            self.register(fn, name=name, description=description, tools=tools)
            return fn

        return decorate

    def add_tool(self, spec: ToolSpec[..., Any]) -> ToolSpec[..., Any]:
        """Make ``spec`` callable by name (``ctx.call_tool("name")``).

        Raises:
            ValueError: another tool already has that name.
        """
        existing = self._tools.get(spec.name)
        if existing is not None and existing is not spec:
            raise ValueError(f"a different tool named {spec.name!r} is already registered")
        self._tools[spec.name] = spec
        return spec

    def get(self, name: str) -> Agent:
        """The agent registered as ``name``.

        Raises:
            NotFound: no such agent (wire code ``not_found``).
        """
        try:
            return self._agents[name].agent
        except KeyError:
            raise NotFound(f"unknown agent {name!r}") from None

    def tool(self, name: str) -> ToolSpec[..., Any]:
        """The tool registered as ``name``.

        Raises:
            NotFound: no such tool.
        """
        try:
            return self._tools[name]
        except KeyError:
            raise NotFound(f"unknown tool {name!r}") from None

    def tools(self) -> builtins.list[ToolSpec[..., Any]]:
        """Every registered tool, by name."""
        return [self._tools[name] for name in sorted(self._tools)]

    def describe(self) -> builtins.list[AgentInfo]:
        """Every agent with its description and tools, in registration order."""
        return [
            {
                "name": name,
                "description": entry.description,
                "tools": [self._tools[tool].describe() for tool in entry.tools],
            }
            for name, entry in self._agents.items()
        ]

    def list(self) -> builtins.list[AgentInfo]:
        """Same as :meth:`describe` (what ``GET /v1/agents`` returns)."""
        return self.describe()

    def on_close(self, closer: Callable[[], Awaitable[None]]) -> None:
        """Run ``closer()`` when the engine serving this registry shuts down.

        For what agents hold beyond a run and must give back: a model
        client's connections (``ChatAgent.aclose``), a local model. Each
        registered agent with an ``aclose`` method is closed anyway.
        """
        self._closers.append(closer)

    async def aclose(self) -> None:
        """Close what the agents hold (:meth:`on_close`, and agents' ``aclose``), each once.

        Called by the engine after its last run ended. A closer that raises is
        logged and the others still run.
        """
        closers = list(self._closers)
        self._closers.clear()
        for entry in self._agents.values():
            close = getattr(entry.agent, "aclose", None)
            if close is not None and close not in closers:
                closers.append(close)
        for closer in closers:
            try:
                await closer()
            except Exception:
                logger.exception("closing %r failed", closer)

    def merge(self, other: AgentRegistry, *, replace: bool = False) -> AgentRegistry:
        """Add ``other``'s agents and tools to this registry; returns ``self``.

        Args:
            other: The registry to copy from (left unchanged).
            replace: Let ``other`` win name conflicts (e.g. an application's
                own ``demo``) instead of raising ``ValueError``.
        """
        if not replace:
            for name in other._agents:
                if name in self._agents:
                    raise ValueError(f"an agent named {name!r} is already registered")
            for name, spec in other._tools.items():
                if self._tools.get(name, spec) is not spec:
                    raise ValueError(f"a different tool named {name!r} is already registered")
        self._tools.update(other._tools)
        self._agents.update(other._agents)
        self._closers.extend(c for c in other._closers if c not in self._closers)
        return self


def result_text(result: RunReturn, ctx: RunContext) -> tuple[str, Any]:
    """Turn what ``Agent.run`` returned into ``(final_response, structured_result)``.

    A string is the final response; an :class:`AgentResult` gives both; ``None``
    means the answer is what the agent streamed with ``ctx.say`` (so an agent
    that streams need not repeat itself). The structured result is
    :data:`UNSET` unless the agent gave one.

    Raises:
        TypeError: the agent returned something else (the runner reports it
            as ``agent_error``).
    """
    if isinstance(result, str):
        return result, UNSET
    if isinstance(result, AgentResult):
        return result.final_response, result.result
    if result is None:
        return ctx.text, UNSET
    raise TypeError(
        f"agent {ctx.agent!r} returned {type(result).__name__}; expected str, AgentResult or None"
    )


def _summary(fn: Callable[..., Any]) -> str:
    doc = inspect.getdoc(fn) or ""
    return " ".join(doc.split("\n\n", 1)[0].split())
