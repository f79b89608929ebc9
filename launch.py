"""Start the MoEpic chat app and its OpenAI-compatible API (under /v1, same host and port):
`python launch.py [--model demo] [--vram-gb X] [--no-browser] [--api-only] [--api-key KEY] ...`."""
from __future__ import annotations

import argparse
import logging
import os
import socket
import sys

import app  # noqa: F401 - switches analytics and telemetry off before gradio is imported
from app.config import AppConfig
from moepic_core.cache.policies import POLICY_CHOICES
from moepic_core.errors import MoepicError
from moepic_core.fit import QUANT_CHOICES
from moepic_core.options import DEVICES, DTYPES, OneLineParser, exit_with, parsed


def choice(option: str, allowed) -> dict:
    """argparse settings for a flag with fixed choices, refused in the engine's words."""
    return dict(type=parsed(option, choices=allowed), metavar="{" + ",".join(allowed) + "}")


def parse_args(argv=None) -> argparse.Namespace:
    p = OneLineParser(
        prog="python launch.py",
        description="Chat with a Mixture-of-Experts model whose experts live in CPU RAM, and watch the "
                    "expert cache work. Runs without a GPU (CPU mode, simulated VRAM budget) and without network.")
    p.add_argument("--model", default="demo",
                   help="'demo' (the built-in model in assets/demo-model), a local model folder, or a hub id "
                        "(e.g. Qwen/Qwen1.5-MoE-A2.7B-Chat). A hub model is used at start only if already "
                        "downloaded; otherwise press Load in the app to download it (default: demo)")
    p.add_argument("--vram-gb", type=parsed("vram_gb", float), default=None, metavar="GB",
                   help="VRAM the engine may use (dense part, KV reserve, staging, expert cache), in GB. "
                        "Default: detected free VRAM minus a reserve; in CPU mode a simulated budget that "
                        "caches about a third of the expert bytes")
    p.add_argument("--device", **choice("device", DEVICES), default="auto", help="where the model computes (default: auto: CUDA if available)")
    p.add_argument("--quant", **choice("quant", QUANT_CHOICES), default="auto",
                   help="quantisation of the expert store (default: auto, the best quality that fits the free "
                        "RAM and disk; the page says which and why)")
    p.add_argument("--policy", **choice("policy", POLICY_CHOICES), default="auto",
                   help="expert-cache policy (default: auto, the best by replaying the calibration trace)")
    p.add_argument("--dtype", **choice("dtype", DTYPES), default=None,
                   help="compute dtype (default: the engine's choice for the device)")
    p.add_argument("--max-new-tokens", type=parsed("max_new_tokens", int), default=256, metavar="N", help="initial value of the reply-length slider (default: 256)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1; 0.0.0.0 exposes the app to your network)")
    p.add_argument("--port", type=parsed("port", int), default=7860, metavar="PORT", help="port to listen on, or the next free one if taken (default: 7860)")
    p.add_argument("--no-browser", action="store_true", help="do not open a browser tab (default: open one)")
    p.add_argument("--share", action="store_true", help="make a public gradio.live link (off unless given)")
    api = p.add_argument_group("OpenAI-compatible API (served under /v1 on the same host and port)")
    api.add_argument("--api-only", action="store_true", help="serve the API without the page")
    api.add_argument("--api-key", default=os.environ.get("MOEPIC_API_KEY") or None, metavar="KEY",
                     help="require 'Authorization: Bearer KEY' on every API request (default: $MOEPIC_API_KEY; "
                          "none: no key needed)")
    api.add_argument("--cors-origin", action="append", default=[], metavar="ORIGIN",
                     help="let browser pages from ORIGIN (e.g. http://localhost:3000) call the API; repeatable "
                          "(default: no CORS)")
    api.add_argument("--api-queue", type=int, default=16, metavar="N",
                     help="API requests that may wait while one runs; more get 429 (default: 16)")
    return p.parse_args(argv)


def is_loopback(host: str) -> bool:
    return host in ("localhost", "::1") or host.startswith("127.")


def exposure_warning(host: str, api_key: str | None, page: bool) -> str | None:
    """What a non-local --host leaves open, or None."""
    if is_loopback(host):
        return None
    if api_key is None:
        what = "the page and the API" if page else "the API"
        return f"--host {host} exposes {what} to your network without a key; set --api-key or MOEPIC_API_KEY"
    if page:
        return f"--host {host}: the API needs the key, but the page is open to your network; add --api-only"
    return None


def api_settings(args: argparse.Namespace):
    """The API's settings from the flags; a MoepicError names the bad one."""
    from app.api import ApiSettings

    if args.share and args.api_only:
        raise MoepicError("--share makes a link to the page; --api-only serves no page")
    return ApiSettings(api_key=args.api_key, cors_origins=tuple(args.cors_origin), queue_size=args.api_queue)


def free_port(host: str, start: int, tries: int = 100) -> int:
    """`start`, or the next port after it that nothing listens on."""
    for port in range(start, start + tries):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            try:
                s.bind((host, port))
            except OSError:
                continue
            return port
    raise SystemExit(f"error: --port: no free port in {start}..{start + tries - 1} on {host}")


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        config = AppConfig(model=args.model, vram_gb=args.vram_gb, device=args.device, quant=args.quant,
                           policy=args.policy, dtype=args.dtype, max_new_tokens=args.max_new_tokens)
        api = api_settings(args)
    except MoepicError as exc:
        return exit_with(exc)
    warning = exposure_warning(args.host, api.api_key, page=not args.api_only)
    if warning:
        print(f"launch.py: warning: {warning}", file=sys.stderr)
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    logging.getLogger("moepic.api").setLevel(logging.INFO)  # one line per API request
    from app.callbacks import Controller
    from app.header import detect_hardware
    from app.server import serve

    controller = Controller(config, detect_hardware())
    check = controller.check(config.model, config.quant)
    if not check.loadable:  # refused here, in one line, rather than in a page that has nothing to show
        print(f"error: {check.flag_line()}", file=sys.stderr)
        return 2
    port = free_port(args.host, args.port)
    served = serve(controller, host=args.host, port=port, share=args.share, inbrowser=not args.no_browser,
                   page=not args.api_only, api=api)
    where = f"the API at {served.url}v1" if args.api_only else f"{served.url} (API: {served.url}v1)"
    print(f"MoEpic is running: {where}  (Ctrl+C to stop)", flush=True)
    if served.share_url:
        print(f"Public link: {served.share_url}", flush=True)
    served.block()
    return 0


if __name__ == "__main__":
    sys.exit(main())
