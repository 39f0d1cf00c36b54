"""``agentcast bench``: the load benchmark of ``bench/`` behind the CLI.

The benchmark lives in the source checkout's ``bench/`` directory, not in the
installed package: it starts servers with ``--agents bench.agents:registry``
and a baseline server from the same directory, and it is developer tooling
that a wheel should not carry. This module finds that directory (beside
``src/`` in an editable install, or ``AGENTCAST_BENCH_DIR``), makes it
importable, and hands the arguments to ``bench.run.main``.
"""

from __future__ import annotations

import importlib
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import cast

__all__ = ["find_bench_dir", "run_bench"]


def find_bench_dir() -> Path | None:
    """The ``bench/`` directory holding ``run.py``, or ``None`` outside a checkout."""
    override = os.environ.get("AGENTCAST_BENCH_DIR")
    candidates = [Path(override)] if override else []
    candidates.append(Path(__file__).resolve().parents[2] / "bench")
    candidates.append(Path.cwd() / "bench")
    for candidate in candidates:
        if (candidate / "run.py").is_file() and (candidate / "load.py").is_file():
            return candidate.resolve()
    return None


def run_bench(argv: list[str]) -> int:
    """Run ``bench/run.py`` with ``argv`` (``--preset smoke|full``, ``--json PATH`` …).

    Returns:
        The benchmark's exit status: 0 when every phase completed with zero
        gaps, duplicates, reorders and undelivered events; 1 otherwise; 2 when
        no ``bench/`` directory can be found.
    """
    bench_dir = find_bench_dir()
    if bench_dir is None:
        print(
            "agentcast bench: needs a source checkout (the bench/ directory beside src/); "
            "set AGENTCAST_BENCH_DIR to its path",
            file=sys.stderr,
        )
        return 2
    root = str(bench_dir.parent)
    if root not in sys.path:
        sys.path.insert(0, root)
    module = importlib.import_module("bench.run")
    main = cast("Callable[[list[str]], int]", module.main)
    return main(list(argv))
