"""The built-in demo model (assets/demo-model): it loads, its chat template speaks the corpus's format,
it has learned the corpus, and the engine generates exactly what transformers generates."""
from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

DEMO = Path(__file__).resolve().parents[1] / "assets" / "demo-model"

CONVERSATION = [
    {"role": "system", "content": "Enter a Messenger."},
    {"role": "user", "content": "Speak, what tidings?"},
    {"role": "assistant", "content": "The French are landed, sir."},
    {"role": "user", "content": "  So soon?  ", "name": "Hamlet"},
]


@pytest.fixture(scope="module")
def tok():
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(DEMO)


@pytest.fixture(scope="module")
def model():
    from transformers import AutoModelForCausalLM

    torch.set_num_threads(2)
    return AutoModelForCausalLM.from_pretrained(DEMO, dtype=torch.float32, experts_implementation="eager").eval()


def test_files_and_size():
    for name in ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json",
                 "generation_config.json", "README.md"):
        assert (DEMO / name).is_file(), name
    assert (DEMO / "model.safetensors").stat().st_size <= 40 * 2**20


def test_config_fits_the_engine():
    from moepic_core.models import load_spec

    spec = load_spec(DEMO)
    assert spec.family in ("mixtral", "qwen3_moe")  # the architectures the demo-model issue allows
    assert spec.hidden_size % 64 == 0 and spec.intermediate_size % 16 == 0  # int4/int8 groups of 64 along H
    assert spec.num_experts == 8 and spec.top_k == 2 and spec.num_moe_layers >= 4


def test_checkpoint_keeps_per_expert_keys():
    from safetensors import safe_open

    from moepic_core.models import load_spec

    with safe_open(DEMO / "model.safetensors", "pt") as f:
        keys = set(f.keys())
    for layer in load_spec(DEMO).moe_layers:
        assert sum(f"layers.{layer}." in k and ".experts.7." in k for k in keys) == 3, layer  # 3 matrices each
    assert not any("gate_up_proj" in k for k in keys)  # save_pretrained's per-expert layout, not fused


LONG = ("Now is the winter of our discontent made glorious summer by this sun of York, and all the clouds "
        "that lour'd upon our house")  # 24 words: a long speech


def test_chat_template_renders_speaker_turns(tok):
    text = tok.apply_chat_template(CONVERSATION, tokenize=False, add_generation_prompt=True)
    assert text == ("[Enter a Messenger.]\n"
                    "FIRST LORD.\nSpeak, what tidings?<|end|>"
                    "KING.\nThe French are landed, sir.<|end|>"
                    "HAMLET.\nSo soon?<|end|>"
                    "KING:\n")  # the model is asked for a long speech (fetch_demo_corpus.py: NAME: heads 20+ words)
    assert tok.eos_token == "<|end|>"
    assert tok.convert_tokens_to_ids("<|end|>") == tok.eos_token_id
    ids = tok.apply_chat_template(CONVERSATION, add_generation_prompt=True)["input_ids"]
    assert ids.count(tok.eos_token_id) == 3  # one eos per finished turn: the answer stops at its own eos
    long_turn = tok.apply_chat_template([{"role": "user", "content": LONG}], tokenize=False)
    assert long_turn == f"FIRST LORD:\n{LONG}<|end|>"  # a long message is rendered as the corpus has it


def test_generation_config_stops_at_end_of_turn(tok):
    from transformers import GenerationConfig

    gen = GenerationConfig.from_pretrained(DEMO)
    assert gen.eos_token_id == tok.eos_token_id


def test_model_has_learned_the_corpus(model, tok):
    # A speech from Romeo and Juliet (training split): far below uniform (ln 4096 = 8.3 nats/token).
    text = ("ROMEO.\nBut soft! what light through yonder window breaks?\nIt is the east, and Juliet is the sun!"
            "<|end|>JULIET.\nO Romeo, Romeo! wherefore art thou Romeo?<|end|>")
    ids = torch.tensor([tok(text)["input_ids"]])
    with torch.no_grad():
        loss = model(input_ids=ids, labels=ids).loss.item()
    assert loss < 0.5 * math.log(len(tok))


@pytest.fixture(scope="module")
def store_dir(tmp_path_factory):
    return str(tmp_path_factory.mktemp("moepic-store"))  # the packed store is built once for both tests


def test_engine_greedy_matches_transformers(model, tok, store_dir):
    from moepic_core import Engine

    engine = Engine.load(str(DEMO), device="cpu", dtype="float32", quant="none", cache_dir=store_dir)
    prompt = tok.apply_chat_template([{"role": "user", "content": "What news from the court?"}],
                                     add_generation_prompt=True, return_tensors="pt", return_dict=True)["input_ids"]
    expected = model.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=24, do_sample=False,
                              eos_token_id=None, pad_token_id=tok.pad_token_id)[0, prompt.shape[1]:].tolist()
    got = engine.generate(prompt, max_new_tokens=24, do_sample=False, stop_at_eos=False)
    assert got == expected


def test_demo_name_resolves_to_this_model(store_dir):
    from moepic_core import Engine

    engine = Engine.load("demo", device="cpu", dtype="float32", cache_dir=store_dir)
    assert engine.folder.resolve() == DEMO.resolve()
    # the app starts its sampling sliders here: the model's generation_config.json asks for sampling
    assert engine.sampling_defaults == {"temperature": 0.8, "top_p": 0.95}
    assert engine.model.generation_config.max_new_tokens == 256
    text = "".join(engine.stream_chat([{"role": "user", "content": "Good morrow."}], max_new_tokens=8))
    assert text.strip()


def test_the_demo_talks(store_dir):
    """The issue's check: a greedy answer of at most 60 tokens to a greeting has at least 20 words, most of
    them English (checked against /usr/share/dict/words when the machine has it)."""
    from moepic_core import Engine

    engine = Engine.load("demo", device="cpu", dtype="float32", cache_dir=store_dir)
    text = "".join(engine.stream_chat([{"role": "user", "content": "Good morrow, how fares the king?"}],
                                      max_new_tokens=60))
    words = text.split()
    assert len(words) >= 20, text
    dictionary = Path("/usr/share/dict/words")
    if dictionary.is_file():
        known = {w.strip().lower() for w in dictionary.read_text(errors="ignore").split()}
        plain = [w.strip(".,;:!?'\"-").lower() for w in words]
        assert sum(w in known for w in plain if w) > 0.7 * len(plain), text
