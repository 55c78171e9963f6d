"""How every command line of the harness ends on bad input: one line `error: <what and how to fix>` on stderr,
exit status 2, no traceback (the same contract as argparse's usage errors)."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager

from harness.errors import HarnessError

USAGE_ERROR = 2  # argparse's exit status for a usage error; the harness uses it for every rejected input


def error(problem: object) -> int:
    """Print `error: <problem>` on stderr and return the exit status, for `return error(err)` in a `main`."""
    print(f"error: {problem}", file=sys.stderr)
    return USAGE_ERROR


@contextmanager
def exit_on_error() -> Iterator[None]:
    """A HarnessError raised inside the block ends the process: `error: ...`, exit status 2."""
    try:
        yield
    except HarnessError as err:
        sys.exit(error(err))
