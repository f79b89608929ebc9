"""What the OpenAI-compatible API costs: tok/s of a reply streamed through POST /v1/chat/completions
vs `Engine.stream_chat` called directly, same engine, prompt, sampling (seeded) and length.

The app serves in this process as `python launch.py` does (page and API on one port); the direct runs
go through the engine thread (worker.call), the API runs come from a separate client process
reading the server-sent events with httpx. Runs go in ABBA order (direct, API, API, direct, ...)
and rates are totals over all runs, so a drift in machine load hits both paths alike. Beside
wall-clock tok/s, tokens per CPU-second of the serving process (engine, event loop, page; not the
client) show the same ratio less disturbed by other programs. Goal: API / direct >= 0.95.

    python benchmarks/api_overhead.py [--model demo] [--tokens 128] [--runs 5] [--threads N]

On a shared CPU, --threads 1 keeps torch's parallel regions from waiting on descheduled threads
(a prefill can take seconds that way), which otherwise swamps what is measured here.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

MESSAGES = [{"role": "user", "content": "Tell me a long tale of the war"}]
SAMPLING = dict(temperature=2.0, top_p=1.0, seed=0)  # seeded: both paths make the same tokens

CLIENT = r"""
import json, sys, time, httpx
url, body = sys.argv[1], json.loads(sys.argv[2])
text, first, usage = [], None, None
client = httpx.Client(timeout=600)  # made before the clock starts: it loads TLS certificates
print("ready", flush=True)
sys.stdin.readline()  # go
start = time.perf_counter()
with client.stream("POST", url, json=body) as response:
    for line in response.iter_lines():
        if not line.startswith("data: ") or line == "data: [DONE]":
            continue
        chunk = json.loads(line[6:])
        usage = chunk.get("usage") or usage
        for choice in chunk["choices"]:
            if choice["delta"].get("content"):
                first = first or time.perf_counter()
                text.append(choice["delta"]["content"])
end = time.perf_counter()
print(json.dumps({"seconds": end - start, "decode_seconds": end - first, "text": "".join(text), "usage": usage}))
"""


def direct_run(worker, tokens: int) -> dict:
    """Engine.stream_chat on the engine thread, timed there."""
    def run(engine):
        start, first, text = time.perf_counter(), None, []
        for chunk in engine.stream_chat(MESSAGES, max_new_tokens=tokens, **SAMPLING):
            first = first or time.perf_counter()
            text.append(chunk)
        end = time.perf_counter()
        return {"seconds": end - start, "decode_seconds": end - first, "text": "".join(text)}

    cpu = time.process_time()
    return worker.call(run) | {"cpu_seconds": time.process_time() - cpu}


def api_run(url: str, tokens: int) -> dict:
    body = dict(messages=MESSAGES, max_tokens=tokens, stream=True, **SAMPLING)  # no "model": the loaded one
    client = subprocess.Popen([sys.executable, "-c", CLIENT, url + "v1/chat/completions", json.dumps(body)],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    client.stdout.readline()  # "ready": its start-up is not counted
    cpu = time.process_time()
    client.stdin.write("go\n")
    client.stdin.flush()
    out = client.stdout.readline()
    cpu = time.process_time() - cpu
    if client.wait(timeout=60) or not out:
        raise SystemExit(f"the client failed (exit {client.returncode})")
    return json.loads(out) | {"cpu_seconds": cpu}


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="demo")
    ap.add_argument("--tokens", type=int, default=128)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    args = ap.parse_args(argv)
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    from app.testing import start_server, stop_server

    served, url, controller = start_server(args.model, first_port=7995, device="cpu")
    try:
        direct_run(controller.worker, args.tokens), api_run(url, args.tokens)  # warm-up
        rows = {"direct": [], "api": []}
        runs = {"direct": lambda: direct_run(controller.worker, args.tokens), "api": lambda: api_run(url, args.tokens)}
        for i in range(args.runs):  # direct-API, API-direct, ...: a drift in machine load hits both alike
            for path in ("direct", "api") if i % 2 == 0 else ("api", "direct"):
                rows[path].append(runs[path]())
    finally:
        stop_server(served, controller)
    return report(rows)


def report(rows: dict) -> dict:
    api, direct = rows["api"], rows["direct"]
    tokens = api[0]["usage"]["completion_tokens"]
    if {r["text"] for r in api + direct} != {api[0]["text"]}:
        raise SystemExit("the API and the engine made different replies: not the same length, no comparison")
    rate = {path: [len(rs) * tokens / sum(r["seconds"] for r in rs),
                  len(rs) * (tokens - 1) / sum(r["decode_seconds"] for r in rs),
                  len(rs) * tokens / sum(r["cpu_seconds"] for r in rs)] for path, rs in rows.items()}
    print(f"{'path':<36}{'tokens':>7}{'tok/s':>9}{'decode tok/s':>14}{'tok/CPU-s':>11}   (over {len(api)} runs each)")
    for path, label in (("direct", "Engine.stream_chat (engine thread)"), ("api", "POST /v1/chat/completions (SSE)")):
        print(f"{label:<36}{tokens:>7}" + "".join(f"{v:>{w}.2f}" for v, w in zip(rate[path], (9, 14, 11))))
    ratios = [a / d for a, d in zip(rate["api"], rate["direct"])]
    print(f"ratio API / direct: {ratios[0]:.3f} tok/s, {ratios[1]:.3f} decode tok/s, {ratios[2]:.3f} tok per "
          "CPU-second; goal >= 0.95")
    return {"tokens": tokens, "direct": rate["direct"], "api": rate["api"], "ratios": ratios}


if __name__ == "__main__":
    main()
