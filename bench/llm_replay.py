"""The LLM benchmark's model: ``tests/llm/replay.py``'s server in a process of its own.

``python -m bench.llm_replay --port-file FILE`` listens on a free port of
127.0.0.1, writes it to ``FILE`` and serves until SIGTERM (or its parent's
death). Every chat completion request is scripted from its last user message
(:class:`bench.llm_script.RunScript`) through the replay server's router:
the run's tokens leave on an open-loop schedule (``pace_from``) that starts at
the script's ``t0``, so a late send never shifts the following tokens and the
receiver can compute each token's latency from its index. Running it as its
own process (pinned beside the load generator) keeps its work off the CPU of
the process being measured.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # python bench/llm_replay.py: make ``bench`` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.llm_script import RunScript
from tests.llm.replay import ReplayServer, Scenario, pace_from, scenario, stop, text, usage

__all__ = ["main", "script_for"]


def script_for(body: Mapping[str, Any]) -> Scenario | None:
    """The scenario a request asks for in its last user message (``None``: not a script)."""
    messages = body.get("messages")
    if not isinstance(messages, list):
        return None
    for message in reversed(messages):
        if isinstance(message, dict) and message.get("role") == "user":
            try:
                run = RunScript.decode(str(message.get("content")))
            except (ValueError, KeyError, TypeError):
                return None
            return scenario(
                pace_from(run.t0, run.tokens_per_s),
                text(*run.pieces()),
                stop(),
                usage(10, run.tokens),
            )
    return None


async def _serve(port_file: Path) -> None:
    server = ReplayServer(model="replay-bench")
    server.route(script_for)
    await server.start()
    await asyncio.to_thread(port_file.write_text, str(server.port))
    stopped = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stopped.set)
    try:
        while not stopped.is_set():
            # The records of finished requests are not needed: forget them so a
            # long run does not grow (scenarios come from the router, not the FIFO).
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(stopped.wait(), 5.0)
            server.clear()
    finally:
        await server.stop()


def main(argv: list[str] | None = None) -> None:
    """Serve until SIGTERM; the chosen port goes to ``--port-file``."""
    parser = argparse.ArgumentParser(description="the LLM benchmark's replay model server")
    parser.add_argument("--port-file", type=Path, required=True)
    args = parser.parse_args(argv)
    # The standard loop: the replay server's protocol expects asyncio's own transports.
    asyncio.run(_serve(args.port_file))


if __name__ == "__main__":
    main()
