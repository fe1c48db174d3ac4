"""``python -m src.prior``: the command lives in src/prior_command.py (the run floor)."""

import sys

from src.prior_command import cli

if __name__ == "__main__":
    sys.exit(cli())
