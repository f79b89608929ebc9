"""Errors the engine raises for what a user can fix: bad input, a model it cannot use, a budget too small,
memory run out. Each carries a message fit to show a user as is; the CLIs print it as one line and exit
with status 2, the app shows it in the page. Any other exception is a bug: logged with its traceback.
MoepicError is a ValueError, so callers that caught ValueError still catch these.
"""


class MoepicError(ValueError):
    """Base of every user-facing engine error."""


class OptionError(MoepicError):
    """A bad value of one option. `option` is its EngineConfig field name ("vram_gb"); `problem` the rest
    ("must be >= 0, got -1"). str() names the field; `flag()` names the command-line flag, so the CLI,
    launch.py and the app say the same thing, each in its own names."""

    def __init__(self, option: str, problem: str):
        super().__init__(f"{option} {problem}")
        self.option, self.problem = option, problem

    def flag(self) -> str:
        return f"--{self.option.replace('_', '-')} {self.problem}"


class ModelLoadError(MoepicError):
    """The model folder is missing, has no weights, or its files are unreadable."""


class UnsupportedModelError(MoepicError):
    """The architecture has no family adapter."""


class BudgetError(MoepicError):
    """A VRAM budget below what the engine needs; `min_bytes` is that minimum."""

    def __init__(self, message: str, min_bytes: int):
        super().__init__(message)
        self.min_bytes = min_bytes


class PlanError(MoepicError):
    """A cache plan that cannot run: a layout or slot counts that do not match the model, bad policy parameters."""


class TraceError(MoepicError):
    """A routing trace file is missing, unreadable or malformed."""


class GenerationError(MoepicError):
    """Generation could not run (empty prompt, no tokenizer, ...)."""


class OutOfMemoryError(GenerationError):
    """The device (torch.OutOfMemoryError) or the host (MemoryError) ran out of memory while loading,
    re-laying out or generating; after a re-layout or a step the engine stays usable, at the previous
    budget or a shorter context."""
