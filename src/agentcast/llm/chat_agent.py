"""``ChatAgent``: an agent that thinks with a model over the Chat Completions API.

One run is a loop of model calls ("steps"). Each step sends the system
prompt, the thread's history (``ctx.history``), the user's message and this
run's tool turns so far; streams the answer (text to ``ctx.say``, reasoning to
``ctx.think_stream``); and, if the model asked for tools, runs them through
the run's tool dispatcher — concurrently up to ``tool_concurrency``, each
reported under the model's own ``tool_call.id`` — and sends the results back
in call order for the next step. The run ends when a step answers without
tool calls; its final response is that step's text. docs/llm.md is the
user's guide; the failure classes are in :mod:`agentcast.llm.errors`.

Retries. The SDK's own retries are off (``max_retries=0``): only this loop
knows whether an attempt already reached the user. An attempt that emitted
nothing (no text, no reasoning) is retried on 408/409/429/5xx, connection
errors and either stream timeout, waiting as ``retry-after-ms``/``Retry-After``
says (else exponential backoff); once anything was emitted an error ends the
run, so no text is ever sent twice.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import json
import random
from collections.abc import AsyncIterator, Iterable, Mapping, Sequence
from typing import Any, Final

from ..agents.context import RunContext
from ..agents.exceptions import ToolError
from ..agents.tools import ToolSpec, tool
from ..settings import AgentcastSettings, LlmSection
from .errors import (
    LlmChunkTimeout,
    LlmError,
    LlmFirstTokenTimeout,
    LlmMaxSteps,
    LlmOutputTruncated,
    describe_provider_error,
    is_retryable,
)
from .sse import iter_chunks
from .stream import AssembledCall, StepReader, StepResult
from .tools_schema import openai_tools

__all__ = ["ChatAgent", "without_tool_calls"]

_INSTALL_HINT: Final = "agentcast.llm needs the openai package: pip install agentcast[openai]"
#: The longest wait a provider's Retry-After is honoured for; beyond it, this.
_MAX_RETRY_WAIT_S: Final = 60.0
_BACKOFF_BASE_S: Final = 0.5
_BACKOFF_MAX_S: Final = 8.0


def _require_openai() -> Any:
    if importlib.util.find_spec("openai") is None:
        raise ImportError(_INSTALL_HINT)
    import openai

    return openai


class ChatAgent:
    """An agent answering with an OpenAI-compatible model, calling ``tools`` as it asks.

    Every argument left ``None`` takes its default from the ``llm`` settings
    section (``AGENTCAST_LLM_*``, docs/operations.md).

    Args:
        name: The registered name.
        description: For listings.
        system_prompt: The first message of every request, if any.
        tools: The ``@tool`` specs the model may call (registered with the agent).
        agents: Other registered agents the model may hand a task to, by name
            (and, in a mapping, what each is good for). Each is offered to the
            model as a tool of that name taking ``{"message": …}``; a call runs
            a sub-run of that agent under this run (its events nest under it)
            and its final response is the call's result.
        model: The model name (``llm_model``).
        base_url: An OpenAI-compatible endpoint (``llm_base_url``; unset: OpenAI).
        api_key: The key (``llm_api_key``); never shown in repr, logs or errors.
        request_options: Extra arguments of every request (``temperature``,
            ``max_tokens``, ``extra_body`` …).
        first_token_timeout_s: Nothing received this long after a request ends the run.
        chunk_timeout_s: Silence this long between two chunks ends the run.
        max_steps: Model calls per run at most.
        max_retries: Retries of a model call that has emitted nothing.
        client: An ``openai.AsyncOpenAI`` to use (its retries are turned off);
            by default one is made on first use.
        settings: Where defaults come from; ``AgentcastSettings().llm`` by default.

    Raises:
        ImportError: the ``openai`` package is missing (the message says how to install it).
        ValueError: a tool name is given twice, or a bound is out of range.
    """

    def __init__(
        self,
        name: str = "chat",
        *,
        description: str = "Answers with a language model, calling tools as needed.",
        system_prompt: str | None = None,
        tools: Iterable[ToolSpec[..., Any]] = (),
        agents: Iterable[str] | Mapping[str, str] = (),
        model: str | None = None,
        base_url: str | None = None,
        api_key: str | None = None,
        request_options: Mapping[str, Any] | None = None,
        first_token_timeout_s: float | None = None,
        chunk_timeout_s: float | None = None,
        max_steps: int | None = None,
        max_retries: int | None = None,
        client: Any = None,
        settings: LlmSection | None = None,
    ) -> None:
        _require_openai()
        llm = settings if settings is not None else AgentcastSettings().llm
        self._name = name
        self._description = description
        self.system_prompt = system_prompt
        self.tools: tuple[ToolSpec[..., Any], ...] = tuple(tools)
        self._by_name = {spec.name: spec for spec in self.tools}
        if len(self._by_name) != len(self.tools):
            raise ValueError("two tools of a ChatAgent have the same name")
        self.agents: dict[str, str] = (
            dict(agents) if isinstance(agents, Mapping) else dict.fromkeys(agents, "")
        )
        if clash := set(self.agents) & set(self._by_name):
            raise ValueError(f"agents and tools of a ChatAgent share names: {sorted(clash)}")
        self.model = model or llm.llm_model
        self.base_url = base_url if base_url is not None else llm.llm_base_url
        self._api_key = api_key if api_key is not None else llm.llm_api_key
        self.request_options = dict(request_options or {})
        self.first_token_timeout_s = _positive(
            "first_token_timeout_s", first_token_timeout_s, llm.llm_first_token_timeout_s
        )
        self.chunk_timeout_s = _positive(
            "chunk_timeout_s", chunk_timeout_s, llm.llm_chunk_timeout_s
        )
        self.max_steps = int(_positive("max_steps", max_steps, llm.llm_max_steps))
        self.max_retries = max_retries if max_retries is not None else llm.llm_max_retries
        if self.max_retries < 0:
            raise ValueError("max_retries must be >= 0")
        self._client = client.with_options(max_retries=0) if client is not None else None
        #: Whether this agent made its client (and so closes it in :meth:`aclose`).
        self._owns_client = client is None

    def __repr__(self) -> str:
        return f"<ChatAgent name={self._name!r} model={self.model!r} base_url={self.base_url!r}>"

    @property
    def name(self) -> str:
        """The name clients start it by."""
        return self._name

    @property
    def description(self) -> str:
        """One paragraph for listings."""
        return self._description

    # Public methods

    async def run(self, ctx: RunContext) -> str:
        """Answer ``ctx.message``: model steps and tool rounds until a plain answer.

        Raises:
            LlmError: a subclass per failure (its name is the run's ``error_type``).
        """
        client = self._get_client()
        turns: list[dict[str, Any]] = []
        callable_specs = {**self._by_name, **self._hand_overs(ctx)}
        tools = openai_tools(callable_specs.values())
        for number in range(1, self.max_steps + 1):
            step = await self._step(ctx, client, self._messages(ctx, turns), tools)
            ctx.report_usage(step.usage, model=self.model)
            await _note_length(ctx, step)
            if not step.calls:
                return step.text
            if number == self.max_steps:
                break  # no model call is left to read these calls' results: not run
            _name_calls(step.calls)
            turns.append(
                {
                    "role": "assistant",
                    "content": step.text or None,
                    "tool_calls": [call.message() for call in step.calls],
                }
            )
            turns.extend(await self._run_calls(ctx, step.calls, callable_specs))
        raise LlmMaxSteps(
            f"the model still asked for tools after {self.max_steps} model calls (llm_max_steps)"
        )

    async def write(self, ctx: RunContext, messages: Sequence[Mapping[str, Any]]) -> str:
        """One model answer to ``messages``, streamed into ``ctx``; no tools offered.

        For agents that decide in code and let a model write: the demo served
        with ``agentcast serve --llm`` routes its tools itself and asks this for
        the prose. Text streams as ``text_delta``, reasoning as
        ``thinking_delta``, usage is reported; the same retries, timeouts and
        errors as :meth:`run`.
        """
        step = await self._step(ctx, self._get_client(), [dict(m) for m in messages], [])
        ctx.report_usage(step.usage, model=self.model)
        await _note_length(ctx, step)
        return step.text

    async def aclose(self) -> None:
        """Close the client this agent made (its connections); a given one is its owner's.

        The engine calls it at shutdown for a registered agent
        (``AgentRegistry.aclose``); the next run would make a new client.
        """
        client, self._client = (self._client, None) if self._owns_client else (None, self._client)
        if client is not None:
            await client.close()

    # Private methods

    def _get_client(self) -> Any:
        if self._client is None:
            openai = _require_openai()
            key = self._api_key
            if key is None and self.base_url is not None:
                key = "unused"  # local servers (vLLM, llama.cpp, Ollama) need none
            self._client = openai.AsyncOpenAI(
                api_key=key, base_url=self.base_url, max_retries=0, **_http_client(openai)
            )
        return self._client

    def _messages(self, ctx: RunContext, turns: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
        messages: list[dict[str, Any]] = []
        if self.system_prompt:
            messages.append({"role": "system", "content": self.system_prompt})
        messages.extend(dict(m) for m in ctx.history)
        messages.append({"role": "user", "content": ctx.message})
        messages.extend(turns)
        return messages

    async def _step(
        self, ctx: RunContext, client: Any, messages: list[dict[str, Any]], tools: list[Any]
    ) -> StepResult:
        """One model call, retried while nothing of it has reached the user."""
        request: dict[str, Any] = {
            **self.request_options,
            "model": self.model,
            "messages": messages if tools else without_tool_calls(messages),
            "stream": True,
            "stream_options": {"include_usage": True},
        }
        if tools:
            request["tools"] = tools
        attempt = 0
        while True:
            reader = StepReader(ctx.say, ctx.think_stream)
            try:
                return await self._attempt(client, request, reader)
            except (LlmFirstTokenTimeout, LlmChunkTimeout) as exc:
                # Silence before anything reached the user is worth another attempt
                # (an overloaded provider queues requests); after output it is not.
                if reader.emitted or attempt >= self.max_retries:
                    if attempt:
                        raise type(exc)(f"{exc.message} after {attempt + 1} attempts") from None
                    raise
                wait = _retry_wait(exc, attempt)
            except LlmError:
                raise
            except Exception as exc:
                during = "mid-answer" if reader.emitted else "before the answer"
                if reader.emitted or not is_retryable(exc) or attempt >= self.max_retries:
                    raise describe_provider_error(
                        exc, api_key=self._api_key, during=during, attempts=attempt + 1
                    ) from None
                wait = _retry_wait(exc, attempt)
            await asyncio.sleep(wait)
            attempt += 1

    async def _attempt(
        self, client: Any, request: dict[str, Any], reader: StepReader
    ) -> StepResult:
        """Send one request and read its stream to the end, within the two timeouts."""
        loop = asyncio.get_running_loop()
        first_deadline = loop.time() + self.first_token_timeout_s
        streaming = getattr(client.chat.completions, "with_streaming_response", None)
        async with contextlib.AsyncExitStack() as stack:
            # Leaving the stack closes the response, hence the connection (cancel, error).
            try:
                async with asyncio.timeout_at(first_deadline):
                    if streaming is not None:
                        # The SDK's client: it sends the request and raises HTTP errors;
                        # the body is read here, cheaply (agentcast.llm.sse).
                        response = await stack.enter_async_context(streaming.create(**request))
                        chunks: AsyncIterator[Any] = iter_chunks(response)
                        stack.push_async_callback(_close_iterator, chunks)
                    else:
                        # An SDK-shaped client (the local model's): its stream of chunk objects.
                        stream = await client.chat.completions.create(**request)
                        await stack.enter_async_context(stream)
                        chunks = stream.__aiter__()
            except TimeoutError:
                raise self._first_token_timeout() from None
            first = True
            while True:
                deadline = first_deadline if first else loop.time() + self.chunk_timeout_s
                try:
                    async with asyncio.timeout_at(deadline):
                        chunk = await chunks.__anext__()
                except StopAsyncIteration:
                    break
                except TimeoutError:
                    if first:
                        raise self._first_token_timeout() from None
                    raise LlmChunkTimeout(
                        f"the model's stream was silent for {self.chunk_timeout_s:g} s "
                        "(llm_chunk_timeout_s)"
                    ) from None
                first = False
                await reader.feed(chunk)
        return reader.result()

    def _first_token_timeout(self) -> LlmFirstTokenTimeout:
        return LlmFirstTokenTimeout(
            f"the model sent nothing within {self.first_token_timeout_s:g} s "
            "(llm_first_token_timeout_s)"
        )

    def _hand_overs(self, ctx: RunContext) -> dict[str, ToolSpec[..., Any]]:
        """This run's tools that hand a task to another agent (a sub-run of this run)."""
        return {agent: _hand_over(ctx, agent, purpose) for agent, purpose in self.agents.items()}

    async def _run_calls(
        self,
        ctx: RunContext,
        calls: Sequence[AssembledCall],
        specs: Mapping[str, ToolSpec[..., Any]],
    ) -> list[dict[str, Any]]:
        """Run a step's tool calls concurrently; their results in call order."""
        async with asyncio.TaskGroup() as group:
            tasks = [group.create_task(self._run_call(ctx, call, specs)) for call in calls]
        return [
            {"role": "tool", "tool_call_id": call.id, "content": task.result()}
            for call, task in zip(calls, tasks, strict=True)
        ]

    async def _run_call(
        self, ctx: RunContext, call: AssembledCall, specs: Mapping[str, ToolSpec[..., Any]]
    ) -> str:
        """One tool call; its result (or error) as the tool message's content."""
        spec = specs.get(call.name)
        arguments: Any = {}
        refused: str | None = None
        if spec is None:
            offered = ", ".join(specs) or "none"
            refused = f"unknown tool {call.name!r} (available: {offered})"
        else:
            try:
                arguments = json.loads(call.arguments) if call.arguments.strip() else {}
            except ValueError as exc:
                refused = f"the arguments are not valid JSON: {exc}"
            else:
                if not isinstance(arguments, dict):
                    arguments, refused = {}, "the arguments must be a JSON object"
        try:
            result = await ctx.run_tool_call(
                call.id, spec if spec is not None else call.name, arguments, refused=refused
            )
        except ToolError as exc:
            return f"Error: {exc.message}"
        return result if isinstance(result, str) else json.dumps(result, default=str)


def without_tool_calls(messages: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """``messages`` for a request that offers no tools: no tool call, no tool result.

    A thread's history may hold another agent's tool calls (the ``assistant``
    before the demo's writer, in one thread); providers refuse a request whose
    messages call tools it does not list, so such a request keeps the text:
    an assistant message's content without its ``tool_calls`` (dropped when
    it said nothing), and no ``tool`` message. The answers, which carry what
    the tools found, stay.
    """
    kept: list[dict[str, Any]] = []
    for message in messages:
        if message.get("role") == "tool":
            continue
        if message.get("tool_calls"):
            if not message.get("content"):
                continue
            message = {k: v for k, v in message.items() if k != "tool_calls"}
        kept.append(dict(message))
    return kept


def _http_client(openai: Any) -> dict[str, Any]:
    """The SDK's aiohttp transport when installed (``openai[aiohttp]``), else its default.

    Measured on the same replayed streams (``bench/llm_reader.py``): reading a
    chunk costs about half the CPU over aiohttp that it costs over the SDK's
    default HTTP client, which was 80 to 90 % of the stream reader's time; the
    requests, headers and errors are the SDK's either way.
    """
    if importlib.util.find_spec("aiohttp") is None or not hasattr(openai, "DefaultAioHttpClient"):
        return {}
    return {"http_client": openai.DefaultAioHttpClient()}


def _hand_over(ctx: RunContext, agent: str, purpose: str) -> ToolSpec[..., Any]:
    """A tool of one run that runs ``agent`` as its sub-run and returns its answer."""

    async def hand_over(message: str) -> str:
        """Hand a task to another agent and return its answer.

        Args:
            message: The task, complete: the other agent sees only this.
        """
        return await ctx.delegate(agent, message)

    description = f"Hand a task to the {agent} agent and get its answer."
    if purpose:
        description += f" It {purpose}" if purpose[0].islower() else f" {purpose}"
    return tool(name=agent, description=description)(hand_over)


async def _note_length(ctx: RunContext, step: StepResult) -> None:
    """Make a step cut at the model's output limit (``finish_reason: "length"``) visible.

    Text cut short is still the model's answer: the run goes on, and the user is
    told in an ``agent_thinking`` step. Tool calls cut short may have half their
    arguments, and running a guess is worse than failing: the run fails.

    Raises:
        LlmOutputTruncated: the step has tool calls.
    """
    if step.finish_reason != "length":
        return
    if step.calls:
        raise LlmOutputTruncated(
            "the model reached its output limit (max_tokens) while writing tool calls; "
            "they were not run"
        )
    await ctx.think("The model reached its output limit (max_tokens): the answer is cut short.")


def _name_calls(calls: Sequence[AssembledCall]) -> None:
    """Give a call without an id (some local servers) one, unique in its step."""
    for call in calls:
        if not call.id:
            call.id = f"call_{call.index}"


async def _close_iterator(chunks: AsyncIterator[Any]) -> None:
    """Finish a chunk iterator left mid-body, so its response is released now."""
    aclose = getattr(chunks, "aclose", None)
    if aclose is not None:
        await aclose()


def _positive(name: str, value: float | None, default: float) -> float:
    chosen = default if value is None else value
    if chosen <= 0:
        raise ValueError(f"{name} must be > 0")
    return chosen


def _retry_wait(exc: BaseException, attempt: int) -> float:
    """How long to wait before retry ``attempt + 1``: the provider's word, else backoff."""
    response = getattr(exc, "response", None)
    headers = getattr(response, "headers", None)
    if headers is not None:
        for header, scale in (("retry-after-ms", 0.001), ("retry-after", 1.0)):
            value = headers.get(header)
            if value is None:
                continue
            try:
                wait = float(value) * scale
            except ValueError:
                continue  # an HTTP date: fall back to backoff
            if wait >= 0:
                return float(min(wait, _MAX_RETRY_WAIT_S))
    backoff: float = min(_BACKOFF_MAX_S, _BACKOFF_BASE_S * 2.0**attempt)
    return backoff * random.uniform(0.75, 1.0)
