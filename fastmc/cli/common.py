"""What every command shares: the one-line-error parser, flag validators, card loading, output checks.

Imports nothing heavy (no JAX, no h5py): ``fastmc --help`` builds the parser from these.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
from pathlib import Path
from typing import Any

EXIT_USAGE = 2


class UsageError(Exception):
    """Bad command-line input: one line, exit 2."""


class Parser(argparse.ArgumentParser):
    """An ``ArgumentParser`` whose errors are one line naming the help to read."""

    commands: argparse._SubParsersAction | None = None

    def add_subparsers(self, **kwargs):
        self.commands = super().add_subparsers(**kwargs)
        return self.commands

    def parse_args(self, args=None, namespace=None):
        ns, extra = self.parse_known_args(args, namespace)
        if extra:
            # flags no parser knows: reported by the command's own parser, whose --help lists its flags
            command = self.commands.choices.get(getattr(ns, "command", None)) if self.commands else None
            (command or self).error(f"unrecognized arguments: {' '.join(extra)}")
        return ns

    def error(self, message: str) -> None:  # one line instead of usage + message
        self.exit(EXIT_USAGE, f"fastmc: error: {message} (see '{self.prog} --help')\n")


def positive_float(flag: str, allow_zero: bool = False):
    def parse(text: str) -> float:
        try:
            v = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{flag} = {text!r}: must be a number") from None
        if not math.isfinite(v) or v < 0 or (v == 0 and not allow_zero):
            raise argparse.ArgumentTypeError(f"{flag} = {text!r}: must be a finite number "
                                             f"{'>=' if allow_zero else '>'} 0")
        return v

    return parse


def nonneg_float(flag: str):
    return positive_float(flag, allow_zero=True)


def int_in(flag: str, lo: int, hi: int):
    def parse(text: str) -> int:
        try:
            v = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{flag} = {text!r}: must be an integer") from None
        if not math.isfinite(v) or not v.is_integer() or not lo <= v <= hi:
            raise argparse.ArgumentTypeError(f"{flag} = {text!r}: must be an integer in [{lo}, {hi}]")
        return int(v)

    return parse


def load_card(args) -> Any:
    """The run card ``args.card`` with the overrides given on the command line."""
    from fastmc.runcard import load_run

    cfg = load_run(args.card)
    changes: dict[str, Any] = {}
    if getattr(args, "n_muons", None) is not None:
        changes["n_muons"] = args.n_muons
    if getattr(args, "seed", None) is not None:
        changes["seed"] = args.seed
    if getattr(args, "chunk_size", None) is not None and not isinstance(args.chunk_size, list):
        changes["chunk_size"] = args.chunk_size
    if getattr(args, "mot", None) is not None:
        changes["mot"] = args.mot
    if getattr(args, "save_events", False):
        changes["save_events"] = True
    return cfg.with_overrides(**changes) if changes else cfg


def check_output(path: Path | None, flag: str = "-o", suffixes: tuple[str, ...] = (".h5", ".hdf5")) -> None:
    """Refuse an output path (``flag``) that cannot become a file ending in one of ``suffixes``,
    before anything is simulated or converted."""
    if path is None:
        return
    if path.exists() and path.is_dir():
        raise UsageError(f"{flag} = {str(path)!r}: is a directory")
    parent = path.parent if str(path.parent) else Path(".")
    if not parent.is_dir():
        raise UsageError(f"{flag} = {str(path)!r}: folder {str(parent)!r} does not exist")
    if not os.access(parent, os.W_OK):
        raise UsageError(f"{flag} = {str(path)!r}: folder {str(parent)!r} is not writable")
    if path.suffix not in suffixes:
        raise UsageError(f"{flag} = {str(path)!r}: output must end in {' or '.join(suffixes)}")
    # the permission bits do not tell (root, read-only file systems, /proc): create a file beside the
    # target, as the atomic writers will (fastmc.io.atomic_h5), and remove it
    probe = parent / f".{path.name}.probe-{os.getpid()}"
    try:
        with open(probe, "xb"):
            pass
    except OSError as err:
        raise UsageError(f"{flag} = {str(path)!r}: cannot create a file in folder {str(parent)!r} "
                         f"({err.strerror or err})") from None
    try:
        probe.unlink()
    except OSError:
        pass


def command_line() -> str:
    """The command as typed, stored with every output file."""
    return " ".join(["fastmc"] + sys.argv[1:])


def try_plot(draw, path: Path) -> str | None:
    """Draw a PNG if matplotlib is installed (extra 'plot'); otherwise say so on stderr."""
    import importlib.util

    if importlib.util.find_spec("matplotlib") is None:
        print("fastmc: note: matplotlib is not installed (pip install 'fastmc[plot]'): no PNG written", file=sys.stderr)
        return None
    draw(path)
    return str(path)
