"""The OpenAI-compatible API with the official `openai` client against a live server on a free port
(page and API on one port, the demo model on the CPU); expected replies come from the engine itself
through transformers' chat template. Plus the request parser, stop strings and launch.py's flags."""
from __future__ import annotations

import logging
import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import httpx
import openai  # requirements-test.txt
import pytest

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::FutureWarning")

ROOT = Path(__file__).resolve().parents[1]
GREETING = [{"role": "user", "content": "Good morrow, my lord"}]
LONG = dict(temperature=2.0, top_p=1.0, seed=0)  # sampling that rarely ends the reply early
QUEUE_SIZE = 2


@pytest.fixture(scope="module")
def server():
    from app.api import ApiSettings
    from app.testing import start_server, stop_server

    served, url, controller = start_server("demo", first_port=7930, device="cpu",
                                           api=ApiSettings(queue_size=QUEUE_SIZE))
    yield SimpleNamespace(url=url, base=url + "v1", served=served, worker=controller.worker, controller=controller)
    stop_server(served, controller)


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server.base, api_key="not-checked", max_retries=0, timeout=120)


def engine_reply(worker, messages, max_new_tokens: int, **sampling) -> SimpleNamespace:
    """What the engine itself answers, prompted through transformers' chat template; `text(n)` is
    the reply cut after n tokens (greedy: what max_tokens=n gives)."""
    def run(engine):
        out = engine.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
        ids = out["input_ids"]
        new = engine.generate(ids, max_new_tokens, do_sample=bool(sampling), **sampling)
        texts = [engine.tokenizer.decode(new[:n], skip_special_tokens=True) for n in range(len(new) + 1)]
        return SimpleNamespace(text=texts[-1], tokens=len(new), prompt_tokens=len(ids),
                               ended=engine.ends_reply(new[-1]), cut=texts)

    return worker.call(run)


@pytest.fixture(scope="module")
def greedy(server):
    """The engine's greedy reply to GREETING, which it ends by itself within 120 tokens (the demo answers
    with a speech of a few lines, and not before its generation_config's min_new_tokens)."""
    reply = engine_reply(server.worker, GREETING, 120)
    assert reply.ended and 24 < reply.tokens < 120
    return reply


def decode_steps(worker) -> int:
    return worker.snapshot().totals.tokens


def check_figures(figures: dict) -> None:
    assert 0.0 <= figures["hit_rate"] <= 1.0
    assert figures["mb_fetched_per_token"] >= 0.0 and figures["tokens_per_s"] > 0
    assert figures["time_to_first_token_s"] > 0 and figures["queue_wait_s"] >= 0


def test_models_lists_the_loaded_model(client):
    assert [m.id for m in client.models.list().data] == ["demo"]


def test_chat_reply_matches_the_engine_with_usage(client, greedy):
    got = client.chat.completions.create(model="demo", messages=GREETING, max_tokens=8, temperature=0)
    choice = got.choices[0]
    assert choice.message.role == "assistant" and choice.message.content == greedy.cut[8]
    assert choice.finish_reason == "length"
    assert (got.usage.prompt_tokens, got.usage.completion_tokens) == (greedy.prompt_tokens, 8)
    assert got.usage.total_tokens == greedy.prompt_tokens + 8
    check_figures(got.model_extra["moepic"])


def test_reply_that_ends_by_itself_says_stop(client, greedy):
    got = client.chat.completions.create(model="demo", messages=GREETING, max_completion_tokens=120, temperature=0)
    assert got.choices[0].message.content == greedy.text and got.choices[0].finish_reason == "stop"
    assert got.usage.completion_tokens == greedy.tokens


def test_streamed_reply_is_the_same_text_and_ends_with_usage(client, greedy):
    chunks = list(client.chat.completions.create(model="demo", messages=GREETING, max_tokens=8, temperature=0,
                                                 stream=True, stream_options={"include_usage": True}))
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == greedy.cut[8]
    assert sum(1 for c in chunks if c.choices and c.choices[0].delta.content) >= 3  # token by token
    finish = [c for c in chunks if c.choices and c.choices[0].finish_reason]
    assert len(finish) == 1 and finish[0].choices[0].finish_reason == "length"
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 8
    assert chunks[-1].usage.prompt_tokens == greedy.prompt_tokens
    check_figures(finish[0].model_extra["moepic"])
    assert len({c.id for c in chunks}) == 1


def test_completion_continues_a_raw_prompt(client, server):
    prompt = "To be, or not to be"

    def run(engine):
        ids = engine.tokenizer(prompt)["input_ids"]
        return engine.tokenizer.decode(engine.generate(ids, 6), skip_special_tokens=True), len(ids)

    want, prompt_tokens = server.worker.call(run)
    got = client.completions.create(model="demo", prompt=prompt, max_tokens=6, temperature=0)
    assert got.choices[0].text == want and got.usage.prompt_tokens == prompt_tokens
    streamed = "".join(c.choices[0].text for c in client.completions.create(
        model="demo", prompt=prompt, max_tokens=6, temperature=0, stream=True) if c.choices)
    assert streamed == want


def test_stop_string_cuts_the_reply_before_it(client, greedy):
    want = greedy.cut[12]
    stop = want.split()[3]  # a word in the middle, e.g. "to"
    got = client.chat.completions.create(model="demo", messages=GREETING, max_tokens=12, temperature=0, stop=[stop])
    assert got.choices[0].message.content == want[:want.index(stop)]
    assert got.choices[0].finish_reason == "stop"
    streamed = "".join(c.choices[0].delta.content or "" for c in client.chat.completions.create(
        model="demo", messages=GREETING, max_tokens=12, temperature=0, stop=stop, stream=True) if c.choices)
    assert streamed == want[:want.index(stop)]


def test_seed_makes_sampling_repeatable(client, server):
    sampling = dict(temperature=1.0, top_p=0.9, seed=123)
    want = engine_reply(server.worker, GREETING, 4, **sampling).text
    replies = {client.chat.completions.create(model="demo", messages=GREETING, max_tokens=4, **sampling)
               .choices[0].message.content for _ in range(2)}
    assert replies == {want}


def test_two_concurrent_greedy_streams_are_served_one_after_the_other(client, greedy):
    want = greedy.cut[8]
    runs: dict[int, list[tuple[float, str]]] = {}

    def run(i: int):
        stream = client.chat.completions.create(model="demo", messages=GREETING, max_tokens=8, temperature=0,
                                                stream=True)
        runs[i] = [(time.monotonic(), c.choices[0].delta.content) for c in stream
                   if c.choices and c.choices[0].delta.content]

    threads = [threading.Thread(target=run, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert ["".join(text for _, text in runs[i]) for i in range(2)] == [want, want]
    first, second = sorted(runs.values(), key=lambda chunks: chunks[0][0])
    assert first[-1][0] < second[0][0], "the two replies were generated at the same time"


def test_client_hanging_up_stops_its_generation(client, server, caplog):
    caplog.set_level(logging.INFO, logger="moepic.api")
    before = decode_steps(server.worker)
    stream = client.chat.completions.create(model="demo", messages=GREETING, max_tokens=400, stream=True, **LONG)
    seen = 0
    for chunk in stream:
        seen += bool(chunk.choices and chunk.choices[0].delta.content)
        if seen == 2:
            break
    stream.close()
    nxt = client.chat.completions.create(model="demo", messages=GREETING, max_tokens=8, temperature=0)
    hung_up = decode_steps(server.worker) - before - (nxt.usage.completion_tokens - 1) + 1  # tokens it made
    one_second = nxt.model_extra["moepic"]["tokens_per_s"]
    assert hung_up <= 2 + max(2.0, one_second), f"{hung_up} tokens after the client left (of 400)"
    assert any("client hung up" in r.getMessage() for r in caplog.records)


def test_full_queue_answers_429_with_retry_after(client, server):
    admission = server.served.api.state.admission
    running = client.chat.completions.create(model="demo", messages=GREETING, max_tokens=400, stream=True, **LONG)
    next(iter(running))
    waiting = [threading.Thread(target=client.chat.completions.create,
                                kwargs=dict(model="demo", messages=GREETING, max_tokens=2, temperature=0))
               for _ in range(QUEUE_SIZE)]
    for t in waiting:
        t.start()
    deadline = time.monotonic() + 30
    while admission.active < 1 + QUEUE_SIZE and time.monotonic() < deadline:
        time.sleep(0.02)
    with pytest.raises(openai.RateLimitError) as refused:
        client.chat.completions.create(model="demo", messages=GREETING, max_tokens=2, temperature=0)
    running.close()
    for t in waiting:
        t.join(120)
    assert int(refused.value.response.headers["retry-after"]) >= 1
    assert refused.value.body["code"] == "queue_full"
    assert admission.active == 0


BAD = [  # (body, status, code, param)
    (b"{not json", 400, "invalid_json", None),
    (b"[1, 2]", 400, "invalid_json", None),
    (b'{"model": "demo"}', 400, "missing_required_parameter", "messages"),
    (b'{"messages": []}', 400, "invalid_value", "messages"),
    (b'{"messages": [{"role": "user", "content": "hi"}], "model": "gpt-4o"}', 404, "model_not_found", "model"),
    (b'{"messages": [{"role": "user", "content": "hi"}], "max_tokens": 0}', 400, "invalid_value", "max_tokens"),
    (b'{"messages": [{"role": "user", "content": "hi"}], "max_tokens": 100000}', 400, "context_length_exceeded",
     "max_tokens"),
    (b'{"messages": [{"role": "user", "content": "hi"}], "temperature": -1}', 400, "invalid_value", "temperature"),
    (b'{"messages": [{"role": "user", "content": "hi"}], "n": 2}', 400, "unsupported_value", "n"),
    (b'{"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]}', 400,
     "unsupported_value", "messages[0].content"),
    (b'{"messages": [{"role": "wizard", "content": "hi"}]}', 400, "invalid_value", "messages[0].role"),
]


@pytest.mark.parametrize("body,status,code,param", BAD)
def test_bad_input_gets_its_status_an_error_object_and_one_log_line(server, caplog, body, status, code, param):
    caplog.set_level(logging.INFO, logger="moepic.api")
    response = httpx.post(server.base + "/chat/completions", content=body, timeout=60)
    assert response.status_code == status
    error = response.json()["error"]
    assert error["code"] == code and error["param"] == param and error["message"]
    assert error["type"] == "invalid_request_error"
    lines = [r for r in caplog.records if r.name == "moepic.api"]
    assert len(lines) == 1 and lines[0].levelno == logging.WARNING and str(status) in lines[0].getMessage()
    assert "Traceback" not in caplog.text


def test_openai_client_raises_the_matching_errors(client):
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="no-such-model", messages=GREETING)
    with pytest.raises(openai.BadRequestError, match="context"):
        client.completions.create(model="demo", prompt="hi", max_tokens=10**6)
    with pytest.raises(openai.NotFoundError):
        client.get("/nowhere", cast_to=object)


def test_prompt_past_the_context_is_refused(client):
    with pytest.raises(openai.BadRequestError, match="context holds"):
        client.completions.create(model="demo", prompt=list(range(5, 2000)), max_tokens=1)


def test_page_and_api_share_the_port(server):
    page = httpx.get(server.url, timeout=30)
    assert page.status_code == 200 and "<html" in page.text.lower()
    assert "access-control-allow-origin" not in httpx.options(
        server.base + "/models", headers={"Origin": "http://elsewhere.example",
                                          "Access-Control-Request-Method": "GET"}).headers


def test_vram_change_in_the_page_waits_for_the_running_request(client, server, greedy, monkeypatch):
    """The slider's re-layout runs after the reply in flight (which comes out as without it)."""
    engine = server.worker.engine
    want = greedy.cut[12]
    before, seen_at = decode_steps(server.worker), []
    relayout = engine.reconfigure

    def recorded(**kwargs):
        seen_at.append(engine.snapshot().totals.tokens)
        return relayout(**kwargs)

    monkeypatch.setattr(engine, "reconfigure", recorded)
    snap = server.worker.last_snapshot
    vram = (snap.budgets.min_vram_bytes + snap.num_experts * snap.expert_bytes) / 1e9
    stream = iter(client.chat.completions.create(model="demo", messages=GREETING, max_tokens=12, temperature=0,
                                                 stream=True, stream_options={"include_usage": True}))
    chunks = [next(stream), next(stream)]
    from app.callbacks import slider_unit
    from app.session import Session

    scale, _ = slider_unit(snap, server.controller.hw)  # the slider's unit: MB for the demo
    status = []
    slider = threading.Thread(target=lambda: status.append(server.controller.set_vram(vram * 1e9 / scale,
                                                                                      Session())[0]))
    slider.start()
    chunks += list(stream)
    slider.join(60)
    assert "re-laid out" in status[0]
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == want
    assert seen_at == [before + chunks[-1].usage.completion_tokens - 1]  # after the last token, not during


def test_idle_page_panels_follow_api_traffic(client, server):
    from app import live

    version = server.worker.snapshot_version
    client.chat.completions.create(model="demo", messages=GREETING, max_tokens=4, temperature=0)
    drawn, heatmap, *_ = live.redraw(server.worker, version, None)  # a tab that has not chatted (no Session)
    assert drawn > version and f'data-tokens="{decode_steps(server.worker)}"' in heatmap
    assert live.redraw(server.worker, server.worker.snapshot_version, None) == (live.gr.skip(),) * 5  # nothing new


# ---- a second server on the same engine: API only, with a key and CORS ----

@pytest.fixture(scope="module")
def keyed(server):
    from app.api import ApiSettings
    from app.server import start_http
    from launch import free_port

    settings = ApiSettings(api_key="s3cret-key", cors_origins=("http://localhost:3000",))
    served = start_http(server.controller, "127.0.0.1", free_port("127.0.0.1", 7960), page=False, api=settings)
    yield served
    served.server.close()


def test_api_key_is_enforced(keyed):
    base = keyed.url + "v1"
    for key in ("wrong-key", "s3cret-key-and-more", "s3cret-ke"):
        with pytest.raises(openai.AuthenticationError):
            openai.OpenAI(base_url=base, api_key=key, max_retries=0).models.list()
    no_header = httpx.get(base + "/models", timeout=30)
    assert no_header.status_code == 401 and no_header.json()["error"]["code"] == "invalid_api_key"
    good = openai.OpenAI(base_url=base, api_key="s3cret-key", max_retries=0)
    assert [m.id for m in good.models.list().data] == ["demo"]
    reply = good.chat.completions.create(model="demo", messages=GREETING, max_tokens=2, temperature=0)
    assert reply.usage.completion_tokens == 2
    assert httpx.get(keyed.url, timeout=30).status_code == 404  # --api-only: no page


def test_cors_only_for_the_named_origin(keyed):
    preflight = {"Access-Control-Request-Method": "POST", "Access-Control-Request-Headers": "authorization"}
    allowed = httpx.options(keyed.url + "v1/chat/completions", headers={"Origin": "http://localhost:3000", **preflight})
    assert allowed.status_code == 200
    assert allowed.headers["access-control-allow-origin"] == "http://localhost:3000"
    other = httpx.options(keyed.url + "v1/chat/completions", headers={"Origin": "http://evil.example", **preflight})
    assert "access-control-allow-origin" not in other.headers


def test_no_model_loaded_is_503(tmp_path):
    from app.api import ApiSettings
    from app.callbacks import Controller
    from app.config import AppConfig
    from app.server import start_http
    from launch import free_port

    controller = Controller(AppConfig(model=str(tmp_path / "missing"), device="cpu"), {"cuda": False})
    controller.start()  # refuses the missing folder: nothing loads
    served = start_http(controller, "127.0.0.1", free_port("127.0.0.1", 7970), page=False, api=ApiSettings())
    try:
        bare = openai.OpenAI(base_url=served.url + "v1", api_key="x", max_retries=0)
        assert bare.models.list().data == []
        with pytest.raises(openai.InternalServerError) as error:
            bare.chat.completions.create(model="demo", messages=GREETING)
        assert error.value.status_code == 503 and error.value.body["code"] == "model_not_loaded"
    finally:
        served.server.close()
        controller.worker.shutdown()


# ---- no server ----

def test_stop_strings_hold_back_a_possible_start():
    from app.stop_strings import StopStrings

    stops = StopStrings(["END", "\n\n"])
    assert [stops.feed(c) for c in ["Hello E", "N", "ice\n", "\n", "more"]] == ["Hello ", "", "ENice", "", ""]
    assert stops.stopped and stops.flush() == ""
    split = StopStrings(["END"])
    assert [split.feed(c) for c in ["abE", "ND!"]] == ["ab", ""] and split.stopped
    unfinished = StopStrings(["END"])
    assert unfinished.feed("xEN") == "x" and unfinished.flush() == "EN" and not unfinished.stopped
    assert StopStrings().feed("any END") == "any END"


def test_parser_reads_openai_fields():
    from app.openai_schema import APIError, parse_chat, parse_completion

    chat = parse_chat({"messages": [{"role": "developer", "content": [{"type": "text", "text": "Be "},
                                                                      {"type": "text", "text": "brief"}]},
                                    {"role": "user", "content": "hi", "name": "HAMLET"}],
                       "max_completion_tokens": 5, "max_tokens": 9, "stop": "x", "seed": 3, "stream": True,
                       "stream_options": {"include_usage": True}, "user": "ignored", "presence_penalty": 0.5})
    assert chat.messages == ({"role": "system", "content": "Be brief"},
                             {"role": "user", "content": "hi", "name": "HAMLET"})
    assert (chat.max_tokens, chat.stop, chat.seed, chat.stream, chat.include_usage) == (5, ("x",), 3, True, True)
    assert chat.temperature is None and chat.model is None
    assert parse_completion({"prompt": ["one"]}).prompt == "one"
    assert parse_completion({"prompt": [1, 2, 3]}).prompt == (1, 2, 3)
    for body, param in (({"prompt": ""}, "prompt"), ({"prompt": ["a", "b"]}, "prompt"),
                        ({"prompt": "a", "top_p": 0}, "top_p"), ({"prompt": "a", "stop": ["a"] * 5}, "stop"),
                        ({"prompt": "a", "seed": 1.5}, "seed"), ({"prompt": "a", "stream": "yes"}, "stream"),
                        ({"prompt": "a", "max_tokens": True}, "max_tokens")):
        with pytest.raises(APIError) as error:
            parse_completion(body)
        assert error.value.status == 400 and error.value.param == param


def test_launch_api_flags(monkeypatch):
    import launch

    out = subprocess.run([sys.executable, str(ROOT / "launch.py"), "--help"], capture_output=True, text=True,
                         timeout=60, cwd=ROOT)
    for flag in ("--api-only", "--api-key", "--cors-origin", "--api-queue", "MOEPIC_API_KEY"):
        assert flag in out.stdout
    monkeypatch.setenv("MOEPIC_API_KEY", "from-env")
    args = launch.parse_args(["--cors-origin", "http://a", "--cors-origin", "http://b"])
    settings = launch.api_settings(args)
    assert settings.api_key == "from-env" and settings.cors_origins == ("http://a", "http://b")
    assert launch.parse_args(["--api-key", "flag"]).api_key == "flag"
    with pytest.raises(ValueError, match="--share"):
        launch.api_settings(launch.parse_args(["--share", "--api-only"]))
    assert launch.exposure_warning("127.0.0.1", None, page=True) is None
    assert "the page and the API to your network without a key" in launch.exposure_warning("0.0.0.0", None, True)
    assert "exposes the API to" in launch.exposure_warning("192.168.1.5", None, page=False)
    assert "page is open" in launch.exposure_warning("0.0.0.0", "k", page=True)
    assert launch.exposure_warning("0.0.0.0", "k", page=False) is None


def test_launch_refuses_bad_api_flags_in_one_line():
    env = dict(os.environ, MOEPIC_API_KEY="")
    out = subprocess.run([sys.executable, str(ROOT / "launch.py"), "--api-queue", "-1", "--no-browser"],
                         capture_output=True, text=True, timeout=60, cwd=ROOT, env=env)
    assert out.returncode == 2 and out.stderr.strip().count("\n") == 0 and "queue" in out.stderr
