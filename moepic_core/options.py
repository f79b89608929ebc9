"""What a valid value of each user-facing option is, in words, and the one-line command-line parser.

The engine's config, the CLIs, launch.py and the app all refuse a bad value with `bad(option, value)`,
so they say the same thing: `--split must be a ratio in (0, 1] or 'auto', got 'abc'` on the command
line, `split must be ...` elsewhere (OptionError.flag() vs str()).
"""
from __future__ import annotations

import argparse
import sys

from .errors import OptionError
from .spec import DTYPE_BYTES

DTYPES = tuple(DTYPE_BYTES)  # "float32", "bfloat16", "float16"
DEVICES = ("auto", "cpu", "cuda")  # the engine also takes "cuda:N"
DEVICE_WORDS = "auto, cpu or cuda[:N]"

RULES = {
    "vram_gb": "must be a number of GB >= 0",
    "cache_gb": "must be a number of GB >= 0",
    "split": "must be a ratio in (0, 1] or 'auto'",
    "device": f"must be {DEVICE_WORDS}",
    "dtype": f"must be one of {', '.join(DTYPES)}",
    "max_new_tokens": "must be a whole number >= 1",
    "temperature": "must be a number >= 0 (0 = greedy)",
    "top_p": "must be a number in (0, 1]",
    "top_k": "must be a whole number >= 0",
    "min_new_tokens": "must be a whole number >= 0",
    "seed": "must be a whole number",
    "max_context": "must be a whole number >= 1",
    "prefetch_extra": "must be a whole number >= 0",
    "port": "must be a port number in 1..65535",
    "bandwidth_gbps": "must be a number of GB/s > 0",
    "cpu_gbps": "must be a number of GB/s >= 0 (0: no CPU path)",
    "prefetch_accuracy": "must be a recall in [0, 1]",
    "api_queue": "must be a whole number >= 0",
    "api_key": "must not be empty",
}


def rule(option: str, choices=None) -> str:
    return f"must be one of {', '.join(choices)}" if choices is not None else RULES[option]


def bad(option: str, value, choices=None) -> OptionError:
    """The error for `value` of `option` (a field name such as "vram_gb"), in the shared wording."""
    return OptionError(option, f"{rule(option, choices)}, got {value!r}")


def parsed(option: str, convert=str, choices=None):
    """An argparse `type` that converts with `convert` and refuses what fails (or is not in `choices`)
    in the shared wording; ranges are checked where the value is used (EngineConfig, AppConfig)."""
    def parse(text: str):
        try:
            value = convert(text)
        except (TypeError, ValueError):
            raise argparse.ArgumentTypeError(f"{rule(option, choices)}, got {text!r}") from None
        if choices is not None and value not in choices:
            raise argparse.ArgumentTypeError(f"{rule(option, choices)}, got {text!r}")
        return value

    parse.__name__ = option  # argparse names the type in some messages
    return parse


def ratio_or_auto(text: str) -> float | str:
    return "auto" if text == "auto" else float(text)


class OneLineParser(argparse.ArgumentParser):
    """argparse that reports a bad or missing flag as one line `error: --flag ...`, exit status 2."""

    def error(self, message: str):
        if message.startswith("argument "):  # "argument --split: must be ..." -> "--split must be ..."
            message = message[len("argument "):].replace(": ", " ", 1)
        self.exit(2, f"error: {message}\n")


def exit_with(exc: Exception) -> int:
    """Print a user error as the one line the CLIs use; the exit status for it (2)."""
    text = exc.flag() if isinstance(exc, OptionError) else str(exc)
    print(f"error: {text}", file=sys.stderr)
    return 2
