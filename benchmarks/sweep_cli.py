"""Command-line plumbing shared by ``sweep.py`` and ``aggregate.py``: bad input is one ``error:`` line and
exit status 2, raised before anything is launched or written."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from typing import Any, NoReturn

USAGE_ERROR = 2


class InputError(ValueError):
    """Bad input found before anything ran: printed as one ``error:`` line, exit status 2."""


class Parser(argparse.ArgumentParser):
    """argparse with its usage errors as one ``error:`` line (``--help`` still prints the usage)."""

    def error(self, message: str) -> NoReturn:
        print(f"error: {message} (see --help)", file=sys.stderr)
        raise SystemExit(USAGE_ERROR)


def run_main(main: Callable[[Sequence[str] | None], Any], argv: Sequence[str] | None = None) -> int:
    """Call ``main(argv)``; an :class:`InputError` becomes one ``error:`` line and exit 2 (other exceptions
    are bugs and keep their traceback)."""
    try:
        result = main(argv)
    except InputError as error:
        print(f"error: {error}", file=sys.stderr)
        return USAGE_ERROR
    return result if isinstance(result, int) else 0
