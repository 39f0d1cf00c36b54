"""bench/path_cost.py still measures what it says: every event to every connection."""

from __future__ import annotations

from pathlib import Path

import pytest
from bench.path_cost import measure


@pytest.mark.parametrize("log", ["memory", "sqlite"])
async def test_path_cost_delivers_every_event_to_every_connection(log: str, tmp_path: Path) -> None:
    result = await measure(log, threads=3, conns=2, events=20, data_dir=tmp_path / "data")
    assert result["connections"] == 6
    assert result["events_delivered"] == 3 * 2 * 20
    assert result["cpu_us_per_delivered"] > 0
