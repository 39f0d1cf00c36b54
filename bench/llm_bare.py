"""The LLM benchmark's baseline: the same streams read with the bare ``openai`` SDK.

``python -m bench.llm_bare --spec JSON`` runs ``runs`` concurrent streaming
requests against the replay server, with one ``openai.AsyncOpenAI`` made as
``ChatAgent`` makes its own (``api_key`` placeholder, ``base_url``,
``max_retries=0``) and the same request (``stream=True``,
``stream_options.include_usage``, the run's script as the user message). Each
loop only concatenates ``delta.content``: what any program that streams a
model's answer must pay at least. Its CPU per token is the yardstick for
agentcast's *added* CPU per token, measured in the same run and pinned to the
same CPU as the agentcast server (``bench/llm_bench.py``).

The process warms up first (one short request: lazy imports and the
connection pool), then measures its own user+system CPU (psutil, every
thread) from just before the requests go out until the last stream ends, and
prints one JSON line. It checks every answer against its script; a wrong or
missing answer is reported, never hidden.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from array import array
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # python bench/llm_bare.py: make ``bench`` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import openai
import psutil  # type: ignore[import-untyped]
from bench.llm_script import MODEL, RunScript
from bench.stats import percentiles

__all__ = ["main", "run_bare"]


async def _stream(
    client: openai.AsyncOpenAI, script: RunScript, latencies: array[float] | None = None
) -> str:
    """One run: the request ChatAgent sends, its content concatenated.

    With ``latencies``, each token's *receipt - due* is recorded too (a
    ``time.time()`` and an index parse per chunk, about 1 % of the SDK's own
    cost per chunk): how late the bare SDK itself reads at this load.
    """
    stream = await client.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": script.encode()}],
        stream=True,
        stream_options={"include_usage": True},
    )
    parts: list[str] = []
    async with stream:
        async for chunk in stream:
            if chunk.choices:
                content = chunk.choices[0].delta.content
                if content:
                    parts.append(content)
                    if latencies is not None:
                        index = content.rstrip().rpartition(".")[2]
                        latencies.append(time.time() - script.due(int(index)))
    return "".join(parts)


async def run_bare(spec: dict[str, Any]) -> dict[str, Any]:
    """Run one baseline phase (see the module docstring); its figures as a dict."""
    client = openai.AsyncOpenAI(api_key="unused", base_url=spec["base_url"], max_retries=0)
    warm = RunScript(f"{spec['label']}w", time.time(), 1000.0, 5)
    warm_ok = await asyncio.wait_for(_stream(client, warm), 30) == warm.text()
    t0 = max(time.time() + 0.5, float(spec["t0"]))
    scripts = [
        RunScript(f"{spec['label']}r{k}", t0, float(spec["tokens_per_s"]), int(spec["tokens"]))
        for k in range(int(spec["runs"]))
    ]
    latencies: array[float] = array("d")
    me = psutil.Process()
    before, started, machine_before = me.cpu_times(), time.time(), _busy()
    deadline = max(s.end for s in scripts) + float(spec.get("drain_timeout", 15.0))
    results = await asyncio.wait_for(
        asyncio.gather(*(_stream(client, s, latencies) for s in scripts), return_exceptions=True),
        max(1.0, deadline - time.time()),
    )
    after, ended, machine_after = me.cpu_times(), time.time(), _busy()
    await client.close()
    cpu = (after.user + after.system) - (before.user + before.system)
    good = sum(1 for s, r in zip(scripts, results, strict=True) if r == s.text())
    tokens = sum(s.tokens for s, r in zip(scripts, results, strict=True) if r == s.text())
    errors = sorted({repr(r)[:200] for r in results if isinstance(r, BaseException)})
    return {
        "kind": "bare",
        "runs": len(scripts),
        "runs_ok": good,
        "warm_ok": warm_ok,
        "tokens": tokens,
        "window_s": round(ended - started, 3),
        "cpu_s": round(cpu, 4),
        "cpu_user_s": round(after.user - before.user, 4),
        "cpu_system_s": round(after.system - before.system, 4),
        "cpu_us_per_token": round(cpu / tokens * 1e6, 2) if tokens else None,
        "cpu_cores": round(cpu / max(1e-9, ended - started), 3),
        "latency_ms": percentiles(latencies),
        # The rest of the machine (the model server, and anyone else's work).
        "rest_cpu_cores": round(
            max(0.0, machine_after - machine_before - cpu) / (ended - started), 3
        ),
        "error_samples": errors[:3],
    }


def _busy() -> float:
    """CPU seconds the whole machine spent busy so far."""
    machine = psutil.cpu_times()
    return float(sum(machine) - machine.idle - getattr(machine, "iowait", 0.0))


def main(argv: list[str] | None = None) -> None:
    """One phase from ``--spec``; one JSON line on stdout."""
    parser = argparse.ArgumentParser(description="bare-SDK baseline of the LLM benchmark")
    parser.add_argument("--spec", required=True, help="the phase as JSON")
    args = parser.parse_args(argv)
    import uvloop  # the server's loop too (agentcast serve runs on uvloop)

    try:
        result = uvloop.run(run_bare(json.loads(args.spec)))
    except Exception as exc:  # reported, the orchestrator decides
        result = {"kind": "bare", "failed": f"{type(exc).__name__}: {exc}"}
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
