"""Train the built-in demo MoE model (a small Qwen3-MoE or Mixtral) on Shakespeare, seeded and reproducible.

The shipped model is two stages (see assets/demo-model/README.md):

    # 1. from scratch on the first format (every speech headed NAME.): the defaults
    python scripts/fetch_demo_corpus.py --out data/corpus_v1 --long-speech-words 0
    python scripts/train_demo.py --corpus data/corpus_v1 --run runs/stage1
    # 2. on today's format (speeches of 20+ words headed NAME:), from stage 1, its tokenizer kept
    python scripts/fetch_demo_corpus.py --out data/demo_corpus
    python scripts/train_demo.py --corpus data/demo_corpus --init runs/stage1/best --run runs/stage2 \
        --max-steps 300 --warmup 30 --lr 5e-4 --eval-every 50 --threads 2 --out assets/demo-model

Stage 1's defaults: Qwen3-MoE, 7 layers of which the first two are dense (their routing would only
follow the token id, see assets/demo-model/README.md), 8 experts, top-2, balance coefficient 0.005,
1500 steps. Stage 2 teaches it the long-speech header that the chat template asks for (`KING:`), so
replies are speeches, not one-liners.

Steps: train a byte-level BPE tokenizer on the training split; build the model from a
config; train with AdamW on random windows (one CPU thread by default), residual/embedding dropout
and a per-layer Switch-style load-balancing loss; print train and held-out cross-entropy every
`--eval-every` steps; keep the best held-out checkpoint (atomic: temp dir, then rename) so a run
stopped at `--max-minutes` still leaves a usable model; export the best one to `--out`.
The learning-rate schedule depends on `--max-steps` only, so the same flags give the same weights
as long as the run is not stopped by the wall clock.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from fetch_demo_corpus import EOS, LONG_SPEECH_WORDS  # the corpus format this template speaks

BOS, PAD = "<|begin|>", "<|pad|>"
MIN_REPLY_TOKENS = 24  # generation_config.min_new_tokens: below a long speech's 20 words (~33 tokens)
USER_NAME, ASSISTANT_NAME = "FIRST LORD", "KING"
# A chat turn is one speech of the corpus: "SPEAKER.\n<text><|end|>", or "SPEAKER:\n..." when the
# text has LONG_SPEECH_WORDS words or more; a system message becomes a stage direction "[text]\n".
# The model answers as ASSISTANT_NAME (or the assistant message's `name`) with "KING:\n", i.e. it is
# asked for a long speech, and stops at <|end|>, the end of its speech.
CHAT_TEMPLATE = (
    "{%- for m in messages -%}"
    "{%- set text = m['content'] | trim -%}"
    "{%- if m['role'] == 'system' -%}{{ '[' ~ text ~ ']\\n' }}"
    "{%- else -%}"
    "{%- set default = '" + USER_NAME + "' if m['role'] == 'user' else '" + ASSISTANT_NAME + "' -%}"
    "{%- set speaker = m['name'] if (m['name'] is defined and m['name']) else default -%}"
    "{%- set mark = ':' if (text.split() | length) >= " + str(LONG_SPEECH_WORDS) + " else '.' -%}"
    "{{ (speaker | upper) ~ mark ~ '\\n' ~ text ~ '" + EOS + "' }}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ '" + ASSISTANT_NAME + ":\\n' }}{%- endif -%}"
)


def train_tokenizer(text: str, vocab_size: int, folder: Path):
    """Byte-level BPE on `text`, wrapped with eos/bos/pad and the chat template; saved to `folder`."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[EOS, BOS, PAD],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(text.split(EOS), trainer=trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=EOS, bos_token=BOS, pad_token=PAD,
                                   chat_template=CHAT_TEMPLATE, model_max_length=1024)
    fast.save_pretrained(folder)
    return fast


def demo_config(tok, args):
    """A MixtralConfig, or with `--arch qwen3_moe` a Qwen3MoeConfig whose `--dense-layers` have a plain
    MLP (as DeepSeek/Qwen-style models keep their first layer dense), from the size flags."""
    assert args.hidden % 64 == 0 and args.intermediate % 16 == 0, "int4/int8 groups need H % 64, I % 16"
    common = dict(
        vocab_size=len(tok), hidden_size=args.hidden, num_hidden_layers=args.layers,
        num_attention_heads=args.hidden // 64, num_key_value_heads=args.hidden // 128, head_dim=64,
        num_experts_per_tok=2, max_position_embeddings=1024, rope_theta=10000.0, tie_word_embeddings=False,
        attention_dropout=0.0, router_aux_loss_coef=args.balance_coef,
        bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
    )
    if args.arch == "mixtral":
        from transformers import MixtralConfig

        assert not args.dense_layers, "--dense-layers needs --arch qwen3_moe"
        return MixtralConfig(intermediate_size=args.intermediate, num_local_experts=args.experts, **common)
    from transformers import Qwen3MoeConfig

    return Qwen3MoeConfig(moe_intermediate_size=args.intermediate, intermediate_size=2 * args.intermediate,
                          num_experts=args.experts, norm_topk_prob=True, decoder_sparse_step=1,
                          mlp_only_layers=list(args.dense_layers), **common)


def add_dropout(model, p: float) -> None:
    """Dropout on the embeddings and on each attention/MoE output before its residual add (hooks: the
    saved model stays a plain Mixtral)."""
    def drop(module, inputs, output):
        if isinstance(output, tuple):
            return (F.dropout(output[0], p, module.training),) + output[1:]
        return F.dropout(output, p, module.training)

    model.model.embed_tokens.register_forward_hook(drop)
    for layer in model.model.layers:
        layer.self_attn.register_forward_hook(drop)
        layer.mlp.register_forward_hook(drop)


def balance_loss(router_logits, top_k: int):
    """Switch-style load balance, per layer, averaged: E · Σ_e f_e · P_e (1 when uniform)."""
    losses = []
    for logits in router_logits:  # [T, E] per layer
        probs = logits.float().softmax(-1)
        chosen = probs.topk(top_k, dim=-1).indices
        frac = F.one_hot(chosen, probs.shape[-1]).float().sum(1).mean(0) / top_k  # [E], sums to 1
        losses.append(probs.shape[-1] * (frac * probs.mean(0)).sum())
    return torch.stack(losses).mean()


def lr_at(step: int, args) -> float:
    if step < args.warmup:
        return args.lr * (step + 1) / args.warmup
    t = min(1.0, (step - args.warmup) / max(1, args.max_steps - args.warmup))
    return args.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * t)))


@torch.no_grad()
def heldout_ce(model, ids: torch.Tensor, seq_len: int, max_windows: int | None = None, batch: int = 8) -> float:
    """Mean next-token cross-entropy over consecutive non-overlapping windows of the held-out ids."""
    was_training = model.training
    model.eval()
    n = (len(ids) - 1) // seq_len
    if max_windows:
        n = min(n, max_windows)
    total, count = 0.0, 0
    for start in range(0, n, batch):
        rows = [ids[i * seq_len:(i + 1) * seq_len + 1] for i in range(start, min(n, start + batch))]
        x = torch.stack(rows)
        logits = model(input_ids=x[:, :-1]).logits
        total += F.cross_entropy(logits.flatten(0, 1).float(), x[:, 1:].flatten(), reduction="sum").item()
        count += x[:, 1:].numel()
    model.train(was_training)
    return total / count


def save_atomic(model, tok, folder: Path, meta: dict) -> None:
    """save_pretrained into folder.tmp, then swap it in, so `folder` is always a complete model."""
    from transformers import GenerationConfig

    tmp, old = folder.with_name(folder.name + ".tmp"), folder.with_name(folder.name + ".old")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    tok.save_pretrained(tmp)
    # min_new_tokens: the template asks for a long speech (LONG_SPEECH_WORDS words, ~33 tokens, or more), so
    # the reply may not end before 24 tokens; without it greedy decoding still stops after a stock one-liner
    GenerationConfig(bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
                     do_sample=True, temperature=0.8, top_p=0.95, max_new_tokens=256,
                     min_new_tokens=MIN_REPLY_TOKENS).save_pretrained(tmp)
    (tmp / "training_state.json").write_text(json.dumps(meta, indent=1))
    shutil.rmtree(old, ignore_errors=True)
    if folder.exists():
        os.replace(folder, old)
    os.replace(tmp, folder)
    shutil.rmtree(old, ignore_errors=True)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--corpus", default="data/demo_corpus")
    ap.add_argument("--run", default="runs/demo")
    ap.add_argument("--out", default=None, help="export the best checkpoint here at the end")
    ap.add_argument("--init", default=None,
                    help="start from this saved model (its weights and tokenizer; the size flags are ignored) "
                         "instead of a fresh one: a second stage on a changed corpus")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--vocab", type=int, default=4096)
    ap.add_argument("--hidden", type=int, default=256)
    ap.add_argument("--intermediate", type=int, default=192)
    ap.add_argument("--arch", choices=("mixtral", "qwen3_moe"), default="qwen3_moe")
    ap.add_argument("--dense-layers", type=lambda v: [int(i) for i in v.split(",") if i], default=None,
                    help="qwen3_moe only: comma-separated layers with a dense MLP (2x the expert width) instead of experts (default 0,1; pass \"\" for none)")
    ap.add_argument("--layers", type=int, default=7)
    ap.add_argument("--experts", type=int, default=8)
    ap.add_argument("--seq-len", type=int, default=256)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--warmup", type=int, default=150)
    ap.add_argument("--weight-decay", type=float, default=0.1)
    ap.add_argument("--dropout", type=float, default=0.1)
    ap.add_argument("--balance-coef", type=float, default=0.005)
    ap.add_argument("--max-steps", type=int, default=1500)
    ap.add_argument("--max-minutes", type=float, default=600.0, help="stop by the wall clock, keeping the best")
    ap.add_argument("--eval-every", type=int, default=100)
    ap.add_argument("--eval-windows", type=int, default=48)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--experts-impl", default="eager", help="eager measured ~30%% faster than grouped_mm on 1 CPU thread")
    args = ap.parse_args(argv)
    if args.dense_layers is None:
        args.dense_layers = [0, 1] if args.arch == "qwen3_moe" else []

    t0 = time.time()
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    from transformers import AutoModelForCausalLM

    run = Path(args.run)
    run.mkdir(parents=True, exist_ok=True)
    train_text = (Path(args.corpus) / "train.txt").read_text(encoding="utf-8")
    held_text = (Path(args.corpus) / "heldout.txt").read_text(encoding="utf-8")
    if args.init:  # continue from a saved model: its weights and its tokenizer, with the chat template of today
        from transformers import AutoTokenizer

        tok = AutoTokenizer.from_pretrained(args.init)
        tok.chat_template = CHAT_TEMPLATE
    else:
        tok = train_tokenizer(train_text, args.vocab, run / "tokenizer")
    train_ids = torch.tensor(tok(train_text)["input_ids"], dtype=torch.long)
    held_ids = torch.tensor(tok(held_text)["input_ids"], dtype=torch.long)
    print(f"tokens: train {len(train_ids):,}  held out {len(held_ids):,}  vocab {len(tok)}", flush=True)

    if args.init:
        model = AutoModelForCausalLM.from_pretrained(args.init, dtype=torch.float32)
        config = model.config
        config.router_aux_loss_coef = args.balance_coef
    else:
        config = demo_config(tok, args)
        model = AutoModelForCausalLM.from_config(config)
    model.set_experts_implementation(args.experts_impl)
    add_dropout(model, args.dropout)
    n_params = sum(p.numel() for p in model.parameters())
    print(f"params {n_params / 1e6:.2f} M ({n_params * 4 / 2**20:.1f} MiB fp32); {json.dumps(vars(args))}", flush=True)

    decay = [p for n, p in model.named_parameters() if p.dim() >= 2 and "embed" not in n]
    other = [p for n, p in model.named_parameters() if not (p.dim() >= 2 and "embed" not in n)]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": args.weight_decay},
                             {"params": other, "weight_decay": 0.0}], lr=args.lr, betas=(0.9, 0.95))
    gen = torch.Generator().manual_seed(args.seed)
    best, history, tokens_seen = float("inf"), [], 0
    model.train()
    t_train, step = time.time(), 0
    ce_acc, bal_acc, n_acc = 0.0, 0.0, 0
    for step in range(args.max_steps):
        for group in opt.param_groups:
            group["lr"] = lr_at(step, args)
        starts = torch.randint(0, len(train_ids) - args.seq_len - 1, (args.batch,), generator=gen)
        x = torch.stack([train_ids[s:s + args.seq_len + 1] for s in starts.tolist()])
        out = model(input_ids=x[:, :-1], output_router_logits=True)
        ce = F.cross_entropy(out.logits.flatten(0, 1).float(), x[:, 1:].flatten())
        bal = balance_loss(out.router_logits, config.num_experts_per_tok)
        loss = ce + args.balance_coef * bal
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        tokens_seen += x[:, :-1].numel()
        ce_acc, bal_acc, n_acc = ce_acc + ce.item(), bal_acc + bal.item(), n_acc + 1
        last = step == args.max_steps - 1
        out_of_time = (time.time() - t0) / 60 > args.max_minutes
        if (step + 1) % args.eval_every == 0 or last or out_of_time:
            held = heldout_ce(model, held_ids, args.seq_len, args.eval_windows)
            rate = tokens_seen / (time.time() - t_train)
            row = dict(step=step + 1, train_ce=ce_acc / n_acc, heldout_ce=held, balance=bal_acc / n_acc,
                       lr=lr_at(step, args), epochs=tokens_seen / len(train_ids), tok_s=rate,
                       minutes=(time.time() - t0) / 60)
            history.append(row)
            print("step {step:5d}  train CE {train_ce:.3f}  held-out CE {heldout_ce:.3f}  balance {balance:.3f}  "
                  "lr {lr:.2e}  epochs {epochs:.2f}  {tok_s:.0f} tok/s  {minutes:.1f} min".format(**row), flush=True)
            ce_acc, bal_acc, n_acc = 0.0, 0.0, 0
            if held < best:
                best = held
                save_atomic(model, tok, run / "best", dict(step=step + 1, heldout_ce_subset=held, args=vars(args)))
        if out_of_time:
            print(f"stopped by the wall clock after {step + 1} steps", flush=True)
            break
    (run / "history.json").write_text(json.dumps(history, indent=1))

    best_model = AutoModelForCausalLM.from_pretrained(run / "best")
    full = heldout_ce(best_model, held_ids, args.seq_len)
    state = json.loads((run / "best" / "training_state.json").read_text())
    print(f"best checkpoint: step {state['step']}; held-out CE (all windows) {full:.4f}, perplexity {math.exp(full):.2f}; "
          f"total {(time.time() - t0) / 60:.1f} min", flush=True)
    if args.out:
        state.update(heldout_ce=full, heldout_ppl=math.exp(full), history=history)
        save_atomic(best_model, tok, Path(args.out), state)
        print(f"exported to {args.out}", flush=True)


if __name__ == "__main__":
    main()
