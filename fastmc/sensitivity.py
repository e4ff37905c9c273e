"""Signal yields and the expected 90 % CL reach: ``fastmc sensitivity``.

For each boson mass the *signal channel* runs the full chain (beam → transport → response →
reconstruction → the card's first selection region) with one emission μN → μN X forced in the
target element (:mod:`fastmc.physics.darkbrem`; weight = the emission probability for g = 1).
Σw/N_gen of the selected events is the signal yield per muon on target per g², efficiency
included; × BR(X → invisible) × MOT it is the expected number of signal events Y₁ (for g = 1).
The expected limit uses the background of the card's channels (a ``fastmc project`` output,
explicit numbers, or a projection run here) and :mod:`fastmc.limits`:
g_up = √(s_up / Y₁).  All masses share the card's seed (common random numbers: a smooth curve).
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from fastmc import units as u
from fastmc.chain import prepare
from fastmc.config import AdmixtureConfig, ConfigError, RunConfig, check_signal_target
from fastmc.geometry import setup_materials
from fastmc.io import atomic_h5, provenance, write_header
from fastmc.limits import coupling_upper_limit, expected_upper_limit, g2_band
from fastmc.physics.darkbrem import build_emission_tables, invisible_branching, sigma_total
from fastmc.run import run
from fastmc.tally import diagnose


@dataclasses.dataclass(frozen=True)
class Background:
    """The background estimate the limit is set with (events at the card's MOT)."""
    expected: float
    stat_err: float
    source: str
    n_selected: int | None = None  # raw MC events behind it (None: given by hand)
    upper_limit_90: float | None = None  # when no MC event was selected
    warnings: tuple[str, ...] = ()  # the projection's diagnostic warnings (fastmc.tally.diagnose)


def signal_run_config(cfg: RunConfig, n_muons: int | None = None) -> RunConfig:
    """The card with one channel, ``signal``: muons only, the [signal] table's statistics."""
    return cfg.with_overrides(channels=("signal",), admixture=AdmixtureConfig(), save_events=False,
                              n_muons=int(n_muons or cfg.channel_settings["signal"].n_muons))


def target_material(cfg: RunConfig, setup) -> Any:
    """The material of the card's signal target (the emission tables are built for it)."""
    mats, _ = setup_materials(cfg.model)
    return mats[int(setup.element(cfg.channel_settings["signal"].target).material)]


def signal_yields(cfg: RunConfig, masses: list[float], model: str, *, n_muons: int | None = None,
                  progress: bool = False,
                  log: Callable[[str], None] = lambda s: None) -> tuple[list[dict[str, Any]], Any, Any]:
    """Per mass: emission probability, efficiency and yield per MOT for g = 1 (with errors).
    Returns (rows, the prepared chain, the last mass's run result — for provenance).
    """


    target = cfg.channel_settings["signal"].target
    check_signal_target(cfg.model, target, lambda why: ConfigError(
        f"{cfg.path}: signal.target = {target!r}: {why} (set [signal] target)"))
    cfg_s = signal_run_config(cfg, n_muons)
    prep = prepare(cfg_s)
    material = target_material(cfg, prep.setup)
    region = cfg.regions[0][0]
    final = [i for i, s in enumerate(prep.selection.slots()) if s[0] == region][-1]
    e_beam = float(prep.setup.beam.momentum)  # total energy ≈ p at 160 GeV
    rows = []
    for m in masses:
        t0 = time.perf_counter()
        tab = build_emission_tables(model, m, material)
        # keep the channel's other parameters (the shower response of the card)
        prep.params["signal"] = dataclasses.replace(prep.params["signal"], admixture=None, tables=tab)
        res = run(cfg_s, prep, progress=progress)
        t = res.tallies()["signal"]
        gen, sel = t[0].estimate(1.0), t[final].estimate(1.0)
        br = invisible_branching(model, m)
        eff = sel["expected"] / gen["expected"] if gen["expected"] > 0 else 0.0
        # σ on lead at the beam energy, g = 1 (for the table; the chain uses the target's mixture)
        sig_pb = sigma_total(model, e_beam, m, 82.0, 207.2) / 1e-34
        rows.append({
            "mass_MeV": m / u.MeV,
            "sigma_pb_lead_g1": sig_pb,
            "emission_prob_g1": gen["expected"],
            "efficiency": eff,
            "br_invisible": br,
            "yield_per_mot_g1": br * sel["expected"],
            "yield_per_mot_g1_err": br * sel["stat_err"],
            "n_selected": sel["n_selected"],
            "n_generated": sel["n_generated"],
            "ess": sel["ess"],
            "seconds": time.perf_counter() - t0,
        })
        log(f"m = {m / u.MeV:g} MeV: efficiency {eff:.3f}, yield/MOT/g² {br * sel['expected']:.4g} "
            f"({sel['n_selected']} selected of {sel['n_generated']}, {time.perf_counter() - t0:.1f} s)")
    return rows, prep, res


def background_from_projection(proj: dict[str, Any], mot: float, source: str) -> Background:
    """Background at ``mot`` from a projection dict (``fastmc project`` JSON or HDF5)."""
    scale = mot / float(proj["mot"])
    chans = proj["channels"]
    used = [name for name in chans if name != "analog" or len(chans) == 1]  # analog cross-checks the biased ones
    bg = [chans[name] for name in used]
    n_sel = sum(c["n_selected"] for c in bg)
    ul = None
    if n_sel == 0:
        uls = [c["upper_limit_90"] for c in bg if c.get("upper_limit_90") is not None]
        ul = scale * max(uls) if uls else None
    warns = tuple(w for name in used for w in diagnose(f"background channel {name}", chans[name]))
    stopped = proj.get("not_converged") or {}  # channels --target-rel-err stopped for non-convergence
    warns += tuple(f"background channel {name} did not converge: {stopped[name]}" for name in used if name in stopped)
    return Background(scale * proj["total"]["expected"], scale * proj["total"]["stat_err"], source, n_sel, ul, warns)


def sensitivity(rows: list[dict[str, Any]], mot: float, bkg: Background, model: str) -> dict[str, Any]:
    """Expected limits on the coupling per mass (adds columns to ``rows``); the summary dict."""
    lim = expected_upper_limit(bkg.expected, bkg.stat_err)
    masses = np.array([r["mass_MeV"] for r in rows])
    band = g2_band(masses, model)
    for i, r in enumerate(rows):
        y1 = mot * r["yield_per_mot_g1"]
        r["signal_events_g1"] = y1
        r["g_up"] = coupling_upper_limit(lim["s_up"], y1)
        rel = r["yield_per_mot_g1_err"] / r["yield_per_mot_g1"] if r["yield_per_mot_g1"] > 0 else math.inf
        r["g_up_stat_err"] = 0.5 * rel * r["g_up"]  # δg/g = ½ δY/Y
        r["g2_central"], r["g2_low"], r["g2_high"] = (float(band[k][i]) for k in ("central", "low", "high"))
    return {"model": model, "mot": mot, "background": dataclasses.asdict(bkg), "limit": lim, "rows": rows}


def format_sensitivity(summary: dict[str, Any]) -> str:
    b = summary["background"]
    lim = summary["limit"]
    if b["n_selected"] == 0:
        btxt = (f"background: no MC event selected ({b['source']}); 90% CL bound < {b['upper_limit_90']:.3g}"
                if b["upper_limit_90"] is not None else f"background: 0 ({b['source']})")
    else:
        btxt = f"background: {b['expected']:.3g} ± {b['stat_err']:.3g} events ({b['source']})"
    lines = [
        f"fastmc sensitivity — {summary['model']}, invisible decay, MOT = {summary['mot']:.3g}",
        btxt,
        *(f"background warning: {w}" for w in b.get("warnings", ())),
        f"expected 90% CL (CLs) signal upper limit: {lim['s_up']:.3f} events (median background-only count "
        f"n = {lim['n_obs']})",
        f"{'mass MeV':>10}{'σ(Pb) pb/g²':>14}{'P(emit)/g²':>12}{'eff':>8}{'BR inv':>8}{'N_sig/g²':>12}"
        f"{'g_up':>11}{'± stat':>9}{'(g-2) g':>10}",
    ]
    for r in summary["rows"]:
        lines.append(
            f"{r['mass_MeV']:>10.4g}{r['sigma_pb_lead_g1']:>14.4g}{r['emission_prob_g1']:>12.4g}{r['efficiency']:>8.3f}"
            f"{r['br_invisible']:>8.3f}{r['signal_events_g1']:>12.4g}{r['g_up']:>11.3g}{r['g_up_stat_err']:>9.2g}"
            f"{r['g2_central']:>10.3g}"
        )
    return "\n".join(lines)


def write_sensitivity(path, cfg: RunConfig, summary: dict[str, Any], prep, result, command_line: str) -> None:
    """HDF5: /sensitivity (one dataset per column, attributes for the limit), provenance, config."""
    import json
    from pathlib import Path


    with atomic_h5(Path(path)) as f:
        write_header(f, "sensitivity", command_line, provenance(cfg, result, prep))
        g = f.create_group("config")
        g.attrs["json"] = json.dumps(cfg.to_dict())
        g.attrs["run_card"] = Path(cfg.path).read_text() if Path(cfg.path).is_file() else ""
        s = f.create_group("sensitivity")
        for key in summary["rows"][0]:
            s.create_dataset(key, data=np.array([r[key] for r in summary["rows"]], dtype=np.float64))
        s.attrs["model"] = summary["model"]
        s.attrs["mot"] = summary["mot"]
        s.attrs["background_json"] = json.dumps(summary["background"])
        s.attrs["background_warnings"] = json.dumps(list(summary["background"].get("warnings", ())))
        s.attrs["limit_json"] = json.dumps(summary["limit"])
        s.attrs["signal_region"] = cfg.regions[0][0]
        s.attrs["target"] = cfg.channel_settings["signal"].target


def read_sensitivity(path) -> dict[str, Any]:
    """The summary dict back from a ``fastmc sensitivity`` HDF5 file."""
    import json

    import h5py

    with h5py.File(path, "r") as f:
        s = f["sensitivity"]
        cols = {k: np.asarray(s[k]) for k in s}
        n = len(next(iter(cols.values())))
        rows = [{k: float(v[i]) for k, v in cols.items()} for i in range(n)]
        return {"model": str(s.attrs["model"]), "mot": float(s.attrs["mot"]),
                "background": json.loads(s.attrs["background_json"]), "limit": json.loads(s.attrs["limit_json"]),
                "rows": rows}
