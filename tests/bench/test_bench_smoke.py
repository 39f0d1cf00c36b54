"""The load benchmark's smoke preset: every workload, every server, zero correctness errors.

No timing is asserted (CI machines vary); what must hold everywhere is that
the run completes by itself and that no connection saw a gap, a duplicate, a
reorder or an undelivered event. The benchmark runs as its own process, as
users run it, so its servers and load generator are real processes too.

Both bounds scale with ``AGENTCAST_TEST_TIME_SCALE``: the timeout marker through
tests/conftest.py, the subprocess's through :func:`tests.utils.seconds`; the
benchmark process inherits the variable.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.utils import seconds

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_smoke_preset_runs_clean(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
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
    for row in report["results"]:
        assert not row.get("failed"), row
        for key in ("gaps", "duplicates", "reorders", "undelivered"):
            assert row[key] == 0, (row["workload"], row["server"], key, row[key])


def test_the_benchmark_is_not_part_of_the_installed_command_line() -> None:
    """It runs from a checkout (``python -m bench``, ``make bench``), never ``agentcast bench``."""
    from typer.testing import CliRunner

    from agentcast.cli import app

    result = CliRunner().invoke(app, ["bench", "--help"])
    assert result.exit_code != 0
    assert (REPO / "bench" / "__main__.py").is_file()
