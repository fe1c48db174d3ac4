"""The command-line entry shared by validate.py, infer.py, the prior and simulation commands."""

from __future__ import annotations

import sys
from collections.abc import Callable

# Bad input (a missing file, a malformed CSV, mismatched classes, an impossible setting) is reported
# as one line that names the file/flag and the fix; the library code raises these with such messages.
USER_ERRORS = (ValueError, FileNotFoundError, MemoryError)


def run_cli(main: Callable, argv=None) -> int:
    """Run ``main(argv)``; a user error prints ``error: ...`` on stderr and gives exit status 2."""
    try:
        main(argv)
    except USER_ERRORS as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0
