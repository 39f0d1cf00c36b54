"""The load benchmark's smoke preset: every workload, every server, zero correctness errors.

No timing is asserted (CI machines vary); what must hold everywhere is that
the run completes by itself and that no connection saw a gap, a duplicate, a
reorder or an undelivered event. The benchmark runs as its own process, as
users run it, so its servers and load generator are real processes too.

W1 includes ``agentcast/postgres`` (``serve --database-url`` on a database the
bench creates and drops). Without a PostgreSQL server that column is left out
and the rest still runs — unless services are required (CI), where its absence
fails the test like every other service-backed test.

Both bounds scale with ``AGENTCAST_TEST_TIME_SCALE``: the timeout marker through
tests/conftest.py, the subprocess's through :func:`tests.utils.seconds`; the
benchmark process inherits the variable.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from pathlib import Path

import asyncpg
import pytest
from bench.config import PG_URL, PRESETS

from tests.conftest import REQUIRE_SERVICES
from tests.utils import seconds

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_smoke_preset_runs_clean(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    postgres = REQUIRE_SERVICES or _postgres_reachable()
    servers: list[str] = []
    if not postgres:  # every other server, so that the rest is still covered
        smoke = PRESETS["smoke"]
        every = {
            t.name
            for name in ("w1", "w2", "w3", "w4", "w5")
            for t in getattr(smoke, f"{name}_targets")
        }
        servers = ["--servers", ",".join(sorted(every - {"agentcast/postgres"}))]
    proc = subprocess.run(
        [
            sys.executable,
            str(REPO / "bench" / "run.py"),
            "--preset",
            "smoke",
            "--json",
            str(out),
            "--work-dir",
            str(tmp_path / "work"),
            "--quiet",
            *servers,
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=seconds(220),
        check=False,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    report = json.loads(out.read_text())
    assert report["correctness_ok"] is True
    assert report["problems"] == []
    workloads = {row["workload"] for row in report["results"]}
    assert workloads == {"W1", "W2", "W3", "W4", "W5"}
    targets = {row["target"] for row in report["results"]}
    assert {"agentcast/sqlite", "agentcast/memory", "agentcast/sqlite+batch", "baseline"} <= targets
    assert [row["target"] for row in report["results"] if row["frames"] == "batch=1"] == [
        "agentcast/sqlite+batch"
    ]
    pg_rows = [row for row in report["results"] if row["target"] == "agentcast/postgres"]
    if postgres:
        assert [row["workload"] for row in pg_rows] == ["W1"]
        assert pg_rows[0]["durability"] == "PostgreSQL, synchronous_commit=on"
        assert report["postgres"]["synchronous_commit"] == "on"
        # The database's own CPU is measured beside agentcast's (same machine here).
        assert pg_rows[0]["postgres_cpu_s"] is not None
        assert pg_rows[0]["total_cpu_us_per_event"] >= pg_rows[0]["cpu_us_per_event"]
        created = report["postgres"]["databases"]
        assert len(created) == 1  # one server, shared by the smoke preset's workloads
        assert not set(created) & set(_bench_databases()), "left behind: " + ", ".join(created)
    else:
        assert pg_rows == []
    for row in report["results"]:
        assert not row.get("failed"), row
        for key in ("gaps", "duplicates", "reorders", "undelivered"):
            assert row[key] == 0, (row["workload"], row["server"], key, row[key])


def _postgres_reachable() -> bool:
    async def probe() -> bool:
        try:
            conn = await asyncpg.connect(PG_URL, timeout=5)
        except (OSError, asyncpg.PostgresError):
            return False
        await conn.close()
        return True

    return asyncio.run(probe())


def _bench_databases() -> list[str]:
    """Databases named like the bench's that exist now (other runs' too)."""

    async def names() -> list[str]:
        conn = await asyncpg.connect(PG_URL, timeout=5)
        try:
            rows = await conn.fetch(
                "SELECT datname FROM pg_database WHERE datname LIKE 'agentcast\\_b\\_%'"
            )
        finally:
            await conn.close()
        return [str(r["datname"]) for r in rows]

    return asyncio.run(names())


def test_the_benchmark_is_not_part_of_the_installed_command_line() -> None:
    """It runs from a checkout (``python -m bench``, ``make bench``), never ``agentcast bench``."""
    from typer.testing import CliRunner

    from agentcast.cli import app

    result = CliRunner().invoke(app, ["bench", "--help"])
    assert result.exit_code != 0
    assert (REPO / "bench" / "__main__.py").is_file()
