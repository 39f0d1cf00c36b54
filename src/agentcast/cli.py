"""The ``agentcast`` command: serve, mint tokens, run agents, replay threads.

Every command reads the ``AGENTCAST_*`` environment variables (through
:class:`~agentcast.gateway.settings.GatewaySettings`); a flag given on the
command line wins over its variable. The client commands (``run``,
``replay``, ``agents``) find the server at ``--url`` (default: the
``AGENTCAST_HOST``/``AGENTCAST_PORT`` a local ``serve`` would use) and
authenticate with ``--token`` (default: the development token ``serve``
wrote to ``<data-dir>/dev-token``), so on one machine they need no set-up.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Final, Literal, NoReturn

import httpx
import typer
import websockets
from rich.console import Console
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from . import __version__
from .cli_admin import register as register_admin_commands
from .cli_common import (
    EXIT_INTERRUPTED,
    DataDirOption,
    TokenOption,
    UrlOption,
    fail,
    settings_from,
    show,
)
from .config import EngineSettings
from .errors import DataDirLocked, RunnerLocked
from .events import EventType, decode_event
from .gateway.settings import GatewaySettings

if TYPE_CHECKING:
    pass

__all__ = ["app", "main"]

_PAGE: Final = 500


def _environment_help() -> str:
    """The ``AGENTCAST_*`` variables with their defaults, for ``agentcast --help``."""
    gateway = GatewaySettings.model_fields
    lines = ["[bold]Environment variables[/] (a flag wins over its variable; see docs/cli.md):"]
    for name, info in gateway.items():
        default = info.get_default(call_default_factory=True)
        lines.append(f"  AGENTCAST_{name.upper()}={escape(show(default))}")
    engine = [f for f in dataclasses.fields(EngineSettings) if f.name not in gateway]
    for f in engine:
        default = f.default if f.default is not dataclasses.MISSING else None
        lines.append(f"  AGENTCAST_{f.name.upper()}={escape(show(default))}")
    lines.append("  AGENTCAST_URL, AGENTCAST_TOKEN: the server and token of run, replay and agents")
    return "\n".join(lines)


app = typer.Typer(
    name="agentcast",
    help="agentcast carries an AI agent's events live to every tab of its user.",
    epilog=_environment_help(),
    no_args_is_help=True,
    rich_markup_mode="rich",
    add_completion=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"agentcast {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool,
        typer.Option("--version", callback=_version, is_eager=True, help="Print the version."),
    ] = False,
) -> None:
    """agentcast carries an AI agent's events live to every tab of its user."""


# --- serve ---------------------------------------------------------------------------


@app.command()
def serve(
    host: Annotated[
        str | None, typer.Option(help="Interface to listen on.", envvar="AGENTCAST_HOST")
    ] = None,
    port: Annotated[int | None, typer.Option(help="TCP port.", envvar="AGENTCAST_PORT")] = None,
    data_dir: DataDirOption = None,
    agents: Annotated[
        list[str] | None,
        typer.Option(
            "--agents",
            metavar="MODULE:ATTR",
            help="Serve the agents of package.module:attr (a registry) beside the built-ins. "
            "Repeatable. \\[env var: AGENTCAST_AGENTS, a JSON list]",
            show_default=False,
        ),
    ] = None,
    log_backend: Annotated[
        Literal["sqlite", "memory"] | None,
        typer.Option(help="Event log: sqlite (durable) or memory.", envvar="AGENTCAST_LOG_BACKEND"),
    ] = None,
    sqlite_synchronous: Annotated[
        Literal["FULL", "NORMAL"] | None,
        typer.Option(
            help="FULL (durable across power loss) or NORMAL (faster).",
            envvar="AGENTCAST_SQLITE_SYNCHRONOUS",
        ),
    ] = None,
    database_url: Annotated[
        str | None,
        typer.Option(
            "--database-url",
            help="PostgreSQL (postgresql://…) as the log and store instead of SQLite; "
            "create its schema first with agentcast db upgrade.",
            envvar="AGENTCAST_DATABASE_URL",
            show_default=False,
        ),
    ] = None,
    shutdown_grace: Annotated[
        float | None,
        typer.Option(
            help="Seconds runs may take to finish on SIGTERM before they are cancelled.",
            envvar="AGENTCAST_SHUTDOWN_GRACE_S",
        ),
    ] = None,
    log_level: Annotated[str, typer.Option(help="critical, error, warning, info, debug.")] = "info",
    access_log: Annotated[bool, typer.Option(help="Log every HTTP request.")] = False,
    dev: Annotated[
        bool,
        typer.Option(
            "--dev",
            help="Development mode: loopback only; without a configured key, sign with a "
            "random key of the data directory and write a dev token for the CLI and page.",
        ),
    ] = False,
    llm: Annotated[
        Literal["local", "openai"] | None,
        typer.Option(
            "--llm",
            help="Let a model write the demo's answers and serve the assistant agent (the "
            "model chooses the demo's tools): local (SmolLM2-135M via llama.cpp, make "
            "local-model installs it; there the assistant has no tools) or openai "
            "(OPENAI_BASE_URL, OPENAI_API_KEY, AGENTCAST_LLM_MODEL; any OpenAI-compatible "
            "server).",
            show_default=False,
        ),
    ] = None,
) -> None:
    """Serve the gateway: WebSocket, HTTP API, SSE, web page, health and metrics.

    Without a configured key (AGENTCAST_JWT_SECRET, AGENTCAST_JWT_PUBLIC_KEY or
    AGENTCAST_JWKS_URL) it refuses to start unless --dev. The built-in agents
    are served unless --agents is given (name agentcast.agents.builtin:registry
    to keep them). SIGTERM or Ctrl-C shuts down in order: runs finish within the
    grace period, the rest are cancelled, clients receive those events, then
    connections close with 1001. A second signal exits at once.
    """
    from .gateway.server import ServeError, ServeInfo, run_server

    settings = settings_from(
        host=host,
        port=port,
        data_dir=data_dir,
        agents=agents,
        log_backend=log_backend,
        sqlite_synchronous=sqlite_synchronous,
        database_url=database_url,
        shutdown_grace_s=shutdown_grace,
    )
    # Like uvicorn: --agents myapp.agents:registry imports from the current directory.
    if str(Path.cwd()) not in sys.path and "" not in sys.path:
        sys.path.insert(0, str(Path.cwd()))
    console = Console(highlight=False)

    def ready(info: ServeInfo) -> None:
        if info.dev:
            console.print(
                "[bold yellow on red] DEVELOPMENT MODE [/] [bold]loopback only; "
                "tokens signed with this data directory's own key. "
                "Not for production.[/]"
            )
        console.print(f"[bold green]agentcast {__version__}[/] serving on {info.url}")
        if info.database is not None:
            console.print(f"  database        {info.database}")
        console.print(f"  data directory  {info.data_dir}")
        console.print(f"  open            {info.open_url}", soft_wrap=True)
        if info.token is not None:
            console.print(f"  dev token       {info.token}", soft_wrap=True)
            console.print(f"  (saved to {info.token_path} for the CLI)")
        console.print('  try             agentcast run "where can we save money?"')
        if llm == "openai":  # the assistant whose model chooses the tools
            console.print(
                '                  agentcast run "which team spends the most?" --agent assistant'
            )

    registry = None
    if llm is not None:
        if settings.agents:
            fail("--llm writes the built-in demo's answers; with --agents the demo is not served")
        from .agents import builtin_registry
        from .llm.writers import assistant_agent, demo_writer

        try:
            nested = settings.nested()
            writer = demo_writer(llm, nested)
            registry = builtin_registry(writer=writer)
            registry.on_close(writer.aclose)  # the writer is the demo's, not registered
            registry.register(assistant_agent(llm, nested))
        except (ImportError, FileNotFoundError) as exc:  # the extra or the model wheel
            fail(str(exc))
    try:
        orderly = run_server(
            settings,
            registry,
            ready=ready,
            log_level=log_level,
            access_log=access_log,
            dev=dev,
        )
    except RunnerLocked as exc:
        fail(exc.message)
    except DataDirLocked as exc:
        fail(f"data directory is locked: {exc.message}")
    except ServeError as exc:
        fail(exc.message)
    if not orderly:
        fail("stopped by a second signal without finishing runs", code=EXIT_INTERRUPTED)


# --- token ---------------------------------------------------------------------------


@app.command()
def token(
    user: Annotated[str, typer.Option("--user", help="The user id (the token's sub).")],
    data_dir: DataDirOption = None,
    ttl: Annotated[
        float | None,
        typer.Option(help="Lifetime in seconds. \\[default: AGENTCAST_DEV_TOKEN_TTL_S, 7 days]"),
    ] = None,
) -> None:
    """Print a token for USER, signed like `serve` on the same data directory.

    The secret is AGENTCAST_JWT_SECRET, else the development secret in the data
    directory (created if missing), so the token works against that server.
    """
    from .gateway.auth import Authenticator

    settings = settings_from(data_dir=data_dir)
    if "HS256" not in settings.jwt_algorithms:
        fail("the server does not accept HS256 tokens; get one from your identity provider")
    try:
        typer.echo(Authenticator(settings).mint_token(user, ttl_s=ttl))
    except ValueError as exc:
        fail(str(exc), code=2)


# --- client helpers --------------------------------------------------------------------


def _base_url(url: str | None, settings: GatewaySettings) -> str:
    if url:
        return url.rstrip("/")
    host = "127.0.0.1" if settings.host in ("0.0.0.0", "", "::") else settings.host
    return f"http://{host}:{settings.port}"


def _token(value: str | None, settings: GatewaySettings) -> str:
    if value:
        return value
    path = settings.data_dir / "dev-token"
    try:
        return path.read_text().strip()
    except FileNotFoundError:
        fail(
            f"no token: {path} does not exist. Start `agentcast serve` with this data "
            "directory, or pass --token (see `agentcast token --user NAME`)."
        )


def _unreachable(url: str, exc: Exception) -> NoReturn:
    fail(f"the server at {url} is not reachable ({exc}). Is `agentcast serve` running?")


def _get(url: str, token: str, path: str, params: dict[str, Any] | None = None) -> Any:
    try:
        response = httpx.get(
            f"{url}{path}",
            params=params,
            headers={"Authorization": f"Bearer {token}"},
            timeout=10.0,
        )
    except httpx.TransportError as exc:
        _unreachable(url, exc)
    if response.status_code == 401:
        fail("the server refused the token (401); mint one with `agentcast token --user NAME`")
    if response.status_code == 404:
        fail(f"not found: {path}")
    if response.is_error:
        fail(f"{response.status_code} from {path}: {response.text[:300]}")
    return response.json()


# --- agents --------------------------------------------------------------------------


@app.command()
def agents(
    url: UrlOption = None, token: TokenOption = None, data_dir: DataDirOption = None
) -> None:
    """List the agents the server offers, with their descriptions and tools."""
    settings = settings_from(data_dir=data_dir)
    base = _base_url(url, settings)
    body = _get(base, _token(token, settings), "/v1/agents")
    listing = body.get("agents", []) if isinstance(body, dict) else body
    table = Table("agent", "description", "tools", box=None, pad_edge=False)
    for agent in listing:
        tools = ", ".join(str(t.get("name")) for t in agent.get("tools", []))
        table.add_row(
            f"[bold]{escape(agent['name'])}[/]", escape(agent.get("description", "")), tools
        )
    Console().print(table)


# --- replay --------------------------------------------------------------------------


@app.command()
def replay(
    thread_id: Annotated[str, typer.Argument(help="The thread whose events to print.")],
    after_seq: Annotated[int, typer.Option(help="Print events after this seq.")] = 0,
    as_json: Annotated[
        bool, typer.Option("--json", help="One JSON envelope per line, as sent on the wire.")
    ] = False,
    url: UrlOption = None,
    token: TokenOption = None,
    data_dir: DataDirOption = None,
) -> None:
    """Print a thread's stored events in seq order (GET /v1/threads/{id}/events, paginated)."""
    from .cli_view import event_line

    settings = settings_from(data_dir=data_dir)
    base, jwt = _base_url(url, settings), _token(token, settings)
    console = Console(highlight=False)
    depth: dict[str, int] = {}
    cursor = after_seq
    while True:
        page = _get(
            base, jwt, f"/v1/threads/{thread_id}/events", {"after_seq": cursor, "limit": _PAGE}
        )
        events = page.get("events", [])
        if cursor == after_seq and not as_json:
            console.print(f"[dim]thread {thread_id} · epoch {page.get('epoch')}[/]")
        for raw in events:
            if as_json:
                typer.echo(json.dumps(raw, separators=(",", ":")))
                continue
            event = decode_event(json.dumps(raw))
            parent = event.parent_run_id
            level = depth.setdefault(event.run_id, depth.get(parent, -1) + 1 if parent else 0)
            line = event_line(event, level, deltas=True)
            if line is not None:
                console.print(Text(f"{event.seq:>5} ", style="dim") + line)
        # Pages are bounded in bytes too: a short page is not the end, a null cursor is.
        next_after = page.get("next_after_seq")
        if next_after is None or not events:
            return
        cursor = int(next_after)


# --- run -----------------------------------------------------------------------------


@app.command()
def run(
    message: Annotated[str, typer.Argument(help="What to ask the agent.")],
    agent: Annotated[
        str | None,
        typer.Option(help="Agent to run. \\[default: AGENTCAST_DEFAULT_AGENT, demo]"),
    ] = None,
    thread: Annotated[
        str | None, typer.Option(help="Continue this thread instead of starting a new one.")
    ] = None,
    on_active: Annotated[
        Literal["reject", "enqueue", "interrupt"],
        typer.Option(help="What to do when the thread already has an active run."),
    ] = "reject",
    url: UrlOption = None,
    token: TokenOption = None,
    data_dir: DataDirOption = None,
) -> None:
    """Run an agent and watch it live: thinking, tool calls, sub-agents, streamed answer.

    Exits 0 when the agent completes, 1 when it fails; Ctrl-C cancels the run on
    the server, waits for its agent_cancelled and exits 130.
    """
    settings = settings_from(data_dir=data_dir)
    base = _base_url(url, settings)
    code = asyncio.run(
        _run(
            base,
            _token(token, settings),
            agent or settings.default_agent,
            message,
            thread,
            on_active,
        )
    )
    raise typer.Exit(code)


async def _run(
    url: str, token: str, agent: str, message: str, thread: str | None, on_active: str
) -> int:
    from .cli_view import RunView, follow
    from .client import AgentcastClient, ClientError

    console = Console(highlight=False)
    client = AgentcastClient(_ws_url(url), token)
    try:
        await client.connect()
    except ClientError as exc:
        fail(f"{exc.message}; mint a token with `agentcast token --user NAME`")
    except (OSError, websockets.InvalidHandshake, websockets.InvalidURI) as exc:
        _unreachable(url, exc)
    try:
        try:
            accepted = await client.start(agent, message, thread_id=thread, on_active=on_active)
        except ClientError as exc:
            fail(f"{exc.code}: {exc.message}")
        console.print(f"[dim]thread {accepted.thread_id} · run {accepted.run_id}[/]")
        view = RunView(console, accepted.run_id)
        try:
            interrupted = await follow(client, view)
        except ClientError as exc:
            fail(f"the connection ended before the run did ({exc.code}: {exc.message})")
    finally:
        await client.close()
    outcome = view.outcome
    if interrupted and (outcome is None or outcome.type == EventType.AGENT_CANCELLED):
        return EXIT_INTERRUPTED
    if outcome is None:
        fail("the connection ended before the run did")
    return 0 if outcome.type == EventType.AGENT_COMPLETED else 1


def _ws_url(base: str) -> str:
    """``http://host:port`` → ``ws://host:port/v1/ws`` (``https`` → ``wss``)."""
    scheme, sep, rest = base.partition("://")
    if not sep:
        return f"ws://{base}/v1/ws"
    if scheme in ("ws", "wss"):
        return base if rest.endswith("/v1/ws") else f"{base}/v1/ws"
    return f"{'wss' if scheme == 'https' else 'ws'}://{rest}/v1/ws"


register_admin_commands(app)


def main() -> None:
    """The console script's entry point."""
    app(prog_name="agentcast")


if __name__ == "__main__":  # pragma: no cover
    main()
