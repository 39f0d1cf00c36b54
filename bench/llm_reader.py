"""CPU per chunk of ChatAgent's two stream readers, on the same replayed streams.

``python bench/llm_reader.py`` starts the benchmark's replay server
(``bench/llm_replay.py``) in a process of its own, then, in this process on
uvloop (as ``agentcast serve``), reads the same scripted streams two ways,
alternating A B A B after one unmeasured warm-up of each:

- **sdk**: ``client.chat.completions.create(stream=True)`` and the SDK's
  ``AsyncStream`` of pydantic ``ChatCompletionChunk`` (the path of SDK-shaped
  clients, and of every client before agentcast read the body itself);
- **sse**: ``with_streaming_response.create(...)`` and
  :func:`agentcast.llm.sse.iter_chunks` over the SDK's default HTTP client;
- **aio**: the same over the SDK's aiohttp transport
  (``openai.DefaultAioHttpClient``, ``openai[aiohttp]``): what ``ChatAgent``'s
  own client uses when aiohttp is installed.

Either way each chunk goes through a ``StepReader`` whose ``say`` only
appends, so the figure is the reader's whole cost per chunk and nothing of
an engine. A phase is ``runs`` concurrent streams of ``tokens`` tokens at
``tokens_per_s`` each (2,000 chunks/s in all by default: below what the SDK
path saturates a core at, so both read about one chunk per network read, as
in the full benchmark). This process is pinned to the first CPU and the
replay server to the second, as in ``bench/llm_bench.py``. CPU is this
process's user+system time (psutil) from just before the requests until the
last stream ends, ÷ chunks read; every answer is checked against its script.
One JSON object is printed.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # python bench/llm_reader.py: make ``bench`` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import openai
import psutil  # type: ignore[import-untyped]
from bench.llm_script import MODEL, RunScript

from agentcast.llm.sse import iter_chunks
from agentcast.llm.stream import StepReader

__all__ = ["main"]

ROOT = Path(__file__).resolve().parent.parent


async def _sdk_chunks(client: openai.AsyncOpenAI, request: dict[str, Any]) -> AsyncIterator[Any]:
    stream = await client.chat.completions.create(**request)
    async with stream:
        async for chunk in stream:
            yield chunk


async def _sse_chunks(client: openai.AsyncOpenAI, request: dict[str, Any]) -> AsyncIterator[Any]:
    async with client.chat.completions.with_streaming_response.create(**request) as response:
        async for chunk in iter_chunks(response):
            yield chunk


PATHS = {"sdk": _sdk_chunks, "sse": _sse_chunks, "aio": _sse_chunks}


async def _one(client: openai.AsyncOpenAI, path: str, script: RunScript) -> tuple[str, int]:
    parts: list[str] = []

    async def say(text: str) -> None:
        parts.append(text)

    async def think(text: str) -> None:
        return None

    reader = StepReader(say, think)
    request = {
        "model": MODEL,
        "messages": [{"role": "user", "content": script.encode()}],
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    chunks = 0
    async for chunk in PATHS[path](client, request):
        chunks += 1
        await reader.feed(chunk)
    return reader.result().text, chunks


async def _phase(
    client: openai.AsyncOpenAI, path: str, label: str, runs: int, tokens: int, rate: float
) -> dict[str, Any]:
    t0 = time.time() + 0.3
    scripts = [RunScript(f"{label}r{k}", t0, rate, tokens) for k in range(runs)]
    me = psutil.Process()
    before, started = me.cpu_times(), time.time()
    results = await asyncio.gather(*(_one(client, path, s) for s in scripts))
    after, ended = me.cpu_times(), time.time()
    cpu = (after.user + after.system) - (before.user + before.system)
    chunks = sum(n for _, n in results)
    ok = sum(1 for s, (text, _) in zip(scripts, results, strict=True) if text == s.text())
    return {
        "path": path,
        "runs_ok": f"{ok}/{runs}",
        "chunks": chunks,
        "cpu_s": round(cpu, 3),
        "cpu_us_per_chunk": round(cpu / chunks * 1e6, 1),
        "cores": round(cpu / (ended - started), 3),
    }


async def _main(base_url: str, rounds: int, runs: int, tokens: int, rate: float) -> dict[str, Any]:
    clients = {
        path: openai.AsyncOpenAI(
            api_key="unused",
            base_url=base_url,
            max_retries=0,
            **({"http_client": openai.DefaultAioHttpClient()} if path == "aio" else {}),
        )
        for path in PATHS
    }
    for path in PATHS:  # warm-up: lazy imports, the connection pool
        await _phase(clients[path], path, f"w{path}", runs, 20, 1000.0)
    phases = []
    for r in range(rounds):
        for path in PATHS:
            phases.append(await _phase(clients[path], path, f"{path}{r}", runs, tokens, rate))
    for client in clients.values():
        await client.close()
    means = {
        path: round(sum(p["cpu_us_per_chunk"] for p in phases if p["path"] == path) / rounds, 1)
        for path in PATHS
    }
    return {
        "phases": phases,
        "mean_cpu_us_per_chunk": means,
        "sdk_over_sse": round(means["sdk"] / means["sse"], 1),
        "sdk_over_aio": round(means["sdk"] / means["aio"], 1),
        "loadavg_1m": os.getloadavg()[0],
    }


def main(argv: list[str] | None = None) -> None:
    """Start the replay server, run the phases, print the figures as JSON."""
    parser = argparse.ArgumentParser(description="CPU per chunk: the SDK's stream vs agentcast's")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--tokens", type=int, default=1000)
    parser.add_argument("--tokens-per-s", type=float, default=100.0)
    args = parser.parse_args(argv)
    import uvloop

    with tempfile.TemporaryDirectory() as tmp:
        port_file = Path(tmp) / "port"
        cpus = sorted(os.sched_getaffinity(0))
        server = subprocess.Popen(
            [sys.executable, "-m", "bench.llm_replay", "--port-file", str(port_file)], cwd=ROOT
        )
        if len(cpus) > 1:  # as the full benchmark: the reader on one CPU, the model on another
            os.sched_setaffinity(0, {cpus[0]})
            os.sched_setaffinity(server.pid, {cpus[1]})
        try:
            deadline = time.monotonic() + 20
            while not (port_file.exists() and port_file.read_text()):
                if time.monotonic() > deadline or server.poll() is not None:
                    raise SystemExit("the replay server did not start")
                time.sleep(0.05)
            base_url = f"http://127.0.0.1:{port_file.read_text()}/v1"
            result = uvloop.run(
                _main(base_url, args.rounds, args.runs, args.tokens, args.tokens_per_s)
            )
        finally:
            server.terminate()
            server.wait(10)
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
