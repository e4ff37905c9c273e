"""Command-line interface: ``fastmc project | sensitivity | optimize | plot | inspect | merge | bench | validate | env``.

Holds no physics.  JAX is imported lazily inside the commands so ``fastmc --help`` and
``fastmc --version`` are instant.  Logs and progress go to stderr; tables and JSON to stdout.
Every bad input (run card, model, flag value, output path) ends with a one-line message on
stderr and exit status 2, and writes nothing.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path
from typing import Any

from fastmc import __version__

EXIT_USAGE = 2


class UsageError(Exception):
    """Bad command-line input: one line, exit 2."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line instead of usage + message
        self.exit(EXIT_USAGE, f"fastmc: error: {message} (see 'fastmc {self.prog.split()[-1]} --help')\n")


def _positive_float(flag: str, allow_zero: bool = False):
    def parse(text: str) -> float:
        try:
            v = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{flag} = {text!r}: must be a number") from None
        if not math.isfinite(v) or v < 0 or (v == 0 and not allow_zero):
            raise argparse.ArgumentTypeError(f"{flag} = {text!r}: must be a finite number {'>=' if allow_zero else '>'} 0")
        return v

    return parse


def _int_in(flag: str, lo: int, hi: int):
    def parse(text: str) -> int:
        try:
            v = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{flag} = {text!r}: must be an integer") from None
        if not math.isfinite(v) or not v.is_integer() or not lo <= v <= hi:
            raise argparse.ArgumentTypeError(f"{flag} = {text!r}: must be an integer in [{lo}, {hi}]")
        return int(v)

    return parse


def _chunk_range(text: str) -> tuple[int, int | None]:
    try:
        a, b = text.split(":")
        start = int(a) if a else 0
        stop = int(b) if b else None
        if start < 0 or (stop is not None and stop <= start):
            raise ValueError
        return start, stop
    except ValueError:
        raise argparse.ArgumentTypeError(f"--chunks = {text!r}: must be START:STOP with 0 <= START < STOP") from None


def _nonneg_float(flag: str):
    return _positive_float(flag, allow_zero=True)


def _mass_list(text: str) -> list[float]:
    from fastmc.config import SIGNAL_MAX_MASS

    try:
        vals = [float(t) for t in text.split(",") if t.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"--masses = {text!r}: must be comma-separated numbers (MeV)") from None
    if not vals or any(not math.isfinite(v) or not 0 < v <= SIGNAL_MAX_MASS for v in vals):
        raise argparse.ArgumentTypeError(f"--masses = {text!r}: each mass must be in (0, {SIGNAL_MAX_MASS:g}] MeV")
    return sorted(set(vals))


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="fastmc", description="Fast importance-sampled Monte Carlo of NA64μ backgrounds.")
    p.add_argument("--version", action="version", version=f"fastmc {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)

    pr = sub.add_parser("project", help="simulate a run card and print the background table")
    pr.add_argument("card", help="run card (runs/*.toml)")
    pr.add_argument("--mot", type=_positive_float("--mot"), help="muons on target to project to (default: the card's)")
    pr.add_argument("--n-muons", type=_int_in("--n-muons", 1, 10**15), help="primaries to generate (default: the card's)")
    pr.add_argument("--seed", type=_int_in("--seed", 0, 2**32 - 1), help="random seed (default: the card's)")
    pr.add_argument("--chunk-size", type=_int_in("--chunk-size", 1, 2**24), help="muons per chunk (default: the card's)")
    pr.add_argument("--chunks", type=_chunk_range, metavar="START:STOP", help="simulate only this chunk range")
    pr.add_argument("-o", "--output", type=Path, help="write the HDF5 output here")
    pr.add_argument("--json", action="store_true", help="print one JSON object to stdout (table goes to stderr)")
    pr.add_argument("--no-progress", action="store_true", help="no progress bar")
    pr.add_argument("--save-events", action="store_true", help="store the selected events in the output")
    pr.add_argument("--target-rel-err", type=_positive_float("--target-rel-err"), metavar="F",
                    help="stop each channel once its signal estimate reaches this relative error with "
                         "no diagnostic warning; the run ends when all have (n_muons, --max-seconds: the budget)")
    pr.add_argument("--max-seconds", type=_positive_float("--max-seconds"), help="wall-time budget of the simulation")
    pr.add_argument("--devices", type=_int_in("--devices", 1, 4096), metavar="N",
                    help="use the first N local devices (default: all; results do not depend on it)")
    pr.add_argument("--scheduler", metavar="SPEC",
                    help="run chunk ranges as Dask tasks: local:N (LocalCluster of N worker processes) or "
                         "tcp://HOST:PORT (running scheduler); needs the 'dist' extra")
    pr.add_argument("--checkpoint-every", type=_int_in("--checkpoint-every", 1, 10**9), default=0, metavar="N",
                    help="write the chunks done so far to -o every N chunks (file marked complete=False)")
    pr.add_argument("--resume", action="store_true",
                    help="continue the unfinished run in -o (same card, model, seed, chunk size)")

    ins = sub.add_parser("inspect", help="summarise a fastmc HDF5 output file")
    ins.add_argument("file", type=Path)
    ins.add_argument("--json", action="store_true", help="print the stored projection as JSON")

    be = sub.add_parser("bench", help="measure the throughput of the full chain (muons/s)")
    be.add_argument("card", nargs="?", default=None, help="run card (default: runs/quickstart.toml of the source tree)")
    be.add_argument("--n-muons", type=_int_in("--n-muons", 1, 10**12), default=None)
    be.add_argument("--chunk-size", type=_int_in("--chunk-size", 1, 2**24), action="append",
                    help="chunk size(s) to time (repeatable; default: the card's)")
    be.add_argument("--repeats", type=_int_in("--repeats", 1, 1000), default=5, help="timed chunks per chunk size")
    be.add_argument("--devices", type=_int_in("--devices", 1, 4096), action="append", metavar="N",
                    help="device count(s) to time (repeatable; default: 1)")
    be.add_argument("--numpy", action="store_true",
                    help="also time the muon transport through the 2022 absorber sequence: JAX vs plain NumPy")
    be.add_argument("--geant4", action="store_true",
                    help="also time the same muon-only transport in Geant4 (geant4-pybind; skipped if missing)")
    be.add_argument("--transport-muons", type=_int_in("--transport-muons", 1, 10**8), default=None, metavar="N",
                    help="muons for the --numpy/--geant4 transport comparison (default: 65536 JAX/NumPy, 2000 Geant4)")
    be.add_argument("--json", action="store_true", help="print one JSON object (the table goes to stderr)")

    mg = sub.add_parser("merge", help="merge outputs of disjoint chunk ranges of one run card, exactly")
    mg.add_argument("inputs", type=Path, nargs="+", help="fastmc HDF5 files (same card, seed, chunk size)")
    mg.add_argument("-o", "--output", type=Path, required=True, help="merged HDF5 file")
    mg.add_argument("--json", action="store_true", help="print the merged projection as JSON")

    sub.add_parser("env", help="print versions, JAX backend and devices")

    se = sub.add_parser("sensitivity", help="signal yield and expected 90%% CL reach (coupling vs mass)")
    se.add_argument("card", help="run card (its [signal] table, first selection region and background channels)")
    se.add_argument("--masses", type=_mass_list, metavar="M1,M2,...",
                    help="boson masses in MeV (default: the card's [signal] masses_MeV)")
    se.add_argument("--model", choices=("z_prime", "dark_photon", "scalar"),
                    help="boson model (default: the card's [signal] model)")
    se.add_argument("--mot", type=_positive_float("--mot"), help="muons on target (default: the card's)")
    se.add_argument("--n-signal", type=_int_in("--n-signal", 1, 10**12), metavar="N",
                    help="muons simulated per mass (default: the card's [signal] n_muons)")
    se.add_argument("--seed", type=_int_in("--seed", 0, 2**32 - 1), help="random seed (default: the card's)")
    se.add_argument("--chunk-size", type=_int_in("--chunk-size", 1, 2**24), help="muons per chunk (default: the card's)")
    se.add_argument("--background", type=_nonneg_float("--background"), metavar="B",
                    help="expected background events at the MOT (skips the background projection)")
    se.add_argument("--background-err", type=_nonneg_float("--background-err"), default=0.0, metavar="S",
                    help="its uncertainty (with --background; default 0)")
    se.add_argument("--background-from", type=Path, metavar="PROJ.h5",
                    help="take the background from a 'fastmc project' output (rescaled to --mot)")
    se.add_argument("-o", "--output", type=Path, help="write the HDF5 table here and the exclusion plot beside it (.png)")
    se.add_argument("--json", action="store_true", help="print one JSON object to stdout (table goes to stderr)")
    se.add_argument("--no-progress", action="store_true", help="no progress bars")

    pl = sub.add_parser("plot", help="standard figures of a fastmc output (projection, sensitivity or optimise)")
    pl.add_argument("file", type=Path, help="fastmc HDF5 output (project, sensitivity or optimize)")
    pl.add_argument("-o", "--output-dir", type=Path, metavar="DIR", help="folder for the PNGs (default: beside the file)")

    op = sub.add_parser("optimize", help="differentiable optimisation of the model's [optimise.*] numbers "
                                         "(soft mode), then a hard-mode re-evaluation")
    op.add_argument("card", help="run card with an [optimise] table; its model declares [optimise.\"ELEMENT.FIELD\"]")
    op.add_argument("--steps", type=_int_in("--steps", 0, 100000), help="Adam steps (default: the card's [optimise] steps)")
    op.add_argument("--batch", type=_int_in("--batch", 16, 2**22), help="muons per channel per step (default: the card's)")
    op.add_argument("--seed", type=_int_in("--seed", 0, 2**32 - 2), help="random seed (default: the card's)")
    op.add_argument("--eval-n-muons", type=_int_in("--eval-n-muons", 1, 10**15), metavar="N",
                    help="primaries per channel and geometry of the hard-mode re-evaluation (default: the card's)")
    op.add_argument("--no-eval", action="store_true", help="skip the hard-mode re-evaluation")
    op.add_argument("-o", "--output", type=Path,
                    help="history HDF5 (default: out/<card>_optimise.h5 beside the card); the optimised model "
                         "(…_model.toml), a run card for it (…_card.toml) and the plot (.png) go beside it")
    op.add_argument("--json", action="store_true", help="print one JSON object to stdout (table goes to stderr)")
    op.add_argument("--no-progress", action="store_true", help="no progress bars")

    va = sub.add_parser("validate", help="compare fastmc with the Geant4 reference tables (calibration/)")
    va.add_argument("--suite", default="all", metavar="NAME",
                    help="eloss, deflection, decay or all (default: all)")
    va.add_argument("--report", type=Path, metavar="DIR", help="write DIR/summary.json and one PNG per observable")
    va.add_argument("--stat-scale", type=_positive_float("--stat-scale"), default=1.0, metavar="F",
                    help="fastmc statistics = F x the table's n_events (default: 1)")
    va.add_argument("--seed", type=_int_in("--seed", 0, 2**31 - 1), default=1, help="random seed (default: 1)")
    va.add_argument("--tables", type=Path, metavar="DIR", help="folder with eloss.h5, deflection.h5, decay.h5 "
                    "(default: calibration/ of the source tree; its tolerances.toml is used if present)")
    va.add_argument("--json", action="store_true", help="print the summary JSON to stdout (table goes to stderr)")
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help(sys.stderr)
        return EXIT_USAGE
    from fastmc.config import ConfigError

    try:
        return {
            "project": cmd_project,
            "inspect": cmd_inspect,
            "bench": cmd_bench,
            "env": cmd_env,
            "merge": cmd_merge,
            "validate": cmd_validate,
            "sensitivity": cmd_sensitivity,
            "plot": cmd_plot,
            "optimize": cmd_optimize,
        }[args.command](args)
    except (ConfigError, UsageError) as err:
        print(f"fastmc: error: {err}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("fastmc: interrupted", file=sys.stderr)
        return 130


# ----------------------------------------------------------------------------------------


def _load_card(args) -> Any:
    from fastmc.config import load_run

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


def _check_output(path: Path | None) -> None:
    if path is None:
        return
    if path.exists() and path.is_dir():
        raise UsageError(f"-o = {str(path)!r}: is a directory")
    parent = path.parent if str(path.parent) else Path(".")
    if not parent.is_dir():
        raise UsageError(f"-o = {str(path)!r}: folder {str(parent)!r} does not exist")
    if not os.access(parent, os.W_OK):
        raise UsageError(f"-o = {str(path)!r}: folder {str(parent)!r} is not writable")
    if path.suffix not in (".h5", ".hdf5"):
        raise UsageError(f"-o = {str(path)!r}: output must end in .h5 or .hdf5")


def format_table(proj: dict[str, Any]) -> str:
    lines = [
        f"fastmc background projection — region '{proj['region']}', MOT = {proj['mot']:.3g}",
        f"{'channel':<28}{'expected':>12}{'stat err':>11}{'rel err':>9}{'n sel':>9}{'n gen':>12}{'ESS':>10}{'max w share':>13}",
    ]
    for name, c in proj["channels"].items():
        if c["n_selected"] == 0:
            lines.append(
                f"{name:<28}{'< ' + format(c['upper_limit_90'], '.3g'):>12}{'(90% CL)':>11}{'-':>9}{0:>9}"
                f"{c['n_generated']:>12}{'-':>10}{'-':>13}"
            )
        else:
            lines.append(
                f"{name:<28}{c['expected']:>12.4g}{c['stat_err']:>11.3g}{c['rel_err']:>9.1%}{c['n_selected']:>9}"
                f"{c['n_generated']:>12}{c['ess']:>10.4g}{c['max_weight_share']:>13.3g}"
            )
    t = proj["total"]
    if all(c["n_selected"] == 0 for c in proj["channels"].values()):
        lines.append(f"{'total':<28}{'-':>12}{'(no event selected in any channel)':>36}")
    else:
        lines.append(f"{'total':<28}{t['expected']:>12.4g}{t['stat_err']:>11.3g}")
    foms = [(name, c) for name, c in proj["channels"].items() if c.get("fom_gain_vs_analog")]
    if foms:
        lines.append("figure of merit 1/(R²·T), T wall seconds after compilation; gain over analog simulation of the"
                     " same probability:")
        for name, c in foms:
            lines.append(f"  {name:<28} µs/primary {c['seconds_per_primary'] * 1e6:8.3g}   FOM {c['fom']:10.3g}/s"
                         f"   gain vs analog {c['fom_gain_vs_analog']:10.3g}")
    for name, c in proj["channels"].items():
        pu = c.get("per_unit_fraction")
        if pu:
            val = f"{pu['expected']:.4g} ± {pu['stat_err']:.3g}" if c["n_selected"] else f"< {pu['upper_limit_90']:.3g}"
            lines.append(f"  {name}: per unit {pu['species']} fraction (fraction = {pu['fraction']:.3g}): {val}")
    return "\n".join(lines)


def format_cutflow(proj: dict[str, Any]) -> str:
    lines = []
    for ch, regions in proj["cutflow"].items():
        for region, steps in regions.items():
            lines.append(f"cut flow [{ch}] region '{region}':")
            for s in steps:
                frac = s["n_selected"] / s["n_generated"] if s["n_generated"] else 0.0
                lines.append(f"  {s['step']:>2}  {s['cut']:<40}{s['n_selected']:>10}  ({frac:.3g} of generated)")
    return "\n".join(lines)


def _warnings(proj: dict[str, Any], result, cfg) -> list[str]:
    out = []
    act = result.channel_active()
    for ci, ch in enumerate(result.channels):
        n_total = int(result.n_gen[act[:, ci]].sum())
        over = int(result.overflow[:, ci].sum())
        if over and over / n_total > cfg.physics.overflow_tolerance:
            out.append(
                f"channel {ch}: {over} interaction-slot overflows in {n_total} muons exceed "
                f"physics.overflow_tolerance = {cfg.physics.overflow_tolerance:g}; raise physics.max_interactions"
            )
        elif over:
            out.append(f"channel {ch}: {over} interaction-slot overflow(s) in {n_total} muons (cap reached; counted)")
    from fastmc.tally import diagnose

    for name, c in proj["channels"].items():
        out += diagnose(f"channel {name}", c)
    return out


RESUME_KEYS = ("n_muons", "seed", "chunk_size", "mot", "save_events")


def _resume_config(args, cfg):
    """The configuration and the partial result of the checkpoint in ``-o`` (``--resume``).

    Settings not given on the command line are taken from the checkpoint; any that differ
    (card, model, seed, chunk size, ...) refuse the resume.
    """
    from fastmc.io import read_result, stored_result
    from fastmc.run import n_chunks

    path = args.output
    try:
        data = read_result(path)
    except FileNotFoundError:
        raise UsageError(f"--resume: {str(path)!r} does not exist: nothing to resume") from None
    except ValueError as err:
        raise UsageError(f"--resume: {err}") from None
    if data["complete"]:
        raise UsageError(f"--resume: {str(path)!r} is a complete run: nothing to resume")
    stored = data["config"]
    changes = {}
    for key in RESUME_KEYS:
        flag = "save_events" if key == "save_events" else key
        given = getattr(args, flag, None)
        if not given and key in stored:  # not given (None/False): take the checkpoint's
            changes[key] = stored[key]
    cfg = cfg.with_overrides(**changes)
    mine = cfg.to_dict()
    names = {"sha256": "run card", "model": "model", "seed": "seed", "chunk_size": "chunk size",
             "n_muons": "number of muons", "mot": "MOT"}
    for key in ("sha256", "model", "seed", "chunk_size", "n_muons", "mot", "channels", "physics", "regions",
                "save_events", "admixture", "hadron_decay"):
        a, b = mine.get(key), stored.get(key)
        if key == "model":
            a, b = (a or {}).get("sha256"), (b or {}).get("sha256")
        if json.dumps(a, sort_keys=True, default=str) != json.dumps(b, sort_keys=True, default=str):
            raise UsageError(f"--resume: {names.get(key, key)} differs from the checkpoint {str(path)!r}: refusing to resume")
    from fastmc.io import threefry_layout
    from fastmc.rng import THREEFRY_PARTITIONABLE

    if threefry_layout(data["provenance"]) != THREEFRY_PARTITIONABLE:
        raise UsageError(f"--resume: {str(path)!r} was drawn with another random-bit layout (provenance "
                         f"threefry_partitionable = {threefry_layout(data['provenance'])}; this fastmc: "
                         f"{THREEFRY_PARTITIONABLE}): refusing to resume")
    req = json.loads(data["provenance"].get("requested_chunks", "null") or "null")
    if req is None:
        raise UsageError(f"--resume: {str(path)!r} records no requested chunk range")
    if args.chunks is not None:
        a, b = args.chunks
        if a != req[0] or (b is not None and min(b, n_chunks(cfg)) != req[1]):
            raise UsageError(f"--resume: --chunks = {a}:{b if b is not None else ''} differs from the checkpoint's {req[0]}:{req[1]}")
    return cfg, stored_result(data, with_events=True), (int(req[0]), int(req[1]))


def cmd_project(args) -> int:
    cfg = _load_card(args)
    _check_output(args.output)
    if args.checkpoint_every and args.output is None:
        raise UsageError("--checkpoint-every needs -o OUT.h5 (the checkpoint is written there)")
    if args.resume and args.output is None:
        raise UsageError("--resume needs -o OUT.h5 (the checkpoint to continue)")
    if args.checkpoint_every and not args.resume and args.output.exists():
        raise UsageError(f"-o = {str(args.output)!r} exists: a checkpointed run will not replace it "
                         "(continue it with --resume, or choose another path)")
    if args.scheduler is not None and (args.target_rel_err is not None or args.max_seconds is not None):
        raise UsageError("--target-rel-err/--max-seconds are not available with --scheduler (tasks are fixed ranges)")
    if args.scheduler is not None:
        from fastmc.distributed import parse_scheduler

        try:
            parse_scheduler(args.scheduler)
        except ValueError as err:
            raise UsageError(str(err)) from None
        import importlib.util

        if importlib.util.find_spec("distributed") is None:
            raise UsageError("--scheduler needs Dask: pip install 'fastmc[dist]'")
    done = None
    if args.resume:
        cfg, done, (start, stop) = _resume_config(args, cfg)
    import numpy as np

    from fastmc.io import write_result
    from fastmc.run import n_chunks, prepare, projection, run, select_devices

    if not args.resume:
        start, stop = args.chunks if args.chunks else (0, None)
        if start >= n_chunks(cfg):
            raise UsageError(f"--chunks = {start}:{stop}: the run has only {n_chunks(cfg)} chunks")
        stop = n_chunks(cfg) if stop is None else min(stop, n_chunks(cfg))
    try:
        devs = select_devices(args.devices)
    except ValueError as err:
        raise UsageError(f"--devices = {args.devices}: {err}") from None
    wanted = np.arange(start, stop)
    todo = wanted if done is None else np.setdiff1d(wanted, done.chunk_ids)
    command = " ".join(["fastmc"] + sys.argv[1:])
    extra = {"requested_chunks": json.dumps([int(start), int(stop)]),
             "n_devices": len(devs) if args.scheduler is None else 0,
             "scheduler": args.scheduler or ""}
    prep = prepare(cfg) if args.scheduler is None or args.output is not None else None

    def checkpoint(merged) -> None:
        write_result(args.output, cfg, merged, projection(cfg, merged), prep, command, complete=False,
                     extra_provenance=extra)
        print(f"checkpoint: {len(merged.chunk_ids)}/{len(wanted)} chunks in {args.output}", file=sys.stderr)

    every = args.checkpoint_every
    if len(todo) == 0:
        result = done
    elif args.scheduler is not None:
        from fastmc.distributed import run_dask

        result = run_dask(cfg, args.scheduler, todo, devices=args.devices, checkpoint_every=every,
                          on_checkpoint=checkpoint if every else None, base=done,
                          log=lambda m: print(m, file=sys.stderr))
    else:
        result = run(cfg, prep, progress=not args.no_progress, target_rel_err=args.target_rel_err,
                     max_seconds=args.max_seconds if args.max_seconds is not None else cfg.max_seconds,
                     chunk_ids=todo, devices=args.devices,
                     checkpoint_every=every,
                     on_checkpoint=(lambda part: checkpoint(part if done is None else done.merge(part))) if every else None)
        if done is not None:
            result = done.merge(result)
    proj = projection(cfg, result)
    proj["stop_reason"] = result.stop_reason
    out_path = None
    if args.output is not None:
        out_path = str(write_result(args.output, cfg, result, proj, prep, command, complete=True, extra_provenance=extra))
    proj_out = {k: v for k, v in proj.items() if k != "cutflow"}
    proj_out["output"] = out_path
    table = format_table(proj)
    for w in _warnings(proj, result, cfg):
        print(f"fastmc: warning: {w}", file=sys.stderr)
    rate = int(result.n_gen.sum()) / max(result.seconds, 1e-9)
    log = f"{int(result.n_gen.sum())} primaries in {result.seconds:.1f} s ({rate:.3g}/s); stopped: {result.stop_reason}"
    if args.target_rel_err is not None and not result.stop_reason.startswith("target"):
        print(f"fastmc: warning: {result.stop_reason}", file=sys.stderr)
    if args.json:
        print(table, file=sys.stderr)
        print(log, file=sys.stderr)
        print(json.dumps(proj_out))
    else:
        print(table)
        print(format_cutflow(proj))
        print(log, file=sys.stderr)
        if out_path:
            print(f"wrote {out_path}", file=sys.stderr)
    return 0


def cmd_inspect(args) -> int:
    from fastmc.io import read_result

    try:
        data = read_result(args.file)
    except (FileNotFoundError, ValueError) as err:
        raise UsageError(str(err)) from None
    if args.json:
        print(json.dumps(data["projection"]))
        return 0
    a, p = data["attrs"], data["provenance"]
    print(f"{args.file}: fastmc {a['fastmc_version']} (schema {a['schema_version']}), created {a['created']}")
    print(f"  command: {a.get('command_line', '')}")
    print(f"  config: {p['config_path']} (sha256 {str(p['config_sha256'])[:12]}…), model {p['model_path']}")
    print(f"  seed {p['seed']}, chunk size {p['chunk_size']}, chunks {p['chunk_range']}, backend {p['backend']}, "
          f"jax {p['jax']}, git {p['git_describe'] or '-'}")
    if not data["complete"]:
        req = p.get("requested_chunks") or "?"
        print(f"  UNFINISHED checkpoint (complete=False): {len(data['chunks']['ids'])} chunks of {req} done; "
              "continue with 'fastmc project CARD -o FILE --resume'")
    if data["has_events"]:
        print(f"  events stored: {data['n_events']}")
    print(format_table(data["projection"]))
    return 0


def cmd_merge(args) -> int:
    from fastmc.io import merge_files

    _check_output(args.output)
    if args.output.resolve() in [p.resolve() for p in args.inputs]:
        raise UsageError(f"-o = {str(args.output)!r}: must not be one of the inputs")
    try:
        proj = merge_files(list(args.inputs), args.output, " ".join(["fastmc"] + sys.argv[1:]))
    except (FileNotFoundError, ValueError) as err:
        raise UsageError(str(err)) from None
    if args.json:
        print(json.dumps({**{k: v for k, v in proj.items() if k != "cutflow"}, "output": str(args.output)}))
    else:
        print(format_table(proj))
        print(f"wrote {args.output}", file=sys.stderr)
    return 0


def cmd_env(args) -> int:
    import platform

    import h5py
    import jax
    import jaxlib
    import numpy
    import particle

    info = {
        "fastmc": __version__,
        "python": platform.python_version(),
        "jax": jax.__version__,
        "jaxlib": jaxlib.__version__,
        "numpy": numpy.__version__,
        "particle": particle.__version__,
        "h5py": h5py.__version__,
        "backend": jax.default_backend(),
        "devices": [str(d) for d in jax.devices()],
        "x64": bool(jax.config.jax_enable_x64),
        "threefry_partitionable": bool(jax.config.jax_threefry_partitionable),
        "cache": os.environ.get("FASTMC_CACHE", str(Path.home() / ".cache" / "fastmc")),
    }
    for k, v in info.items():
        print(f"{k:<10} {v}")
    return 0


def _peak_rss_mb() -> float:
    """Peak resident memory of this process (MB).  Linux: VmHWM of /proc/self/status, which
    starts afresh at exec — ru_maxrss does not (a process started from a large parent, e.g. a
    test runner, would report the parent's size).  Elsewhere: ru_maxrss."""
    import resource

    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return float(line.split()[1]) / 1024.0  # kB
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux: KiB


def _load_numpy_baseline():
    from fastmc import numpy_baseline

    return numpy_baseline


def cmd_bench(args) -> int:
    import dataclasses

    import jax

    from fastmc.config import load_run
    from fastmc.rng import chunk_key
    from fastmc.run import prepare, simulate_chunk

    # the first call's time is the compile time: no programs from the on-disk cache here
    jax.config.update("jax_enable_compilation_cache", False)
    card = args.card or str(Path(__file__).resolve().parent.parent / "runs" / "quickstart.toml")
    cfg = load_run(card)
    sizes = args.chunk_size or [cfg.chunk_size]
    n_devs = args.devices or [1]
    local = jax.local_devices()
    for d in n_devs:
        if d > len(local):
            raise UsageError(f"--devices = {d}: only {len(local)} local device(s) "
                             "(on CPU: XLA_FLAGS=--xla_force_host_platform_device_count=N)")
    if (args.numpy or args.geant4) and args.transport_muons and args.transport_muons % max(n_devs):
        raise UsageError(f"--transport-muons = {args.transport_muons}: does not split over {max(n_devs)} devices")
    t0 = time.perf_counter()
    prep = prepare(cfg)
    t_prep = time.perf_counter() - t0
    rows = []
    import jax.numpy as jnp
    import numpy as np

    for nd in n_devs:
        for cs in sizes:
            opts = dataclasses.replace(prep.options, chunk_size=cs)
            if nd == 1:
                def call(first: int, opts=opts, cs=cs):
                    return simulate_chunk(prep.setup, prep.physics, prep.selection, chunk_key(cfg.seed, first),
                                          jnp.int32(cs), opts)
            else:
                placed = [jax.device_put((prep.setup, prep.physics, prep.selection), d) for d in local[:nd]]

                def call(first: int, opts=opts, nd=nd, cs=cs, placed=placed):
                    outs = [simulate_chunk(*placed[j], jax.device_put(chunk_key(cfg.seed, first + j), local[j]),
                                           jax.device_put(jnp.int32(cs), local[j]), opts) for j in range(nd)]
                    return jax.tree_util.tree_map(lambda *a: np.stack([np.asarray(x) for x in a]), *outs)

            t0 = time.perf_counter()
            jax.block_until_ready(call(0))
            t_compile = time.perf_counter() - t0
            reps = args.repeats if args.n_muons is None else max(1, -(-args.n_muons // (cs * nd)))
            t0 = time.perf_counter()
            for c in range(1, reps + 1):
                out = call(c * nd)
                np.asarray(out[0])  # rows back on the host, as in a run
            dt = time.perf_counter() - t0
            rows.append({"devices": nd, "chunk_size": cs, "chunks": reps * nd, "muons": reps * cs * nd, "seconds": dt,
                         "muons_per_s": reps * cs * nd / dt, "first_call_s": t_compile})
    res = {"card": card, "backend": jax.default_backend(), "devices": [str(d) for d in local],
           "tables_and_setup_s": t_prep, "results": rows}
    if args.numpy:
        nb = _load_numpy_baseline()
        res["numpy"] = nb.compare(cfg, prep, args.transport_muons or 65536, seed=cfg.seed, repeats=3,
                                  devices=max(n_devs))
    if args.geant4:
        nb = _load_numpy_baseline()
        n_g4 = args.transport_muons or 2000
        g4 = nb.geant4_compare(cfg, n_g4, seed=cfg.seed)
        if "skipped" not in g4:
            jx = res.get("numpy") or nb.compare(cfg, prep, max(n_g4, 4096), seed=cfg.seed, repeats=3,
                                                devices=max(n_devs))
            cores = os.cpu_count() or 1
            g4["fastmc_transport_muons_per_s"] = jx["jax_muons_per_s"]
            g4["fastmc_transport_muons_per_core_s"] = jx["jax_muons_per_s"] / cores
            g4["cores"] = cores
            g4["speedup_fastmc_per_core_over_geant4"] = jx["jax_muons_per_s"] / cores / g4["muons_per_core_s"]
            g4["mean_exit_ekin_GeV_fastmc"] = jx["mean_exit_ekin_GeV"]["jax"]
        res["geant4"] = g4
    res["peak_rss_mb"] = _peak_rss_mb()
    out = sys.stderr if args.json else sys.stdout
    print("fastmc bench — full chain (beam, transport, response, reconstruction, selection, tally)", file=out)
    print(f"card {card}; backend {res['backend']}; tables+setup {t_prep:.2f} s", file=out)
    print(f"{'chunk size':>11}{'muons':>12}{'seconds':>10}{'muons/s':>14}{'first call (compile) s':>25}{'devices':>9}",
          file=out)
    for r in rows:
        print(f"{r['chunk_size']:>11}{r['muons']:>12}{r['seconds']:>10.2f}{r['muons_per_s']:>14.4g}"
              f"{r['first_call_s']:>25.2f}{r['devices']:>9}", file=out)
    if "numpy" in res:
        r = res["numpy"]
        print(f"muon transport through the {r['elements']} material elements ({r['muons']} muons, "
              f"{r['scattering_model']} scattering): fastmc/JAX {r['jax_muons_per_s']:.4g} muons/s on "
              f"{r['jax_devices']} device(s) (first call {r['jax_first_call_s']:.2f} s), "
              f"NumPy {r['numpy_muons_per_s']:.4g} muons/s → JAX/NumPy = {r['speedup_jax_over_numpy']:.3g}"
              + (f" ({r['speedup_jax_1_device_over_numpy']:.3g} on 1 device)" if r["jax_devices"] > 1 else "") + "; "
              f"mean exit E {r['mean_exit_ekin_GeV']['jax']:.3f} / {r['mean_exit_ekin_GeV']['numpy']:.3f} GeV", file=out)
    if "geant4" in res:
        g = res["geant4"]
        if "skipped" in g:
            print(f"Geant4: skipped — {g['skipped']}", file=out)
        else:
            print(f"Geant4 {g['geant4_version']} muon-only through {g['layers']} layers ({g['muons']} muons): "
                  f"{g['muons_per_core_s']:.4g} muons/core/s; fastmc {g['fastmc_transport_muons_per_core_s']:.4g} "
                  f"muons/core/s ({g['cores']} cores) → {g['speedup_fastmc_per_core_over_geant4']:.3g}× per core; "
                  f"mean exit E {g['mean_exit_ekin_GeV']:.3f} (G4) / {g['mean_exit_ekin_GeV_fastmc']:.3f} GeV", file=out)
    print(f"peak RSS {res['peak_rss_mb']:.0f} MB", file=out)
    if args.json:
        print(json.dumps(res))
    return 0


def cmd_validate(args) -> int:
    from fastmc.validate import SUITES, TableError, format_summary, format_timing, run_validation, write_report

    if args.suite != "all" and args.suite not in SUITES:
        raise UsageError(f"--suite = {args.suite!r}: unknown suite (known: {', '.join(SUITES)}, all)")
    if args.tables is not None and not args.tables.is_dir():
        raise UsageError(f"--tables = {str(args.tables)!r}: not a folder")
    if args.report is not None:
        if args.report.exists() and not args.report.is_dir():
            raise UsageError(f"--report = {str(args.report)!r}: exists and is not a folder")
        parent = args.report.parent if str(args.report.parent) else Path(".")
        if not parent.is_dir():
            raise UsageError(f"--report = {str(args.report)!r}: folder {str(parent)!r} does not exist")
    try:
        report = run_validation(args.suite, args.tables, stat_scale=args.stat_scale, seed=args.seed,
                                log=lambda s: print(s, file=sys.stderr))
    except TableError as err:
        raise UsageError(str(err)) from None
    out = sys.stderr if args.json else sys.stdout
    print(format_summary(report), file=out)
    print(format_timing(report), file=out)
    if args.report is not None:
        written = write_report(report, args.report)
        if written["note"]:
            print(f"fastmc: note: {written['note']}", file=sys.stderr)
        print(f"wrote {written['json']} and {len(written['png'])} PNG(s)", file=sys.stderr)
    if args.json:
        from fastmc.validate import _jsonable

        print(json.dumps({"passed": report["passed"], "checks": _jsonable(report["rows"]),
                          "timing": _jsonable(report["timing"])}))
    return 0 if report["passed"] else 1


def cmd_sensitivity(args) -> int:
    """Signal yields per mass and the expected reach; the background from the chosen source."""
    import dataclasses

    cfg = _load_card(args)
    if args.output is not None:
        _check_output(args.output)
    if args.background is not None and args.background_from is not None:
        raise UsageError("--background and --background-from exclude each other")
    if args.background is None and args.background_err:
        raise UsageError("--background-err needs --background")
    sig = cfg.signal
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
        from fastmc.run import prepare, projection, run

        print(f"projecting the background of {', '.join(cfg.channels)} with the card's {cfg.n_muons} primaries "
              "(use --background-from PROJ.h5 or --background B to skip)", file=sys.stderr)
        result = run(cfg, prepare(cfg), progress=not args.no_progress)
        bkg = background_from_projection(projection(cfg, result), cfg.mot, f"projected: {', '.join(cfg.channels)}")
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
        command = " ".join(["fastmc"] + sys.argv[1:])
        write_sensitivity(args.output, dataclasses.replace(cfg, channels=("signal",)), summary, prep, res, command)
        out = str(args.output)
        from fastmc.plots import plot_exclusion  # matplotlib itself is imported only when drawing

        png = _try_plot(lambda p: plot_exclusion(summary, p), args.output.with_suffix(".png"))
    if args.json:
        print(table, file=sys.stderr)
        print(json.dumps({**summary, "output": out, "plot": png}))
    else:
        print(table)
        for p in (out, png):
            if p:
                print(f"wrote {p}", file=sys.stderr)
    return 0


def _try_plot(draw, path: Path) -> str | None:
    """Draw a PNG if matplotlib is installed (extra 'plot'); otherwise say so on stderr."""
    import importlib.util

    if importlib.util.find_spec("matplotlib") is None:
        print("fastmc: note: matplotlib is not installed (pip install 'fastmc[plot]'): no PNG written", file=sys.stderr)
        return None
    draw(path)
    return str(path)


def cmd_plot(args) -> int:
    import importlib.util

    import h5py

    if importlib.util.find_spec("matplotlib") is None:
        raise UsageError("fastmc plot needs matplotlib: pip install 'fastmc[plot]'")
    path = args.file
    if not path.is_file():
        raise UsageError(f"{str(path)!r}: file not found")
    out_dir = args.output_dir or (path.parent if str(path.parent) else Path("."))
    if not out_dir.is_dir():
        raise UsageError(f"-o = {str(out_dir)!r}: not a folder")
    try:
        with h5py.File(path, "r") as f:
            kind = "sensitivity" if "sensitivity" in f else ("projection" if "projection_json" in f.attrs else None)
            if "optimise" in f:
                kind = "optimise"
    except OSError as err:
        raise UsageError(f"{path}: not a readable HDF5 file ({err})") from None
    from fastmc import plots

    if kind == "sensitivity":
        from fastmc.sensitivity import read_sensitivity

        p = out_dir / f"{path.stem}_exclusion.png"
        plots.plot_exclusion(read_sensitivity(path), p)
        written = [p]
    elif kind == "projection":
        from fastmc.io import read_result

        written = plots.plot_projection(read_result(path), out_dir, path.stem)
    elif kind == "optimise":
        from fastmc.optimise import read_history

        p = out_dir / f"{path.stem}.png"
        plots.plot_optimisation(read_history(path), p)
        written = [p]
    else:
        raise UsageError(f"{path}: not a fastmc projection, sensitivity or optimise output")
    for p in written:
        print(f"wrote {p}")
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())


def cmd_optimize(args) -> int:
    """Soft-mode Adam on the model's optimisable numbers; writes the optimised model and re-runs
    baseline and optimum in hard mode with fresh keys (that comparison is the result)."""
    import dataclasses

    from fastmc import optimise as O

    cfg = _load_card(args)
    st = cfg.optimise
    if args.batch is not None:
        cfg = cfg.with_overrides(optimise=dataclasses.replace(st, batch=args.batch))
    out = args.output
    if out is None:
        out = Path(cfg.path).parent / "out" / f"{Path(cfg.path).stem}_optimise.h5"
        out.parent.mkdir(parents=True, exist_ok=True)
    _check_output(out)
    model_out = out.with_name(out.stem + "_model.toml")
    card_out = out.with_name(out.stem + "_card.toml")
    log = (lambda m: None) if args.json else (lambda m: print(m, file=sys.stderr))
    names = [p.name for p in cfg.model.optimise]
    if not names:
        O.build_problem(cfg)  # raises the one-line error
    log(f"optimising {', '.join(names)} of {cfg.model.path} for channels {', '.join(st.channels)} + signal "
        f"({st.signal_mass_MeV:g} MeV {cfg.signal.model}); the first step compiles the gradient (minutes)")
    t0 = time.perf_counter()
    problem = O.build_problem(cfg)
    hist = O.optimise(problem, steps=args.steps, progress=not args.no_progress, log=log)
    x1 = hist["x_final"]
    header = (f"Optimised by fastmc optimize {Path(cfg.path).name} ({len(hist['loss']) - 1} steps, "
              f"{time.strftime('%Y-%m-%d')}); changed values are marked on their lines.\n"
              f"Soft FOM {hist['fom'][0]:.4g} -> {hist['fom'][-1]:.4g}; see the hard-mode re-evaluation in {out.name}.\n")
    O.write_model(cfg.model.path, model_out, problem.params, x1, header)
    O.write_card(cfg.path, model_out, card_out)
    evaluation: dict[str, Any] = {"x_baseline": problem.x0.tolist(), "x_optimised": [float(v) for v in x1],
                                  "x_written": O.file_values(problem.params, x1)}
    result = None
    if not args.no_eval:
        from fastmc.config import load_run

        n_eval = args.eval_n_muons or st.eval_n_muons or cfg.n_muons
        fresh = cfg.seed + 1  # keys never used by the optimisation (which folds steps into key(seed))
        cfg_opt = load_run(card_out)
        log(f"hard-mode re-evaluation with fresh keys (seed {fresh}, {n_eval} primaries per channel and geometry)")
        evaluation["baseline"], _ = O.hard_evaluation(cfg, fresh, n_eval, progress=not args.no_progress, log=log)
        evaluation["optimised"], result = O.hard_evaluation(cfg_opt, fresh, n_eval, progress=not args.no_progress,
                                                            log=log)
    O.write_history(out, cfg, problem, hist, evaluation, model_out.read_text(), result,
                    " ".join(["fastmc"] + sys.argv[1:]))
    from fastmc.plots import plot_optimisation

    png = _try_plot(lambda p: plot_optimisation(O.read_history(out), p), out.with_suffix(".png"))
    table = O.format_evaluation(names, problem.x0, evaluation["x_written"], evaluation)
    summary = {"parameters": names, "x_baseline": evaluation["x_baseline"], "x_optimised": evaluation["x_written"],
               "soft_loss": [float(v) for v in hist["loss"]], "baseline": evaluation.get("baseline"),
               "optimised": evaluation.get("optimised"), "output": str(out), "model": str(model_out),
               "card": str(card_out), "plot": png, "seconds": time.perf_counter() - t0}
    if args.json:
        print(table, file=sys.stderr)
        print(json.dumps(summary))
    else:
        print(table)
        for p in (out, model_out, card_out, png):
            if p:
                print(f"wrote {p}", file=sys.stderr)
    return 0
