"""``fastmc project``, ``inspect`` and ``merge``: the background projection, its tables and files."""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path
from typing import Any

from fastmc.cli.common import UsageError, check_output, command_line, int_in, load_card, positive_float


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


def add_project(sub) -> None:
    pr = sub.add_parser("project", help="simulate a run card and print the background table")
    pr.add_argument("card", help="run card (runs/*.toml)")
    pr.add_argument("--mot", type=positive_float("--mot"), help="muons on target to project to (default: the card's)")
    pr.add_argument("--n-muons", type=int_in("--n-muons", 1, 10**15),
                    help="primaries to generate (default: the card's)")
    pr.add_argument("--seed", type=int_in("--seed", 0, 2**32 - 1), help="random seed (default: the card's)")
    pr.add_argument("--chunk-size", type=int_in("--chunk-size", 1, 2**24), help="muons per chunk (default: the card's)")
    pr.add_argument("--chunks", type=_chunk_range, metavar="START:STOP", help="simulate only this chunk range")
    pr.add_argument("-o", "--output", type=Path, help="write the HDF5 output here")
    pr.add_argument("--json", action="store_true", help="print one JSON object to stdout (table goes to stderr)")
    pr.add_argument("--no-progress", action="store_true", help="no progress bar")
    pr.add_argument("--save-events", action="store_true", help="store the selected events in the output")
    pr.add_argument("--target-rel-err", type=positive_float("--target-rel-err"), metavar="F",
                    help="stop each channel once its signal estimate reaches this relative error with "
                         "no diagnostic warning; the run ends when all have (n_muons, --max-seconds: the budget)")
    pr.add_argument("--max-seconds", type=positive_float("--max-seconds"), help="wall-time budget of the simulation")
    pr.add_argument("--devices", type=int_in("--devices", 1, 4096), metavar="N",
                    help="use the first N local devices (default: all; results do not depend on it)")
    pr.add_argument("--scheduler", metavar="SPEC",
                    help="run chunk ranges as Dask tasks: local:N (LocalCluster of N worker processes) or "
                         "tcp://HOST:PORT (running scheduler); needs the 'dist' extra")
    pr.add_argument("--checkpoint-every", type=int_in("--checkpoint-every", 1, 10**9), default=0, metavar="N",
                    help="write the chunks done so far to -o every N chunks (file marked complete=False)")
    pr.add_argument("--resume", action="store_true",
                    help="continue the unfinished run in -o (same card, model, seed, chunk size)")
    add_channels_flag(pr)


def add_channels_flag(parser) -> None:
    parser.add_argument("--channels", type=_channel_list, metavar="NAME,...",
                        help="simulate only these channels of the card (default: all of them)")


def _channel_list(text: str) -> tuple[str, ...]:
    names = tuple(dict.fromkeys(t.strip() for t in text.split(",") if t.strip()))
    if not names:
        raise argparse.ArgumentTypeError(f"--channels = {text!r}: give one or more channel names, comma-separated")
    return names


def select_channels(cfg, names: tuple[str, ...] | None):
    """The card restricted to the channels ``names`` (``--channels``), in the card's order."""
    if names is None:
        return cfg
    unknown = [n for n in names if n not in cfg.channels]
    if unknown:
        raise UsageError(f"--channels = {','.join(names)!r}: {', '.join(map(repr, unknown))} not among the card's "
                         f"channels ({', '.join(cfg.channels)}) in {cfg.path}")
    return cfg.with_overrides(channels=tuple(c for c in cfg.channels if c in names))


def status(msg: str) -> None:
    """A status line on stderr, written above a running progress bar (not onto its line)."""
    from tqdm import tqdm

    tqdm.write(msg, file=sys.stderr)


def add_inspect(sub) -> None:
    ins = sub.add_parser("inspect", help="summarise a fastmc HDF5 output file")
    ins.add_argument("file", type=Path)
    ins.add_argument("--json", action="store_true", help="print the stored projection as JSON")
    ins.add_argument("--region", metavar="NAME",
                     help="show the table and cut flow of this selection region (default: the signal region)")


def add_merge(sub) -> None:
    mg = sub.add_parser("merge", help="merge outputs of disjoint chunk ranges of one run card, exactly")
    mg.add_argument("inputs", type=Path, nargs="+", help="fastmc HDF5 files (same card, seed, chunk size)")
    mg.add_argument("-o", "--output", type=Path, required=True, help="merged HDF5 file")
    mg.add_argument("--json", action="store_true", help="print the merged projection as JSON")


def format_table(proj: dict[str, Any]) -> str:
    lines = [
        f"fastmc background projection — region '{proj['region']}', MOT = {proj['mot']:.3g}",
        (f"{'channel':<28}{'expected':>12}{'stat err':>11}{'rel err':>9}{'n sel':>9}{'n gen':>12}{'ESS':>10}"
         f"{'max w share':>13}{'Pareto-k':>10}"),
    ]
    stopped = proj.get("not_converged") or {}  # channels --target-rel-err stopped (fastmc.run.cannot_converge)
    for name, c in proj["channels"].items():
        mark = "  not converged" if name in stopped else ""
        if c["n_selected"] == 0:
            lines.append(
                f"{name:<28}{'< ' + format(c['upper_limit_90'], '.3g'):>12}{'(90% CL)':>11}{'-':>9}{0:>9}"
                f"{c['n_generated']:>12}{'-':>10}{'-':>13}{'-':>10}{mark}"
            )
        else:
            lines.append(
                f"{name:<28}{c['expected']:>12.4g}{c['stat_err']:>11.3g}{c['rel_err']:>9.1%}{c['n_selected']:>9}"
                f"{c['n_generated']:>12}{c['ess']:>10.4g}{c['max_weight_share']:>13.3g}{_pareto(c):>10}{mark}"
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


def _pareto(c: dict[str, Any]) -> str:
    """The Pareto-k of a channel's weights (:meth:`fastmc.tally.Tally.pareto_k`; '-' where too few events)."""
    k = c.get("pareto_k")
    return "-" if k is None else f"{k:.2f}"


def format_cutflow(proj: dict[str, Any], region: str | None = None) -> str:
    """The cut flow of every channel and region (only ``region`` if given): per step the raw count of
    simulated events passing (and their fraction of those generated) and the weighted number, the
    expected events at the projection's MOT (what an integrated cut such as the trigger changes)."""
    lines = []
    for ch, regions in proj["cutflow"].items():
        for name, steps in regions.items():
            if region is not None and name != region:
                continue
            lines.append(f"cut flow [{ch}] region '{name}' (raw: simulated events passing; weighted: expected "
                         f"events at MOT = {proj['mot']:.3g})")
            lines.append(f"  {'#':>2}  {'cut':<40}{'raw':>10}  {'(fraction of generated)':<23}  {'weighted':>10}")
            for s in steps:
                frac = s["n_selected"] / s["n_generated"] if s["n_generated"] else 0.0
                lines.append(f"  {s['step']:>2}  {s['cut']:<40}{s['n_selected']:>10}  ({frac:<8.3g} of generated)"
                             f"  {s['expected']:>10.4g}")
    return "\n".join(lines)


def cutflow_json(proj: dict[str, Any]) -> dict[str, Any]:
    """The cut flow for ``--json``: per channel and region, per step the raw count of simulated events
    passing, the generated count, and the weighted number (expected events at the MOT) with its error."""
    return {ch: {region: [{"step": s["step"], "cut": s["cut"], "raw": s["n_selected"], "n_generated": s["n_generated"],
                           "weighted": s["expected"], "weighted_stat_err": s["stat_err"]} for s in steps]
                 for region, steps in regions.items()}
            for ch, regions in proj["cutflow"].items()}


def _overflow_share(est: dict[str, Any], region: str) -> str:
    """How much of the estimate the overflowing events carry (they keep the interactions up to the
    cap and lose the rest: their weight is what a raised cap could change)."""
    share = est.get("overflow_w_share")
    if share is None:
        return ""
    if share == 0.0:
        return f"; none of them passes region '{region}'"
    return f"; they carry {share:.2%} of the channel's Σw in region '{region}'"


def _warnings(proj: dict[str, Any], result, cfg) -> list[str]:
    out = []
    act = result.channel_active()
    for ci, ch in enumerate(result.channels):
        n_total = int(result.n_gen[act[:, ci]].sum())
        over = int(result.overflow[:, ci].sum())
        share = _overflow_share(proj["channels"].get(ch, {}), proj["region"])
        if over and over / n_total > cfg.physics.overflow_tolerance:
            out.append(
                f"channel {ch}: {over} interaction-slot overflows in {n_total} muons exceed "
                f"physics.overflow_tolerance = {cfg.physics.overflow_tolerance:g}{share}; "
                "raise physics.max_interactions"
            )
        elif over:
            out.append(f"channel {ch}: {over} interaction-slot overflow(s) in {n_total} muons (cap reached; counted)"
                       f"{share}")
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
                "save_events", "admixture", "channel_settings"):
        a, b = mine.get(key), stored.get(key)
        if key == "model":
            a, b = (a or {}).get("sha256"), (b or {}).get("sha256")
        if json.dumps(a, sort_keys=True, default=str) != json.dumps(b, sort_keys=True, default=str):
            raise UsageError(f"--resume: {names.get(key, key)} differs from the checkpoint {str(path)!r}: "
                             "refusing to resume")
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
            raise UsageError(f"--resume: --chunks = {a}:{b if b is not None else ''} differs from the checkpoint's "
                             f"{req[0]}:{req[1]}")
    return cfg, stored_result(data, with_events=True), (int(req[0]), int(req[1]))


def _resume_command(args, path: Path) -> str:
    """The command that continues the checkpoint ``path``: the one typed, with -o ``path`` and --resume."""
    argv = list(sys.argv[1:])
    out = []
    skip = False
    for a in argv:
        if skip:
            skip = False
            continue
        if a in ("-o", "--output"):
            skip = True
            continue
        if a.startswith("--output=") or (a.startswith("-o") and len(a) > 2) or a == "--resume":
            continue
        out.append(a)
    if not out or out[0] != "project" or str(args.card) not in out:  # called in-process (tests): from args
        out = ["project", str(args.card)]
        if getattr(args, "channels", None):
            out += ["--channels", ",".join(args.channels)]
    return " ".join(["fastmc", *out, "-o", str(path), "--resume"])


def cmd_project(args) -> int:
    cfg = select_channels(load_card(args), getattr(args, "channels", None))
    check_output(args.output)
    existed = args.output is not None and args.output.exists() and not args.resume
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

    from fastmc.chain import prepare
    from fastmc.io import write_result
    from fastmc.projection import projection
    from fastmc.run import n_chunks, run, select_devices

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
    command = command_line()
    extra = {"requested_chunks": json.dumps([int(start), int(stop)]),
             "n_devices": len(devs) if args.scheduler is None else 0,
             "scheduler": args.scheduler or ""}
    prep = None
    if args.scheduler is None or args.output is not None:
        status(f"preparing {cfg.path}: physics tables (built once, then loaded from the disk cache), setup, "
               f"channels {', '.join(cfg.channels)} …")
        prep = prepare(cfg)
        status(f"prepared in {prep.build_seconds:.1f} s")

    def checkpoint(merged, path=None) -> None:
        path = args.output if path is None else path
        write_result(path, cfg, merged, projection(cfg, merged), prep, command, complete=False,
                     extra_provenance=extra)
        status(f"checkpoint: {len(merged.chunk_ids)}/{len(wanted)} chunks in {path}")

    every = args.checkpoint_every
    if len(todo) == 0:
        result = done
    elif args.scheduler is not None:
        from fastmc.distributed import run_dask

        result = run_dask(cfg, args.scheduler, todo, devices=args.devices, checkpoint_every=every,
                          on_checkpoint=checkpoint if every else None, base=done,
                          log=lambda m: print(m, file=sys.stderr))
    else:
        if done is not None:
            status(f"resuming {args.output}: {len(done.chunk_ids)} of {len(wanted)} chunks done, "
                   f"{len(todo)} to simulate")
        part = run(cfg, prep, progress=not args.no_progress, target_rel_err=args.target_rel_err,
                   max_seconds=args.max_seconds if args.max_seconds is not None else cfg.max_seconds,
                   chunk_ids=todo, devices=args.devices,
                   checkpoint_every=every,
                   on_checkpoint=(lambda part: checkpoint(part if done is None else done.merge(part)))
                   if every else None, log=status, keep_on_interrupt=True)
        result = part
        if done is not None:
            # the merge keeps the tallies; the stop reason and the run's flags are those of this part
            result = dataclasses.replace(done.merge(part) if len(part.chunk_ids) else done,
                                         stop_reason=part.stop_reason, interrupted=part.interrupted,
                                         not_converged=part.not_converged)
    if len(todo) == 0:
        result = dataclasses.replace(result, stop_reason="every chunk was already in the checkpoint")
    if result.interrupted:
        return _interrupted(args, cfg, result, wanted, checkpoint, existed)
    proj = projection(cfg, result)
    proj["stop_reason"] = result.stop_reason
    if result.not_converged:
        proj["not_converged"] = dict(result.not_converged)
    proj_out = {**{k: v for k, v in proj.items() if k != "cutflow"}, "cutflow": cutflow_json(proj)}
    proj_out["output"] = str(args.output) if args.output is not None else None
    table = format_table(proj)
    for w in _warnings(proj, result, cfg):
        print(f"fastmc: warning: {w}", file=sys.stderr)
    rate = int(result.n_gen.sum()) / max(result.seconds, 1e-9)
    log = f"{int(result.n_gen.sum())} primaries in {result.seconds:.1f} s ({rate:.3g}/s)"
    if result.stop_reason:
        log += f"; stopped: {result.stop_reason}"
    if args.target_rel_err is not None and not result.stop_reason.startswith("target"):
        print(f"fastmc: warning: {result.stop_reason}", file=sys.stderr)
    if args.json:
        print(table, file=sys.stderr)
        print(log, file=sys.stderr)
    else:
        print(table)
        print(format_cutflow(proj))
        print(log, file=sys.stderr)
    sys.stdout.flush()
    # the table is out before the file is written: an output error never loses the simulation's numbers
    if args.output is not None:
        try:
            write_result(args.output, cfg, result, proj, prep, command, complete=True, extra_provenance=extra)
        except OSError as err:
            if args.json:
                print(json.dumps({**proj_out, "output": None}))
            raise UsageError(f"-o = {str(args.output)!r}: cannot write the output ({err.strerror or err}); "
                             "the table above is the result") from None
    if args.json:
        print(json.dumps(proj_out))
    elif args.output is not None:
        print(f"wrote {args.output}", file=sys.stderr)
    return 0


def _interrupted(args, cfg, result, wanted, checkpoint, existed: bool) -> int:
    """Ctrl-C: the partial table, a checkpoint in -o (resumable with --resume), exit 130."""
    from fastmc.projection import projection

    n = len(result.chunk_ids)
    if n == 0:
        print(f"fastmc: interrupted before the first chunk was finished: nothing to save (0/{len(wanted)} chunks)",
              file=sys.stderr)
        return 130
    proj = projection(cfg, result)
    if result.not_converged:
        proj["not_converged"] = dict(result.not_converged)
    print(f"PARTIAL result (interrupted by Ctrl-C: {n} of {len(wanted)} chunks)")
    print(format_table(proj))
    sys.stdout.flush()
    if args.output is None:
        print(f"fastmc: interrupted: {n}/{len(wanted)} chunks simulated; nothing saved (no -o given)",
              file=sys.stderr)
        return 130
    path = args.output
    if existed:
        # never replace a file that was there before this run (possibly complete) with a partial one
        path = path.with_name(f"{path.stem}.interrupted{path.suffix}")
    try:
        checkpoint(result, path)
    except OSError as err:
        print(f"fastmc: error: -o = {str(path)!r}: cannot write the checkpoint ({err.strerror or err})",
              file=sys.stderr)
        return 130
    print(f"fastmc: interrupted: {n}/{len(wanted)} chunks saved in {path}; continue with: "
          f"{_resume_command(args, path)}", file=sys.stderr)
    return 130


def _header(path: Path, a: dict[str, Any], kind: str) -> None:
    print(f"{path}: fastmc {a.get('fastmc_version', '?')} {kind} output (schema {a.get('schema_version', '?')}), "
          f"created {a.get('created', '?')}")
    print(f"  command: {a.get('command_line', '')}")


def _inspect_other(path: Path, kind: str, as_json: bool) -> int:
    """``fastmc inspect`` of a sensitivity or optimise output: what it holds, as a table or JSON."""
    from fastmc.io import file_attrs

    try:
        attrs = file_attrs(path)
        if kind == "sensitivity":
            from fastmc.sensitivity import format_sensitivity, read_sensitivity

            summary = read_sensitivity(path)
            text = format_sensitivity(summary)
        else:
            from fastmc.optimise import format_evaluation, read_history

            hist = read_history(path)
            ev = hist["evaluation"]
            summary = {"parameters": hist["names"], "units": hist["units"], "evaluation": ev,
                       "soft_loss": [float(v) for v in hist.get("loss", [])]}
            x0, x1 = ev.get("x_baseline"), ev.get("x_written")
            text = (format_evaluation(hist["names"], x0, x1, ev) if x0 is not None and x1 is not None
                    else f"parameters: {', '.join(hist['names'])}")
            if summary["soft_loss"]:
                text += (f"\nsoft loss: {summary['soft_loss'][0]:.6g} → {summary['soft_loss'][-1]:.6g} "
                         f"in {len(summary['soft_loss'])} steps")
    except (OSError, KeyError, ValueError, TypeError, IndexError, StopIteration) as err:
        raise UsageError(f"{path}: a damaged fastmc {kind} file ({' '.join(str(err).split())})") from None
    if as_json:
        print(json.dumps({"kind": kind, **summary}, default=float))
        return 0
    _header(path, attrs, kind)
    print(text)
    return 0


def cmd_inspect(args) -> int:
    from fastmc.io import open_kind, read_result

    try:
        kind = open_kind(args.file)
        if kind != "projection":
            if args.region is not None:
                raise UsageError(f"--region = {args.region!r}: {args.file} is a {kind} output (no regions)")
            return _inspect_other(args.file, kind, args.json)
        data = read_result(args.file)
    except (FileNotFoundError, ValueError) as err:
        raise UsageError(str(err)) from None
    proj = data["projection"]
    if args.region is not None:
        known = list(next(iter(proj["cutflow"].values()), {}))
        if args.region not in known:
            raise UsageError(f"--region = {args.region!r}: no such region in {args.file} (known: {', '.join(known)})")
        proj = region_projection(proj, args.region)
    if args.json:
        print(json.dumps(proj))
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
    print(format_table(proj))
    print(format_cutflow(proj, region=proj["region"]))
    return 0


def region_projection(proj: dict[str, Any], region: str) -> dict[str, Any]:
    """The projection's table for another region of its cut flow (each channel's last step there)."""
    channels = {}
    for ch, c in proj["channels"].items():
        last = {k: v for k, v in proj["cutflow"][ch][region][-1].items() if k not in ("step", "cut")}
        channels[ch] = {**c, **last}  # timings and per-unit numbers are the signal region's: drop them
        for k in ("fom", "fom_gain_vs_analog", "seconds_per_primary", "fom_analog_time_from", "per_unit_fraction"):
            channels[ch].pop(k, None)
    bg = [c for ch, c in channels.items() if ch != "analog" or len(channels) == 1]
    total = {"expected": sum(c["expected"] for c in bg), "stat_err": sum(c["stat_err"] ** 2 for c in bg) ** 0.5}
    return {**proj, "region": region, "channels": channels, "total": total}


def cmd_merge(args) -> int:
    from fastmc.io import merge_files

    check_output(args.output)
    if args.output.resolve() in [p.resolve() for p in args.inputs]:
        raise UsageError(f"-o = {str(args.output)!r}: must not be one of the inputs")
    try:
        proj = merge_files(list(args.inputs), args.output, command_line())
    except (FileNotFoundError, ValueError) as err:
        raise UsageError(str(err)) from None
    if args.json:
        print(json.dumps({**{k: v for k, v in proj.items() if k != "cutflow"}, "cutflow": cutflow_json(proj),
                          "output": str(args.output)}))
    else:
        print(format_table(proj))
        print(f"wrote {args.output}", file=sys.stderr)
    return 0

