"""``python -m eventbus`` and the ``eventbus`` command.

The command's own dependencies (typer, rich) come with the ``cli`` extra, which a service
that only imports the library does not install; without them the command says so in one
line, instead of a traceback from deep inside ``eventbus.cli``.
"""

from __future__ import annotations

import importlib.util
import sys

CLI_EXTRA = ("typer", "rich")
# One of the exit codes in eventbus.cli._common (which cannot be imported without typer):
# like an unknown URL scheme, something the command needs is not installed.
EXIT_NOT_INSTALLED = 3


def main() -> None:
    """Console entry point: run the CLI, or name the extra it needs and exit 3."""
    missing = [name for name in CLI_EXTRA if importlib.util.find_spec(name) is None]
    if missing:
        print(
            f"error: the eventbus command needs {' and '.join(missing)}, which the library "
            'alone does not install: pip install "eventbus[cli]"',
            file=sys.stderr,
        )
        sys.exit(EXIT_NOT_INSTALLED)
    from eventbus.cli import main as cli_main

    cli_main()


if __name__ == "__main__":
    main()
