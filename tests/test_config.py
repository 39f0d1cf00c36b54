"""Engine settings: defaults, environment, validation."""

from __future__ import annotations

from pathlib import Path

import pytest

from agentcast.config import EngineSettings
from agentcast.errors import InvalidInput


def test_defaults_are_the_documented_ones() -> None:
    s = EngineSettings()
    assert (s.log_backend, s.sqlite_synchronous) == ("sqlite", "FULL")
    assert (s.max_runs_per_user, s.max_queued_per_user, s.run_timeout_s) == (3, 20, 300.0)
    assert (s.init_timeout_s, s.health_interval_s) == (30.0, 60.0)
    assert (s.recovery_base_s, s.recovery_max_s) == (1.0, 30.0)
    assert s.max_value_bytes == 256 * 1024


def test_from_env_reads_every_kind_of_field() -> None:
    s = EngineSettings.from_env(
        {
            "AGENTCAST_DATA_DIR": "/srv/agentcast",
            "AGENTCAST_RUN_TIMEOUT_S": "5.5",
            "AGENTCAST_MAX_RUNS_PER_USER": "7",
            "AGENTCAST_LOG_BACKEND": "memory",
            "AGENTCAST_SQLITE_SYNCHRONOUS": "NORMAL",
            "UNRELATED": "x",
        },
        tool_concurrency=2,
    )
    assert s.data_dir == Path("/srv/agentcast")
    assert (s.run_timeout_s, s.max_runs_per_user, s.tool_concurrency) == (5.5, 7, 2)
    assert (s.log_backend, s.sqlite_synchronous) == ("memory", "NORMAL")


@pytest.mark.parametrize(
    "env",
    [
        {"AGENTCAST_RUN_TIMEOUT_S": "soon"},
        {"AGENTCAST_RUN_TIMEOUT_S": "0"},
        {"AGENTCAST_MAX_RUNS_PER_USER": "0"},
        {"AGENTCAST_MAX_QUEUED_PER_USER": "-1"},
        {"AGENTCAST_LOG_BACKEND": "postgres"},
        {"AGENTCAST_SQLITE_SYNCHRONOUS": "OFF"},
    ],
)
def test_bad_values_are_refused_with_a_clear_error(env: dict[str, str]) -> None:
    [(variable, _)] = env.items()
    with pytest.raises(InvalidInput, match=variable):
        EngineSettings.from_env(env)


def test_zero_is_kept_where_it_means_do_not_wait() -> None:
    s = EngineSettings(shutdown_grace_s=0, text_coalesce_ms=0, max_queued_per_user=0)
    assert (s.shutdown_grace_s, s.text_coalesce_ms, s.max_queued_per_user) == (0, 0, 0)


def test_from_env_ignores_the_gateways_variables() -> None:
    """A bad gateway value is the gateway's error, not the engine's (it reads its own fields)."""
    s = EngineSettings.from_env({"AGENTCAST_CORS_ORIGINS": "not json", "AGENTCAST_PORT": "x"})
    assert s == EngineSettings()


def test_with_validates_again() -> None:
    with pytest.raises(InvalidInput, match="tool_timeout_s"):
        EngineSettings().with_(tool_timeout_s=-1)
