"""The Starlette application: every route bound to one :class:`~.context.Gateway`.

:func:`create_app` builds the engine (or takes one), the authenticator and
the gateway, and composes the routes: health, the ``/v1`` HTTP API, the SSE
stream, the WebSocket endpoint and the static page. Nothing is looked up in
module globals, so several apps can live in one process.

Running inside another application: a mounted sub-app's lifespan never runs
(ASGI sends lifespan events to the outermost app only), so the host calls
:func:`agentcast_lifespan` from its own lifespan (docs/architecture.md invariant 9)::

    sub = create_app(settings, lifespan=False)

    @asynccontextmanager
    async def lifespan(app):
        async with agentcast_lifespan(sub):
            yield

    host = FastAPI(lifespan=lifespan)
    host.mount("/agentcast", sub)
"""

from __future__ import annotations

import contextlib
import importlib
import logging
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, Final

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import Request
from starlette.responses import FileResponse, Response
from starlette.routing import BaseRoute, Mount, Route, WebSocketRoute
from starlette.staticfiles import StaticFiles
from starlette.websockets import WebSocket

from ..agents import AgentRegistry, builtin_registry
from ..engine import Engine, serving
from .auth import Authenticator
from .context import Gateway
from .health import health_routes
from .http import http_routes
from .problems import http_exception_problem
from .request_metrics import RequestMetricsMiddleware
from .settings import GatewaySettings
from .sse import sse_route

__all__ = ["WEB_DIR", "WS_PATH", "agentcast_lifespan", "create_app", "find_gateway", "load_agents"]

logger = logging.getLogger(__name__)

#: The static web page and its JavaScript client.
WEB_DIR: Final = Path(__file__).resolve().parent.parent / "web"
WS_PATH: Final = "/v1/ws"


def load_agents(specs: list[str], registry: AgentRegistry) -> AgentRegistry:
    """Import each ``package.module:attr`` and add it to ``registry``.

    ``attr`` may be an :class:`AgentRegistry`, an agent, or an ``async def
    agent(ctx)`` function; its names win over those already in ``registry``.

    Raises:
        ValueError: a spec that is malformed, cannot be imported, or names
            something that is not an agent.
    """
    for spec in specs:
        module_name, _, attr = spec.partition(":")
        if not module_name or not attr:
            raise ValueError(f"agents entry {spec!r} must look like 'package.module:attr'")
        try:
            obj: Any = importlib.import_module(module_name)
            for part in attr.split("."):
                obj = getattr(obj, part)
        except (ImportError, AttributeError) as exc:
            raise ValueError(f"cannot load agents entry {spec!r}: {exc}") from exc
        if not isinstance(obj, AgentRegistry):
            single = AgentRegistry()
            try:
                single.register(obj)
            except (TypeError, ValueError) as exc:
                raise ValueError(f"agents entry {spec!r}: {exc}") from exc
            obj = single
        # Replace, not refuse: loading the same entry twice (``serve`` passes a
        # registry that already holds ``settings.agents``) is harmless.
        registry.merge(obj, replace=True)
    return registry


def find_gateway(app_or_gateway: Any) -> Gateway:
    """The :class:`Gateway` of an agentcast app, of a host app that mounts one, or itself.

    Raises:
        TypeError: nothing agentcast was found.
    """
    if isinstance(app_or_gateway, Gateway):
        return app_or_gateway
    state = getattr(app_or_gateway, "state", None)
    gateway = getattr(state, "agentcast", None) if state is not None else None
    if isinstance(gateway, Gateway):
        return gateway
    for route in getattr(app_or_gateway, "routes", None) or ():
        if isinstance(route, Mount):
            with contextlib.suppress(TypeError):
                return find_gateway(route.app)
    raise TypeError(f"{app_or_gateway!r} is neither an agentcast app nor mounts one")


@contextlib.asynccontextmanager
async def agentcast_lifespan(app_or_gateway: Any) -> AsyncIterator[dict[str, Gateway]]:
    """Start the engine on enter; on exit finish runs, drain and close connections.

    Accepts an agentcast app, a host app that mounts one, or a Gateway. The
    value yielded is ``{"agentcast": gateway}``, so it may also be passed
    directly as a Starlette/FastAPI ``lifespan=`` (the gateway then appears
    as ``request.state.agentcast``).
    """
    gateway = find_gateway(app_or_gateway)
    await gateway.startup()
    try:
        with serving(gateway.engine):  # what get_engine() answers meanwhile
            yield {"agentcast": gateway}
    finally:
        await gateway.shutdown()


def create_app(
    settings: GatewaySettings | None = None,
    registry: AgentRegistry | None = None,
    *,
    engine: Engine | None = None,
    lifespan: bool = True,
    dev: bool = False,
) -> Starlette:
    """Build the agentcast ASGI app; the Gateway is at ``app.state.agentcast``.

    Args:
        settings: Gateway settings (``GatewaySettings()``, i.e. the environment, by default).
        registry: Agents to serve beside those of ``settings.agents`` — or, when
            it names none, beside the built-in ones (its names win).
        engine: An engine to serve instead of building one from
            ``settings.engine_settings()``; ``registry`` and ``settings.agents``
            are added to its registry.
        lifespan: Run the gateway's start-up and shutdown in this app's
            lifespan. ``False`` when mounted: the host calls
            :func:`agentcast_lifespan`.
        dev: Development mode: without a configured key, tokens are checked
            with a random secret created in ``settings.data_dir`` (what
            ``agentcast token`` and ``serve --dev`` sign with).

    Raises:
        ValueError: no key is configured and ``dev`` is false (production is
            not the demo: an app that cannot check tokens is refused, as
            ``serve`` refuses), the default agent is not served, or an agent
            spec or key cannot be loaded.
    """
    settings = settings if settings is not None else GatewaySettings()
    if not settings.has_key and not dev:
        raise ValueError(
            "no key to check tokens with: set AGENTCAST_JWT_SECRET (HS256), or "
            "AGENTCAST_JWT_PUBLIC_KEY or AGENTCAST_JWKS_URL; for a development app "
            "on this machine, call create_app(..., dev=True)"
        )
    if engine is None:
        # The built-in agents are served unless agents are named; to keep them
        # beside your own, name agentcast.agents.builtin:registry too.
        agents = AgentRegistry() if settings.agents else builtin_registry()
        if registry is not None:
            agents.merge(registry, replace=True)
        load_agents(settings.agents, agents)
        engine = Engine(settings.engine_settings(), agents)
    else:
        if registry is not None:
            engine.registry.merge(registry, replace=True)
        load_agents(settings.agents, engine.registry)
    if settings.default_agent not in engine.registry:
        served = ", ".join(engine.registry) or "none"
        raise ValueError(
            f"the default agent {settings.default_agent!r} is not served (agents: {served}); "
            "set AGENTCAST_DEFAULT_AGENT to one of them, or add "
            "agentcast.agents.builtin:registry to --agents"
        )
    gateway = Gateway(engine=engine, settings=settings, auth=Authenticator(settings))
    # The authenticator's refusals (tickets, token lifetime) are counted like every bound's.
    gateway.auth.on_refused = gateway.metrics.refused

    routes: list[BaseRoute] = [*health_routes(gateway), *http_routes(gateway), sse_route(gateway)]
    ws = _websocket_route(gateway)
    if ws is not None:
        routes.append(ws)
    routes.extend(_static_routes())

    # Outermost of ours: it counts what CORS answers on a matched route too.
    middleware: list[Middleware] = [Middleware(RequestMetricsMiddleware, metrics=gateway.metrics)]
    if settings.cors_origins:
        middleware.append(
            Middleware(
                CORSMiddleware,
                allow_origins=settings.cors_origins,
                allow_methods=["GET", "POST"],
                allow_headers=["Authorization", "Content-Type", "Last-Event-ID"],
                max_age=600,
            )
        )

    async def on_http_exception(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        return http_exception_problem(exc)

    @contextlib.asynccontextmanager
    async def app_lifespan(app: Starlette) -> AsyncIterator[None]:
        async with agentcast_lifespan(gateway):
            yield

    app = Starlette(
        routes=routes,
        middleware=middleware,
        exception_handlers={HTTPException: on_http_exception},
        lifespan=app_lifespan if lifespan else None,
    )
    app.state.agentcast = gateway
    return app


def _websocket_route(gateway: Gateway) -> WebSocketRoute | None:
    """``WS /v1/ws`` from :mod:`agentcast.gateway.ws`, when that module exists."""
    try:
        module = importlib.import_module(f"{__package__}.ws")
    except ModuleNotFoundError as exc:
        if exc.name != f"{__package__}.ws":
            raise  # ws.py exists but something it imports is missing: a real error
        logger.warning("agentcast.gateway.ws is missing: %s is not served", WS_PATH)
        return None
    handler = module.WebSocketHandler(gateway)

    async def websocket_endpoint(websocket: WebSocket) -> None:
        await handler(websocket)

    return WebSocketRoute(WS_PATH, websocket_endpoint)


#: Headers of the page: images from this origin (and inline data) only.
_PAGE_HEADERS: Final = {"Content-Security-Policy": "img-src 'self' data:"}


def _static_routes() -> list[BaseRoute]:
    """``/`` (index.html) and ``/static`` from the package's ``web`` directory, if present."""
    index = WEB_DIR / "index.html"
    if not index.is_file():
        return []

    async def home(request: Request) -> Response:
        # Model output is rendered on this page: no image from another origin is
        # ever fetched (a prompt-injected image URL would carry data out).
        return FileResponse(index, media_type="text/html", headers=_PAGE_HEADERS)

    return [
        Route("/", home, methods=["GET"]),
        Mount("/static", StaticFiles(directory=WEB_DIR), name="static"),
    ]
