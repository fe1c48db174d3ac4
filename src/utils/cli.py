"""The one way a command turns a user error into a clean exit; the one format of every command's --help."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable


class ConfigError(ValueError):
    """A setting or input that cannot work; raised before any work is done where possible."""


class MissingFileError(ConfigError, FileNotFoundError):
    """A file named by a flag does not exist."""


class ExitRequest(Exception):
    """Ends a command with ``exit_code`` and the message, without a traceback (e.g. SIGTERM: 143)."""

    exit_code = 1


class HelpFormatter(argparse.HelpFormatter):
    """Every command's --help: a flag's default is shown unless it is None or an off switch."""

    def _get_help_string(self, action):
        text = action.help or ""
        shown = action.option_strings and all(action.default is not value for value in
                                              (None, False, argparse.SUPPRESS))
        if not shown or "%(default)" in text:
            return text
        return text + " (default: %(default)s)"


def group_of(parser, title: str):
    """The parser's argument group called ``title`` (created at the end when missing): one group per title."""
    found = [group for group in parser._action_groups if group.title == title]
    return found[0] if found else parser.add_argument_group(title)


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
