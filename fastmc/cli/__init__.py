"""Command-line interface: ``fastmc project | sensitivity | optimize | plot | inspect | merge | bench | validate``
, ``fastmc export`` and ``fastmc env``.

Holds no physics.  JAX is imported lazily inside the commands so ``fastmc --help`` and
``fastmc --version`` are instant.  Logs and progress go to stderr; tables and JSON to stdout.
Every bad input (run card, model, flag value, output path) ends with a one-line message on
stderr and exit status 2, and writes nothing.

One module per command group, each with ``add_<command>(sub)`` (its flags) and
``cmd_<command>(args)`` (the command); :mod:`fastmc.cli.common` holds what they share.
"""

from __future__ import annotations

import argparse
import sys

from fastmc import __version__
from fastmc.cli import bench, env, export, optimize, plot, project, sensitivity, validate
from fastmc.cli.bench import cmd_bench, peak_rss_mb
from fastmc.cli.common import EXIT_USAGE, Parser, UsageError
from fastmc.cli.env import cmd_env
from fastmc.cli.optimize import cmd_optimize
from fastmc.cli.plot import cmd_plot
from fastmc.cli.project import cmd_inspect, cmd_merge, cmd_project, format_cutflow, format_table
from fastmc.cli.sensitivity import cmd_sensitivity
from fastmc.cli.validate import cmd_validate

# what fastmc.cli offered as one module (tests import main, build_parser and peak_rss_mb from here)
__all__ = [
    "COMMANDS", "EXIT_USAGE", "UsageError", "peak_rss_mb", "build_parser", "cmd_bench", "cmd_env", "cmd_inspect",
    "cmd_merge", "cmd_optimize", "cmd_plot", "cmd_project", "cmd_sensitivity", "cmd_validate", "format_cutflow",
    "format_table", "main",
]

# command → (add_<command>(sub): its flags, cmd_<command>(args) -> exit status), in the order of --help
COMMANDS = {
    "project": (project.add_project, cmd_project),
    "inspect": (project.add_inspect, cmd_inspect),
    "bench": (bench.add_bench, cmd_bench),
    "merge": (project.add_merge, cmd_merge),
    "env": (env.add_env, cmd_env),
    "sensitivity": (sensitivity.add_sensitivity, cmd_sensitivity),
    "plot": (plot.add_plot, cmd_plot),
    "optimize": (optimize.add_optimize, cmd_optimize),
    "validate": (validate.add_validate, cmd_validate),
    "export": (export.add_export, export.cmd_export),
}


def build_parser() -> argparse.ArgumentParser:
    p = Parser(prog="fastmc", description="Fast importance-sampled Monte Carlo of NA64μ backgrounds.")
    p.add_argument("--version", action="version", version=f"fastmc {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", parser_class=Parser)
    for add, _ in COMMANDS.values():
        add(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help(sys.stderr)
        return EXIT_USAGE
    from fastmc.config import ConfigError

    try:
        code = COMMANDS[args.command][1](args)
        sys.stdout.flush()  # a closed pipe shows here, not in the interpreter's final flush
        return code
    except BrokenPipeError:
        return _closed_stdout()
    except (ConfigError, UsageError) as err:
        print(f"fastmc: error: {err}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("fastmc: interrupted", file=sys.stderr)
        return 130


def _closed_stdout() -> int:
    """The reader of stdout went away (``fastmc inspect --json | head -1``): end quietly, as a
    Unix filter does, with 141 (128 + SIGPIPE).  stdout is pointed at /dev/null so that the
    interpreter's last flush does not raise again."""
    import os

    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError, AttributeError):  # stdout without a file descriptor (captured in-process)
        pass
    return 141
