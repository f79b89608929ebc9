"""Start the MoEpic chat app: `python launch.py [--model demo] [--vram-gb X] [--no-browser] ...`."""
from __future__ import annotations

import argparse
import socket
import sys

import app  # noqa: F401 - switches analytics and telemetry off before gradio is imported
from app.config import DEVICES, POLICIES, QUANTS, AppConfig


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python launch.py",
        description="Chat with a Mixture-of-Experts model whose experts live in CPU RAM, and watch the "
                    "expert cache work. Runs without a GPU (CPU mode, simulated VRAM budget) and without network.")
    p.add_argument("--model", default="demo",
                   help="'demo' (the built-in model in assets/demo-model), a local model folder, or a hub id "
                        "(e.g. Qwen/Qwen1.5-MoE-A2.7B-Chat). A hub model is used at start only if already "
                        "downloaded; otherwise press Load in the app to download it (default: demo)")
    p.add_argument("--vram-gb", type=float, default=None,
                   help="VRAM the engine may use (dense part, KV reserve, staging, expert cache), in GB. "
                        "Default: detected free VRAM minus a reserve; in CPU mode a simulated budget that "
                        "caches about a third of the expert bytes")
    p.add_argument("--device", choices=DEVICES, default="auto", help="where the model computes (default: auto: CUDA if available)")
    p.add_argument("--quant", choices=QUANTS, default="none", help="quantisation of the expert store (default: none)")
    p.add_argument("--policy", choices=POLICIES, default="lcp", help="expert-cache eviction policy (default: lcp)")
    p.add_argument("--dtype", choices=("float32", "bfloat16", "float16"), default=None,
                   help="compute dtype (default: the engine's choice for the device)")
    p.add_argument("--max-new-tokens", type=int, default=256, help="initial value of the reply-length slider (default: 256)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1; 0.0.0.0 exposes the app to your network)")
    p.add_argument("--port", type=int, default=7860, help="port to listen on, or the next free one if taken (default: 7860)")
    p.add_argument("--no-browser", action="store_true", help="do not open a browser tab (default: open one)")
    p.add_argument("--share", action="store_true", help="make a public gradio.live link (off unless given)")
    return p.parse_args(argv)


def free_port(host: str, start: int, tries: int = 100) -> int:
    """`start`, or the next port after it that nothing listens on."""
    for port in range(start, start + tries):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            try:
                s.bind((host, port))
            except OSError:
                continue
            return port
    raise SystemExit(f"no free port in {start}..{start + tries - 1} on {host}")


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        config = AppConfig(model=args.model, vram_gb=args.vram_gb, device=args.device, quant=args.quant,
                           policy=args.policy, dtype=args.dtype, max_new_tokens=args.max_new_tokens)
    except ValueError as exc:
        print(f"launch.py: {exc}", file=sys.stderr)
        return 2
    from app.callbacks import Controller
    from app.header import detect_hardware
    from app.ui import serve

    controller = Controller(config, detect_hardware())
    port = free_port(args.host, args.port)
    demo, url = serve(controller, host=args.host, port=port, share=args.share, inbrowser=not args.no_browser)
    print(f"MoEpic is running at {url}  (Ctrl+C to stop)", flush=True)
    try:
        demo.block_thread()
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
