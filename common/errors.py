"""Which exceptions are a user's bad input (one ``error:`` line) and which are bugs (a traceback).

Shared by the agents (:func:`plasticrl.common.cli.run_agent`) and the supervised command lines
(:func:`plasticrl.supervised.cli.run_cli`). A ValueError, TypeError, OSError (a missing file or directory)
or ImportError (a missing optional package) raised by plasticrl's own code is input to fix: the message
names the bad value and what is allowed. The same classes raised inside torch, numpy or another library,
and every other exception, keep their traceback: they are bugs to report.
"""

from __future__ import annotations

from types import TracebackType

__all__ = ["USER_ERRORS", "USER_ERROR_STATUS", "is_user_error", "raised_by_plasticrl"]

USER_ERRORS: tuple[type[BaseException], ...] = (OSError, ValueError, TypeError, ImportError)
# The status tyro (and argparse) exit with for unparsable flags: the same for values we reject.
USER_ERROR_STATUS = 2


def _innermost(tb: TracebackType | None) -> TracebackType | None:
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    return tb


def raised_by_plasticrl(error: BaseException) -> bool:
    """Whether the innermost frame of ``error``'s traceback is plasticrl's code (a ``plasticrl`` module
    or the script being run)."""
    tb = _innermost(error.__traceback__)
    if tb is None:
        return False
    module = tb.tb_frame.f_globals.get("__name__", "")
    return module == "__main__" or module == "plasticrl" or module.startswith("plasticrl.")


def is_user_error(error: BaseException, kinds: tuple[type[BaseException], ...] = USER_ERRORS) -> bool:
    """Whether ``error`` is an expected user error: one of ``kinds`` raised by plasticrl's own code."""
    return isinstance(error, kinds) and raised_by_plasticrl(error)
