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
        {"AGENTCAST_MAX_RUNS_PER_USER": "0"},
        {"AGENTCAST_LOG_BACKEND": "postgres"},
        {"AGENTCAST_SQLITE_SYNCHRONOUS": "OFF"},
    ],
)
def test_bad_values_are_refused_with_a_clear_error(env: dict[str, str]) -> None:
    with pytest.raises(InvalidInput):
        EngineSettings.from_env(env)
