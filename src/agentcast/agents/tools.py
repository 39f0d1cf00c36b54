"""Tools: ``@tool`` turns a function into a described, validated :class:`ToolSpec`.

A tool is called by an agent (or by a model through an agent) with a JSON-like
mapping of arguments. Three things follow from that, and this module does
them once so that no agent has to:

* **Describe** the tool to a model: a JSON Schema of its parameters, derived
  from the type hints (msgspec does the type → schema mapping), and a
  description taken from the docstring.
* **Validate** the arguments against the same types before the function runs,
  so that a model's bad arguments become a clean ``tool_completed`` with
  status ``error`` instead of a crash deep inside the tool.
* **Report** every call as a ``tool_executing``/``tool_completed`` pair
  (docs/architecture.md invariant 3: the pair is never broken, whatever happens to the
  call) with secrets redacted and sizes bounded — :class:`ToolDispatcher`.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import re
import secrets
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final, Generic, ParamSpec, TypedDict, TypeVar, overload

import msgspec

from .. import events
from ..errors import InvalidEvent, InvalidInput, InvalidTransition, NotFound
from .exceptions import ToolError, ToolTimeout
from .sanitize import sanitize_error
from .settings import AgentSettings
from .whole import whole

__all__ = ["EmitFn", "ToolDispatcher", "ToolInfo", "ToolSpec", "tool"]

P = ParamSpec("P")
R = TypeVar("R")

#: How the agent API emits: ``await emit(event_type, data)``. The runner's
#: function returns the stored event; nothing here uses the return value.
EmitFn = Callable[[str, Mapping[str, Any]], Awaitable[object]]

_ARGS_STRUCT_NAME: Final = "_agentcast_tool_arguments"
_NAME_RE: Final = re.compile(r"^[A-Za-z_][A-Za-z0-9_.-]{0,63}$")
_ARGS_HEADER: Final = re.compile(r"^(Args|Arguments|Parameters|Params)\s*:\s*$")
_SECTION_HEADER: Final = re.compile(r"^[A-Z][A-Za-z ]*:\s*$")
_ARG_LINE: Final = re.compile(r"^(?P<name>\*{0,2}\w+)\s*(?:\([^)]*\))?\s*:\s*(?P<desc>.*)$")


class ToolInfo(TypedDict):
    """How a tool is described to clients and models (``GET /v1/agents``)."""

    name: str
    description: str
    parameters: dict[str, Any]


@dataclass(frozen=True, slots=True)
class ToolSpec(Generic[P, R]):
    """A tool: the function plus what a model needs to call it.

    Calling the spec calls the function directly (no events, no validation),
    so a decorated function stays usable and testable as a plain function.
    Calls that should be seen by the user go through ``ctx.call_tool``.

    Attributes:
        name: Unique name within a registry.
        description: What the tool does (the docstring's first paragraph).
        parameters_schema: JSON Schema (an ``object``) of the keyword arguments.
        fn: The decorated function, sync or async.
        timeout_s: The tool's own time limit; ``None`` uses the run's default.
        is_async: Whether ``fn`` is a coroutine function (sync tools run in a
            worker thread so that they cannot block the event loop).
    """

    name: str
    description: str
    parameters_schema: dict[str, Any]
    fn: Callable[P, R]
    timeout_s: float | None
    is_async: bool
    _args_type: type[msgspec.Struct] = field(repr=False, compare=False)

    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> R:
        return self.fn(*args, **kwargs)

    # Public methods

    def validate(self, args: Mapping[str, Any]) -> dict[str, Any]:
        """Check ``args`` against the signature; return the converted keyword arguments.

        Values are converted the way JSON input would be (a string becomes an
        enum member, a list a tuple …); arguments left out are left out, so the
        function's own defaults apply.

        Raises:
            InvalidInput: a missing, unknown or mistyped argument.
        """
        if not isinstance(args, Mapping):
            raise InvalidInput(f"arguments of tool {self.name!r} must be an object")
        try:
            converted = msgspec.convert(dict(args), self._args_type, strict=True)
        except msgspec.ValidationError as exc:
            detail = str(exc).replace(" - at `$.", " (argument `").replace("$.", "")
            if "(argument `" in detail:
                detail += ")"
            raise InvalidInput(f"invalid arguments for tool {self.name!r}: {detail}") from None
        return {
            name: value
            for name in self._args_type.__struct_fields__
            if (value := getattr(converted, name)) is not msgspec.UNSET
        }

    def describe(self) -> ToolInfo:
        """The tool's name, description and parameter schema."""
        return {
            "name": self.name,
            "description": self.description,
            "parameters": self.parameters_schema,
        }


@overload
def tool(fn: Callable[P, R], /) -> ToolSpec[P, R]: ...


@overload
def tool(
    *,
    name: str | None = None,
    description: str | None = None,
    timeout_s: float | None = None,
) -> Callable[[Callable[P, R]], ToolSpec[P, R]]: ...


def tool(
    fn: Callable[P, R] | None = None,
    /,
    *,
    name: str | None = None,
    description: str | None = None,
    timeout_s: float | None = None,
) -> ToolSpec[P, R] | Callable[[Callable[P, R]], ToolSpec[P, R]]:
    """Make a tool of a function: ``@tool`` or ``@tool(name=…, timeout_s=…)``.

    Parameters must be nameable by keyword (no ``*args``, ``**kwargs`` or
    positional-only parameters) and their types must be ones msgspec can
    validate and describe: ``str``, ``int``, ``float``, ``bool``, ``list[...]``,
    ``dict[str, ...]``, ``X | None``, ``Literal[...]``, enums, dataclasses,
    ``Annotated[..., msgspec.Meta(...)]`` for bounds. A parameter without a
    type hint accepts anything. The description is the docstring's first
    paragraph; Google-style ``Args:`` entries describe the parameters.

    Raises:
        TypeError: the function's signature cannot be described.
        ValueError: a bad ``name`` or ``timeout_s``.
    """

    def decorate(func: Callable[P, R]) -> ToolSpec[P, R]:
        return _make_spec(func, name=name, description=description, timeout_s=timeout_s)

    if fn is not None:
        return decorate(fn)
    return decorate


# --- spec construction --------------------------------------------------------


def _make_spec(
    fn: Callable[P, R], *, name: str | None, description: str | None, timeout_s: float | None
) -> ToolSpec[P, R]:
    tool_name = str(name or getattr(fn, "__name__", ""))
    if not _NAME_RE.match(tool_name):
        raise ValueError(f"invalid tool name {tool_name!r}: letters, digits, _ . - (max 64)")
    if timeout_s is not None and timeout_s <= 0:
        raise ValueError("timeout_s must be > 0")
    summary, arg_docs = _parse_docstring(inspect.getdoc(fn) or "")
    args_type = _args_struct(fn, tool_name)
    return ToolSpec(
        name=tool_name,
        description=description if description is not None else summary,
        parameters_schema=_schema(fn, args_type, arg_docs),
        fn=fn,
        timeout_s=timeout_s,
        is_async=inspect.iscoroutinefunction(fn),
        _args_type=args_type,
    )


def _args_struct(fn: Callable[..., Any], tool_name: str) -> type[msgspec.Struct]:
    """A Struct with one field per parameter: the validator and the schema source.

    Parameters with a default are ``T | UnsetType`` defaulting to ``UNSET``, so
    an omitted argument is omitted from the call and the function's own
    default (even a mutable one) applies.
    """
    try:
        hints = inspect.get_annotations(fn, eval_str=True)
    except Exception as exc:
        raise TypeError(f"tool {tool_name!r}: cannot resolve type hints: {exc}") from None
    fields: list[tuple[str, Any] | tuple[str, Any, Any]] = []
    for param in inspect.signature(fn).parameters.values():
        if param.kind not in (param.POSITIONAL_OR_KEYWORD, param.KEYWORD_ONLY):
            raise TypeError(
                f"tool {tool_name!r}: parameter {param.name!r} must be passable by keyword "
                "(no *args, **kwargs or positional-only parameters)"
            )
        hint = hints.get(param.name, Any)
        if param.default is param.empty:
            fields.append((param.name, hint))
        else:
            fields.append((param.name, hint | msgspec.UnsetType, msgspec.UNSET))
    return msgspec.defstruct(
        _ARGS_STRUCT_NAME, fields, kw_only=True, forbid_unknown_fields=True, module=__name__
    )


def _schema(
    fn: Callable[..., Any], args_type: type[msgspec.Struct], arg_docs: Mapping[str, str]
) -> dict[str, Any]:
    try:
        document = msgspec.json.schema(args_type)
    except (TypeError, ValueError) as exc:
        raise TypeError(f"tool parameters cannot be described as JSON Schema: {exc}") from None
    defs: dict[str, Any] = document.get("$defs", {})
    schema: dict[str, Any] = dict(defs.pop(_ARGS_STRUCT_NAME))
    schema.pop("title", None)
    schema.setdefault("properties", {})
    schema.setdefault("required", [])
    properties: dict[str, Any] = schema["properties"]
    for param in inspect.signature(fn).parameters.values():
        prop = properties.setdefault(param.name, {})
        if param.name in arg_docs and "description" not in prop:
            prop["description"] = arg_docs[param.name]
        if param.default is not param.empty:
            # A default JSON cannot represent is simply not shown.
            with contextlib.suppress(TypeError, ValueError):
                prop["default"] = msgspec.to_builtins(param.default)
    if defs:
        # References are "#/$defs/X": they resolve against this schema's root.
        schema["$defs"] = defs
    return schema


def _parse_docstring(doc: str) -> tuple[str, dict[str, str]]:
    """The first paragraph, and the ``Args:`` section as ``{name: description}``."""
    lines = doc.splitlines()
    summary_lines: list[str] = []
    for line in lines:
        if not line.strip() or _SECTION_HEADER.match(line):
            break
        summary_lines.append(line.strip())
    args: dict[str, str] = {}
    in_args = False
    current: str | None = None
    args_indent = 0
    for line in lines:
        if _ARGS_HEADER.match(line):
            in_args, current = True, None
            continue
        if not in_args:
            continue
        if line and not line[0].isspace():
            break  # the next section (or text) at the top level ends Args
        stripped = line.strip()
        if not stripped:
            current = None
            continue
        match = _ARG_LINE.match(stripped)
        indent = len(line) - len(line.lstrip())
        if match and (current is None or indent <= args_indent):
            current = match["name"].lstrip("*")
            args_indent = indent
            args[current] = match["desc"].strip()
        elif current is not None:
            args[current] = f"{args[current]} {stripped}".strip()
    return " ".join(summary_lines), args


# --- dispatching --------------------------------------------------------------


def _new_tool_call_id() -> str:
    return f"call_{secrets.token_hex(8)}"


def _json_ready(value: Any) -> Any:
    """``value`` as JSON builtins, with anything unknown shown as its ``str``."""
    return msgspec.to_builtins(value, enc_hook=str, str_keys=True)


class ToolDispatcher:
    """Runs the tool calls of one run and reports each as a pair of events.

    One dispatcher per run: its semaphore is the run's ``tool_concurrency``.
    Calls wait for a slot *before* ``tool_executing`` is emitted, so the event
    means the tool is really running and ``duration_ms`` measures the tool,
    not the queue.

    Args:
        emit: How events leave (the run context's ordered emit).
        settings: The run's limits.
        resolve: Finds a tool by name; raises :class:`~agentcast.errors.NotFound`.
    """

    def __init__(
        self,
        emit: EmitFn,
        *,
        settings: AgentSettings,
        resolve: Callable[[str], ToolSpec[..., Any]] | None = None,
    ) -> None:
        self._emit = emit
        self._settings = settings
        self._resolve = resolve
        self._slots = asyncio.Semaphore(settings.tool_concurrency)
        # Tasks with a call in progress (waiting for a slot or running), with
        # how many calls each has, so that ``cancel_inflight`` can find them.
        self._inflight: dict[asyncio.Task[Any], int] = {}

    # Public methods

    async def call(
        self,
        name_or_spec: str | ToolSpec[..., Any],
        args: Mapping[str, Any] | None = None,
        *,
        tool_call_id: str | None = None,
        refused: str | None = None,
    ) -> Any:
        """Call a tool and return its result, emitting ``tool_executing``/``tool_completed``.

        Every ``tool_executing`` is followed by exactly one ``tool_completed``
        (docs/architecture.md invariant 3), whose status says how the call ended:

        * ``success`` — the result is returned (and sent redacted and bounded);
        * ``error`` — unknown tool, invalid arguments, or the tool raised:
          :class:`ToolError` is raised with the sanitised message, the tool's
          exception as its ``__cause__``;
        * ``timeout`` — :class:`ToolTimeout` is raised. A sync tool's thread
          cannot be stopped and runs on unobserved;
        * ``cancelled`` — the calling task was cancelled: the event is emitted
          (shielded, so it really is) and ``CancelledError`` propagates.

        ``tool_call_id`` is the events' id (a model's own call id); a new one
        is made when it is ``None`` or not a valid ``Name``. ``refused`` makes a
        call that is reported but never run: status ``error`` with that text.

        Raises:
            ToolError: see above.
            ToolTimeout: see above.
        """
        args = {} if args is None else args
        task = asyncio.current_task()
        if task is not None:
            self._inflight[task] = self._inflight.get(task, 0) + 1
        try:
            async with self._slots:
                return await self._call(name_or_spec, args, tool_call_id, refused)
        finally:
            if task is not None:
                if self._inflight[task] <= 1:
                    del self._inflight[task]
                else:
                    self._inflight[task] -= 1

    async def cancel_inflight(self) -> None:
        """Cancel calls still in progress in other tasks and wait until they end.

        Used when the run ends while the agent left tool calls running in
        tasks of its own: each then emits its ``tool_completed`` (status
        ``cancelled``) before the runner's terminal event. Nothing is waited
        for when there are no such calls, the normal case.
        """
        current = asyncio.current_task()
        tasks = [task for task in self._inflight if task is not current and not task.done()]
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks)

    # Private methods

    async def _call(
        self,
        name_or_spec: str | ToolSpec[..., Any],
        args: Mapping[str, Any],
        tool_call_id: str | None,
        refused: str | None,
    ) -> Any:
        spec: ToolSpec[..., Any] | None
        if isinstance(name_or_spec, ToolSpec):
            spec, tool_name = name_or_spec, name_or_spec.name
        else:
            tool_name = str(name_or_spec)[: events.MAX_NAME_CHARS] or "unknown"
            spec = None if refused is not None else self._lookup(tool_name)
        call_id = tool_call_id
        if not call_id or len(call_id) > events.MAX_NAME_CHARS:
            call_id = _new_tool_call_id()
        max_bytes = self._settings.max_value_bytes
        try:
            parameters = events.bounded_json(events.redact(_json_ready(args)), max_bytes)
        except (TypeError, ValueError, InvalidEvent):
            parameters = events.bounded_json({"unrepresentable": True}, max_bytes)
        started = time.perf_counter()

        async def complete(status: events.ToolStatus, **extra: Any) -> None:
            duration_ms = round((time.perf_counter() - started) * 1000, 3)
            data = {"tool_call_id": call_id, "tool_name": tool_name, "status": status}
            try:
                await whole(
                    self._emit("tool_completed", {**data, **extra, "duration_ms": duration_ms})
                )
            except (asyncio.CancelledError, InvalidTransition):
                raise
            except Exception:
                # The log refused this completion (e.g. its results): close the
                # pair with a minimal one, then let the agent see the error.
                data["status"] = "error"
                minimal = {**data, "error": "the result could not be recorded"}
                await whole(self._emit("tool_completed", {**minimal, "duration_ms": duration_ms}))
                raise

        # Whole: a cancellation during this emit must not leave a call that
        # was announced (the bridge commits it anyway) without its completion.
        try:
            await whole(
                self._emit(
                    "tool_executing",
                    {"tool_call_id": call_id, "tool_name": tool_name, "parameters": parameters},
                )
            )
        except asyncio.CancelledError:
            await complete("cancelled", error="the tool call was cancelled")
            raise

        def fail(message: str, cls: type[ToolError] = ToolError) -> ToolError:
            return cls(message, tool_name=tool_name, tool_call_id=call_id)

        if refused is not None or spec is None:
            error = fail(refused if refused is not None else f"unknown tool {tool_name!r}")
            await complete("error", error=error.message)
            raise error
        try:
            kwargs = spec.validate(args)
        except InvalidInput as exc:
            await complete("error", error=exc.message)
            raise fail(exc.message) from exc
        limit = spec.timeout_s if spec.timeout_s is not None else self._settings.tool_timeout_s
        deadline = asyncio.timeout(limit)
        try:
            async with deadline:
                if spec.is_async:
                    result = await spec.fn(**kwargs)
                else:
                    result = await asyncio.to_thread(spec.fn, **kwargs)
        except asyncio.CancelledError:
            await complete("cancelled", error="the tool call was cancelled")
            raise
        except TimeoutError as exc:
            if deadline.expired():
                error = fail(f"tool {tool_name!r} timed out after {limit:g} s", ToolTimeout)
                await complete("timeout", error=error.message)
                raise error from None
            message = f"{type(exc).__name__}: {sanitize_error(exc)}"
            await complete("error", error=message)
            raise fail(message) from exc
        except Exception as exc:
            message = f"{type(exc).__name__}: {sanitize_error(exc)}"
            await complete("error", error=message)
            raise fail(message) from exc
        except BaseException as exc:  # KeyboardInterrupt, SystemExit: keep the pair, re-raise
            await complete("error", error=type(exc).__name__)
            raise
        try:
            results = events.bounded_json(events.redact(_json_ready(result)), max_bytes)
        except (TypeError, ValueError, InvalidEvent):
            results = events.bounded_json(str(result), max_bytes)
        await complete("success", results=results)
        return result

    def _lookup(self, tool_name: str) -> ToolSpec[..., Any] | None:
        if self._resolve is None:
            return None
        try:
            return self._resolve(tool_name)
        except NotFound:
            return None
