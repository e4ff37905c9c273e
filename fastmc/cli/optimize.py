"""``fastmc optimize``: differentiable optimisation of a model's numbers, then a hard-mode re-evaluation."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

from fastmc.cli.common import check_output, command_line, int_in, load_card, try_plot


def add_optimize(sub) -> None:
    op = sub.add_parser("optimize", help="differentiable optimisation of the model's [optimise.*] numbers "
                                         "(soft mode), then a hard-mode re-evaluation")
    op.add_argument("card", help="run card with an [optimise] table; its model declares [optimise.\"ELEMENT.FIELD\"]")
    op.add_argument("--steps", type=int_in("--steps", 0, 100000),
                    help="Adam steps (default: the card's [optimise] steps)")
    op.add_argument("--batch", type=int_in("--batch", 16, 2**22),
                    help="muons per channel per step (default: the card's)")
    op.add_argument("--seed", type=int_in("--seed", 0, 2**32 - 2), help="random seed (default: the card's)")
    op.add_argument("--eval-n-muons", type=int_in("--eval-n-muons", 1, 10**15), metavar="N",
                    help="primaries per channel and geometry of the hard-mode re-evaluation (default: the card's)")
    op.add_argument("--no-eval", action="store_true", help="skip the hard-mode re-evaluation")
    op.add_argument("-o", "--output", type=Path,
                    help="history HDF5 (default: out/<card>_optimise.h5 beside the card); the optimised model "
                         "(…_model.toml), a run card for it (…_card.toml) and the plot (.png) go beside it")
    op.add_argument("--json", action="store_true", help="print one JSON object to stdout (table goes to stderr)")
    op.add_argument("--no-progress", action="store_true", help="no progress bars")


def cmd_optimize(args) -> int:
    """Soft-mode Adam on the model's optimisable numbers; writes the optimised model and re-runs
    baseline and optimum in hard mode with fresh keys (that comparison is the result)."""
    import dataclasses

    from fastmc import optimise as O

    cfg = load_card(args)
    st = cfg.optimise
    if args.batch is not None:
        cfg = cfg.with_overrides(optimise=dataclasses.replace(st, batch=args.batch))
    out = args.output
    if out is None:
        out = Path(cfg.path).parent / "out" / f"{Path(cfg.path).stem}_optimise.h5"
        out.parent.mkdir(parents=True, exist_ok=True)
    check_output(out)
    model_out = out.with_name(out.stem + "_model.toml")
    card_out = out.with_name(out.stem + "_card.toml")
    log = (lambda m: None) if args.json else (lambda m: print(m, file=sys.stderr))
    names = [p.name for p in cfg.model.optimise]
    if not names:
        O.build_problem(cfg)  # raises the one-line error
    log(f"optimising {', '.join(names)} of {cfg.model.path} for channels {', '.join(st.channels)} + signal "
        f"({st.signal_mass_MeV:g} MeV {cfg.channel_settings['signal'].model}); "
        "the first step compiles the gradient (minutes)")
    t0 = time.perf_counter()
    problem = O.build_problem(cfg)
    hist = O.optimise(problem, steps=args.steps, progress=not args.no_progress, log=log)
    x1 = hist["x_final"]
    header = (f"Optimised by fastmc optimize {Path(cfg.path).name} ({len(hist['loss']) - 1} steps, "
              f"{time.strftime('%Y-%m-%d')}); changed values are marked on their lines.\n"
              f"Soft FOM {hist['fom'][0]:.4g} -> {hist['fom'][-1]:.4g}; see the hard-mode re-evaluation in "
              f"{out.name}.\n")
    O.write_model(cfg.model.path, model_out, problem.params, x1, header)
    O.write_card(cfg.path, model_out, card_out)
    evaluation: dict[str, Any] = {"x_baseline": problem.x0.tolist(), "x_optimised": [float(v) for v in x1],
                                  "x_written": O.file_values(problem.params, x1)}
    result = None
    if not args.no_eval:
        from fastmc.runcard import load_run

        n_eval = args.eval_n_muons or st.eval_n_muons or cfg.n_muons
        fresh = cfg.seed + 1  # keys never used by the optimisation (which folds steps into key(seed))
        cfg_opt = load_run(card_out)
        log(f"hard-mode re-evaluation with fresh keys (seed {fresh}, {n_eval} primaries per channel and geometry)")
        evaluation["baseline"], _ = O.hard_evaluation(cfg, fresh, n_eval, progress=not args.no_progress, log=log)
        evaluation["optimised"], result = O.hard_evaluation(cfg_opt, fresh, n_eval, progress=not args.no_progress,
                                                            log=log)
    O.write_history(out, cfg, problem, hist, evaluation, model_out.read_text(), result,
                    command_line())
    from fastmc.plots import plot_optimisation

    png = try_plot(lambda p: plot_optimisation(O.read_history(out), p), out.with_suffix(".png"))
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
