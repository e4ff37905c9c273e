"""``fastmc export``: a projection as a pyhf (HistFactory JSON) workspace and/or a ROOT file.

The conversion is :mod:`fastmc.export`; this module reads the flags, checks the outputs before
anything is written, and turns every bad input into one line (exit 2).  pyhf and uproot are the
optional extra ``export``: without them the command says how to install it.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import sys
from pathlib import Path

from fastmc.cli.common import UsageError, check_output, int_in, positive_float

INSTALL = "pip install 'fastmc[export]'"


def _mass(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"--mass = {text!r}: must be a number (MeV)") from None
    if not math.isfinite(v) or v <= 0:
        raise argparse.ArgumentTypeError(f"--mass = {text!r}: must be a finite number > 0 (MeV)")
    return v


def add_export(sub) -> None:
    ex = sub.add_parser("export", help="write a projection as a pyhf workspace (JSON) and/or a ROOT file")
    ex.add_argument("projection", type=Path, metavar="PROJ.h5", help="a 'fastmc project' output (-o)")
    ex.add_argument("--pyhf", type=Path, metavar="OUT.json",
                    help="HistFactory JSON workspace of the signal region (metadata beside it: OUT.meta.json)")
    ex.add_argument("--root", type=Path, metavar="OUT.root",
                    help="stored events (needs a --save-events run) as a TTree and weighted histograms")
    ex.add_argument("--signal", type=Path, metavar="SENS.h5",
                    help="signal sample from a 'fastmc sensitivity' output (default: 1 event at mu = 1)")
    ex.add_argument("--mass", type=_mass, metavar="M",
                    help="boson mass in MeV of the --signal file (default: its first)")
    ex.add_argument("--observed", type=int_in("--observed", 0, 10**9), default=0, metavar="N",
                    help="observed events in the signal region (default 0, the 2022 result)")
    ex.add_argument("--mot", type=positive_float("--mot"),
                    help="muons on target of the workspace (default: the file's; expectations scale with it)")


def _need(module: str, flag: str) -> None:
    if importlib.util.find_spec(module) is None:
        raise UsageError(f"{flag} needs the Python package {module}: {INSTALL}")


def _write_text(path: Path, text: str) -> None:
    """Write ``text`` atomically (:func:`fastmc.io.atomic_path`: never a partial file)."""
    from fastmc.io import atomic_path

    with atomic_path(path) as tmp:
        tmp.write_text(text)


def cmd_export(args) -> int:
    """Convert; print a JSON summary of what was written to stdout."""
    if args.pyhf is None and args.root is None:
        raise UsageError("nothing to export: give --pyhf OUT.json and/or --root OUT.root")
    if args.signal is not None and args.pyhf is None:
        raise UsageError("--signal needs --pyhf OUT.json")
    if args.mass is not None and args.signal is None:
        raise UsageError("--mass needs --signal SENS.h5")
    if args.pyhf is not None:
        check_output(args.pyhf, "--pyhf", (".json",))
        _need("pyhf", "--pyhf")
    if args.root is not None:
        check_output(args.root, "--root", (".root",))
        _need("uproot", "--root")
    from fastmc.export import ExportError, build_workspace, load_projection, load_sensitivity, write_root

    summary: dict = {"projection": str(args.projection)}
    try:
        data = load_projection(args.projection, with_events=args.root is not None)
        data["path"] = str(args.projection)
        if args.root is not None and data["events"] is None:
            raise ExportError(f"{args.projection}: no stored events: rerun 'fastmc project' with --save-events")
        spec = meta = None
        if args.pyhf is not None:
            sens = load_sensitivity(args.signal) if args.signal is not None else None
            spec, meta = build_workspace(data["projection"], mot=args.mot, sens=sens, mass=args.mass,
                                         observed=args.observed)
            meta["projection_file"] = str(args.projection)
            meta["signal_file"] = None if args.signal is None else str(args.signal)
            import warnings

            import pyhf

            try:
                with warnings.catch_warnings():  # pyhf 0.7's jsonschema use warns of its own deprecations
                    warnings.simplefilter("ignore", DeprecationWarning)
                    pyhf.Workspace(spec)  # the schema check, before anything is written
            except pyhf.exceptions.InvalidSpecification as err:  # a bug of ours, said in one line
                raise ExportError(f"the workspace fails pyhf's schema check ({err})") from None
        if args.root is not None:
            summary["root"] = {"path": str(args.root), **write_root(args.root, data)}
            del summary["root"]["branches"]
        if spec is not None:
            meta_path = args.pyhf.with_name(args.pyhf.stem + ".meta.json")
            _write_text(args.pyhf, json.dumps(spec, indent=1) + "\n")
            _write_text(meta_path, json.dumps(meta, indent=1) + "\n")
            summary["pyhf"] = {"path": str(args.pyhf), "metadata": str(meta_path), **meta}
            for name, e in meta["excluded_channels"].items():
                ul = "" if e["upper_limit_90"] is None else f" (< {e['upper_limit_90']:.3g} events, 90% CL)"
                print(f"fastmc: warning: channel {name} selected no MC event: left out of the workspace{ul}; "
                      f"listed in {meta_path}", file=sys.stderr)
            if meta["background_total"] < 10.0 and meta["fastmc_limits_90cl"] is not None:
                lim = meta["fastmc_limits_90cl"]
                print(f"fastmc: note: background {meta['background_total']:.3g} events: pyhf's asymptotic limits do "
                      f"not apply below ~10 (fastmc's exact expected limit: mu < {lim['expected_mu']:.4g}); use "
                      "pyhf's toy-based calculator", file=sys.stderr)
    except ExportError as err:
        raise UsageError(str(err)) from None
    except OSError as err:
        raise UsageError(f"cannot write output ({err.strerror or err}: {err.filename})") from None
    print(json.dumps(summary, indent=1))
    for key in ("pyhf", "root"):
        if key in summary:
            print(f"wrote {summary[key]['path']}", file=sys.stderr)
    return 0
