"""Running the gateway under uvicorn, with agentcast's own shutdown order.

uvicorn on its own handles SIGTERM by closing every WebSocket with 1012 and
only then running the app's lifespan shutdown, so clients would lose the
terminal events of the runs that shutdown cancels. docs/architecture.md invariant 9
wants the opposite order, and :func:`serve` enforces it: on the first SIGTERM
or SIGINT it awaits :meth:`Gateway.shutdown` (runs finish within the grace
period, the rest are cancelled with their terminal events, connections drain
and are closed with 1001) while uvicorn keeps serving, and only then tells
uvicorn to exit. A second signal exits at once.

Before serving, :func:`serve` refuses to run without a key to check tokens
with (unless ``--dev``), binds the socket (a port in use fails fast) and
starts the engine — which takes the data-directory lock (invariant 10: a
second ``serve`` on the same directory raises
:class:`~agentcast.errors.DataDirLocked`). With ``--dev`` and no key it
listens on loopback only, signs with a random key of the data directory and
writes a development token for user ``dev`` to ``<data_dir>/dev-token``, so
that the CLI and the web page work without any set-up.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import gc
import ipaddress
import logging
import signal
import socket
import threading
from collections.abc import Callable, Generator
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any, Final

import uvicorn
from uvicorn.config import LOGGING_CONFIG

from ..agents import AgentRegistry
from ..dsn import mask_dsn
from ..errors import AgentcastError
from .app import create_app
from .auth import load_or_create_dev_secret, write_dev_token
from .context import Gateway
from .settings import GatewaySettings

__all__ = [
    "DEV_USER",
    "AgentcastServer",
    "ServeError",
    "ServeInfo",
    "frozen_startup_heap",
    "is_loopback",
    "run_server",
    "serve",
]

logger = logging.getLogger(__name__)

#: The user the development token is minted for.
DEV_USER: Final = "dev"
#: How long uvicorn waits for leftover HTTP connections once the gateway has
#: closed its own (the gateway's drain already bounded the WebSockets).
_UVICORN_GRACE_S: Final = 5


class ServeError(AgentcastError):
    """The server could not start (port in use, bad ``--agents`` …); the message says why."""


@dataclass(frozen=True, slots=True)
class ServeInfo:
    """What a freshly started server tells its operator.

    Attributes:
        url: The base URL, e.g. ``http://127.0.0.1:8000``.
        open_url: The web page with the development token in the fragment
            (the fragment never reaches the server's logs).
        token: The development token (user :data:`DEV_USER`); ``None`` when
            the server does not accept HS256 tokens.
        token_path: Where the token was written (``<data_dir>/dev-token``).
        data_dir: The data directory this server owns.
        dev: Served with ``--dev``: loopback only, a development key.
        database: The PostgreSQL database, its password masked (``None``: SQLite
            in ``data_dir``, or the memory log).
    """

    url: str
    open_url: str
    token: str | None
    token_path: Path | None
    data_dir: Path
    dev: bool = False
    database: str | None = None


class AgentcastServer(uvicorn.Server):
    """A uvicorn server whose first signal drains the gateway before uvicorn stops.

    Args:
        config: The uvicorn configuration.
        gateway: The gateway of the app ``config`` serves.
    """

    def __init__(self, config: uvicorn.Config, gateway: Gateway) -> None:
        super().__init__(config)
        self._gateway = gateway
        self._drain: asyncio.Task[None] | None = None
        #: Whether a second signal cut the orderly shutdown short.
        self.forced = False

    # Public methods

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        """Handle SIGINT/SIGTERM on the loop; unlike uvicorn, never re-raise them afterwards.

        uvicorn re-raises a captured signal once it has stopped, which would
        make an orderly SIGTERM end the process with -15 instead of 0.
        """
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        loop = asyncio.get_running_loop()
        handled = (signal.SIGINT, signal.SIGTERM)
        for sig in handled:
            loop.add_signal_handler(sig, self.handle_exit, sig, None)
        try:
            yield
        finally:
            for sig in handled:
                loop.remove_signal_handler(sig)

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        """First signal: drain the gateway, then stop uvicorn. Second: stop now."""
        name = signal.Signals(sig).name
        if self._drain is None:
            logger.info(
                "%s: finishing runs (grace %.1fs), then closing connections with 1001"
                " (at most %.1fs in all)",
                name,
                self._gateway.settings.shutdown_grace_s,
                self._gateway.shutdown_budget(),
            )
            self._drain = asyncio.get_running_loop().create_task(
                self._drain_then_exit(), name="agentcast-shutdown"
            )
            return
        logger.warning("%s again: exiting without waiting for runs and connections", name)
        self.forced = True
        self.force_exit = True
        self.should_exit = True

    async def finish(self) -> None:
        """After :meth:`serve` returned: wait for the drain (or cancel it if forced).

        Raises:
            Exception: whatever the gateway's shutdown raised.
        """
        task, self._drain = self._drain, None
        if task is None:
            return
        if self.forced:
            if not task.done():
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            # uvicorn skips the lifespan shutdown on a forced exit, which would
            # leave the lifespan task to be cancelled with a traceback; the
            # gateway is already marked closing, so this returns at once.
            lifespan = getattr(self, "lifespan", None)
            if lifespan is not None:
                await lifespan.shutdown()
            return
        await task

    # Private methods

    async def _drain_then_exit(self) -> None:
        try:
            await self._gateway.shutdown()
        finally:
            self.should_exit = True


async def serve(
    settings: GatewaySettings,
    registry: AgentRegistry | None = None,
    *,
    ready: Callable[[ServeInfo], None] | None = None,
    log_level: str = "info",
    access_log: bool = False,
    dev: bool = False,
) -> bool:
    """Serve until a signal, shutting down in the order of docs/architecture.md invariant 9.

    Production is not the demo: without a configured key (a JWT secret, a
    public key or a JWKS URL) the server refuses to start, unless ``dev``.
    ``dev`` serves on loopback only and, when no key is configured, signs
    with a random key of the data directory and writes a development token
    for the CLI and the page — never a token signed with a configured key.

    Args:
        settings: Where to listen, the data directory and every limit.
        registry: Agents to serve beside ``settings.agents`` (or the built-ins).
        ready: Called once the server is about to accept connections.
        log_level: uvicorn's and agentcast's log level.
        access_log: Log every HTTP request.
        dev: Development mode (``agentcast serve --dev``).

    Returns:
        ``True`` after an orderly shutdown, ``False`` when a second signal forced it.

    Raises:
        DataDirLocked: another process owns ``settings.data_dir``.
        ServeError: the port cannot be bound, ``--agents`` cannot be loaded,
            the default agent is not served, no key is configured (without
            ``dev``), ``dev`` on a non-loopback host, or the authentication
            settings are inconsistent.
    """
    keyless = not settings.has_key
    if dev and not is_loopback(settings.host):
        raise ServeError(
            f"--dev serves on this machine only (127.0.0.1, ::1 or localhost), not on "
            f"{settings.host!r}: configure a key (AGENTCAST_JWT_SECRET, AGENTCAST_JWT_PUBLIC_KEY "
            "or AGENTCAST_JWKS_URL) and serve without --dev"
        )
    if keyless and not dev:
        raise ServeError(
            "no key to check tokens with: set AGENTCAST_JWT_SECRET (HS256), or "
            "AGENTCAST_JWT_PUBLIC_KEY or AGENTCAST_JWKS_URL; to try agentcast on this "
            "machine, run `agentcast serve --dev`"
        )
    data_dir = settings.data_dir
    await asyncio.to_thread(data_dir.mkdir, parents=True, exist_ok=True)
    mint = dev and keyless  # a development token, never one signed with a configured key
    if mint:
        secret = await asyncio.to_thread(load_or_create_dev_secret, data_dir)
        settings = settings.model_copy(update={"jwt_secret": secret})
    sock = _bind(settings.host, settings.port)
    try:
        try:
            app = create_app(settings, registry)
        except ValueError as exc:  # --agents, the default agent, keys without issuer/audience
            raise ServeError(str(exc)) from exc
        gateway: Gateway = app.state.agentcast
        try:
            # Started before uvicorn so that a locked data directory is a clean
            # exception here, not a lifespan failure; the lifespan's own
            # startup call is then a no-op.
            await gateway.startup()
            port = sock.getsockname()[1]
            host = _display_host(settings.host)
            url = f"http://{host}:{port}"
            token: str | None = None
            token_path: Path | None = None
            open_url = url
            if mint and "HS256" in settings.jwt_algorithms:
                token = gateway.auth.mint_token(DEV_USER, ttl_s=settings.dev_token_ttl_s)
                token_path = await asyncio.to_thread(write_dev_token, data_dir, token)
                open_url = f"{url}/#token={token}"
            config = _uvicorn_config(app, settings, log_level, access_log)
            config.load()  # uvicorn's protocol modules, imported before the freeze
            server = AgentcastServer(config, gateway)
            if ready is not None:
                database = settings.database_url
                shown = mask_dsn(database) if database is not None else None
                ready(ServeInfo(url, open_url, token, token_path, data_dir.resolve(), dev, shown))
            with frozen_startup_heap():
                try:
                    await server.serve(sockets=[sock])
                finally:
                    await server.finish()
            return not server.forced
        finally:
            await gateway.shutdown()
    finally:
        sock.close()


@contextlib.contextmanager
def frozen_startup_heap() -> Generator[None, None, None]:
    """Keep everything that exists at start-up out of the garbage collector's full passes.

    A full (generation 2) collection visits every tracked object, and after
    start-up most of them are modules, classes and functions that live as long
    as the process: with them, each full pass stopped the event loop for
    20-50 ms, which every event in flight waited for (the 99.9th percentile of
    docs/performance.md). ``gc.freeze()`` moves them to the permanent
    generation, so full passes visit only what the server allocated since;
    cyclic garbage is still collected. Undone on exit, for servers run inside
    a longer-lived process (tests).
    """
    gc.collect()
    gc.freeze()
    try:
        yield
    finally:
        gc.unfreeze()


def run_server(
    settings: GatewaySettings,
    registry: AgentRegistry | None = None,
    *,
    ready: Callable[[ServeInfo], None] | None = None,
    log_level: str = "info",
    access_log: bool = False,
    dev: bool = False,
) -> bool:
    """:func:`serve` on a new uvloop event loop (the standard loop without uvloop)."""
    with asyncio.Runner(loop_factory=_loop_factory()) as runner:
        return runner.run(
            serve(
                settings,
                registry,
                ready=ready,
                log_level=log_level,
                access_log=access_log,
                dev=dev,
            )
        )


def _loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    try:
        import uvloop
    except ImportError:
        return None
    return uvloop.new_event_loop


def _uvicorn_config(
    app: Any, settings: GatewaySettings, log_level: str, access_log: bool
) -> uvicorn.Config:
    log_config: dict[str, Any] = copy.deepcopy(LOGGING_CONFIG)
    log_config["loggers"]["agentcast"] = {
        "handlers": ["default"],
        "level": log_level.upper(),
        "propagate": False,
    }
    return uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        loop="uvloop",
        http="httptools",
        ws="websockets-sansio",
        ws_max_size=settings.ws_max_frame_bytes,
        ws_per_message_deflate=settings.ws_compression,
        ws_ping_interval=settings.ws_ping_interval_s,
        ws_ping_timeout=settings.ws_ping_timeout_s,
        lifespan="on",
        log_level=log_level,
        log_config=log_config,
        access_log=access_log,
        timeout_graceful_shutdown=_UVICORN_GRACE_S,
        server_header=False,
    )


def _bind(host: str, port: int) -> socket.socket:
    """Bind the listening socket now, so that a port in use is a clear error up front."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except OSError as exc:
        raise ServeError(f"cannot resolve --host {host!r}: {exc}") from exc
    family, kind, proto, _, address = infos[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
    except OSError as exc:
        sock.close()
        raise ServeError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from exc
    return sock


def is_loopback(host: str) -> bool:
    """Whether ``host`` names this machine only (what ``--dev`` may listen on)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def _display_host(host: str) -> str:
    if host in ("0.0.0.0", ""):
        return "127.0.0.1"
    if host == "::":
        return "[::1]"
    return f"[{host}]" if ":" in host else host
