"""``agentcast serve``: production is not the demo.

Without a configured key the server refuses to start unless ``--dev``;
``--dev`` listens on loopback only and mints a development token signed with
the data directory's own random key — never one signed with a configured key.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from agentcast.gateway.server import ServeError, ServeInfo, is_loopback, serve
from agentcast.gateway.settings import GatewaySettings

from .conftest import SECRET


class _Started(Exception):
    """Raised from ``ready``: the server got as far as serving."""


def _settings(tmp_path: Path, **values: object) -> GatewaySettings:
    return GatewaySettings(
        log_backend="memory", data_dir=tmp_path / "data", host="127.0.0.1", port=0, **values
    )


async def _start(settings: GatewaySettings, *, dev: bool) -> ServeInfo:
    seen: list[ServeInfo] = []

    def ready(info: ServeInfo) -> None:
        seen.append(info)
        raise _Started

    with pytest.raises(_Started):
        await serve(settings, ready=ready, log_level="warning", dev=dev)
    return seen[0]


async def test_without_a_key_serve_refuses_unless_dev(tmp_path: Path) -> None:
    with pytest.raises(ServeError, match=r"no key to check tokens with.*serve --dev"):
        await serve(_settings(tmp_path), dev=False)
    assert not (tmp_path / "data" / "dev-token").exists()
    info = await _start(_settings(tmp_path), dev=True)
    assert info.dev
    assert info.token is not None
    assert (tmp_path / "data" / "dev-token").read_text().strip() == info.token
    assert (tmp_path / "data" / "dev-secret").is_file()


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "10.1.2.3", "example.org"])
async def test_dev_listens_on_loopback_only(tmp_path: Path, host: str) -> None:
    settings = _settings(tmp_path).model_copy(update={"host": host})
    with pytest.raises(ServeError, match="--dev serves on this machine only"):
        await serve(settings, dev=True)


async def test_a_configured_key_never_signs_a_development_token(tmp_path: Path) -> None:
    for dev in (False, True):
        info = await _start(_settings(tmp_path, jwt_secret=SECRET), dev=dev)
        assert info.token is None
        assert info.dev is dev
        assert not (tmp_path / "data" / "dev-token").exists()
        assert not (tmp_path / "data" / "dev-secret").exists()


def test_loopback_hosts() -> None:
    assert all(map(is_loopback, ["127.0.0.1", "127.0.0.2", "::1", "[::1]", "localhost"]))
    assert not any(map(is_loopback, ["0.0.0.0", "::", "192.168.1.1", "example.org", ""]))
