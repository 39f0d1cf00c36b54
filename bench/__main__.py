"""``python -m bench``: the load benchmark, from a checkout's root (bench/run.py)."""

from __future__ import annotations

import sys

from bench.run import main

sys.exit(main())
