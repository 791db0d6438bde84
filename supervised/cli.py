"""How the supervised command lines end: expected user errors as one line, everything else as a traceback.

``benchmarks/warmstart.py``, ``continual.py``, ``multi_stage.py``, ``smooth_transition.py``,
``layer_reset.py`` and ``supervised_fidelity.py`` end with ``run_cli(main, parse)``. A missing dataset
(FileNotFoundError listing the expected files), a corrupt file (:class:`~.download.ChecksumError`), a
missing ``--data-dir``, a bad value (ValueError from the settings' validation) or a missing optional
package (ImportError naming the pip command) prints ``error: <message>`` on stderr and exits with status
2, as tyro does for unparsable flags. A run stopped by a signal prints where its checkpoint is and exits
with status 1. Only exceptions raised by plasticrl's own code count as user errors: the same classes
raised inside torch, numpy or another library, and every other exception, keep their traceback (they are
bugs to report, not input to fix).
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any, TypeVar

from plasticrl.common.errors import USER_ERROR_STATUS
from plasticrl.common.errors import is_user_error as _is_user_error

from .download import ChecksumError
from .train import RunInterrupted

__all__ = ["USER_ERRORS", "USER_ERROR_STATUS", "is_user_error", "run_cli"]

# FileNotFoundError (missing data) and failed downloads are OSErrors; ChecksumError is a ValueError.
USER_ERRORS: tuple[type[BaseException], ...] = (OSError, ChecksumError, ValueError, ImportError)

T = TypeVar("T")


def is_user_error(error: BaseException) -> bool:
    """Whether ``error`` is an expected user error: one of :data:`USER_ERRORS`, raised by plasticrl's own
    code (a ``plasticrl`` module or the command-line script being run)."""
    return _is_user_error(error, USER_ERRORS)


def run_cli(main: Callable[[T], Any], parse: Callable[[], T]) -> Any:
    """``main(parse())``; a user error (:func:`is_user_error`) becomes ``error: <message>`` on stderr and
    exit status 2, :class:`RunInterrupted` its message and status 1; anything else propagates."""
    try:
        return main(parse())
    except RunInterrupted as stopped:
        print(stopped, file=sys.stderr)
        raise SystemExit(1) from None
    except USER_ERRORS as error:
        if not is_user_error(error):
            raise
        print(f"error: {error}", file=sys.stderr)
        raise SystemExit(USER_ERROR_STATUS) from None
