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
    # the background projection run here when neither --background nor --background-from is given
    se.add_argument("--n-muons", dest="bkg_n_muons", type=int_in("--n-muons", 1, 10**15), metavar="N",
                    help="background projection: primaries at most (default: the card's n_muons)")
    se.add_argument("--max-seconds", type=positive_float("--max-seconds"), metavar="S",
                    help=f"background projection: wall-time budget (default {BKG_MAX_SECONDS:g} s)")
    se.add_argument("--target-rel-err", type=positive_float("--target-rel-err"), metavar="F",
                    help=f"background projection: stop each channel at this relative error (default {BKG_TARGET:g})")
    from fastmc.cli.project import add_channels_flag

    add_channels_flag(se)


# budget of the background projection `fastmc sensitivity` runs itself: a few minutes on 2 cores
BKG_TARGET = 0.3
BKG_MAX_SECONDS = 300.0


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
    own = [f for f, v in (("--n-muons", args.bkg_n_muons), ("--max-seconds", args.max_seconds),
                          ("--target-rel-err", args.target_rel_err), ("--channels", args.channels)) if v is not None]
    if own and (args.background is not None or args.background_from is not None):
        raise UsageError(f"{', '.join(own)}: set the background projection run here; not with --background or "
                         "--background-from")
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
        from fastmc.cli.project import select_channels, status
        from fastmc.projection import projection
        from fastmc.run import run

        cfg_b = select_channels(cfg, args.channels)
        if args.bkg_n_muons is not None:
            cfg_b = cfg_b.with_overrides(n_muons=args.bkg_n_muons)
        target = BKG_TARGET if args.target_rel_err is None else args.target_rel_err
        max_s = BKG_MAX_SECONDS if args.max_seconds is None else args.max_seconds
        status(f"projecting the background of {', '.join(cfg_b.channels)}: each channel until a relative error "
               f"of {target:g} (--target-rel-err), at most {cfg_b.n_muons} primaries (--n-muons) and {max_s:g} s "
               "(--max-seconds); use --background-from PROJ.h5 or --background B to skip")
        prep_b = prepare(cfg_b)
        result = run(cfg_b, prep_b, progress=not args.no_progress, target_rel_err=target, max_seconds=max_s,
                     log=status)
        status(f"background projection: {int(result.n_gen.sum())} primaries in {result.seconds:.0f} s; "
               f"stopped: {result.stop_reason}")
        proj_b = projection(cfg_b, result)
        proj_b["not_converged"] = dict(result.not_converged)
        bkg = background_from_projection(proj_b, cfg.mot, f"projected: {', '.join(cfg_b.channels)}")
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
