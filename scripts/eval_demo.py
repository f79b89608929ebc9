"""Evaluate the built-in demo model: held-out perplexity, chat answers, routing statistics.

    python scripts/eval_demo.py --model assets/demo-model --corpus data/demo_corpus [--engine] [--json out.json]

Plain transformers (eager experts, float32):
  - held-out perplexity over consecutive 256-token windows of the held-out plays;
  - greedy and sampled (T 0.8, top-p 0.95, seed = the prompt's number 1-5) answers to five prompts through the chat template;
  - reply length: 20 sampled replies (the five prompts, seeds 1-4, at most 256 tokens) and the greedy ones,
    and the share of dictionary words in the answers (/usr/share/dict/words, Debian package wamerican);
  - routing per MoE layer on the held-out text in real token order: usage entropy (bits; 3.0 is
    uniform over 8), the two busiest experts' share of activations, dead experts (no activation),
    the LRU hit rate with half the experts cached and the reuse (share of a token's experts that the
    previous token also used), real token order vs the same tokens shuffled.
With --cli-check: the issue's check, `python -m moepic_core.chat --model demo --prompt "Good morrow, how fares
the king?" --max-new-tokens 60`, its words counted. With --engine (needs `moepic_core.Engine`): held-out perplexity through the engine in float32, int8
and int4, and a routing trace of decoded tokens saved beside the model (moepic_core.plan.trace format).
"""
from __future__ import annotations

import argparse
import json
import math
import re
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repo root, for moepic_core

PROMPTS = [
    [{"role": "user", "content": "What news from the court, my lord?"}],
    [{"role": "user", "content": "Good morrow. How fares the queen today?"}],
    [{"role": "user", "content": "Wilt thou fight for me tomorrow?"}],
    [{"role": "user", "content": "I love thee more than words can tell."}],
    [{"role": "system", "content": "Enter a Messenger."}, {"role": "user", "content": "Speak, what tidings?"}],
]
SEQ_LEN = 256
DEMO = Path(__file__).resolve().parents[1] / "assets" / "demo-model"


def load_model(folder: str):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32, experts_implementation="eager").eval()
    return tok, model


def windows(ids: torch.Tensor, seq_len: int = SEQ_LEN) -> list[torch.Tensor]:
    """Consecutive non-overlapping windows of seq_len + 1 ids (input plus the shifted target)."""
    n = (len(ids) - 1) // seq_len
    return [ids[i * seq_len:(i + 1) * seq_len + 1] for i in range(n)]


@torch.no_grad()
def perplexity(model, ids: torch.Tensor, batch: int = 8) -> float:
    total, count = 0.0, 0
    rows = windows(ids)
    for i in range(0, len(rows), batch):
        x = torch.stack(rows[i:i + batch])
        logits = model(input_ids=x[:, :-1]).logits
        total += F.cross_entropy(logits.flatten(0, 1).float(), x[:, 1:].flatten(), reduction="sum").item()
        count += x[:, 1:].numel()
    return math.exp(total / count)


@torch.no_grad()
def answer_ids(model, tok, messages, do_sample: bool, seed: int = 0, max_new_tokens: int = 64) -> list[int]:
    """The reply's token ids, without the prompt and without the closing <|end|>."""
    ids = tok.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt", return_dict=True)
    torch.manual_seed(seed)
    sampling = dict(do_sample=True, temperature=0.8, top_p=0.95) if do_sample else dict(do_sample=False)
    out = model.generate(**ids, max_new_tokens=max_new_tokens, eos_token_id=tok.eos_token_id,
                         pad_token_id=tok.pad_token_id, **sampling)[0, ids["input_ids"].shape[1]:].tolist()
    return out[:-1] if out and out[-1] == tok.eos_token_id else out


def answer(model, tok, messages, do_sample: bool, seed: int = 0, max_new_tokens: int = 64) -> str:
    return tok.decode(answer_ids(model, tok, messages, do_sample, seed, max_new_tokens), skip_special_tokens=True).strip()


def dictionary_words() -> set[str] | None:
    """Lower-case English words from /usr/share/dict/words (Debian: apt-get install wamerican), or None."""
    path = Path("/usr/share/dict/words")
    return {w.strip().lower() for w in path.read_text(errors="ignore").split()} if path.is_file() else None


def dictionary_share(text: str, words: set[str]) -> float:
    """Share of the text's words (letters and apostrophes, possessive 's dropped) found in `words`."""
    found = [w.lower().removesuffix("'s").strip("'") for w in re.findall(r"[A-Za-z']+", text)]
    found = [w for w in found if w]
    return sum(w in words for w in found) / len(found) if found else 0.0


def reply_lengths(model, tok, seeds=range(1, 5), max_new_tokens: int = 256) -> dict:
    """Replies sampled as the app samples them (T 0.8, top-p 0.95, the model's generation_config) to the
    five prompts, once per seed: tokens per reply (without <|end|>), and greedy lengths beside."""
    sampled = [len(answer_ids(model, tok, m, True, seed, max_new_tokens)) for seed in seeds for m in PROMPTS]
    greedy = [len(answer_ids(model, tok, m, False, 0, max_new_tokens)) for m in PROMPTS]
    return {"sampled": sampled, "mean": float(np.mean(sampled)), "median": float(np.median(sampled)),
            "min": int(min(sampled)), "max": int(max(sampled)),
            "at_cap": sum(n >= max_new_tokens for n in sampled), "max_new_tokens": max_new_tokens,
            "greedy": greedy}


def cli_check(model: str, cache_dir: str, words: set[str] | None) -> dict:
    """The issue's check: `python -m moepic_core.chat --model demo --prompt "Good morrow, how fares the
    king?" --max-new-tokens 60` (greedy) prints at least 20 words, most of them dictionary words."""
    import subprocess

    cmd = [sys.executable, "-m", "moepic_core.chat", "--model", model, "--prompt", "Good morrow, how fares the king?",
           "--max-new-tokens", "60", "--cache-dir", cache_dir]
    out = subprocess.run(cmd, capture_output=True, text=True, cwd=Path(__file__).resolve().parents[1], check=True)
    text = out.stdout.strip()
    result = {"text": text, "words": len(text.split())}
    if words is not None:
        result["dictionary_share"] = dictionary_share(text, words)
    return result


@torch.no_grad()
def routing(model, ids: torch.Tensor, top_k: int) -> np.ndarray:
    """Experts chosen per token and layer in text order: int16 [T, L, k] (router top-k, as the model does)."""
    chosen = []
    for row in windows(ids):
        out = model(input_ids=row[None, :-1], output_router_logits=True)
        chosen.append(torch.stack([r.topk(top_k, dim=-1).indices for r in out.router_logits], dim=1))
    return torch.cat(chosen).numpy().astype(np.int16)


def reuse(experts: np.ndarray) -> float:
    """Share of a token's k experts that the previous token also used, one layer [T, k]."""
    same = (experts[1:, :, None] == experts[:-1, None, :]).any(-1)
    return float(same.mean())


def routing_table(trace: np.ndarray, num_experts: int, layers=None, seed: int = 0) -> list[dict]:
    """Per MoE layer (labelled by its decoder-layer index from `layers`): usage and locality stats.
    The LRU hit rate replays the trace through the engine's own cache directory (moepic_core.plan.replay)."""
    from moepic_core.plan.replay import activations, replay_hits
    from moepic_core.plan.trace import RoutingTrace

    T, L, k = trace.shape
    real = RoutingTrace(trace, num_experts=num_experts)
    shuffled = RoutingTrace(trace[np.random.default_rng(seed).permutation(T)], num_experts=num_experts)
    half = [num_experts // 2] * L
    lru = {name: replay_hits(t, half, "lru") / activations(t) for name, t in (("real", real), ("shuffled", shuffled))}
    rows = []
    for l, counts in enumerate(real.counts()):
        p = counts / counts.sum()
        nz = p[p > 0]
        rows.append(dict(layer=layers[l] if layers is not None else l, entropy_bits=float(-(nz * np.log2(nz)).sum()),
                         top2_share=float(np.sort(p)[::-1][:2].sum()), dead=int((counts == 0).sum()),
                         min_share=float(p.min()), lru_real=float(lru["real"][l]),
                         lru_shuffled=float(lru["shuffled"][l]),
                         reuse_real=reuse(real.experts[:, l]), reuse_shuffled=reuse(shuffled.experts[:, l])))
    return rows


def print_routing(rows: list[dict], tokens: int, what: str = "held-out text, prefill") -> None:
    print(f"\nrouting on {tokens:,} tokens of {what} (LRU: half the experts cached per layer)")
    print("| layer | entropy (bits) | top-2 share | dead | min share | LRU hit real | LRU hit shuffled | "
          "reuse real | reuse shuffled |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print("| {layer} | {entropy_bits:.3f} | {top2_share:.3f} | {dead} | {min_share:.3f} | {lru_real:.3f} | "
              "{lru_shuffled:.3f} | {reuse_real:.3f} | {reuse_shuffled:.3f} |".format(**r))


def engine_eval(folder: str, ids: torch.Tensor, trace_path: Path | None, trace_tokens: int, cache_dir: str) -> dict:
    """Perplexity through the engine (CPU, float32 compute) per expert quantization; then a routing trace
    of sampled chat answers decoded through the float32 engine, saved to `trace_path`."""
    from moepic_core import Engine

    result = {"ppl": {}}
    for quant in ("none", "int8", "int4"):
        t = time.time()
        engine = Engine.load(folder, device="cpu", dtype="float32", quant=quant, cache_dir=cache_dir)
        with torch.no_grad():
            result["ppl"][quant] = perplexity(engine.model, ids)
        print(f"engine quant={quant}: held-out perplexity {result['ppl'][quant]:.3f} ({time.time() - t:.0f} s)",
              flush=True)
        if quant != "none":
            engine.close()
            continue
        from moepic_core.runtime.text import chat_input_ids

        engine.start_trace()
        seed = 0
        while len(engine.runtime.recorder) < trace_tokens:
            messages = PROMPTS[seed % len(PROMPTS)]
            engine.generate(chat_input_ids(engine.tokenizer, messages), max_new_tokens=96, do_sample=True,
                            temperature=0.8, top_p=0.95, seed=seed)
            seed += 1
        trace = engine.stop_trace()
        result["trace"] = dict(trace.stats(), answers=seed)
        recall = trace.prediction_recall()
        if recall is not None:
            result["trace"]["prediction_recall"] = [None if np.isnan(r) else float(r) for r in recall]  # None: never guessed
        result["trace_routing"] = routing_table(trace.experts, trace.num_experts, engine.spec.moe_layers)
        print_routing(result["trace_routing"], trace.num_tokens, f"decode trace through the engine ({seed} answers)")
        if trace_path is not None:
            trace.save(trace_path)
            print(f"saved {trace.num_tokens} decode steps to {trace_path}: {json.dumps(result['trace'])}")
        engine.close()
    return result


def cold_start(model: str, cache_dir: str, prompt: str = "Good morrow, my lord.") -> float:
    """Seconds from spawning `python -m moepic_core.chat` to its first streamed byte of answer."""
    import os
    import subprocess

    root = Path(__file__).resolve().parents[1]
    cmd = [sys.executable, "-m", "moepic_core.chat", "--model", model, "--device", "cpu", "--cache-dir", cache_dir,
           "--max-new-tokens", "32", "--prompt", prompt]
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    t = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=root, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    first = proc.stdout.read(1)
    seconds = time.perf_counter() - t
    rest, err = proc.communicate()
    if proc.returncode != 0 or not first:
        raise RuntimeError(f"{' '.join(cmd)} failed: {err.decode()[-500:]}")
    print(f"cold start {seconds:.2f} s to the first token; answer: {(first + rest).decode().strip()!r}", flush=True)
    return seconds


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="assets/demo-model")
    ap.add_argument("--corpus", default="data/demo_corpus")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--engine", action="store_true", help="also evaluate through moepic_core.Engine")
    ap.add_argument("--trace-tokens", type=int, default=256, help="decode steps to record through the engine")
    ap.add_argument("--trace", default=None, help="where to save the trace (default: <model>/routing_trace.npz)")
    ap.add_argument("--cache-dir", default="runs/moepic-cache", help="the engine's packed expert stores")
    ap.add_argument("--json", default=None, help="write all results here")
    ap.add_argument("--cold-start", action="store_true",
                    help="time `python -m moepic_core.chat --model demo` to its first token (new, then warm store)")
    ap.add_argument("--cli-check", action="store_true",
                    help="run `python -m moepic_core.chat --model demo --prompt ... --max-new-tokens 60` and count its words")
    ap.add_argument("--max-tokens", type=int, default=0, help="use only the first N held-out tokens (quick checks)")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)

    tok, model = load_model(args.model)
    held = torch.tensor(tok((Path(args.corpus) / "heldout.txt").read_text(encoding="utf-8"))["input_ids"])
    if args.max_tokens:
        held = held[:args.max_tokens]
    results = {"model": args.model, "heldout_tokens": int(len(held))}
    results["heldout_ppl"] = perplexity(model, held)
    print(f"held-out perplexity (transformers, float32): {results['heldout_ppl']:.3f} "
          f"(CE {math.log(results['heldout_ppl']):.4f} nats/token over {len(windows(held)) * SEQ_LEN:,} tokens)")

    results["answers"] = []
    for number, messages in enumerate(PROMPTS, 1):  # each prompt samples with its own seed, its number
        row = {"messages": messages, "greedy": answer(model, tok, messages, False, max_new_tokens=256),
               "sampled": answer(model, tok, messages, True, seed=number, max_new_tokens=256)}
        results["answers"].append(row)
        print(f"\nprompt: {json.dumps(messages)}\n  greedy:  {row['greedy']!r}\n  sampled: {row['sampled']!r}")
    lengths = results["reply_tokens"] = reply_lengths(model, tok)
    print(f"\nreply length, {len(lengths['sampled'])} sampled replies (T 0.8, top-p 0.95, at most "
          f"{lengths['max_new_tokens']}): mean {lengths['mean']:.1f} tokens, median {lengths['median']:.0f}, "
          f"min {lengths['min']}, max {lengths['max']}, {lengths['at_cap']} cut at the cap; greedy {lengths['greedy']}")
    words = dictionary_words()
    if words is not None:
        shares = [dictionary_share(row[kind], words) for row in results["answers"] for kind in ("greedy", "sampled")]
        results["dictionary_share"] = float(np.mean(shares))
        print(f"dictionary words in the ten answers above: {results['dictionary_share']:.0%} (/usr/share/dict/words)")

    from moepic_core.models import load_spec

    spec = load_spec(args.model)
    trace = routing(model, held, spec.top_k)
    results["routing"] = routing_table(trace, spec.num_experts, spec.moe_layers)
    print_routing(results["routing"], trace.shape[0])

    if args.engine:
        trace_path = Path(args.trace) if args.trace else Path(args.model) / "routing_trace.npz"
        results["engine"] = engine_eval(args.model, held, trace_path, args.trace_tokens, args.cache_dir)
    if args.cli_check:
        results["cli_check"] = cli_check("demo" if Path(args.model).resolve() == DEMO else args.model, args.cache_dir,
                                         dictionary_words())
        print(f"\nchat CLI, greedy, 60 tokens: {results['cli_check']}")
    if args.cold_start:
        import tempfile

        with tempfile.TemporaryDirectory() as store:
            results["cold_start_s"] = {"first_launch": cold_start("demo", store), "second_launch": cold_start("demo", store)}
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
