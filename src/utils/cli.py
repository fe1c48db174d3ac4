"""The one way a command turns a user error into a clean exit."""

from __future__ import annotations

import sys
from collections.abc import Callable


class ConfigError(ValueError):
    """A setting or input that cannot work; raised before any work is done where possible."""


class MissingFileError(ConfigError, FileNotFoundError):
    """A file named by a flag does not exist."""


class ExitRequest(Exception):
    """Ends a command with ``exit_code`` and the message, without a traceback (e.g. SIGTERM: 143)."""

    exit_code = 1


# Bad input is reported as one line; the library raises these with messages naming the file/flag and fix.
USER_ERRORS = (ValueError, FileNotFoundError, MemoryError, OSError)


def run_cli(main: Callable, argv=None, prog: str | None = None) -> int:
    """Run ``main(argv)``; a user error prints ``[<prog>: ]error: ...`` on stderr and gives exit status 2."""
    prefix = f"{prog}: " if prog else ""
    try:
        main(argv)
    except ExitRequest as request:
        print(str(request), file=sys.stderr)
        return request.exit_code
    except KeyboardInterrupt:  # outside a training loop, which saves its state first (exit 130 too)
        print(f"{prefix}interrupted (Ctrl-C)", file=sys.stderr)
        return 130
    except USER_ERRORS as error:
        if isinstance(error, MemoryError) and not str(error):  # numpy and PIL raise it without a text
            error = "out of memory; pass a smaller --image-size / --input_size or --batch-size"
        print(f"{prefix}error: {error}", file=sys.stderr)
        return 2
    return 0
