"""What every command line of the package shares: whole flag names only, and a user error as one line.

A user error (a bad flag, a missing file, a `UserError`) prints `PROG: error: WHAT; FIX` on stderr
and exits with status 2, argparse's own status for a usage error; `--verbose` or IMGCLF_VERBOSE=1
prints the traceback too. The console scripts that need an extra start through `program`, which
names the `pip install 'imgclf[EXTRA]'` that brings a missing library.
"""
from __future__ import annotations

import argparse
import contextlib
import importlib
import os
import sys
import traceback
from collections.abc import Callable, Iterator
from typing import NoReturn

from .names import UserError

USER_ERROR_EXIT = 2
INTERRUPTED_EXIT = 130  # 128 + SIGINT, as a shell reports Ctrl-C
VERBOSE_ENV = "IMGCLF_VERBOSE"
VERBOSE_HELP = f"print the traceback of an error (default: off; also ${VERBOSE_ENV}=1)"


class ArgumentParser(argparse.ArgumentParser):
    """argparse that takes no flag prefixes (`--epoch` is not `--epochs`) and answers a bad command
    line in one line, not its usage."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **{**kwargs, "allow_abbrev": False})

    def error(self, message: str):
        self.exit(USER_ERROR_EXIT, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def add_verbose(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--verbose", action="store_true", help=VERBOSE_HELP)


def verbose(asked: bool = False) -> bool:
    return asked or os.environ.get(VERBOSE_ENV, "").lower() in ("1", "true", "yes", "on")


def fail(prog: str, message: object, asked_verbose: bool = False) -> NoReturn:
    """One line on stderr (after the traceback when asked for), then exit 2."""
    if verbose(asked_verbose) and sys.exc_info()[0] is not None:
        traceback.print_exc()
    first_line = str(message).strip().splitlines()[0] if str(message).strip() else type(message).__name__
    print(f"{prog}: error: {first_line}", file=sys.stderr)
    raise SystemExit(USER_ERROR_EXIT)


@contextlib.contextmanager
def user_errors(prog: str, asked_verbose: bool = False,
                kinds: tuple[type[BaseException], ...] = ()) -> Iterator[None]:
    """The boundary of a command: a UserError (or one of `kinds`, errors whose text names the fix)
    becomes one line and exit 2; Ctrl-C exits 130 without a traceback."""
    try:
        yield
    except (UserError, *kinds) as e:
        fail(prog, e, asked_verbose)
    except KeyboardInterrupt:
        raise SystemExit(INTERRUPTED_EXIT) from None


def program(target: str, prog: str, extra: str) -> Callable[[], None]:
    """A console script's function: imports `target` ("module:function") and calls it; a library
    missing there (at import or later) is one line naming the extra that installs it."""
    module, function = target.split(":")

    def run() -> None:
        try:
            getattr(importlib.import_module(module), function)()
        except ModuleNotFoundError as e:
            package = (e.name or "").split(".")[0]
            if package in ("", "imgclf"):
                raise
            fail(prog, f"{package} is not installed: pip install 'imgclf[{extra}]'")

    return run


# the console scripts of pyproject.toml that need an extra (the others call their module directly)
launcher = program("imgclf.launch.cli:main", "imgclf", "launch")
server = program("imgclf.serve.server:cli", "imgclf-serve", "serve")
tuner = program("imgclf.hpo.cli:main", "imgclf-tune", "tune")
