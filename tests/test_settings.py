"""The one settings model: its rules, its views, its documentation and ``agentcast settings``."""

from __future__ import annotations

import dataclasses
import os
import re
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError
from typer.testing import CliRunner

from agentcast.agents.settings import AgentSettings
from agentcast.cli import app
from agentcast.config import EngineSettings
from agentcast.errors import InvalidInput
from agentcast.gateway.settings import GatewaySettings
from agentcast.settings import (
    FIELDS,
    SECTIONS,
    AgentcastSettings,
    InvalidSetting,
    default_of,
    env_name,
    load_settings,
)

OPERATIONS = Path(__file__).resolve().parents[1] / "docs" / "operations.md"

# (field, bad value): zero/negative timeouts, limits and budgets, and bad enums.
INVALID: list[tuple[str, Any]] = [
    # timeouts, intervals, TTLs, rates: > 0
    ("run_timeout_s", 0),
    ("run_timeout_s", -1),
    ("init_timeout_s", 0),
    ("probe_timeout_s", 0),
    ("append_timeout_s", -0.5),
    ("health_interval_s", 0),
    ("recovery_base_s", 0),
    ("recovery_max_s", -3),
    ("tool_timeout_s", 0),
    ("ticket_ttl_s", 0),
    ("dev_token_ttl_s", -60),
    ("ws_ping_interval_s", 0),
    ("ws_ping_timeout_s", 0),
    ("sse_keepalive_s", 0),
    ("ws_rate_per_s", 0),
    ("http_rate_per_s", 0),
    ("max_token_lifetime_s", 0),
    ("retention_max_age_s", 0),
    ("retention_interval_s", -1),
    # durations where 0 is fine, but not less
    ("shutdown_grace_s", -1),
    ("shutdown_drain_s", -1),
    ("shutdown_close_s", -0.1),
    ("jwt_leeway_s", -1),
    ("text_coalesce_ms", -1),
    # limits: >= 1
    ("max_runs_per_user", 0),
    ("max_concurrent_runs", 0),
    ("recovery_attempts", 0),
    ("tool_concurrency", -2),
    ("emit_buffer", 0),
    ("append_batch", 0),
    ("tail_events_per_thread", 0),
    ("catchup_batch", 0),
    ("ws_rate_burst", 0),
    ("http_rate_burst", 0),
    ("max_subscriptions_per_connection", 0),
    ("max_connections_per_user", 0),
    ("max_tickets_per_user", 0),
    ("retention_max_events", 0),
    # queue bounds: >= 0
    ("max_queued_per_user", -1),
    ("max_queued_per_thread", -1),
    # byte budgets
    ("http_max_body_bytes", 0),
    ("ws_max_frame_bytes", -1),
    ("ws_send_queue_bytes", 0),
    ("max_value_bytes", 63),
    ("max_value_bytes", 0),
    ("max_event_bytes", 0),
    ("http_events_page_bytes", 0),
    # ranges, types and enums
    ("port", -1),
    ("port", 65536),
    ("run_timeout_s", "soon"),
    ("log_backend", "postgres"),
    ("sqlite_synchronous", "OFF"),
    ("ws_compression", "maybe"),
]

# Zero where it means something ("do not wait", "each chunk", "nothing may wait", "any port").
ZERO_ALLOWED = [
    "shutdown_grace_s",
    "shutdown_drain_s",
    "shutdown_close_s",
    "jwt_leeway_s",
    "text_coalesce_ms",
    "max_queued_per_user",
    "max_queued_per_thread",
    "port",
]

ENGINE_FIELDS = {f.name for f in dataclasses.fields(EngineSettings)}
AGENT_FIELDS = {f.name for f in dataclasses.fields(AgentSettings)}


@pytest.fixture(autouse=True)
def _no_agentcast_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """Defaults and origins are asserted: variables of the caller's shell must not leak in."""
    for key in [k for k in os.environ if k.upper().startswith("AGENTCAST_")]:
        monkeypatch.delenv(key)


# --- the model and its views -----------------------------------------------------------


def test_sections_partition_every_setting_once() -> None:
    names = [name for model in SECTIONS.values() for name in model.model_fields]
    assert len(names) == len(set(names)) == len(FIELDS)
    assert set(SECTIONS) == {"engine", "log", "gateway", "auth", "agents", "llm"}


def test_views_are_the_model_with_its_defaults() -> None:
    assert set(GatewaySettings.model_fields) == set(FIELDS)
    assert ENGINE_FIELDS.issubset(FIELDS)
    assert set(SECTIONS["agents"].model_fields) == AGENT_FIELDS
    engine, agents = EngineSettings(), AgentSettings()
    for name in ENGINE_FIELDS:
        assert getattr(engine, name) == default_of(name), name
    for name in AGENT_FIELDS:
        assert getattr(agents, name) == default_of(name), name
    gateway = GatewaySettings()
    assert gateway.engine_settings() == engine
    assert gateway.nested() == AgentcastSettings()


def test_the_environment_is_flat_and_the_model_nested(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AGENTCAST_RUN_TIMEOUT_S", "5.5")
    monkeypatch.setenv("AGENTCAST_CORS_ORIGINS", '["https://app.example"]')
    monkeypatch.setenv("AGENTCAST_TEXT_COALESCE_MS", "0")
    model = AgentcastSettings()
    assert model.engine.run_timeout_s == 5.5
    assert model.gateway.cors_origins == ["https://app.example"]
    assert model.agents.text_coalesce_ms == 0
    gateway = GatewaySettings()
    assert (gateway.run_timeout_s, gateway.cors_origins) == (5.5, ["https://app.example"])
    assert gateway.engine_settings().run_timeout_s == 5.5
    assert EngineSettings.from_env().run_timeout_s == 5.5


def test_views_keep_their_api() -> None:
    s = EngineSettings(data_dir="/srv/a", health_interval_s=3600)  # type: ignore[arg-type]
    assert s.data_dir == Path("/srv/a")  # coerced by the model's rule
    assert s.with_(max_runs_per_user=1).max_runs_per_user == 1
    with pytest.raises(InvalidInput, match="max_runs_per_user"):
        s.with_(max_runs_per_user=0)
    with pytest.raises(dataclasses.FrozenInstanceError):
        s.run_timeout_s = 1  # type: ignore[misc]
    assert AgentSettings.of(s) == AgentSettings()


@pytest.mark.parametrize("name", ZERO_ALLOWED)
def test_zero_is_allowed_where_it_means_something(name: str) -> None:
    settings, origins = load_settings({env_name(name): "0"})
    section = next(s for s, m in SECTIONS.items() if name in m.model_fields)
    assert getattr(getattr(settings, section), name) == 0
    assert origins[name] == "environment"
    if name in ENGINE_FIELDS:
        assert getattr(EngineSettings(**{name: 0}), name) == 0
    if name in AGENT_FIELDS:
        assert getattr(AgentSettings(**{name: 0}), name) == 0


# --- point 2: invalid values are refused, naming the field -------------------------------


@pytest.mark.parametrize(("name", "value"), INVALID)
def test_invalid_values_are_refused_naming_the_field(name: str, value: Any) -> None:
    variable = env_name(name)
    with pytest.raises(InvalidSetting) as from_env:
        load_settings({variable: str(value).lower() if isinstance(value, bool) else str(value)})
    assert f"{name} ({variable})" in str(from_env.value)
    with pytest.raises(InvalidSetting) as from_flag:
        load_settings(**{name: value})
    assert f"{name} ({variable})" in str(from_flag.value)
    # Every view refuses it too, with the same name.
    with pytest.raises(ValidationError, match=name):
        GatewaySettings(**{name: value})
    if name in ENGINE_FIELDS:
        with pytest.raises(InvalidInput, match=re.escape(f"{name} ({variable})")):
            EngineSettings(**{name: value})
    if name in AGENT_FIELDS:
        with pytest.raises(ValueError, match=re.escape(f"{name} ({variable})")):
            AgentSettings(**{name: value})


@pytest.mark.parametrize(
    ("values", "named"),
    [
        ({"max_event_bytes": 8 * 1024 * 1024}, "ws_send_queue_bytes"),
        ({"ws_send_queue_bytes": 1024}, "max_event_bytes"),
        ({"dev_token_ttl_s": 30 * 24 * 3600}, "max_token_lifetime_s"),
    ],
)
def test_rules_between_fields_are_checked_by_every_model(
    values: dict[str, Any], named: str
) -> None:
    """A send budget below the largest event, or minted tokens that would be refused."""
    with pytest.raises(InvalidSetting, match=named):
        load_settings(**values)
    with pytest.raises(ValidationError, match=named):
        GatewaySettings(**values)


def test_several_bad_values_are_all_named() -> None:
    with pytest.raises(InvalidSetting) as info:
        load_settings({"AGENTCAST_RUN_TIMEOUT_S": "0", "AGENTCAST_LOG_BACKEND": "pg"})
    assert "run_timeout_s" in str(info.value)
    assert "log_backend" in str(info.value)


def test_a_bad_secret_is_not_echoed() -> None:
    with pytest.raises(InvalidSetting) as info:
        load_settings(jwt_secret=12345)
    assert "jwt_secret" in str(info.value)
    assert "12345" not in str(info.value)


# --- point 3: the model and docs/operations.md name the same variables -------------------


def _documented_variables() -> list[str]:
    text = OPERATIONS.read_text(encoding="utf-8")
    section = text.split("\n## Settings\n", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"^\| `(AGENTCAST_[A-Z0-9_]+)` \|", section, flags=re.MULTILINE)


def test_every_variable_is_documented_and_every_documented_one_exists() -> None:
    documented = _documented_variables()
    model = {env_name(name) for name in FIELDS}
    assert len(documented) == len(set(documented)), "a variable is documented twice"
    assert sorted(model - set(documented)) == [], "undocumented variables"
    assert sorted(set(documented) - model) == [], "documented variables that do not exist"


# --- point 4: agentcast settings -----------------------------------------------------------


def _lines(output: str) -> dict[str, tuple[str, str]]:
    """``AGENTCAST_X=value  (origin)`` lines by variable."""
    found = {}
    for line in output.splitlines():
        match = re.fullmatch(r"  (AGENTCAST_\w+)=(.*)  \((default|environment|flag)\)", line)
        if match:
            found[match[1]] = (match[2], match[3])
    return found


def test_settings_command_shows_values_origins_and_masks_secrets() -> None:
    env = {
        "AGENTCAST_JWT_SECRET": "s3cret-value",
        "AGENTCAST_JWT_PUBLIC_KEY": "-----BEGIN PUBLIC KEY-----abc",
        "AGENTCAST_RUN_TIMEOUT_S": "12",
        "AGENTCAST_PORT": "7000",
        "AGENTCAST_DATABASE_URL": "postgresql://app:pg-pass-123@db:5432/agentcast",
    }
    result = CliRunner().invoke(
        app, ["settings", "--port", "9001", "--log-backend", "sqlite"], env=env
    )
    assert result.exit_code == 0, result.output
    assert "s3cret-value" not in result.output
    assert "BEGIN PUBLIC KEY" not in result.output
    assert "pg-pass-123" not in result.output
    lines = _lines(result.output)
    assert set(lines) == {env_name(name) for name in FIELDS}
    assert lines["AGENTCAST_JWT_SECRET"] == ("***", "environment")
    assert lines["AGENTCAST_JWT_PUBLIC_KEY"] == ("***", "environment")
    assert lines["AGENTCAST_RUN_TIMEOUT_S"] == ("12.0", "environment")
    assert lines["AGENTCAST_PORT"] == ("9001", "flag")  # the flag wins over the environment
    assert lines["AGENTCAST_LOG_BACKEND"] == ("sqlite", "flag")
    assert lines["AGENTCAST_HOST"] == ("127.0.0.1", "default")
    assert lines["AGENTCAST_JWKS_URL"] == ("(unset)", "default")
    assert lines["AGENTCAST_DATABASE_URL"] == (
        "postgresql://app:***@db:5432/agentcast",
        "environment",
    )
    for section in SECTIONS:
        assert f"[{section}]" in result.output


def test_settings_command_refuses_bad_values_naming_them() -> None:
    result = CliRunner().invoke(
        app, ["settings", "--shutdown-grace", "-1"], env={"AGENTCAST_TOOL_TIMEOUT_S": "0"}
    )
    assert result.exit_code == 2
    assert "shutdown_grace_s (AGENTCAST_SHUTDOWN_GRACE_S)" in result.output
    assert "tool_timeout_s (AGENTCAST_TOOL_TIMEOUT_S)" in result.output
