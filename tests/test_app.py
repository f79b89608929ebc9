"""The app through its HTTP API (gradio_client) on a free port, with the real engine on a tiny
random Mixtral; plus the panel renderers on hand-made snapshots and launch.py's flags."""
from __future__ import annotations

import os
import re
import subprocess
import sys
import threading
import time
from dataclasses import replace
from pathlib import Path

import pytest

from moepic_core.testing import fake_snapshot

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::FutureWarning",
                                        "ignore:.*(no_silent_downcasting|copy keyword).*")

ROOT = Path(__file__).resolve().parents[1]
CHAT = dict(api_name="/chat")


def chat_args(text: str, max_new_tokens: int = 24, history=None):
    return (text, history or [], "", 0.0, 1.0, max_new_tokens)


def reply_text(chatbot) -> str:
    from app.callbacks import message_text

    if not isinstance(chatbot, list) or not chatbot or chatbot[-1]["role"] != "assistant":
        return ""
    return message_text(chatbot[-1]["content"])


def is_value(x) -> bool:
    """False for the client's stand-in of a skipped output."""
    return not (isinstance(x, dict) and x.get("__type__") == "update")


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    from moepic_core.testing import make_tiny_model

    from app.testing import start_server, stop_server

    folder = make_tiny_model("mixtral", tmp_path_factory.mktemp("app") / "tiny-mixtral", seed=0)
    demo, url, controller = start_server(folder, device="cpu", cpu_mode="simulated")  # a cache to watch
    yield url, controller, folder
    stop_server(demo, controller)


@pytest.fixture(scope="module")
def client(served):
    from gradio_client import Client

    return Client(served[0], verbose=False)


def test_message_streams_with_live_stats(client, served):
    before = served[1].worker.snapshot().totals.tokens
    job = client.submit(*chat_args("hello there", 24), **CHAT)
    replies, heatmaps = [], []
    for out in job:
        replies.append(reply_text(out[1]))
        if is_value(out[2]):
            heatmaps.append(out[2])
    growing = [r for i, r in enumerate(replies) if r and (i == 0 or r != replies[i - 1])]
    assert len(growing) >= 3, replies
    final = job.outputs()[-1]
    stats = final[5]
    decoded = served[1].worker.snapshot().totals.tokens - before
    assert "tok/s" in stats and "full hits" in stats and "top hits" in stats
    assert f"last reply: {decoded + 1} tokens" in stats  # the decode steps and the token of the prefill step
    tokens = int(re.search(r'data-tokens="(\d+)"', final[2]).group(1))
    assert tokens > 0 and heatmaps


def test_stop_cancels_and_next_message_works(client, served):
    controller = served[1]
    job = client.submit(*chat_args("tell me a long story", 2000), **CHAT)
    seen = 0
    for _ in job:
        seen += 1
        if seen >= 3:
            break
    job.cancel()
    deadline = time.time() + 30
    while not job.done() and time.time() < deadline:
        time.sleep(0.1)
    assert job.done()
    stopped_at = controller.worker.last_snapshot.totals.tokens
    out = client.predict(*chat_args("and now?", 8), **CHAT)
    assert out[1][-1]["role"] == "assistant" and "⚠" not in reply_text(out[1])  # answered, not refused
    after = controller.worker.snapshot().totals.tokens
    assert stopped_at < after <= stopped_at + 8 + 1  # the cancelled reply stopped far short of 2000 tokens
    assert stopped_at < 2000


def test_slider_relays_out_without_reload(client, served):
    controller = served[1]
    engine = controller.worker.engine
    snap = controller.worker.snapshot()
    low = snap.budgets.min_vram_bytes / 1e6  # the tiny model's slider is in MB (its range is below 1 GB)
    experts = snap.num_layers * snap.num_experts * snap.expert_bytes / 1e6
    client.predict(api_name="/page_load")  # sets this session's slider range, as a page does when it opens
    small = client.predict(low + 0.1 * experts, api_name="/set_vram")
    large = client.predict(low + 1.0 * experts, api_name="/set_vram")
    assert "re-laid out" in small[0] and "re-laid out" in large[0] and " MB:" in large[0]
    assert small[2] != large[2]  # the per-layer plan changed
    slots = sum(layer.slots for layer in controller.worker.last_snapshot.layers)
    assert slots == snap.num_layers * snap.num_experts  # room for every expert: all slots
    assert controller.worker.engine is engine  # not reloaded
    from app.session import Session

    below = controller.set_vram(low / 2, Session())  # the page's slider stops at the minimum; the handler too
    assert "mp-error" in below[0] and "minimum" in below[0]


def test_empty_message_is_refused(client):
    from gradio_client.exceptions import AppError

    with pytest.raises(AppError, match="empty message"):
        client.predict(*chat_args("   "), **CHAT)


def test_invalid_model_folder_shows_error_and_app_keeps_serving(client, served, tmp_path):
    controller = served[1]
    engine = controller.worker.engine
    missing = client.predict(str(tmp_path / "no-such-model"), "auto", "lcp", api_name="/load_model")
    assert "mp-error" in missing[0] and "model folder not found" in missing[0]  # the CLI's words
    (tmp_path / "garbage").mkdir()
    (tmp_path / "garbage" / "config.json").write_text("{not json")
    garbage = client.predict(str(tmp_path / "garbage"), "auto", api_name="/validate")
    assert "config.json is unreadable" in garbage  # the config is read first, not "no weights"
    (tmp_path / "bert").mkdir()
    (tmp_path / "bert" / "config.json").write_text('{"model_type": "bert"}')
    (tmp_path / "bert" / "model.safetensors").write_bytes(b"\0" * 16)
    unsupported = client.predict(str(tmp_path / "bert"), "none", "lcp", api_name="/load_model")
    assert "mp-error" in unsupported[0] and "not supported" in unsupported[0]
    inline = client.predict(str(tmp_path / "bert"), "none", api_name="/validate")
    assert "not supported" in inline
    assert controller.worker.engine is engine
    out = client.predict(*chat_args("still there?", 4), **CHAT)
    assert "tok/s" in out[5]


def test_hub_download_offline_says_so_and_keeps_the_model(client, served, monkeypatch):
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    engine = served[1].worker.engine
    out = client.predict("moepic-test/not-downloaded", "auto", "lcp", api_name="/load_model")
    assert "mp-error" in out[0]
    assert "no connection: download the model on a connected machine or give a local folder" in out[0]
    assert served[1].worker.engine is engine


def test_budget_below_minimum_at_start_loads_at_the_minimum_with_a_warning(served):
    from app.callbacks import Controller
    from app.config import AppConfig
    from app.session import Session

    controller = Controller(AppConfig(model=str(served[2]), vram_gb=1e-6, device="cpu", cpu_mode="simulated"),
                            {"cuda": False})
    controller.start()
    try:
        assert controller.worker.wait_loaded(timeout=120) is not None, controller.worker.load_error
        outputs = controller.page_load(Session(), progress=lambda *a, **k: None)
        status = outputs[0]
        assert "mp-warn" in status and "minimum" in status
        assert outputs[-3:-1] == (0.0, 1.0)  # sampling sliders: this model's generation_config asks for greedy
        budgets = controller.worker.last_snapshot.budgets
        assert budgets.vram_bytes >= budgets.min_vram_bytes
    finally:
        controller.worker.shutdown()


def test_two_concurrent_chats_are_queued_not_interleaved(client, served, monkeypatch):
    """Both chats are submitted at once; the server streams one reply completely before the other
    starts (intervals measured in the server, around each chat's generation)."""
    from app.callbacks import message_text

    worker = served[1].worker
    intervals: list[tuple[str, float, float]] = []
    stream = worker.stream

    def timed_stream(messages, *args, **kwargs):
        start = time.monotonic()
        try:
            yield from stream(messages, *args, **kwargs)
        finally:
            intervals.append((messages[-1]["content"], start, time.monotonic()))

    monkeypatch.setattr(worker, "stream", timed_stream)
    finals = {}

    def run(name: str):
        job = client.submit(*chat_args(f"question {name}", 12), **CHAT)
        for out in job:
            if is_value(out[1]):
                finals[name] = out

    threads = [threading.Thread(target=run, args=(n,)) for n in "ab"]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert sorted(i[0] for i in intervals) == ["question a", "question b"]
    (_, _, first_end), (_, second_start, _) = sorted(intervals, key=lambda i: i[1])
    assert first_end <= second_start, "the two chats were generated at the same time"
    for name in "ab":
        assert message_text(finals[name][1][0]["content"]) == f"question {name}"
        assert finals[name][1][-1]["role"] == "assistant"


def test_each_tab_keeps_its_own_status_speed_and_chart(served):
    """Two gradio clients are two browser tabs: each sees its own status line, its own last reply beside
    its own average, and its own replies in the hit-rate chart."""
    from gradio_client import Client

    url, controller = served[0], served[1]
    a, b = Client(url, verbose=False), Client(url, verbose=False)
    a.predict(api_name="/page_load")
    snap = controller.worker.snapshot()
    value = (snap.budgets.min_vram_bytes + snap.num_layers * snap.num_experts * snap.expert_bytes) / 1e6
    assert "re-laid out" in a.predict(value, api_name="/set_vram")[0]
    assert "re-laid out" not in b.predict(api_name="/page_load")[0]  # a's action is not b's status

    def reply(client, text, tokens):
        before = controller.worker.snapshot().totals.tokens
        out = client.predict(*chat_args(text, tokens), **CHAT)
        return out, controller.worker.snapshot().totals.tokens - before + 1  # + the prefill's token

    reply(a, "first", 10)
    a_out, a_tokens = reply(a, "second", 5)
    b_out, b_tokens = reply(b, "only one", 7)
    a_stats, b_stats = a_out[5], b_out[5]
    assert f"last reply: {a_tokens} tokens" in a_stats and "your 2 replies" in a_stats
    assert f"last reply: {b_tokens} tokens" in b_stats and "your reply:" in b_stats
    assert 'data-replies="2"' in a_out[4] and a_out[4].count('class="mp-reply"') == 1  # a marker between a's two
    assert 'data-replies="1"' in b_out[4] and 'class="mp-reply"' not in b_out[4]  # b never sees a's replies


def test_no_model_is_answered_in_the_chat_without_a_traceback(tiny_models, tmp_path, capfd):
    from gradio_client import Client
    from gradio_client.exceptions import AppError

    from app.callbacks import Controller
    from app.config import AppConfig
    from app.server import serve
    from launch import free_port

    controller = Controller(AppConfig(model=str(tmp_path / "no-such-model"), device="cpu"), {"cuda": False})
    served = serve(controller, port=free_port("127.0.0.1", 7930))
    url = served.url
    try:
        client = Client(url, verbose=False)
        assert "model folder not found" in client.predict(api_name="/page_load")[0]
        out = client.predict(*chat_args("hello?"), **CHAT)
        assert "No model is loaded" in reply_text(out[1]) and "press Load" in reply_text(out[1])
        assert "mp-error" in out[6]  # and in the status line
        with pytest.raises(AppError, match="empty message"):
            client.predict(*chat_args("  "), **CHAT)
    finally:
        served.close()
        controller.worker.shutdown()
    log = capfd.readouterr()
    assert "Traceback" not in log.out + log.err


def test_launch_refuses_a_bad_flag_in_one_line_naming_it(capsys):
    import launch

    with pytest.raises(SystemExit) as exit_:
        launch.main(["--vram-gb", "abc"])
    assert exit_.value.code == 2
    assert capsys.readouterr().err == "error: --vram-gb must be a number of GB >= 0, got 'abc'\n"
    assert launch.main(["--vram-gb", "-1"]) == 2
    assert capsys.readouterr().err == "error: --vram-gb must be a number of GB >= 0, got -1.0\n"  # as the CLI says it
    with pytest.raises(SystemExit):
        launch.main(["--quant", "int3"])
    assert capsys.readouterr().err == "error: --quant must be one of auto, none, int8, int4, got 'int3'\n"
    assert launch.main(["--model", "/no/such/model", "--no-browser"]) == 2  # refused before serving anything
    assert capsys.readouterr().err == "error: --model: model folder not found: /no/such/model\n"


def test_launch_refuses_a_quant_that_does_not_fit_naming_the_one_that_does(served, monkeypatch, capsys):
    from types import SimpleNamespace

    import app.callbacks
    import launch
    from moepic_core.models import load_spec

    spec = load_spec(served[2])
    ram = int((spec.store_bytes("int8", "float32") + spec.dense_bytes("float32")) / 0.8) + 1  # int8 fits, none not
    monkeypatch.setattr(app.callbacks.psutil, "virtual_memory", lambda: SimpleNamespace(available=ram, total=2 * ram))
    assert launch.main(["--model", str(served[2]), "--quant", "none", "--device", "cpu", "--no-browser"]) == 2
    line = capsys.readouterr().err
    assert line.startswith("error: --quant none does not fit this machine: needs ") and line.count("\n") == 1
    assert "int8 fits" in line


# ---- the worker on a stand-in engine (no torch) ----

class SlowEngine:
    """Waits `first_token_s` (a long prefill), then writes one chunk per 10 ms (for 100 s) until stopped."""

    def __init__(self, first_token_s: float):
        self.first_token_s, self.stopped, self.threads = first_token_s, threading.Event(), set()

    def stream_chat(self, messages, *, stop_event, **options):
        self.threads.add(threading.current_thread().name)
        time.sleep(self.first_token_s)
        try:
            for i in range(10_000):
                if stop_event.is_set():
                    return
                time.sleep(0.01)
                yield f"{i} "
        finally:  # stopped by the event or closed by the worker
            self.stopped.set()

    def snapshot(self):
        self.threads.add(threading.current_thread().name)
        return fake_snapshot(1, 2)


def test_worker_heartbeats_during_prefill_and_closing_stops_the_engine():
    from app.worker import EngineWorker

    worker = EngineWorker(lambda model, progress, **kw: SlowEngine(first_token_s=0.8))
    worker.load("stand-in").result(timeout=10)
    stream = worker.stream([{"role": "user", "content": "hi"}])
    first = [next(stream) for _ in range(2)]
    assert first == [("", None), ("", None)]  # nothing generated yet, but the handler got control back
    text = ""
    while len(text) < 20:
        text += next(stream)[0]
    stream.close()
    assert worker.engine.stopped.is_set()
    assert worker.engine.threads == {worker.call(lambda e: threading.current_thread().name)}  # one thread
    worker.shutdown()


# ---- renderers on hand-made snapshots (no engine) ----

def fake_session(snapshots: list[dict]):
    """A tab's Session that saw one reply per snapshot (each snapshot's history is that reply's rows)."""
    from app.session import Session

    session = Session()
    for snap in snapshots:
        before = replace(snap, totals=replace(snap.totals, tokens=snap.history[0].token - 1))
        session.begin_reply(before)
        session.add(snap)
    return session


def test_panels_render_small_and_large_models_fast():
    from app.callbacks import panels

    snap = fake_snapshot(4, 8)
    session = fake_session([snap])
    small = panels(snap, session)
    assert "mp-grid" in small[0] and 'title="decoder layer 3, expert 7' in small[0]
    large_snapshot = fake_snapshot(48, 128)
    panels(large_snapshot, session)  # the first frame imports numpy and PIL
    start = time.perf_counter()
    large = panels(large_snapshot, session)
    elapsed = time.perf_counter() - start
    assert "data:image/png;base64," in large[0] and "experts 0–127" in large[0] and "decoder layers 0–47" in large[0]
    assert all(label in small[0] for label in ("not cached", "top segment cached", "whole expert cached",
                                               "active this token", "copied ahead (on grey: into the staging area"))
    assert "<svg" in small[2] and "full hit" in small[2] and "top hit" in small[2]
    assert "/s</span>" in small[3] and "tok/s" in small[3] and "simulated" in small[3]
    assert elapsed < 0.05, f"rendering a 48x128 frame took {elapsed * 1000:.0f} ms"
    assert all("mp-empty" in html for html in panels(None))


def test_stats_show_the_last_reply_beside_the_tab_average_and_top_hits_apart():
    from app.panels import hitrate_chart_html, stats_html

    first, second = fake_snapshot(4, 8, tokens=6), fake_snapshot(4, 8, tokens=3)
    # a second reply: 3 more decode steps, twice as fast, no top hits
    second = replace(second, history=tuple(replace(row, token=row.token + 6, tokens_per_s=18.0, top_hit_rate=0.0,
                                                   hit_rate=0.3) for row in second.history))
    session = fake_session([first, second])
    stats = stats_html(second, session)
    # last reply: 3 decode steps + the prefill's token at 18 tok/s; both: 9 decode steps in 6/9 + 3/18 s
    assert "18.0<span" in stats and "last reply: 4 tokens" in stats
    assert "your 2 replies: 10.8 tok/s over 11 tokens" in stats
    assert "full hits" in stats and "top hits" in stats
    assert ">30%<" in stats and ">13%<" in stats  # full 0.3 every token; top 0.2 for 6 of the 9 tokens
    chart = hitrate_chart_html(session)
    assert chart.count('class="mp-reply"') == 1 and "reply 1" in chart and "reply 2" in chart  # one marker between


def test_prediction_is_in_words_beside_the_measured_time():
    from app.panels import stats_html

    snap = replace(fake_snapshot(4, 8), prediction={
        "ms_per_token": 0.1, "bandwidth_source": "simulated (25 GB/s default)",
        "baselines": {"uniform_lru_no_split": 0.2, "best_uniform_split": 0.1}})
    stats = stats_html(snap, fake_session([snap]))
    assert "predicted 0.10 ms/token" in stats and "measured; predicted" in stats
    assert "uniform_lru_no_split" not in stats and "every layer the same budget, whole experts, LRU: 0.20 ms" in stats


def test_picker_shows_the_quant_decision_with_the_numbers(served):
    from app import models
    from moepic_core.models import load_spec

    folder = served[2]
    spec = load_spec(folder)
    need = {q: spec.store_bytes(q, "float32") + spec.dense_bytes("float32") for q in ("none", "int8", "int4")}
    ram = int(need["int8"] / 0.8) + 1  # int8 leaves 20% free, none does not fit
    check = models.check(str(folder), "auto", ram, cpu=True)
    assert check.loadable and "quant auto: int8" in check.message and "none would need" in check.message
    refused = models.check(str(folder), "none", ram, cpu=True)
    assert not refused.loadable and refused.option == "quant" and "int8 fits" in refused.message


def test_download_reports_byte_progress(monkeypatch):
    import moepic_core.hub

    from app import models

    def fake_download(repo_id, tqdm_class=None, **kwargs):
        bar = tqdm_class(total=1000, unit="B", desc="Downloading bytes")
        for _ in range(4):
            bar.update(250)
        bar.close()
        return Path("/downloaded") / repo_id

    monkeypatch.setattr(moepic_core.hub, "download", fake_download)
    seen = []
    assert models.download("org/model", lambda stage, f: seen.append((stage, f))) == Path("/downloaded/org/model")
    assert [f for _, f in seen] == [0.25, 0.5, 0.75, 1.0] and "org/model" in seen[-1][0]


def test_vram_slider_range_cpu_and_gpu():
    from app.callbacks import vram_range

    def sized(snap, min_vram_bytes=None, expert_bytes=None, **budget):
        """`snap` with another minimum VRAM (through its dense part), expert size or budget fields."""
        fixed = snap.budgets.min_vram_bytes - snap.budgets.dense_bytes
        if min_vram_bytes is not None:
            budget["dense_bytes"] = min_vram_bytes - fixed
        return replace(snap, budgets=replace(snap.budgets, **budget), expert_bytes=expert_bytes or snap.expert_bytes)

    snap = sized(fake_snapshot(4, 8), min_vram_bytes=2_000_000_000, vram_bytes=None,
                 expert_bytes=100_000_000)  # 32 experts: 3.2 GB
    cpu = vram_range(snap, {})
    assert cpu["minimum"] == 2.0 and cpu["maximum"] == 5.36 and "simulated" in cpu["label"] and "(GB" in cpu["label"]
    snap = sized(snap, simulated=False)
    gpu = vram_range(snap, {"vram_total_bytes": 24_000_000_000})
    assert gpu["maximum"] == 5.36 and "simulated" not in gpu["label"]  # no further than caching every expert
    snap = sized(snap, expert_bytes=1_000_000_000)  # 32 GB of experts on a 24 GB card: the card is the limit
    assert vram_range(snap, {"vram_total_bytes": 24_000_000_000})["maximum"] == 24.0
    # the demo: 65 MB + 32 experts of 0.74 MB
    snap = sized(snap, min_vram_bytes=64_800_000, simulated=True, expert_bytes=737_280)
    small = vram_range(snap, {})
    assert "(MB" in small["label"] and small["minimum"] == 64.8 and small["maximum"] == 89.6
    snap = sized(snap, simulated=False)  # the demo on a big GPU: the same MB range, not 0.06-139 GB
    assert vram_range(snap, {"vram_total_bytes": 139_000_000_000})["maximum"] == 89.6


def test_launch_help_documents_every_flag():
    out = subprocess.run([sys.executable, str(ROOT / "launch.py"), "--help"], capture_output=True, text=True,
                         timeout=60, cwd=ROOT)
    assert out.returncode == 0
    for flag in ("--model", "--vram-gb", "--device", "--quant", "--policy", "--host", "--port", "--no-browser",
                 "--share"):
        assert flag in out.stdout


def test_launch_settings_stay_offline():
    from app.ui import launch_kwargs

    kwargs = launch_kwargs("127.0.0.1", 7860)
    assert kwargs["share"] is False and kwargs["footer_links"] == [] and kwargs["ssr_mode"] is False
    assert kwargs["enable_monitoring"] is False and kwargs["mcp_server"] is False and kwargs["pwa"] is False
    # launch.py itself switches analytics and telemetry off: checked where nothing (conftest) set them before
    env = {k: v for k, v in os.environ.items() if k not in ("GRADIO_ANALYTICS_ENABLED", "HF_HUB_DISABLE_TELEMETRY")}
    code = ("import launch, gradio.analytics, huggingface_hub.constants as hub; "
            "print(gradio.analytics.analytics_enabled(), hub.HF_HUB_DISABLE_TELEMETRY)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=ROOT, env=env)
    assert out.stdout.split() == ["False", "True"], out.stderr


def test_free_port_skips_a_taken_port():
    import socket

    from launch import free_port

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        taken = s.getsockname()[1]
        assert free_port("127.0.0.1", taken) != taken
