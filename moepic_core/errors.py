"""Errors the engine raises for bad input. Each carries a message fit to show a user as is."""


class MoepicError(ValueError):
    """Base of every user-facing engine error."""


class ModelLoadError(MoepicError):
    """The model folder is missing, has no weights, or its files are unreadable."""


class UnsupportedModelError(MoepicError):
    """The architecture has no family adapter."""


class BudgetError(MoepicError):
    """A VRAM budget below what the engine needs; `min_bytes` is that minimum."""

    def __init__(self, message: str, min_bytes: int):
        super().__init__(message)
        self.min_bytes = min_bytes


class GenerationError(MoepicError):
    """Generation could not run (empty prompt, out of memory, ...)."""
