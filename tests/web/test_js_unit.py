"""Runs the JS client's unit tests (``node --test tests/js/``) as part of pytest."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

from tests.conftest import skip_or_fail

ROOT = Path(__file__).resolve().parents[2]


def test_js_client_unit_tests_pass() -> None:
    node = shutil.which("node")
    if node is None:
        skip_or_fail("node is not installed: the JS unit tests need Node >= 20")
        return
    result = subprocess.run(
        [node, "--test", "tests/js/"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    passed = re.search(r"^# pass (\d+)$", output, re.MULTILINE)
    failed = re.search(r"^# fail (\d+)$", output, re.MULTILINE)
    assert passed is not None, output
    assert failed is not None, output
    assert int(passed[1]) >= 39, output
    assert int(failed[1]) == 0, output
