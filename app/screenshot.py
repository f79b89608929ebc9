"""Screenshot of the app mid-generation, for the README:
`python -m app.screenshot [--model demo] [--out assets/screenshot.png]`.

Serves the app on a free local port, has one short exchange (so the hit-rate chart has a history),
sends a second message with sampling on and shoots while that reply streams. Needs Debian's
Chromium and the Python `playwright` package (which never downloads a browser here).
"""
from __future__ import annotations

import argparse
import time

CHROMIUM = "/usr/lib/chromium/chromium"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-background-networking",
        "--no-first-run"]
PROMPTS = ("Good morrow, my lord. What news from the court?", "Speak, and tell me of the king.")


def heatmap_tokens(page) -> int:
    return int(page.get_attribute("#cache-heatmap [data-tokens]", "data-tokens") or 0)


def wait_until_idle(page, quiet_s: float = 2.0, timeout_s: float = 120.0) -> int:
    """Wait until the token count stops moving (the reply ended); return it."""
    last, since, deadline = -1, time.time(), time.time() + timeout_s
    while time.time() < deadline:
        tokens = heatmap_tokens(page)
        if tokens != last:
            last, since = tokens, time.time()
        elif tokens > 0 and time.time() - since > quiet_s:
            break
        time.sleep(0.1)
    return last


def send(page, text: str) -> None:
    page.locator("#chat-input textarea").fill(text)
    page.click("#send")


def shoot(url: str, out: str, min_new_tokens: int = 12, width: int = 1400) -> None:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        page = browser.new_page(viewport={"width": width, "height": 1000})
        page.goto(url)
        page.wait_for_selector("#status .mp-ok, #status .mp-warn", timeout=300_000)
        page.click("#gen-settings button, #gen-settings .label-wrap")  # open the settings
        page.locator("#temperature input[type=number]").fill("0.8")
        page.locator("#temperature input[type=number]").press("Enter")
        page.click("#gen-settings button, #gen-settings .label-wrap")  # and close them again
        send(page, PROMPTS[0])
        start = wait_until_idle(page)
        send(page, PROMPTS[1])
        deadline = time.time() + 120
        while heatmap_tokens(page) < start + min_new_tokens and time.time() < deadline:
            time.sleep(0.05)
        page.screenshot(path=out, full_page=True)
        page.click("#stop")
        browser.close()


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="demo")
    parser.add_argument("--out", default="assets/screenshot.png")
    parser.add_argument("--max-new-tokens", type=int, default=400)
    args = parser.parse_args(argv)

    from app.testing import start_server, stop_server

    demo, url, controller = start_server(args.model, first_port=7990, max_new_tokens=args.max_new_tokens)
    try:
        shoot(url, args.out)
    finally:
        stop_server(demo, controller)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
