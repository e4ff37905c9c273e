"""Output of ``fastmc validate``: the summary and timing tables, ``summary.json`` and the plots.

Also the text of a check's value and tolerance (:func:`value_text`, :func:`tol_text`) and the
conversion of results to JSON (:func:`jsonable`).  Works on plain report dicts; imports no other
module of :mod:`fastmc.validate` (matplotlib via :mod:`fastmc.plots`, lazily).
"""

from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path
from typing import Any

import numpy as np


def tol_text(check: str, par: dict) -> str:
    if check == "chi2":
        return f"p > {par['p_min']:g}"
    if check == "tail_fraction":
        return f"|r-1| <= {par['rel_tol']:.0%} or |z| <= {par['n_sigma']:g}"
    return f"|r-1| <= {par['rel_tol']:.0%} or |z| <= {par['n_sigma']:g}"


def value_text(check: str, r: dict) -> str:
    if check == "chi2":
        return f"chi2/ndf = {r['chi2']:.1f}/{r['ndf']}, p = {r['p_value']:.2g}"
    if check == "tail_fraction":
        w = r["worst"]
        if w is None:
            return "no entries above any threshold"
        return f"worst x={w['x_edge']:.3g}: r = {w['ratio']:.3f}, z = {w['z']:+.1f}"
    if not (np.isfinite(r["ref"]) and np.isfinite(r["mc"])):
        side = "Geant4" if not np.isfinite(r["ref"]) else "fastmc"
        return f"undefined on {side} (fit failed: not Gaussian)"
    return f"r = {r['ratio']:.3f} ({r['mc']:.4g}/{r['ref']:.4g}), z = {r['z']:+.1f}"


def jsonable(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {k: jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return [jsonable(v) for v in obj.tolist()]
    if isinstance(obj, (np.floating, float)):
        v = float(obj)
        return v if math.isfinite(v) else None
    if isinstance(obj, (np.integer,)):
        return int(obj)
    if isinstance(obj, np.bool_):
        return bool(obj)
    return obj


def format_summary(report: dict[str, Any]) -> str:
    """The summary table: one line per check."""
    hdr = (f"{'suite':<11}{'configuration':<26}{'observable':<15}{'check':<14}{'value':<46}{'tolerance':<26}"
           f"{'chi2/ndf':>9}  result")
    lines = [hdr, "-" * len(hdr)]
    for r in report["rows"]:
        c = r.get("chi2_ndf")
        cs = f"{c:9.2f}" if isinstance(c, (int, float)) and c is not None and math.isfinite(c) else f"{'-':>9}"
        lines.append(f"{r['suite']:<11}{r['group']:<26}{r['observable']:<15}{r['check']:<14}{r['value']:<46}"
                     f"{r['tolerance']:<26}{cs}  {_status(r)}")
    n_fail = sum(r["passed"] is False for r in report["rows"])
    n_nc = sum(r["passed"] is None for r in report["rows"])
    lines.append("-" * len(hdr))
    lines.append(f"{len(report['rows']) - n_fail - n_nc} passed, {n_fail} failed, {n_nc} not comparable (N/C) "
                 f"({report['wall_s']:.1f} s, stat-scale {report['stat_scale']:g}, seed {report['seed']})")
    notes = sorted({r["note"] for r in report["rows"] if r.get("note")})
    for nt in notes:
        lines.append(f"note: {nt}")
    for r in report["rows"]:
        if r.get("known_difference") and not r["passed"]:
            kd = r["known_difference"]
            lines.append(f"known difference [{r['group']} {r['observable']}]: {kd['note']} (source: {kd['source']})")
    if any(r["passed"] is None for r in report["rows"]):
        lines.append("N/C = not comparable: " + next(r["reason"] for r in report["rows"] if r["passed"] is None))
    return "\n".join(lines)


def _status(row: dict) -> str:
    if row["passed"] is None:
        return "N/C"
    if row["passed"]:
        return "PASS"
    return "FAIL (known difference)" if row.get("known_difference") else "FAIL"


def format_timing(report: dict[str, Any]) -> str:
    lines = [(f"{'suite':<11}{'configuration':<26}{'N fastmc':>10}{'wall s':>9}{'us/event':>10}{'compile s':>10}"
              f"{'G4 us/event':>13}{'speed-up':>10}")]
    for t in report["timing"]:
        g4 = t.get("g4_us_per_event") or float("nan")
        lines.append(f"{t['suite']:<11}{t['group']:<26}{t['n']:>10}{t['wall_s']:>9.2f}{t['us_per_muon']:>10.2f}"
                     f"{t['compile_s']:>10.1f}{g4:>13.1f}{g4 / t['us_per_muon']:>10.0f}")
    return "\n".join(lines)


def write_report(report: dict[str, Any], out_dir: Path, plots: bool = True) -> dict[str, Any]:
    """Write ``summary.json`` and (with matplotlib) one PNG per observable; returns what was written."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written: dict[str, Any] = {"json": str(out_dir / "summary.json"), "png": [], "note": None}
    if plots:
        try:
            from fastmc import plots as fplots

            fplots.require_matplotlib()
        except ImportError:
            written["note"] = "matplotlib is not installed (pip install 'fastmc[plot]'): wrote summary.json only"
            plots = False
    for ob in report["observables"]:
        ob["png"] = None
        if plots:
            name = f"{ob['suite']}_{ob['group']}_{ob['observable']}.png"
            fplots.plot_observable(ob, out_dir / name)
            ob["png"] = name
            written["png"].append(name)
    summary = {
        "fastmc_version": _version(),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "suites": report["suites"], "tables_dir": report["tables_dir"], "tolerances": report["tolerances"],
        "stat_scale": report["stat_scale"], "seed": report["seed"], "wall_s": report["wall_s"],
        "passed": report["passed"],
        "n_checks": len(report["rows"]), "n_failed": sum(r["passed"] is False for r in report["rows"]),
        "n_not_comparable": sum(r["passed"] is None for r in report["rows"]),
        "checks": jsonable(report["rows"]),
        "observables": [jsonable({"suite": o["suite"], "group": o["group"], "observable": o["observable"],
                                   "unit": o["ref"].unit, "n_ref": o["ref"].n_events, "n_mc": o["mc"].n_events,
                                   "chi2": o["compare"]["chi2"], "ndf": o["compare"]["ndf"],
                                   "p_value": o["compare"]["p_value"], "max_abs_pull": o["compare"]["max_abs_pull"],
                                   "ks": o["ks"], "n_stopped_ref": o["n_stopped_ref"],
                                   "n_stopped_mc": o["n_stopped_mc"], "note": o["note"], "png": o.get("png")})
                        for o in report["observables"]],
        "timing": jsonable(report["timing"]),
    }
    tmp = out_dir / ".summary.json.tmp"
    tmp.write_text(json.dumps(summary, indent=1))
    os.replace(tmp, out_dir / "summary.json")
    return written


def _version() -> str:
    from fastmc import __version__

    return __version__
