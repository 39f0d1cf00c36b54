"""Run the timing-sensitive tests on one starved CPU (``make test-starved``).

Usage: ``python tests/starved.py [--cpu N] [--hogs N] [--deadline S] [-- PYTEST_ARGS]``

This process pins itself to one CPU (as ``taskset -c N`` does), so everything it
starts shares that CPU: a busy-loop hog and ``pytest -m timing`` with the
servers and threads of its tests. ``AGENTCAST_TEST_TIME_SCALE`` defaults to 4
and ``AGENTCAST_REQUIRE_SERVICES`` to 1 (a missing service fails, not skips);
both can be overridden from the environment.

It always stops by itself and leaves nothing behind: pytest-timeout bounds each
test (scaled, see tests/conftest.py); past ``--deadline`` seconds pytest gets
SIGINT (it tears down its fixtures), then SIGKILL; the hogs are killed in every
case. Should this process itself be killed, each hog exits on its own and pytest
gets SIGINT.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import os
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from types import FrameType

ROOT = Path(__file__).resolve().parents[1]
DEFAULTS = {"AGENTCAST_TEST_TIME_SCALE": "4", "AGENTCAST_REQUIRE_SERVICES": "1"}
#: Busy-loops until its parent (this process) is gone, even if that was killed.
HOG = """
import os, sys
parent = int(sys.argv[1])
while os.getppid() == parent:
    for _ in range(100_000):
        pass
"""
#: How long pytest may take to tear down after SIGINT before it is killed.
TEARDOWN_S = 60.0


PR_SET_PDEATHSIG = 1


def _pytest_child_setup() -> None:
    """In pytest's process, before exec: SIGINT works, and comes when this process dies.

    SIGINT is what stops pytest in order (it tears down); a shell's background job
    inherits it ignored, and Python then never raises KeyboardInterrupt.
    """
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    with contextlib.suppress(OSError, AttributeError):  # Linux only
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGINT)


class Stop(Exception):
    """SIGTERM or SIGHUP arrived: stop pytest and the hogs, then exit."""


def _raise_stop(signum: int, frame: FrameType | None) -> None:
    raise Stop(signal.Signals(signum).name)


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Run the timing tests on one starved CPU.")
    parser.add_argument("--cpu", type=int, default=0, help="the one CPU to run on (default 0)")
    parser.add_argument("--hogs", type=int, default=1, help="busy-loop processes (default 1)")
    parser.add_argument(
        "--deadline",
        type=float,
        default=float(os.environ.get("STARVED_DEADLINE_S", "2700")),
        help="stop pytest after this many seconds (default 2700, env STARVED_DEADLINE_S)",
    )
    parser.add_argument("pytest_args", nargs="*", help="more pytest arguments (after --)")
    return parser.parse_args(argv)


def stop(proc: subprocess.Popen[bytes], first: signal.Signals, grace: float) -> None:
    """Send ``first`` to ``proc``'s process group, then SIGKILL it after ``grace`` seconds."""
    if proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, first)
        proc.wait(grace)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    except ProcessLookupError:
        proc.wait()


def main(argv: Sequence[str]) -> int:
    args = parse_args(argv)
    os.sched_setaffinity(0, {args.cpu})  # what `taskset -c CPU` does; children inherit it
    env = {**DEFAULTS, **os.environ}
    signal.signal(signal.SIGTERM, _raise_stop)
    signal.signal(signal.SIGHUP, _raise_stop)

    hogs: list[subprocess.Popen[bytes]] = []
    pytest: subprocess.Popen[bytes] | None = None
    started = time.monotonic()
    code = 1
    try:
        for _ in range(args.hogs):
            hogs.append(
                subprocess.Popen([sys.executable, "-c", HOG, str(os.getpid())], process_group=0)
            )
        command = [sys.executable, "-m", "pytest", "-m", "timing", *args.pytest_args]
        print(
            f"test-starved: CPU {args.cpu} shared with {args.hogs} hog(s), "
            f"AGENTCAST_TEST_TIME_SCALE={env['AGENTCAST_TEST_TIME_SCALE']}, "
            f"AGENTCAST_REQUIRE_SERVICES={env['AGENTCAST_REQUIRE_SERVICES']}, "
            f"deadline {args.deadline:g}s\n$ {' '.join(command)}",
            flush=True,
        )
        # Its own process group: a deadline or a Ctrl-C here stops pytest as a whole.
        pytest = subprocess.Popen(
            command, cwd=ROOT, env=env, process_group=0, preexec_fn=_pytest_child_setup
        )
        try:
            code = pytest.wait(args.deadline)
        except subprocess.TimeoutExpired:
            print(f"test-starved: deadline of {args.deadline:g}s passed, stopping", flush=True)
            stop(pytest, signal.SIGINT, TEARDOWN_S)
            code = 124
    except (KeyboardInterrupt, Stop):
        code = 130
    finally:
        if pytest is not None:
            stop(pytest, signal.SIGINT, TEARDOWN_S)
        for hog in hogs:
            stop(hog, signal.SIGKILL, TEARDOWN_S)
    print(
        f"test-starved: exit {code} after {time.monotonic() - started:.0f}s"
        f" (pytest exit {pytest.returncode if pytest else None})",
        flush=True,
    )
    return code


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
