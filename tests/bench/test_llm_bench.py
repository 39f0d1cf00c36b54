"""The LLM benchmark's smoke preset: every ChatAgent run arrives exactly as scripted.

``bench/llm_bench.py --preset smoke`` runs as its own process, as users run it:
a replay model server, ``agentcast serve`` with a ChatAgent, WebSocket viewers,
the bare-SDK baseline and W1's load generator are all real processes. No timing
is asserted (CI machines vary); what must hold everywhere is that the run ends
by itself, that every run's viewer saw exactly its scripted text and that W1
saw no gap, duplicate, reorder or undelivered event.

Both bounds scale with ``AGENTCAST_TEST_TIME_SCALE`` (see test_bench_smoke.py).
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
@pytest.mark.timeout(120)
def test_llm_smoke_preset_runs_clean(tmp_path: Path) -> None:
    out = tmp_path / "llm.json"
    proc = subprocess.run(
        [
            sys.executable,
            str(REPO / "bench" / "llm_bench.py"),
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
        timeout=seconds(100),
        check=False,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    report = json.loads(out.read_text())
    assert report["correctness_ok"] is True
    assert report["problems"] == []
    phases = [row["phase"] for row in report["llm_phases"]]
    assert phases == ["bare-1", "agentcast-1"]
    for row in report["llm_phases"]:
        assert not row.get("failed"), row
        assert row["runs_ok"] == row["runs"] == 5, row
        assert row["tokens"] == 5 * 60, row
    agentcast = report["llm_phases"][1]
    assert agentcast["latency_ms"]["count"] == 300
    assert agentcast["problem_count"] == 0
    w1 = report["w1_phases"]
    assert [row["with_llm"] for row in w1] == [False, True]
    for row in w1:
        assert not row.get("failed"), row
        for key in ("gaps", "duplicates", "reorders", "undelivered"):
            assert row[key] == 0, (row["phase"], key, row[key])
    assert w1[1]["llm"]["runs_ok"] == 5
    summary = report["summary"]
    assert summary["bare_cpu_us_per_token"]
    assert summary["agentcast_cpu_us_per_token"]
    assert [t["target"] for t in summary["targets"]] == [
        "token → screen p99 (LLM-only phases, worst round)",
        "agentcast's added CPU per token ÷ the bare SDK's",
        "W1 p99 with the LLM runs ÷ W1 p99 alone",
    ]
