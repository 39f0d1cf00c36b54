"""A process that starts runs and waits to be killed (see test_restart.py).

It starts ``parent`` (which delegates to ``hanger``, whose tool hangs) and an
enqueued ``echo`` in the same thread, prints one JSON line once the sub-run's
tool call is in the log, then waits for SIGKILL.
"""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path

from agentcast.config import EngineSettings
from agentcast.engine import Engine
from tests.runner.helpers import test_registry


async def main(data_dir: str) -> None:
    engine = Engine(EngineSettings(data_dir=Path(data_dir)), test_registry())
    await engine.start()
    first = await engine.runner.start_run("alice", "parent", "go")
    second = await engine.runner.start_run(
        "alice", "echo", "after the crash", thread_id=first.thread_id, on_active="enqueue"
    )
    follower = await engine.bridge.follow(first.thread_id, 0)
    seen = 0
    async for event in follower:
        seen = event.seq
        if event.type == "tool_executing":
            break
    info = await engine.bridge.info(first.thread_id)
    print(
        json.dumps(
            {
                "thread_id": first.thread_id,
                "parent": first.run_id,
                "queued": second.run_id,
                "epoch": info.epoch,
                "seen": seen,
            }
        ),
        flush=True,
    )
    await asyncio.sleep(3600)


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1]))
