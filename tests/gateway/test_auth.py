"""Authentication: every bad credential gets its exact answer (docs/architecture.md invariant 4)."""

from __future__ import annotations

import json
import os
import stat
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from starlette.websockets import WebSocket

from agentcast.gateway.auth import (
    Authenticator,
    AuthError,
    Principal,
    load_or_create_dev_secret,
    write_dev_token,
)
from agentcast.gateway.context import Gateway
from agentcast.gateway.settings import GatewaySettings

from .conftest import SECRET, ClientFactory

ISSUER = "https://issuer.example"
AUDIENCE = "agentcast"


def hs256(claims: dict[str, Any], secret: str = SECRET, alg: str = "HS256") -> str:
    return jwt.encode(claims, secret, algorithm=alg)


def future(seconds: float = 600) -> int:
    return int(time.time() + seconds)


def websocket(
    query: str = "", subprotocols: list[str] | None = None, headers: dict[str, str] | None = None
) -> WebSocket:
    """A WebSocket handshake scope, enough for ``authenticate_websocket``."""
    scope = {
        "type": "websocket",
        "path": "/v1/ws",
        "query_string": query.encode(),
        "headers": [(k.lower().encode(), v.encode()) for k, v in (headers or {}).items()],
        "subprotocols": subprotocols or [],
    }

    async def receive() -> dict[str, Any]:
        raise AssertionError("not used")

    async def send(message: Any) -> None:
        raise AssertionError("not used")

    return WebSocket(scope, receive, send)


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def settings(tmp_path: Path) -> GatewaySettings:
    return GatewaySettings(data_dir=tmp_path, jwt_secret=SECRET, ticket_ttl_s=30)


# --- over HTTP ------------------------------------------------------------------------


async def test_valid_token_is_accepted(alice: Any) -> None:
    r = await alice.get("/v1/agents")
    assert r.status_code == 200
    assert {"echo", "countdown", "demo"} <= {a["name"] for a in r.json()["agents"]}


@pytest.mark.parametrize(
    ("name", "authorization"),
    [
        ("missing", None),
        ("expired", "Bearer " + hs256({"sub": "alice", "exp": int(time.time()) - 10})),
        ("malformed", "Bearer not-a-jwt"),
        ("garbage_segments", "Bearer aaa.bbb.ccc"),
        ("wrong_signature", "Bearer " + hs256({"sub": "alice"}, secret="x" * 48)),
        ("alg_none", "Bearer " + jwt.encode({"sub": "alice"}, None, algorithm="none")),
        ("wrong_alg", "Bearer " + hs256({"sub": "alice"}, alg="HS512")),
        ("missing_sub", "Bearer " + hs256({"exp": future()})),
        ("empty_sub", "Bearer " + hs256({"sub": ""})),
        ("blank_sub", "Bearer " + hs256({"sub": "   "})),
        ("basic_scheme", "Basic YWxpY2U6c2VjcmV0"),
        ("empty_bearer", "Bearer "),
    ],
)
async def test_bad_credentials_are_401(
    client_for: ClientFactory, name: str, authorization: str | None
) -> None:
    client = client_for(user=None)
    headers = {"authorization": authorization} if authorization is not None else {}
    r = await client.get("/v1/agents", headers=headers)
    assert r.status_code == 401, name
    assert r.headers["content-type"] == "application/problem+json"
    assert r.headers["www-authenticate"].startswith('Bearer realm="agentcast"')
    body = r.json()
    assert body["code"] == "unauthorized"
    assert body["status"] == 401
    assert body["title"] == "Unauthorized"


async def test_reasons_are_specific(client_for: ClientFactory) -> None:
    client = client_for(user=None)

    async def reason(token: str) -> str:
        r = await client.get("/v1/agents", headers={"authorization": f"Bearer {token}"})
        return str(r.json()["detail"])

    assert await reason(hs256({"sub": "a", "exp": int(time.time()) - 5})) == "token expired"
    assert await reason(hs256({"sub": "a"}, secret="y" * 48)) == "invalid token signature"
    assert "alg none" in await reason(jwt.encode({"sub": "a"}, None, algorithm="none"))
    assert await reason(hs256({"sub": "a"}, alg="HS384")) == "algorithm HS384 is not allowed"
    assert await reason(hs256({"x": 1})) == "token has no 'sub' claim"
    assert await reason("abc") == "malformed token"


async def test_every_v1_route_needs_credentials(client_for: ClientFactory) -> None:
    client = client_for(user=None)
    for method, path in [
        ("POST", "/v1/ws-ticket"),
        ("GET", "/v1/agents"),
        ("POST", "/v1/runs"),
        ("GET", "/v1/runs/run_x"),
        ("POST", "/v1/runs/run_x/cancel"),
        ("GET", "/v1/threads"),
        ("GET", "/v1/threads/th_x"),
        ("GET", "/v1/threads/th_x/events"),
        ("GET", "/v1/threads/th_x/stream"),
    ]:
        r = await client.request(method, path)
        assert r.status_code == 401, (method, path)


async def test_public_endpoints_need_no_credentials(client_for: ClientFactory) -> None:
    client = client_for(user=None)
    for path in ("/healthz", "/readyz", "/metrics", "/"):
        assert (await client.get(path)).status_code == 200, path


# --- the authenticator ------------------------------------------------------------------


async def test_expiry_is_the_principal_deadline(settings: GatewaySettings) -> None:
    auth = Authenticator(settings)
    exp = future(100)
    principal = await auth.verify_token(hs256({"sub": "alice", "exp": exp}))
    assert principal == Principal("alice", float(exp), "header")
    with pytest.raises(AuthError, match="'exp'"):
        await auth.verify_token(hs256({"sub": "alice"}))


async def test_non_string_sub_is_refused(settings: GatewaySettings) -> None:
    auth = Authenticator(settings)
    with pytest.raises(AuthError) as info:
        await auth.verify_token(hs256({"sub": 42}))
    assert info.value.status_code == 401


async def test_mint_token_round_trip(settings: GatewaySettings) -> None:
    auth = Authenticator(settings)
    principal = await auth.verify_token(auth.mint_token("carol", ttl_s=60))
    assert principal.user_id == "carol"
    assert principal.expires_at is not None
    assert time.time() + 50 < principal.expires_at <= time.time() + 61
    header = jwt.get_unverified_header(auth.mint_token("carol"))
    assert header["alg"] == "HS256"
    default = await auth.verify_token(auth.mint_token("carol"))
    assert default.expires_at is not None
    assert default.expires_at > time.time() + settings.dev_token_ttl_s - 5


async def test_issuer_and_audience_on_hs256_when_configured(tmp_path: Path) -> None:
    settings = GatewaySettings(
        data_dir=tmp_path, jwt_secret=SECRET, jwt_issuer=ISSUER, jwt_audience=AUDIENCE
    )
    auth = Authenticator(settings)
    assert (await auth.verify_token(auth.mint_token("dave"))).user_id == "dave"
    for claims in ({"sub": "d"}, {"sub": "d", "iss": ISSUER}, {"sub": "d", "aud": AUDIENCE}):
        with pytest.raises(AuthError):
            await auth.verify_token(hs256(claims))


def test_alg_none_cannot_be_configured(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="none"):
        Authenticator(GatewaySettings(data_dir=tmp_path, jwt_algorithms=["HS256", "none"]))


# --- asymmetric keys ------------------------------------------------------------------------


def rsa_pair() -> tuple[rsa.RSAPrivateKey, str]:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return key, pem.decode()


@pytest.fixture(scope="module")
def rsa_key() -> tuple[rsa.RSAPrivateKey, str]:
    return rsa_pair()


def rs_settings(tmp_path: Path, public_key: str, **extra: Any) -> GatewaySettings:
    return GatewaySettings(
        data_dir=tmp_path,
        jwt_secret=SECRET,
        jwt_algorithms=["RS256", "ES256"],
        jwt_public_key=public_key,
        jwt_issuer=ISSUER,
        jwt_audience=AUDIENCE,
        **extra,
    )


@pytest.mark.parametrize(
    ("name", "claims", "ok"),
    [
        ("good", {"sub": "erin", "iss": ISSUER, "aud": AUDIENCE}, True),
        ("aud_in_list", {"sub": "erin", "iss": ISSUER, "aud": ["x", AUDIENCE]}, True),
        ("wrong_aud", {"sub": "erin", "iss": ISSUER, "aud": "other"}, False),
        ("wrong_iss", {"sub": "erin", "iss": "https://evil.example", "aud": AUDIENCE}, False),
        ("missing_aud", {"sub": "erin", "iss": ISSUER}, False),
        ("missing_iss", {"sub": "erin", "aud": AUDIENCE}, False),
        ("expired", {"sub": "erin", "iss": ISSUER, "aud": AUDIENCE, "exp": 1000}, False),
    ],
)
async def test_rs256_checks_iss_and_aud(
    tmp_path: Path, rsa_key: tuple[rsa.RSAPrivateKey, str], name: str, claims: Any, ok: bool
) -> None:
    key, pem = rsa_key
    auth = Authenticator(rs_settings(tmp_path, pem))
    token = jwt.encode({"exp": future(), **claims}, key, algorithm="RS256")
    if ok:
        assert (await auth.verify_token(token)).user_id == "erin"
    else:
        with pytest.raises(AuthError) as info:
            await auth.verify_token(token)
        assert info.value.status_code == 401


async def test_rs256_refuses_other_keys_and_hs256(
    tmp_path: Path, rsa_key: tuple[rsa.RSAPrivateKey, str]
) -> None:
    _, pem = rsa_key
    other, _ = rsa_pair()
    auth = Authenticator(rs_settings(tmp_path, pem))
    claims = {"sub": "erin", "iss": ISSUER, "aud": AUDIENCE, "exp": future()}
    with pytest.raises(AuthError, match="signature"):
        await auth.verify_token(jwt.encode(claims, other, algorithm="RS256"))
    # HS256 is not in jwt_algorithms here, and a public key is never an HMAC secret.
    with pytest.raises(AuthError, match="not allowed"):
        await auth.verify_token(hs256(claims))
    with pytest.raises(AuthError, match="not allowed"):
        await auth.verify_token(jwt.encode(claims, other, algorithm="RS512"))


async def test_es256_and_key_from_a_file(tmp_path: Path) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    pem = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    path = tmp_path / "key.pem"
    path.write_bytes(pem)
    auth = Authenticator(rs_settings(tmp_path, str(path)))
    claims = {"sub": "fay", "iss": ISSUER, "aud": AUDIENCE, "exp": future()}
    token = jwt.encode(claims, key, algorithm="ES256")
    assert (await auth.verify_token(token)).user_id == "fay"


def test_asymmetric_key_requires_issuer_and_audience(
    tmp_path: Path, rsa_key: tuple[rsa.RSAPrivateKey, str]
) -> None:
    with pytest.raises(ValueError, match="jwt_issuer"):
        Authenticator(GatewaySettings(data_dir=tmp_path, jwt_public_key=rsa_key[1]))
    with pytest.raises(ValueError, match="cannot read"):
        Authenticator(rs_settings(tmp_path, str(tmp_path / "missing.pem")))


@pytest.fixture
def jwks_url(rsa_key: tuple[rsa.RSAPrivateKey, str]) -> Iterator[str]:
    """A JWKS document served over real HTTP (PyJWKClient uses urllib)."""
    jwk = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(rsa_key[0].public_key()))
    body = json.dumps({"keys": [{**jwk, "kid": "k1", "use": "sig", "alg": "RS256"}]}).encode()

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/jwks.json"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


async def test_jwks(tmp_path: Path, rsa_key: tuple[rsa.RSAPrivateKey, str], jwks_url: str) -> None:
    settings = GatewaySettings(
        data_dir=tmp_path,
        jwt_algorithms=["RS256"],
        jwks_url=jwks_url,
        jwt_issuer=ISSUER,
        jwt_audience=AUDIENCE,
    )
    auth = Authenticator(settings)
    claims = {"sub": "gus", "iss": ISSUER, "aud": AUDIENCE, "exp": future()}
    good = jwt.encode(claims, rsa_key[0], algorithm="RS256", headers={"kid": "k1"})
    assert (await auth.verify_token(good)).user_id == "gus"
    unknown_kid = jwt.encode(claims, rsa_key[0], algorithm="RS256", headers={"kid": "k9"})
    with pytest.raises(AuthError, match="no signing key"):
        await auth.verify_token(unknown_kid)
    wrong_aud = jwt.encode(
        {**claims, "aud": "other"}, rsa_key[0], algorithm="RS256", headers={"kid": "k1"}
    )
    with pytest.raises(AuthError, match="audience"):
        await auth.verify_token(wrong_aud)


# --- WebSocket credentials and tickets ----------------------------------------------------


async def test_websocket_credential_kinds(settings: GatewaySettings) -> None:
    auth = Authenticator(settings)
    token = auth.mint_token("hal")
    p, proto = await auth.authenticate_websocket(
        websocket(headers={"Authorization": f"Bearer {token}"})
    )
    assert (p.user_id, p.via, proto) == ("hal", "header", None)
    p, proto = await auth.authenticate_websocket(
        websocket(subprotocols=["agentcast.v1", f"bearer.{token}"])
    )
    assert (p.user_id, p.via, proto) == ("hal", "subprotocol", "agentcast.v1")
    ticket, _ = auth.issue_ticket(p)
    p, proto = await auth.authenticate_websocket(
        websocket(query=f"ticket={ticket}", subprotocols=["agentcast.v1"])
    )
    assert (p.user_id, p.via, proto) == ("hal", "ticket", "agentcast.v1")
    with pytest.raises(AuthError) as info:
        await auth.authenticate_websocket(websocket())
    assert info.value.status_code == 401
    with pytest.raises(AuthError, match="signature"):
        await auth.authenticate_websocket(
            websocket(subprotocols=["agentcast.v1", "bearer." + hs256({"sub": "x"}, "z" * 48)])
        )


async def test_ticket_is_one_use(client_for: ClientFactory, gateway: Gateway) -> None:
    client = client_for("ivy")
    r = await client.post("/v1/ws-ticket")
    assert r.status_code == 200
    body = r.json()
    assert set(body) == {"ticket", "expires_in"}
    assert body["expires_in"] == 60.0
    ws = websocket(query=f"ticket={body['ticket']}")
    principal, _ = await gateway.auth.authenticate_websocket(ws)
    assert principal.user_id == "ivy"
    assert principal.via == "ticket"
    with pytest.raises(AuthError) as info:
        await gateway.auth.authenticate_websocket(websocket(query=f"ticket={body['ticket']}"))
    assert info.value.status_code == 401
    with pytest.raises(AuthError):
        await gateway.auth.authenticate_websocket(websocket(query="ticket=made-up"))


async def test_ticket_expires(settings: GatewaySettings) -> None:
    clock = FakeClock()
    auth = Authenticator(settings, clock=clock)
    ticket, expires_in = auth.issue_ticket(Principal("jo", None, "header"))
    assert expires_in == 30
    clock.now += 30
    with pytest.raises(AuthError) as info:
        auth.redeem_ticket(ticket)
    assert info.value.status_code == 401


async def test_ticket_of_an_expired_token_is_refused(settings: GatewaySettings) -> None:
    auth = Authenticator(settings)
    ticket, _ = auth.issue_ticket(Principal("jo", time.time() - 1, "header"))
    with pytest.raises(AuthError, match="expired"):
        auth.redeem_ticket(ticket)


def test_expired_tickets_are_purged_and_the_store_is_bounded(settings: GatewaySettings) -> None:
    clock = FakeClock()
    auth = Authenticator(settings, clock=clock)
    for _ in range(5):
        auth.issue_ticket(Principal("k", None, "header"))
    clock.now += 31
    auth.issue_ticket(Principal("k", None, "header"))
    assert len(auth.tickets) == 1


def test_ticket_carries_the_token_deadline(settings: GatewaySettings) -> None:
    auth = Authenticator(settings)
    exp = time.time() + 100
    ticket, _ = auth.issue_ticket(Principal("lee", exp, "header"))
    assert auth.redeem_ticket(ticket) == Principal("lee", exp, "ticket")


# --- development secret and token ---------------------------------------------------------


def test_dev_secret_created_once_private(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    first = load_or_create_dev_secret(data_dir)
    assert len(first) >= 32
    assert load_or_create_dev_secret(data_dir) == first
    mode = stat.S_IMODE(os.stat(data_dir / "dev-secret").st_mode)
    assert mode == 0o600
    assert [p.name for p in data_dir.iterdir()] == ["dev-secret"]


async def test_authenticator_uses_the_dev_secret(tmp_path: Path) -> None:
    settings = GatewaySettings(data_dir=tmp_path)
    token = Authenticator(settings).mint_token("mo")
    # Another process on the same data directory checks it with the same secret.
    assert (await Authenticator(settings).verify_token(token)).user_id == "mo"
    jwt.decode(token, load_or_create_dev_secret(tmp_path), algorithms=["HS256"])


def test_write_dev_token(tmp_path: Path) -> None:
    path = write_dev_token(tmp_path, "tok1")
    assert path == tmp_path / "dev-token"
    assert path.read_text().strip() == "tok1"
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    write_dev_token(tmp_path, "tok2")
    assert path.read_text().strip() == "tok2"


async def test_missing_credentials_www_authenticate(client_for: ClientFactory) -> None:
    r = await client_for(user=None).post("/v1/runs", json={"message": "x"})
    assert r.status_code == 401
    assert r.headers["www-authenticate"] == (
        'Bearer realm="agentcast", error="invalid_token", error_description='
        '"missing credentials: send Authorization: Bearer <token>"'
    )
