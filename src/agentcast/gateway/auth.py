"""Authentication: who a request or a WebSocket speaks for.

Every ``/v1`` endpoint needs credentials; no mode skips them (docs/architecture.md
invariant 4 starts with "a connection is authenticated as one user"). The
credentials are a JWT whose ``sub`` is the user id, presented as:

* ``Authorization: Bearer <jwt>`` (HTTP, SSE and WebSocket);
* WebSocket subprotocols ``["agentcast.v1", "bearer.<jwt>"]`` — browsers
  cannot set headers on a WebSocket; the server selects ``agentcast.v1`` so
  the token is never echoed back;
* ``/v1/ws?ticket=…`` — a one-use, short-lived ticket from
  ``POST /v1/ws-ticket``, so a long-lived token never sits in a URL (and in
  proxy logs).

Keys: HS256 with ``AGENTCAST_JWT_SECRET`` (or a development secret created
once in the data directory), RS256/ES256 with a PEM public key or a JWKS URL.
With an asymmetric key ``iss`` and ``aud`` are mandatory and checked, because
the same identity provider usually signs tokens for other audiences too. The
algorithm is taken from ``jwt_algorithms`` only — the header's ``alg`` never
chooses more than one of those — so ``alg: none`` and algorithm confusion
(an HMAC checked with a public key) are refused.

Bounds (docs/architecture.md invariant 6): every token must carry ``exp``, and
one whose lifetime (``exp - iat``, or ``exp - now`` without ``iat``) exceeds
``max_token_lifetime_s`` is refused, so a leaked token is not good forever.
Tickets are bounded per user and in all, never evicting anyone's
(:mod:`.tickets`).
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, Literal

import jwt
from starlette.requests import HTTPConnection
from starlette.websockets import WebSocket

from ..errors import AuthError
from .rate_limit import UserRateLimiter
from .settings import GatewaySettings
from .tickets import MAX_TICKETS, TicketStore

__all__ = [
    "MAX_TICKETS",
    "SUBPROTOCOL",
    "AuthError",
    "Authenticator",
    "Principal",
    "load_or_create_dev_secret",
    "write_dev_token",
]

#: The subprotocol a browser offers beside ``bearer.<jwt>``; the server selects it.
SUBPROTOCOL: Final = "agentcast.v1"
_BEARER_PROTOCOL: Final = "bearer."
_DEV_SECRET_FILE: Final = "dev-secret"
_DEV_TOKEN_FILE: Final = "dev-token"
_MAX_TOKEN_CHARS: Final = 8192
_ASYMMETRIC_PREFIXES: Final = ("RS", "ES", "PS", "Ed")


@dataclass(frozen=True)
class Principal:
    """An authenticated user, and until when its credentials hold.

    ``expires_at`` is the token's ``exp`` (UNIX seconds) or ``None``; a
    WebSocket closes with 4401 when it passes, an SSE stream ends.
    """

    user_id: str
    expires_at: float | None
    via: Literal["header", "subprotocol", "ticket"]


class Authenticator:
    """Checks JWTs and WebSocket tickets; mints development tokens.

    Args:
        settings: The gateway settings (keys, algorithms, issuer, audience, TTLs).
        secret: The HS256 secret; defaults to ``settings.jwt_secret``, else the
            development secret in ``settings.data_dir``.
        clock: Monotonic clock for ticket expiry and the HTTP rate limit (tests
            pass a fake one).
        on_refused: Called with the setting's name whenever a bound refuses
            (a ticket, a token's lifetime); the gateway counts it as a metric.

    Raises:
        ValueError: an asymmetric key is configured without issuer and
            audience, or the public key cannot be read.
    """

    def __init__(
        self,
        settings: GatewaySettings,
        *,
        secret: str | None = None,
        clock: Callable[[], float] = time.monotonic,
        on_refused: Callable[[str], None] | None = None,
    ) -> None:
        self.settings = settings
        if secret is None:
            secret = settings.jwt_secret
        if secret is None:
            secret = load_or_create_dev_secret(settings.data_dir)
        self._secret = secret
        self._algorithms = frozenset(settings.jwt_algorithms)
        if "none" in {a.lower() for a in self._algorithms}:
            raise ValueError("jwt_algorithms must not contain 'none'")
        self._public_key = _read_public_key(settings.jwt_public_key)
        self._jwks: jwt.PyJWKClient | None = (
            jwt.PyJWKClient(settings.jwks_url, cache_keys=True) if settings.jwks_url else None
        )
        if (self._public_key or self._jwks) and not (settings.jwt_issuer and settings.jwt_audience):
            raise ValueError(
                "jwt_public_key / jwks_url need jwt_issuer and jwt_audience "
                "(AGENTCAST_JWT_ISSUER, AGENTCAST_JWT_AUDIENCE)"
            )
        self.on_refused: Callable[[str], None] = on_refused or _ignore
        self.tickets: TicketStore[Principal] = TicketStore(
            settings.ticket_ttl_s, settings.max_tickets_per_user, clock, self._refused
        )
        #: The per-user HTTP request rate (charged by ``problems.api_endpoint``).
        self.rate_limiter = UserRateLimiter(
            settings.http_rate_per_s, settings.http_rate_burst, clock=clock
        )

    # Public methods

    async def authenticate_request(self, request: HTTPConnection) -> Principal:
        """The principal of an HTTP request (``Authorization: Bearer``).

        Raises:
            AuthError: missing, malformed, expired or refused credentials (401).
        """
        token = _bearer(request)
        if token is None:
            raise AuthError("missing credentials: send Authorization: Bearer <token>")
        return await self.verify_token(token, via="header")

    async def authenticate_websocket(self, websocket: WebSocket) -> tuple[Principal, str | None]:
        """The principal of a WebSocket handshake, and the subprotocol to select.

        Call it before ``accept()``: on :class:`AuthError` refuse the handshake
        (close before accept answers 403; or send a 401 response). Tries, in
        order, the ``Authorization`` header, a ``bearer.<jwt>`` subprotocol and a
        ``ticket`` query parameter (consumed). The subprotocol returned is
        ``agentcast.v1`` when the client offered it, else ``None``.

        Raises:
            AuthError: no credentials, or refused ones (401).
        """
        offered = [str(p) for p in websocket.scope.get("subprotocols") or ()]
        selected = SUBPROTOCOL if SUBPROTOCOL in offered else None
        token = _bearer(websocket)
        if token is not None:
            return await self.verify_token(token, via="header"), selected
        for proto in offered:
            if proto.startswith(_BEARER_PROTOCOL):
                token = proto[len(_BEARER_PROTOCOL) :]
                return await self.verify_token(token, via="subprotocol"), selected
        ticket = websocket.query_params.get("ticket")
        if ticket is not None:
            return self.redeem_ticket(ticket), selected
        raise AuthError(
            "missing credentials: send Authorization: Bearer <token>, subprotocols "
            f'["{SUBPROTOCOL}", "bearer.<token>"] or ?ticket=…'
        )

    async def verify_token(
        self, token: str, via: Literal["header", "subprotocol", "ticket"] = "header"
    ) -> Principal:
        """Check a JWT's signature, algorithm, expiry and lifetime, ``sub`` (and ``iss``/``aud``).

        Raises:
            AuthError: the token is refused (401), with the reason.
        """
        if not token or len(token) > _MAX_TOKEN_CHARS:
            raise AuthError("malformed token")
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError:
            raise AuthError("malformed token") from None
        alg = header.get("alg")
        if not isinstance(alg, str) or alg.lower() == "none":
            raise AuthError("unsigned tokens (alg none) are refused")
        if alg not in self._algorithms:
            raise AuthError(f"algorithm {alg} is not allowed")
        key = await self._key_for(alg, token)
        s = self.settings
        required = ["sub", "exp"]
        required += (["iss"] if s.jwt_issuer else []) + (["aud"] if s.jwt_audience else [])
        options: dict[str, Any] = {"require": required, "verify_aud": bool(s.jwt_audience)}
        try:
            claims = jwt.decode(
                token,
                key,
                algorithms=[alg],
                issuer=s.jwt_issuer,
                audience=s.jwt_audience,
                options=options,  # type: ignore[arg-type]
                leeway=s.jwt_leeway_s,
            )
        except jwt.ExpiredSignatureError:
            raise AuthError("token expired") from None
        except jwt.InvalidSignatureError:
            raise AuthError("invalid token signature") from None
        except jwt.MissingRequiredClaimError as exc:
            if exc.claim == "exp":
                raise AuthError("token has no 'exp' claim: an expiry is required") from None
            raise AuthError(f"token has no {exc.claim!r} claim") from None
        except jwt.InvalidAudienceError:
            raise AuthError("token audience is not accepted") from None
        except jwt.InvalidIssuerError:
            raise AuthError("token issuer is not accepted") from None
        except jwt.ImmatureSignatureError:
            raise AuthError("token not valid yet") from None
        except (jwt.PyJWTError, ValueError, TypeError):
            raise AuthError("malformed token") from None
        sub = claims.get("sub")
        if not isinstance(sub, str) or not sub.strip():
            raise AuthError("token 'sub' must be a non-empty string")
        exp = claims.get("exp")
        if not isinstance(exp, int | float) or isinstance(exp, bool):
            raise AuthError("malformed token")
        self._check_lifetime(float(exp), claims.get("iat"))
        return Principal(sub, float(exp), via)

    def issue_ticket(self, principal: Principal) -> tuple[str, float]:
        """A one-use WebSocket ticket for ``principal``: ``(ticket, expires_in)``.

        Raises:
            LimitExceeded: the user already holds ``max_tickets_per_user``
                unused tickets (429, ``limit`` names the setting).
            Unavailable: the server holds :data:`MAX_TICKETS` tickets (503).
        """
        return self.tickets.issue(principal.user_id, principal), self.tickets.ttl_s

    def tickets_held(self, user_id: str) -> int:
        """How many unused, unexpired tickets ``user_id`` holds."""
        return self.tickets.held(user_id)

    def redeem_ticket(self, ticket: str) -> Principal:
        """Consume a ticket and return its principal (``via="ticket"``).

        Raises:
            AuthError: unknown, already used or expired ticket (401).
        """
        p = self.tickets.redeem(ticket)
        if p is None:
            raise AuthError("unknown, used or expired ticket")
        if p.expires_at is not None and p.expires_at <= time.time():
            raise AuthError("token expired")
        return Principal(p.user_id, p.expires_at, "ticket")

    def mint_token(self, user_id: str, ttl_s: float | None = None) -> str:
        """An HS256 token for ``user_id`` signed with the configured secret.

        Carries ``iss``/``aud`` when they are configured, so it passes the same
        checks as any other token. ``ttl_s`` defaults to ``dev_token_ttl_s``.

        Raises:
            ValueError: an empty ``user_id``, or a ``ttl_s`` that is not
                positive or exceeds ``max_token_lifetime_s`` (such a token
                would be refused by every server with these settings).
        """
        if not user_id:
            raise ValueError("user_id must be non-empty")
        ttl = self.settings.dev_token_ttl_s if ttl_s is None else ttl_s
        most = self.settings.max_token_lifetime_s
        if not ttl > 0:
            raise ValueError("the token lifetime must be > 0 seconds")
        if ttl > most:
            raise ValueError(
                f"a token lifetime of {ttl:g} s exceeds max_token_lifetime_s ({most:g} s, "
                "AGENTCAST_MAX_TOKEN_LIFETIME_S): the server would refuse it"
            )
        now = time.time()
        iat = int(now)
        # Rounded up, so a token never lives shorter than asked, but never past
        # the bound: exp - iat is what the server checks.
        exp = min(math.ceil(now + ttl), iat + math.floor(most))
        claims: dict[str, Any] = {"sub": user_id, "iat": iat, "exp": exp}
        if self.settings.jwt_issuer:
            claims["iss"] = self.settings.jwt_issuer
        if self.settings.jwt_audience:
            claims["aud"] = self.settings.jwt_audience
        return jwt.encode(claims, self._secret, algorithm="HS256")

    # Private methods

    async def _key_for(self, alg: str, token: str) -> Any:
        if alg.startswith("HS"):
            return self._secret
        if alg.startswith(_ASYMMETRIC_PREFIXES):
            if self._jwks is not None:
                try:
                    # PyJWKClient fetches over blocking HTTP (cached afterwards).
                    jwk = await asyncio.to_thread(self._jwks.get_signing_key_from_jwt, token)
                except jwt.PyJWKClientConnectionError:
                    raise AuthError("cannot fetch the signing keys (JWKS)") from None
                except jwt.PyJWTError:
                    raise AuthError("no signing key matches the token") from None
                return jwk.key
            if self._public_key is not None:
                return self._public_key
        raise AuthError(f"algorithm {alg} is not allowed")

    def _check_lifetime(self, exp: float, iat: Any) -> None:
        """Refuse a token that lives longer than ``max_token_lifetime_s`` (plus the leeway)."""
        most = self.settings.max_token_lifetime_s
        start = float(iat) if isinstance(iat, int | float) and not isinstance(iat, bool) else None
        lifetime = exp - (start if start is not None else time.time())
        if lifetime > most + self.settings.jwt_leeway_s:
            self.on_refused("max_token_lifetime_s")
            raise AuthError(
                f"token lifetime exceeds the server's maximum of {most:g} s "
                "(max_token_lifetime_s): ask for a shorter-lived token"
            )

    def _refused(self, limit: str) -> None:
        """The ticket store's refusals, through :attr:`on_refused` as it is when they happen."""
        self.on_refused(limit)


def _ignore(limit: str) -> None:
    """The default ``on_refused``: an authenticator used without a gateway counts nothing."""


def _bearer(conn: HTTPConnection) -> str | None:
    header = conn.headers.get("authorization")
    if header is None:
        return None
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise AuthError("malformed Authorization header: expected 'Bearer <token>'")
    return token.strip()


def _read_public_key(value: str | None) -> str | None:
    if not value:
        return None
    if value.lstrip().startswith("-----BEGIN"):
        return value
    try:
        return Path(value).expanduser().read_text()
    except OSError as exc:
        raise ValueError(f"cannot read jwt_public_key {value!r}: {exc}") from None


def load_or_create_dev_secret(data_dir: Path) -> str:
    """The development HS256 secret in ``<data_dir>/dev-secret``, created once (0600).

    ``serve`` and ``agentcast token`` on the same data directory then sign and
    check with the same secret without any configuration. Creation is atomic
    (write a temporary file, then hard-link it into place), so two processes
    starting at once agree on one secret.
    """
    data_dir.mkdir(parents=True, exist_ok=True)
    path = data_dir / _DEV_SECRET_FILE
    with contextlib.suppress(FileNotFoundError):
        existing = path.read_text().strip()
        if existing:
            return existing
        path.unlink()  # an empty file: a crash mid-write on some old version
    tmp = data_dir / f".{_DEV_SECRET_FILE}.{os.getpid()}.{secrets.token_hex(4)}"
    _write_private(tmp, secrets.token_urlsafe(48))
    try:
        os.link(tmp, path)
    except FileExistsError:
        pass  # another process won the race: use its secret
    finally:
        tmp.unlink(missing_ok=True)
    return path.read_text().strip()


def write_dev_token(data_dir: Path, token: str) -> Path:
    """Write ``token`` to ``<data_dir>/dev-token`` (0600, atomically) and return the path."""
    data_dir.mkdir(parents=True, exist_ok=True)
    path = data_dir / _DEV_TOKEN_FILE
    tmp = data_dir / f".{_DEV_TOKEN_FILE}.{os.getpid()}.{secrets.token_hex(4)}"
    _write_private(tmp, token + "\n")
    os.replace(tmp, path)
    return path


def _write_private(path: Path, text: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
