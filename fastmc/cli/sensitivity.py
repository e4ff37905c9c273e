"""``fastmc sensitivity``: signal yields per boson mass and the expected 90 % CL reach."""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

from fastmc.cli.common import (
    UsageError,
    check_output,
    command_line,
    int_in,
    load_card,
    nonneg_float,
    positive_float,
    try_plot,
)


def _mass_list(text: str) -> list[float]:
    from fastmc.config import SIGNAL_MAX_MASS

    try:
        vals = [float(t) for t in text.split(",") if t.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"--masses = {text!r}: must be comma-separated numbers (MeV)") from None
    if not vals or any(not math.isfinite(v) or not 0 < v <= SIGNAL_MAX_MASS for v in vals):
        raise argparse.ArgumentTypeError(f"--masses = {text!r}: each mass must be in (0, {SIGNAL_MAX_MASS:g}] MeV")
    return sorted(set(vals))


def add_sensitivity(sub) -> None:
    se = sub.add_parser("sensitivity", help="signal yield and expected 90%% CL reach (coupling vs mass)")
    se.add_argument("card", help="run card (its [signal] table, first selection region and background channels)")
    se.add_argument("--masses", type=_mass_list, metavar="M1,M2,...",
                    help="boson masses in MeV (default: the card's [signal] masses_MeV)")
    se.add_argument("--model", choices=("z_prime", "dark_photon", "scalar"),
                    help="boson model (default: the card's [signal] model)")
    se.add_argument("--mot", type=positive_float("--mot"), help="muons on target (default: the card's)")
    se.add_argument("--n-signal", type=int_in("--n-signal", 1, 10**12), metavar="N",
                    help="muons simulated per mass (default: the card's [signal] n_muons)")
    se.add_argument("--seed", type=int_in("--seed", 0, 2**32 - 1), help="random seed (default: the card's)")
    se.add_argument("--chunk-size", type=int_in("--chunk-size", 1, 2**24), help="muons per chunk (default: the card's)")
    se.add_argument("--background", type=nonneg_float("--background"), metavar="B",
                    help="expected background events at the MOT (skips the background projection)")
    se.add_argument("--background-err", type=nonneg_float("--background-err"), default=0.0, metavar="S",
                    help="its uncertainty (with --background; default 0)")
    se.add_argument("--background-from", type=Path, metavar="PROJ.h5",
                    help="take the background from a 'fastmc project' output (rescaled to --mot)")
    se.add_argument("-o", "--output", type=Path,
                    help="write the HDF5 table here and the exclusion plot beside it (.png)")
    se.add_argument("--json", action="store_true", help="print one JSON object to stdout (table goes to stderr)")
    se.add_argument("--no-progress", action="store_true", help="no progress bars")


def cmd_sensitivity(args) -> int:
    """Signal yields per mass and the expected reach; the background from the chosen source."""
    import dataclasses

    cfg = load_card(args)
    if args.output is not None:
        check_output(args.output)
    if args.background is not None and args.background_from is not None:
        raise UsageError("--background and --background-from exclude each other")
    if args.background is None and args.background_err:
        raise UsageError("--background-err needs --background")
    sig = cfg.channel_settings["signal"]
    model = args.model or sig.model
    masses = args.masses or list(sig.masses)
    from fastmc.sensitivity import Background, background_from_projection, sensitivity, signal_yields

    log = (lambda m: None) if args.json else (lambda m: print(m, file=sys.stderr))
    if args.background is not None:
        bkg = Background(args.background, args.background_err, "given on the command line")
    elif args.background_from is not None:
        from fastmc.io import read_result

        try:
            data = read_result(args.background_from)
        except (FileNotFoundError, ValueError) as err:
            raise UsageError(f"--background-from: {err}") from None
        if not data["complete"]:
            raise UsageError(f"--background-from: {str(args.background_from)!r} is an unfinished checkpoint")
        bkg = background_from_projection(data["projection"], cfg.mot, f"from {args.background_from}")
    else:
        from fastmc.chain import prepare
        from fastmc.projection import projection
        from fastmc.run import run

        print(f"projecting the background of {', '.join(cfg.channels)} with the card's {cfg.n_muons} primaries "
              "(use --background-from PROJ.h5 or --background B to skip)", file=sys.stderr)
        result = run(cfg, prepare(cfg), progress=not args.no_progress)
        bkg = background_from_projection(projection(cfg, result), cfg.mot, f"projected: {', '.join(cfg.channels)}")
    for w in bkg.warnings:  # the background's diagnostics warned: the limit inherits it (kept in the output)
        print(f"fastmc: warning: {w} (the background of this limit)", file=sys.stderr)
    if bkg.n_selected == 0 and bkg.upper_limit_90 is not None and bkg.upper_limit_90 > 0.1:
        print(f"fastmc: warning: the background projection selected no MC event: the limit assumes b = 0, but the "
              f"background is only known to be < {bkg.upper_limit_90:.3g} events (90% CL); simulate more primaries "
              "or use the biased channels", file=sys.stderr)
    rows, prep, res = signal_yields(cfg, list(masses), model, n_muons=args.n_signal,
                                    progress=not args.no_progress, log=log)
    summary = sensitivity(rows, cfg.mot, bkg, model)
    from fastmc.sensitivity import format_sensitivity, write_sensitivity

    table = format_sensitivity(summary)
    png = None
    out = None
    if args.output is not None:
        command = command_line()
        write_sensitivity(args.output, dataclasses.replace(cfg, channels=("signal",)), summary, prep, res, command)
        out = str(args.output)
        from fastmc.plots import plot_exclusion  # matplotlib itself is imported only when drawing

        png = try_plot(lambda p: plot_exclusion(summary, p), args.output.with_suffix(".png"))
    if args.json:
        print(table, file=sys.stderr)
        print(json.dumps({**summary, "output": out, "plot": png}))
    else:
        print(table)
        for p in (out, png):
            if p:
                print(f"wrote {p}", file=sys.stderr)
    return 0
