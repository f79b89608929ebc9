"""The app in a real browser (Debian's Chromium driven by Python playwright, never a downloaded browser):
type, stream, watch the heatmap change, Stop, screenshot, and no request leaves 127.0.0.1."""
from __future__ import annotations

import os
import re
import shutil
import time
from pathlib import Path
from urllib.parse import urlparse

import pytest

CHROMIUM = os.environ.get("MOEPIC_CHROMIUM", "/usr/lib/chromium/chromium")
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-background-networking",
        "--no-first-run"]
LOCAL_HOSTS = {"127.0.0.1", "localhost"}

pytestmark = [
    pytest.mark.skipif(not Path(CHROMIUM).is_file(),
                       reason=f"Chromium not found at {CHROMIUM} (Debian: apt-get install -y chromium)"),
    pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore:.*(no_silent_downcasting|copy keyword).*"),
]


@pytest.fixture(scope="module")
def app_url(tmp_path_factory):
    from moepic_core.testing import make_tiny_model

    from app.testing import start_server, stop_server

    folder = make_tiny_model("mixtral", tmp_path_factory.mktemp("browser") / "tiny-mixtral", seed=0)
    demo, url, controller = start_server(folder, first_port=7890, device="cpu", cpu_mode="simulated",
                                         max_new_tokens=1500)
    yield url
    stop_server(demo, controller)


@pytest.fixture(scope="module")
def browser():
    sync_api = pytest.importorskip("playwright.sync_api", reason="the Python playwright package is not installed")
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        yield b
        b.close()


def heatmap_token(page) -> int:
    html = page.inner_html("#cache-heatmap")
    match = re.search(r'data-tokens="(\d+)"', html)
    return int(match.group(1)) if match else -1


def bot_text(page) -> str:
    bubbles = page.locator('[data-testid="bot"]')
    return bubbles.last.inner_text() if bubbles.count() else ""


def test_type_stream_stop_screenshot_offline(browser, app_url, tmp_path):
    page = browser.new_page(viewport={"width": 1400, "height": 1100})
    requests: list[str] = []
    page.on("request", lambda r: requests.append(r.url))
    page.goto(app_url)
    page.wait_for_selector("#status .mp-ok, #status .mp-warn", timeout=60_000)  # the panels are filled
    page.locator("#chat-input textarea").fill("Hello, how are you today?")
    page.click("#send")

    tokens_seen, texts = set(), set()
    deadline = time.time() + 60
    while time.time() < deadline and (len(tokens_seen) < 3 or len(texts) < 3):
        tokens_seen.add(heatmap_token(page))
        texts.add(bot_text(page))
        texts.discard("")
        time.sleep(0.1)
    tokens_seen.discard(-1)
    assert len(texts) >= 3, "the reply did not stream"
    assert len(tokens_seen) >= 3, f"the heatmap did not change while streaming: {tokens_seen}"

    # the chat shows no floating "Chat" label that could cover the top message once the chat scrolls
    assert page.locator("#chatbot").get_by_text("Chat", exact=True).count() == 0

    shot = tmp_path / "app.png"
    page.screenshot(path=str(shot), full_page=True)
    assert shot.stat().st_size > 20_000
    if os.environ.get("MOEPIC_SCREENSHOT"):
        shutil.copy(shot, os.environ["MOEPIC_SCREENSHOT"])

    page.click("#stop")
    time.sleep(1.0)
    stopped = bot_text(page)
    time.sleep(1.5)
    assert bot_text(page) == stopped, "the reply kept growing after Stop"
    tokens_after_stop = heatmap_token(page)
    assert 0 < tokens_after_stop < 1500

    page.locator("#chat-input textarea").fill("One more?")
    page.click("#send")
    page.wait_for_function("document.querySelectorAll('[data-testid=\"bot\"]').length >= 2", timeout=30_000)
    page.close()

    off_box = [u for u in requests if urlparse(u).scheme in ("http", "https", "ws", "wss")
               and urlparse(u).hostname not in LOCAL_HOSTS]
    assert requests and not off_box, f"requests left the machine: {off_box}"


def test_api_traffic_shows_in_an_idle_page(browser, app_url):
    """A reply streamed through /v1 (not typed in the page) moves the open page's heatmap as it goes."""
    import threading

    import httpx

    page = browser.new_page(viewport={"width": 1400, "height": 1100})
    page.goto(app_url)
    page.wait_for_selector("#status .mp-ok, #status .mp-warn", timeout=60_000)
    before = -2
    while before != heatmap_token(page):  # idle: no reply of an earlier test still running
        before = heatmap_token(page)
        time.sleep(1.0)
    replies = []
    body = {"messages": [{"role": "user", "content": "Hello from a script"}], "max_tokens": 200, "temperature": 0}
    api = threading.Thread(target=lambda: replies.append(
        httpx.post(app_url + "v1/chat/completions", json=body, timeout=120).json()))
    api.start()
    seen = set()
    while api.is_alive():
        seen.add(heatmap_token(page))
        time.sleep(0.05)
    time.sleep(1.0)  # the timer's next tick draws the last token
    final = heatmap_token(page)
    page.close()
    decoded = replies[0]["usage"]["completion_tokens"] - 1  # decode steps (the first token is the prefill's)
    assert final == before + decoded
    assert len({t for t in seen if before < t < final}) >= 2, f"the page did not follow the reply live: {seen}"
