"""Screenshot of the app after a long reply, for the README:
`python -m app.screenshot [--model demo] [--out assets/screenshot.png] [--min-reply-tokens 60]`.

Serves the app on a free local port and chats with the model's own sampling settings until a reply
of at least `--min-reply-tokens` tokens has finished (the first exchange gives the hit-rate chart a
reply before it, so its marker between replies shows), then shoots the whole page. Needs Debian's
Chromium and the Python `playwright` package (which never downloads a browser here).
"""
from __future__ import annotations

import argparse
import time

CHROMIUM = "/usr/lib/chromium/chromium"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-background-networking",
        "--no-first-run"]
PROMPTS = ("Good morrow, my lord. What news from the court?", "Speak, and tell me of the king.",
           "What say you of the war in France?", "Wilt thou fight for me tomorrow?")


def heatmap_tokens(page) -> int:
    return int(page.get_attribute("#cache-heatmap [data-tokens]", "data-tokens") or 0)


def wait_until_idle(page, start: int, quiet_s: float = 3.0, timeout_s: float = 300.0) -> int:
    """Wait until the token count has moved past `start` and then stopped moving (the reply ended)."""
    last, since, deadline = start, time.time(), time.time() + timeout_s
    while time.time() < deadline:
        tokens = heatmap_tokens(page)
        if tokens != last:
            last, since = tokens, time.time()
        elif tokens > start and time.time() - since > quiet_s:
            break
        time.sleep(0.1)
    return last


def send(page, text: str) -> None:
    page.locator("#chat-input textarea").fill(text)
    page.click("#send")


def shoot(url: str, out: str, min_reply_tokens: int = 60, width: int = 1400) -> int:
    """Chat until a reply of `min_reply_tokens` has finished, then screenshot; returns that reply's tokens."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        page = browser.new_page(viewport={"width": width, "height": 1000})
        page.goto(url)
        page.wait_for_selector("#status .mp-ok, #status .mp-warn", timeout=300_000)
        before, longest = heatmap_tokens(page), 0
        for number, prompt in enumerate(PROMPTS):
            send(page, prompt)
            after = wait_until_idle(page, before)
            longest = after - before  # decode steps of this reply
            before = after
            if number >= 1 and longest + 1 >= min_reply_tokens:
                break
        page.locator("#chatbot").evaluate("el => el.querySelector('[role=log], .bubble-wrap')?.scrollTo(0, 1e6)")
        page.screenshot(path=out, full_page=True)
        browser.close()
    return longest + 1


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="demo")
    parser.add_argument("--out", default="assets/screenshot.png")
    parser.add_argument("--max-new-tokens", type=int, default=256)
    parser.add_argument("--min-reply-tokens", type=int, default=60, help="shoot after a reply at least this long")
    args = parser.parse_args(argv)

    from app.testing import start_server, stop_server

    demo, url, controller = start_server(args.model, first_port=7990, max_new_tokens=args.max_new_tokens)
    try:
        tokens = shoot(url, args.out, args.min_reply_tokens)
    finally:
        stop_server(demo, controller)
    print(f"wrote {args.out} after a reply of {tokens} tokens")


if __name__ == "__main__":
    main()
