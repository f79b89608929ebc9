"""How the app words a failure. A MoepicError (bad input, a model it cannot use, a budget too small, memory
run out) is shown as its own message; anything else is a bug: logged once here with its traceback, and
shown as a short line that points to the log."""
from __future__ import annotations

import logging

from moepic_core.errors import MoepicError

log = logging.getLogger("moepic.app")


def problem_text(exc: BaseException, doing: str) -> str:
    """The message to show for `exc`, which happened while `doing` ("loading demo", "generating")."""
    if isinstance(exc, MoepicError):
        return str(exc)
    log.error("unexpected error while %s", doing, exc_info=exc)
    return f"internal error while {doing} ({type(exc).__name__}); the details are in the server's log"
