"""Engine micro-benchmark: durable append throughput and emit→follower latency.

Measures, on this machine and in this run:

1. the disk's fsync latency (context for every durable figure);
2. ``log.append`` throughput with ``--producers`` concurrent producers, one
   event per call (only the database writer's group commit batches them: the
   worst case for the log, which no server component produces);
3. ``bridge.emit()`` throughput with the same number of concurrent emitters;
4. emit→follower latency at ``--rate`` events/s on an open-loop schedule: each
   event is due at an absolute time, and latency is measured from that time,
   so a slow commit cannot hide behind a late send (no coordinated omission).

Every figure names its backend and durability mode (SQLite ``FULL`` unless
``--modes`` says otherwise). Run: ``python bench/engine_bench.py [--json PATH]``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from agentcast.bridge import Bridge
from agentcast.config import EngineSettings
from agentcast.db.sqlite import SqliteDatabase
from agentcast.events import encode_payload
from agentcast.log.base import EventDraft, EventLog
from agentcast.log.memory import MemoryLog
from agentcast.log.sqlite import SqliteLog
from agentcast.types import new_event_id

PAYLOAD = encode_payload("agent_thinking", {"reasoning": "x" * 120, "progress": 0.5})


def quantiles(samples: Sequence[float]) -> dict[str, float]:
    """p50 / p99 / p99.9 / max in milliseconds."""
    if not samples:
        return {"p50": 0.0, "p99": 0.0, "p99.9": 0.0, "max": 0.0}
    s = sorted(samples)

    def q(p: float) -> float:
        return s[min(len(s) - 1, int(p * len(s)))] * 1000

    return {"p50": q(0.50), "p99": q(0.99), "p99.9": q(0.999), "max": s[-1] * 1000}


def fsync_latency(directory: Path, count: int = 500) -> dict[str, float]:
    """Write 4 KiB and fsync, ``count`` times."""
    path = directory / "fsync.probe"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
    samples = []
    try:
        for _ in range(count):
            os.write(fd, b"x" * 4096)
            t = time.perf_counter()
            os.fsync(fd)
            samples.append(time.perf_counter() - t)
    finally:
        os.close(fd)
        path.unlink()
    return quantiles(samples)


async def open_log(mode: str, directory: Path) -> tuple[EventLog, SqliteDatabase | None]:
    if mode == "memory":
        log: EventLog = MemoryLog()
        await log.open()
        return log, None
    db = SqliteDatabase(directory / mode, synchronous=mode)  # type: ignore[arg-type]
    await db.open()
    log = SqliteLog(db)
    await log.open()
    return log, db


async def close_log(log: EventLog, db: SqliteDatabase | None) -> None:
    await log.close()
    if db is not None:
        await db.close()


async def append_throughput(log: EventLog, producers: int, seconds: float) -> dict[str, Any]:
    """Each producer appends one event per call to its own thread until time is up."""
    deadline = time.perf_counter() + seconds
    counts = [0] * producers

    async def producer(i: int) -> None:
        thread = f"bench_{i}"
        while time.perf_counter() < deadline:
            draft = EventDraft(
                new_event_id(), thread, "run", None, "agent_thinking", time.time(), "bench",
                PAYLOAD,
            )  # fmt: skip
            await log.append([draft])
            counts[i] += 1

    started = time.perf_counter()
    await asyncio.gather(*(producer(i) for i in range(producers)))
    elapsed = time.perf_counter() - started
    return {"events": sum(counts), "seconds": elapsed, "events_per_s": sum(counts) / elapsed}


async def emit_throughput(bridge: Bridge, emitters: int, seconds: float) -> dict[str, Any]:
    deadline = time.perf_counter() + seconds
    counts = [0] * emitters
    data = {"reasoning": "x" * 120, "progress": 0.5}

    async def emitter(i: int) -> None:
        thread = f"emit_{i}"
        while time.perf_counter() < deadline:
            await bridge.emit(
                thread_id=thread, run_id="run", agent="bench", event_type="agent_thinking",
                data=data,
            )  # fmt: skip
            counts[i] += 1

    started = time.perf_counter()
    await asyncio.gather(*(emitter(i) for i in range(emitters)))
    elapsed = time.perf_counter() - started
    return {"events": sum(counts), "seconds": elapsed, "events_per_s": sum(counts) / elapsed}


async def follower_latency(bridge: Bridge, rate: float, seconds: float) -> dict[str, Any]:
    """Open-loop emits at ``rate``/s into 10 threads; one follower per thread."""
    threads = [f"lat_{i}" for i in range(10)]
    total = int(rate * seconds)
    due: dict[str, float] = {}
    samples: list[float] = []
    received = 0
    done = asyncio.Event()

    async def follow(thread: str) -> None:
        nonlocal received
        info = await bridge.info(thread)
        follower = await bridge.follow(thread, info.last_seq, info.epoch)
        try:
            while True:
                for ev in await follower.next_batch(1024):
                    samples.append(time.perf_counter() - due.pop(ev.event_id))
                    received += 1
                if received >= total:
                    done.set()
                    return
        finally:
            await follower.aclose()

    followers = [asyncio.create_task(follow(t)) for t in threads]
    await asyncio.sleep(0.05)
    loop = asyncio.get_running_loop()
    start = time.perf_counter() + 0.01
    data = {"reasoning": "tick", "progress": 0.5}
    pending: set[asyncio.Task[Any]] = set()
    for i in range(total):
        at = start + i / rate
        delay = at - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        event_id = new_event_id()
        due[event_id] = at
        task = loop.create_task(
            bridge.emit(
                thread_id=threads[i % len(threads)], run_id="run", agent="bench",
                event_type="agent_thinking", data=data, event_id=event_id,
            )
        )  # fmt: skip
        pending.add(task)
        task.add_done_callback(pending.discard)
    await asyncio.wait_for(done.wait(), timeout=seconds + 30)
    for f in followers:
        f.cancel()
    await asyncio.gather(*followers, return_exceptions=True)
    return {"events": received, "rate": rate, "latency_ms": quantiles(samples)}


async def run_mode(mode: str, directory: Path, args: argparse.Namespace) -> dict[str, Any]:
    result: dict[str, Any] = {"mode": mode}
    log, db = await open_log(mode, directory)
    try:
        result["append"] = await append_throughput(log, args.producers, args.seconds)
    finally:
        await close_log(log, db)
    # Each phase gets a fresh database, so that the latency phase measures the
    # steady state at its rate, not the checkpoint backlog of a saturation phase.
    for phase in ("emit", "follow"):
        log, db = await open_log(mode, directory / phase)
        bridge = Bridge(log, EngineSettings(health_interval_s=3600))
        try:
            await bridge.ensure_integration()
            if phase == "emit":
                result["emit"] = await emit_throughput(bridge, args.producers, args.seconds)
            else:
                result["follow"] = await follower_latency(bridge, args.rate, args.seconds)
        finally:
            await bridge.close()
            if db is not None:
                await db.close()
    return result


def table(report: dict[str, Any]) -> str:
    f = report["fsync_ms"]
    lines = [
        f"machine: {report['machine']}  python {report['python']}",
        f"fsync (4 KiB): p50 {f['p50']:.3f} ms  p99 {f['p99']:.3f} ms",
        f"{report['producers']} concurrent producers, {report['seconds']} s per figure; "
        f"follower latency at {report['rate']:.0f} events/s (open loop)",
        "",
        f"{'log (mode)':<16}{'append ev/s':>13}{'emit ev/s':>12}"
        f"{'p50 ms':>9}{'p99 ms':>9}{'p99.9 ms':>10}{'max ms':>9}",
    ]
    for r in report["results"]:
        lat = r["follow"]["latency_ms"]
        name = "memory" if r["mode"] == "memory" else f"sqlite ({r['mode']})"
        lines.append(
            f"{name:<16}{r['append']['events_per_s']:>13,.0f}{r['emit']['events_per_s']:>12,.0f}"
            f"{lat['p50']:>9.3f}{lat['p99']:>9.3f}{lat['p99.9']:>10.3f}{lat['max']:>9.3f}"
        )
    return "\n".join(lines)


async def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--producers", type=int, default=100)
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--rate", type=float, default=1000.0)
    parser.add_argument("--modes", default="FULL,NORMAL,memory")
    parser.add_argument("--dir", type=Path, default=None, help="where the databases go")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        directory = Path(tmp)
        report: dict[str, Any] = {
            "machine": f"{platform.machine()} {os.cpu_count()} cores {platform.system()}",
            "python": platform.python_version(),
            "producers": args.producers,
            "seconds": args.seconds,
            "rate": args.rate,
            "fsync_ms": fsync_latency(directory),
            "results": [],
        }
        for mode in args.modes.split(","):
            report["results"].append(await run_mode(mode.strip(), directory, args))
    print(table(report))
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
