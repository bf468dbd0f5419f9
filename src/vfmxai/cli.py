"""The `vfmxai` command: argument parsing only; every command calls the API."""

import sys


def main(argv: list[str] | None = None) -> int:
    print("vfmxai: not built yet", file=sys.stderr)
    return 2
