"""The validation run: for every table configuration, simulate, histogram, check, and collect rows.

:func:`run_validation` reads the tables and tolerances (:mod:`fastmc.validate.tables`), runs fastmc
(:mod:`fastmc.validate.simulate`), compares (:mod:`fastmc.validate.statistics`) and returns the
report that :mod:`fastmc.validate.report` formats and writes.
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from fastmc.validate.report import jsonable, tol_text, value_text
from fastmc.validate.simulate import config_seed, homogenise_layers, simulate_decay, simulate_transport
from fastmc.validate.statistics import (
    INFO_MIN_COUNT,
    Hist,
    binned_ks,
    chi2_check,
    compare_bins,
    core_width_check,
    hist_from_samples,
    median_check,
    tail_check,
)
from fastmc.validate.tables import (
    SUITES,
    Group,
    TableError,
    default_tables_dir,
    group_mode,
    load_tables,
    load_tolerances,
)


def _row(suite: str, group: Group, obs: str, check: str, par: dict, result: dict, info: dict) -> dict[str, Any]:
    return {"suite": suite, "group": group.name, "observable": obs, "check": check, "tolerance": tol_text(check, par),
            "reason": " ".join(str(par["reason"]).split()), "passed": bool(result["passed"]),
            "value": value_text(check, result), "result": jsonable(result), "chi2_ndf": info.get("chi2_ndf"),
            "p_value": info.get("p_value")}


def _obs_checks(tol: dict, suite: str, obs: str) -> dict[str, dict]:
    return tol.get(suite, {}).get(obs, {}) if suite in SUITES else {}


def _run_checks(suite: str, group: Group, obs: str, ref: Hist, mc: Hist, checks: dict[str, dict],
                x_max: float | None) -> tuple[list[dict], dict]:
    info = compare_bins(ref, mc, INFO_MIN_COUNT)
    rows = []
    for kind, par in checks.items():
        if kind == "tail_fraction":
            if "thresholds_theta0" in par:
                if ref.scale is None:
                    continue
                th = [k * ref.scale for k in par["thresholds_theta0"]]
            else:
                th = list(par["thresholds_GeV"])
            r = tail_check(ref, mc, th, par["rel_tol"], par["n_sigma"], bool(par.get("two_sided", False)), x_max)
        elif kind == "median":
            r = median_check(ref, mc, par["rel_tol"], par["n_sigma"])
        elif kind == "core_width":
            r = core_width_check(ref, mc, par["rel_tol"], par["n_sigma"])
        else:
            r = chi2_check(ref, mc, par["p_min"], par.get("min_count", INFO_MIN_COUNT))
        rows.append(_row(suite, group, obs, kind, par, r, info))
    return rows, info


def _suites_arg(suite: str) -> tuple[str, ...]:
    if suite == "all":
        return SUITES
    if suite not in SUITES:
        raise TableError(f"--suite = {suite!r}: unknown suite (known: {', '.join(SUITES)}, all)")
    return (suite,)


def run_validation(suite: str = "all", tables_dir: Path | None = None, tolerances: Path | None = None,
                   stat_scale: float = 1.0, seed: int = 1, groups: list[str] | None = None,
                   log: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Compare fastmc with the tables; returns the report (checks, per-observable data, timing).

    ``groups`` restricts to these table group names (all when None).  Raises :class:`TableError`
    for bad input.  A suite whose fastmc part cannot run (e.g. a missing physics module) is
    reported as a failed ``run`` check, never silently skipped.
    """
    log = log or (lambda s: None)
    suites = _suites_arg(suite)
    if not (math.isfinite(stat_scale) and stat_scale > 0):
        raise TableError(f"--stat-scale = {stat_scale!r}: must be a finite number > 0")
    tables_dir = Path(tables_dir) if tables_dir is not None else default_tables_dir()
    if tolerances is None:
        cand = tables_dir / "tolerances.toml"
        tolerances = cand if cand.is_file() else default_tables_dir() / "tolerances.toml"
    tol = load_tolerances(Path(tolerances))
    tables = load_tables(tables_dir, suites)
    t_start = time.perf_counter()
    rows: list[dict] = []
    observables: list[dict] = []
    timing: list[dict] = []
    for s in suites:
        for group in tables[s]:
            if groups is not None and group.name not in groups:
                continue
            n_mc = max(1, int(round(group.n_events * stat_scale)))  # noqa: RUF046 (an int also for numpy scalars)
            a = group.attrs
            note = ""
            try:
                if s in ("eloss", "deflection"):
                    layers, changed = homogenise_layers(a["layers"])
                    if changed:
                        note = (f"fastmc: {len(layers)} homogenised elements "
                                f"({', '.join(m for m, _ in layers)}); Geant4: {len(a['layers'])} real layers")
                    log(f"[{s}] {group.name}: {n_mc} muons through {len(layers)} element(s) ...")
                    sim = simulate_transport(layers, float(a["ekin_GeV"]), n_mc,
                                             config_seed(seed, layers, a["ekin_GeV"]))
                    n_gen = n_mc
                else:
                    mode_name = group_mode(group)
                    log(f"[{s}] {group.name}: {n_mc} {a['particle']} decays ({mode_name}) ...")
                    sim = simulate_decay(str(a["particle"]), float(a["momentum_GeV"]), n_mc,
                                         config_seed(seed, a["particle"], a["momentum_GeV"], mode_name),
                                         None if mode_name == "all" else mode_name)
                    n_gen = n_mc
            except RuntimeError as err:
                rows.append({"suite": s, "group": group.name, "observable": "-", "check": "run",
                             "tolerance": "fastmc must run", "reason": "a configuration that cannot be simulated fails",
                             "passed": False, "value": str(err), "result": {}, "chi2_ndf": None, "p_value": None})
                log(f"[{s}] {group.name}: NOT RUN: {err}")
                continue
            timing.append({"suite": s, "group": group.name, **sim["timing"],
                           "g4_cpu_s": a.get("cpu_seconds"), "g4_n_events": group.n_events,
                           "g4_us_per_event": 1e6 * float(a.get("cpu_seconds", float("nan"))) / group.n_events})
            mode_norm = s == "decay" and group_mode(group) != "all"
            for obs, ref in group.hists.items():
                if obs not in sim:
                    continue
                why_nc = _not_comparable(s, group_mode(group) if s == "decay" else "", obs, sim)
                ref_n = float(a.get("n_mode", group.n_events)) if mode_norm else float(group.n_events)
                ref_h = dataclasses.replace(ref, n_events=ref_n)
                mc_h = hist_from_samples(sim[obs], ref.edges, n_gen, unit=ref.unit, scale=ref.scale)
                checks = _obs_checks(tol, s, obs)
                x_max = float(a["ekin_GeV"]) if s == "eloss" else None
                r, info = _run_checks(s, group, obs, ref_h, mc_h, checks, x_max)
                if why_nc:
                    r = [{"suite": s, "group": group.name, "observable": obs, "check": "comparable",
                          "tolerance": "same observable", "reason": why_nc, "passed": None,
                          "value": "not comparable (see reason)", "result": {}, "chi2_ndf": info["chi2_ndf"],
                          "p_value": info["p_value"]}]
                for row in r:
                    row["note"] = note
                rows.extend(r)
                ks = binned_ks(ref_h, mc_h) if s == "decay" else None
                observables.append({"suite": s, "group": group.name, "observable": obs, "ref": ref_h, "mc": mc_h,
                                    "compare": info, "rows": r, "note": note, "ks": ks, "attrs": a,
                                    "n_stopped_mc": sim.get("n_stopped"), "n_stopped_ref": a.get("n_stopped")})
            if s == "decay" and not mode_norm and "mode_counts_json" in a and "mode_fractions" in tol.get(s, {}):
                rows.extend(_mode_fraction_rows(s, group, sim, tol[s]["mode_fractions"]))
    for row in rows:
        for kd in tol.get("known_difference", []):
            if (kd["suite"], kd["group"], kd["observable"]) == (row["suite"], row["group"], row["observable"]):
                row["known_difference"] = {"note": " ".join(kd["note"].split()), "source": kd["source"]}
    return {"suites": list(suites), "tables_dir": str(tables_dir), "tolerances": str(tolerances),
            "stat_scale": stat_scale, "seed": seed, "rows": rows, "observables": observables,
            "timing": timing, "wall_s": time.perf_counter() - t_start,
            "passed": any(r["passed"] for r in rows) and all(r["passed"] is not False for r in rows)}


# K⁺ modes with two π⁺: fastmc.physics.decay reports one charged track per decay (the π⁺ of
# higher lab momentum), the Geant4 table histograms every π⁺.
_TWO_PI_PLUS_MODES = ("pi_pi_pi",)


def _not_comparable(suite: str, mode: str, obs: str, sim: dict) -> str:
    """Why fastmc's observable is not the table's (empty when it is)."""
    if suite != "decay" or obs not in ("p_pi", "theta_pi"):
        return ""
    if mode in _TWO_PI_PLUS_MODES or (mode == "all"
                                      and any(m in sim.get("mode_names", []) for m in _TWO_PI_PLUS_MODES)):
        return ("the Geant4 table counts both π⁺ of K⁺ → π⁺π⁺π⁻; fastmc.physics.decay returns one charged "
                "track per decay (the π⁺ of higher lab momentum), so the spectra differ by construction; shown "
                "for information, not a check")
    return ""


def _mode_fraction_rows(s: str, group: Group, sim: dict, checks: dict) -> list[dict]:
    """Observed branching fractions: one bin per mode known to either side.

    With ``modes = "common"`` the comparison is conditional on the decay modes that *both* models
    contain (observed at least once on each side): fastmc's fractions are renormalised to the
    decays into those modes, and the modes only one side has are reported (``only_fastmc``,
    ``only_reference``) instead of entering the χ².  A mode missing from one model's decay table
    is a content difference, not a disagreement on the shared physics."""
    ref_counts = {k: int(v) for k, v in json.loads(group.attrs["mode_counts_json"]).items()}
    names = sim["mode_names"]
    mc_counts_all = {nm: int(np.sum(sim["mode"] == i)) for i, nm in enumerate(names)}
    rows = []
    for kind, par in checks.items():
        if kind != "chi2":
            continue
        mc_counts = dict(mc_counts_all)
        n_mc, n_ref = len(sim["mode"]), group.n_events
        only = {}
        if par.get("modes", "all") == "common":
            common = {k for k, v in mc_counts.items() if v > 0} & {k for k, v in ref_counts.items() if v > 0}
            only = {"only_fastmc": {k: v / n_mc for k, v in mc_counts.items() if v > 0 and k not in common},
                    "only_reference": {k: v / n_ref for k, v in ref_counts.items() if v > 0 and k not in common}}
            mc_counts = {k: v for k, v in mc_counts.items() if k in common}
            n_mc = sum(mc_counts.values())
            n_ref = sum(v for k, v in ref_counts.items() if k in common)
            ref_use = {k: v for k, v in ref_counts.items() if k in common}
        else:
            ref_use = ref_counts
        keys = list(dict.fromkeys([k for k in names if k in mc_counts] + sorted(ref_use)))
        ref_h = Hist(np.arange(len(keys) + 1, dtype=float), np.array([ref_use.get(k, 0) for k in keys]), 0.0, 0.0,
                     float(n_ref))
        mc_h = Hist(ref_h.edges, np.array([mc_counts.get(k, 0) for k in keys]), 0.0, 0.0, float(n_mc))
        r = chi2_check(ref_h, mc_h, par["p_min"], par.get("min_count", INFO_MIN_COUNT))
        cmp = compare_bins(ref_h, mc_h, par.get("min_count", INFO_MIN_COUNT))
        r["modes"] = {k: {"ref": ref_use.get(k, 0) / max(n_ref, 1), "mc": mc_counts.get(k, 0) / max(n_mc, 1),
                          "pull": float(cmp["pull"][i + 1])} for i, k in enumerate(keys)}
        r.update(only)
        row = _row(s, group, "mode_fractions", kind, par, r, {"chi2_ndf": r["chi2_ndf"], "p_value": r["p_value"]})
        row["note"] = "; ".join(f"{group.name} modes {side.replace('_', ' ')} (left out of the χ²): "
                                + ", ".join(f"{k} {v:.3g}" for k, v in m.items()) for side, m in only.items() if m)
        rows.append(row)
    return rows
