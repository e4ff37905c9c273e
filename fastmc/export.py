"""Bridges to the collaboration's tools: a pyhf (HistFactory JSON) workspace and a ROOT file.

``fastmc export PROJ.h5`` (:mod:`fastmc.cli.export`) calls these; they hold no command-line code.

**pyhf workspace** (:func:`build_workspace`) of the projection's signal region (the card's first
selection region): one channel ``signal_region`` with one bin.

* One sample per background channel whose estimate enters the projection's total (every channel
  but ``analog`` when the card runs biased channels — analog estimates the same background and
  would count it twice; analog alone when it is the only channel), with ``data`` = expected events
  at the exposure and a per-sample ``shapesys`` modifier ``mcstat_<channel>`` holding its MC
  statistical error σ.  ``shapesys`` (Poisson-constrained γ with τ = (b/σ)², one per sample) rather
  than ``staterror`` (one Gaussian γ per bin shared by all samples, HistFactory's
  Barlow–Beeston-lite): the channels are independent weighted MC samples with very different
  relative errors, and τ = (b/σ)² is the effective number of MC events of each — the same model as
  the Gamma prior of mean b and standard deviation σ that :mod:`fastmc.limits` integrates over.
* A channel that selected no MC event has no estimate, only a 90 % CL upper limit
  (:meth:`fastmc.tally.Tally.estimate`).  A sample of 0 events (or of its upper limit) would state
  what the MC does not know, so such channels are left out of the workspace and listed with their
  upper limits in the metadata (``excluded_channels``): the limit the workspace gives holds for a
  background equal to the estimated channels only.
* The signal sample ``signal`` has a ``normfactor`` ``mu``.  With a ``fastmc sensitivity`` file and
  a mass: mu = (g / g_ref)² with g_ref the file's expected 90 % CL coupling limit at that mass
  (the signal yield is ∝ g², :mod:`fastmc.sensitivity`), so the sample holds the signal events at
  g_ref (yield per MOT × MOT) and mu's expected limit is ≈ 1 when the file's background is the
  workspace's.  Without a file the sample is 1 event at mu = 1: mu's limit is the limit on the
  number of signal events.
* The observation is 0 events (the 2022 result, PRL 132 (2024) 211803) or ``observed``.

The HistFactory JSON schema (pyhf ``workspace.json``) admits no extra keys, so the metadata (what
mu means, the excluded channels, the source files) is returned separately and written by the
command beside the workspace (``OUT.meta.json``).

**ROOT file** (:func:`write_root`, uproot): the stored events (``--save-events``) as one TTree
``events`` with a ``channel`` branch (the channel names are the TObjString ``channels``), the
region bit mask, the MC weight ``weight`` = exp(log w) (per generated primary: Σ weight over a
channel's events of a region is that region's Σw), the expected-events weight ``weight_mot`` =
MOT · w / N_gen(channel) and every stored variable; and per region and channel the weighted TH1D
histograms (weights ``weight_mot`` of the region) of p_out and the calorimeter energies, with
under- and overflow and Σw² per bin, under ``hist/<region>/<channel>/<variable>``.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np

SIGNAL_REGION = "signal_region"
MAX_EXACT_COUNT = 1000  # fastmc's exact limits go into the metadata up to this many events
OBSERVED_2022 = 0  # PRL 132 (2024) 211803: no event in the signal region at 1.98e10 MOT

# the histograms of the ROOT file: variable → (bins, low, high) in the variable's own unit
HISTOGRAMS = {
    "p_out_GeV": (100, 0.0, 200.0),
    "e_ecal_GeV": (100, 0.0, 200.0),
    "e_vhcal_GeV": (100, 0.0, 200.0),
    "e_hcal_GeV": (100, 0.0, 200.0),
    "e_veto_MeV": (100, 0.0, 100.0),
    "truth_p_out_GeV": (100, 0.0, 200.0),
}


class ExportError(ValueError):
    """A file or choice that cannot be exported (one line, the command exits 2)."""


# ----------------------------------------------------------------------------------------- reading


def load_projection(path: str | Path, with_events: bool = False) -> dict[str, Any]:
    """A ``fastmc project`` (or ``merge``) output, read by :func:`fastmc.io.read_result`, which
    refuses other files (a sensitivity table, a foreign or non-HDF5 file) in one line; an unfinished
    checkpoint is refused here."""
    from fastmc.io import read_result

    try:
        data = read_result(path)
    except (FileNotFoundError, ValueError) as err:
        raise ExportError(str(err)) from None
    if not data["complete"]:
        raise ExportError(f"{path}: an unfinished checkpoint (complete=False): "
                          "finish it with 'fastmc project --resume'")
    if not with_events:
        data["events"] = None
    return data


def load_sensitivity(path: str | Path) -> dict[str, Any]:
    """A ``fastmc sensitivity`` output (:func:`fastmc.sensitivity.read_sensitivity`); any other file
    is refused in one line (:func:`fastmc.io.open_kind`)."""
    from fastmc.io import open_kind

    try:
        kind = open_kind(path)
    except (FileNotFoundError, ValueError) as err:
        raise ExportError(f"--signal = {str(path)!r}: {err}") from None
    if kind != "sensitivity":
        raise ExportError(f"--signal = {str(path)!r}: not a 'fastmc sensitivity' output (a {kind} output)")
    from fastmc.sensitivity import read_sensitivity

    return read_sensitivity(path)


# ------------------------------------------------------------------------------------------- pyhf


def background_samples(proj: dict[str, Any], mot: float) -> tuple[dict[str, dict], dict[str, dict]]:
    """(channels with an estimate: {expected, stat_err, n_selected}, channels without one:
    {n_selected: 0, upper_limit_90}) at ``mot``, for the channels the projection's total counts."""
    scale = mot / float(proj["mot"])
    chans = proj["channels"]
    used, empty = {}, {}
    for name, est in chans.items():
        if name == "analog" and len(chans) > 1:
            continue
        if est["n_selected"] > 0 and est["expected"] > 0:
            used[name] = {"expected": scale * est["expected"], "stat_err": scale * est["stat_err"],
                          "n_selected": int(est["n_selected"])}
        else:
            ul = est.get("upper_limit_90")
            empty[name] = {"n_selected": int(est["n_selected"]), "upper_limit_90": None if ul is None else scale * ul}
    return used, empty


def signal_sample(sens: dict[str, Any] | None, mass: float | None, mot: float) -> tuple[float, dict[str, Any]]:
    """(signal events at mu = 1, what mu means) from a sensitivity summary, or 1 event without one."""
    if sens is None:
        if mass is not None:
            raise ExportError("--mass needs --signal SENS.h5")
        return 1.0, {"mu": "signal events: the signal sample is 1 event at mu = 1 (no --signal file given), "
                           "so mu's limit is the limit on the number of signal events"}
    masses = [r["mass_MeV"] for r in sens["rows"]]
    if mass is None:
        row = sens["rows"][0]
    else:
        hits = [r for r in sens["rows"] if math.isclose(r["mass_MeV"], mass, rel_tol=1e-9, abs_tol=1e-12)]
        if not hits:
            raise ExportError(f"--mass = {mass:g}: no such mass in the sensitivity file (masses: "
                              f"{', '.join(f'{m:g}' for m in masses)} MeV)")
        row = hits[0]
    g_ref, y1 = row["g_up"], row["yield_per_mot_g1"]
    if not (math.isfinite(g_ref) and g_ref > 0 and y1 > 0):
        raise ExportError(f"--mass = {row['mass_MeV']:g}: the sensitivity file has no selected signal at this mass")
    s1 = mot * y1 * g_ref**2
    return s1, {
        "mu": f"(g / g_ref)^2 for the coupling g of the {sens['model']} boson of mass {row['mass_MeV']:g} MeV "
              "(signal yield proportional to g^2); g_ref = the sensitivity file's expected 90% CL limit",
        "model": sens["model"], "mass_MeV": row["mass_MeV"], "g_ref": g_ref,
        "yield_per_mot_g1": y1, "yield_per_mot_g1_err": row["yield_per_mot_g1_err"],
        "signal_events_at_mu1": s1, "sensitivity_mot": sens["mot"],
    }


def build_workspace(proj: dict[str, Any], *, mot: float | None = None, sens: dict[str, Any] | None = None,
                    mass: float | None = None, observed: int = OBSERVED_2022) -> tuple[dict, dict]:
    """(HistFactory JSON workspace, metadata) of the projection's signal region (module docstring)."""
    mot = float(proj["mot"] if mot is None else mot)
    if not (math.isfinite(mot) and mot > 0):
        raise ExportError(f"--mot = {mot!r}: must be a finite number > 0")
    if observed < 0:
        raise ExportError(f"--observed = {observed}: must be >= 0")
    used, empty = background_samples(proj, mot)
    s1, mu_meta = signal_sample(sens, mass, mot)
    samples = [{"name": "signal", "data": [s1], "modifiers": [{"name": "mu", "type": "normfactor", "data": None}]}]
    for name, b in used.items():
        mods = []
        if b["stat_err"] > 0:
            mods.append({"name": f"mcstat_{name}", "type": "shapesys", "data": [b["stat_err"]]})
        samples.append({"name": name, "data": [b["expected"]], "modifiers": mods})
    b_tot = sum(b["expected"] for b in used.values())
    s_tot = math.sqrt(sum(b["stat_err"] ** 2 for b in used.values()))
    # mu's range: well above any limit the counts allow (normfactor's default [0, 10] is too narrow
    # for a 1-event signal)
    mu_hi = 10.0 * (observed + 3.0 + b_tot + 5.0 * s_tot) / s1
    spec = {
        "channels": [{"name": SIGNAL_REGION, "samples": samples}],
        "observations": [{"name": SIGNAL_REGION, "data": [float(observed)]}],
        "measurements": [{"name": "fastmc", "config": {
            "poi": "mu", "parameters": [{"name": "mu", "bounds": [[0.0, mu_hi]], "inits": [1.0]}]}}],
        "version": "1.0.0",
    }
    meta = {
        "region": proj["region"],
        "mot": mot,
        "projection_mot": float(proj["mot"]),
        "observed": int(observed),
        "signal": mu_meta,
        "background_channels": used,
        "excluded_channels": empty,
        "excluded_reason": "no MC event selected: only a 90% CL upper limit (events at the MOT), no estimate",
        "left_out": (["analog (estimates the same background as the biased channels)"]
                     if "analog" in proj["channels"] and len(proj["channels"]) > 1 else []),
        "stat_modifier": "shapesys per background sample (Poisson constraint, tau = (b/sigma)^2)",
        "background_total": b_tot,
        "background_stat_err": s_tot,
    }
    # fastmc's own CLs limits (exact Poisson, Gamma prior of the background; fastmc.limits) for
    # comparison: pyhf's asymptotic ones agree within ~1 event at b ≳ 10, not at b ≪ 1
    # (its sums over counts cost ∝ n²: computed up to MAX_EXACT_COUNT events, where they matter)
    meta["fastmc_limits_90cl"] = None
    if b_tot + 5.0 * s_tot <= MAX_EXACT_COUNT and observed <= MAX_EXACT_COUNT:
        from fastmc.limits import cls_upper_limit, expected_upper_limit

        exp = expected_upper_limit(b_tot, s_tot)
        s_obs = cls_upper_limit(int(observed), b_tot, s_tot)
        meta["fastmc_limits_90cl"] = {"expected_signal_events": exp["s_up"], "expected_mu": exp["s_up"] / s1,
                                      "median_background_count": exp["n_obs"], "observed_signal_events": s_obs,
                                      "observed_mu": s_obs / s1}
    return spec, meta


# ------------------------------------------------------------------------------------------- ROOT


def event_arrays(data: dict[str, Any]) -> dict[str, np.ndarray]:
    """The stored events of a projection file as flat branches (weights added)."""
    ev = data["events"]
    if ev is None:
        raise ExportError(f"{data.get('path', 'the file')}: no stored events: "
                          "rerun 'fastmc project' with --save-events")
    proj = data["projection"]
    channels = list(data["chunk_attrs"]["channels"])
    n_gen = np.array([proj["channels"][c]["n_generated"] for c in channels], np.float64)
    ch = np.asarray(ev["channel"], np.int64)
    w = np.exp(np.asarray(ev["log_w"], np.float64))
    out = {
        "chunk": np.asarray(ev["chunk"], np.int64),
        "index": np.asarray(ev["index"], np.int64),
        "channel": ch.astype(np.int32),
        "region_mask": np.asarray(ev["region_mask"], np.int64),
        "log_w": np.asarray(ev["log_w"], np.float64),
        "weight": w,
        "weight_mot": float(proj["mot"]) * w / n_gen[ch] if len(ch) else w,
    }
    for k, v in ev["variables"].items():
        a = np.asarray(v)
        out[k] = a.astype(np.float64) if a.dtype.kind == "f" else a.astype(np.int64)
    return out


def weighted_hist(x: np.ndarray, w: np.ndarray, bins: int, lo: float, hi: float) -> tuple[np.ndarray, np.ndarray]:
    """(Σw, Σw²) per bin with underflow (index 0) and overflow (index bins + 1), ROOT's layout; NaN
    values go to the overflow bin (TH1::Fill puts NaN there too)."""
    edges = np.linspace(lo, hi, bins + 1)
    idx = np.searchsorted(edges, x, side="right")  # 0: x < lo; bins + 1: x >= hi
    idx = np.where(np.isnan(x), bins + 1, np.minimum(idx, bins + 1))
    w = np.asarray(w, np.float64)
    sw = np.bincount(idx, weights=w, minlength=bins + 2).astype(np.float64)  # empty input: int64 otherwise
    sw2 = np.bincount(idx, weights=w * w, minlength=bins + 2).astype(np.float64)
    return sw, sw2


def _th1d(name: str, title: str, x: np.ndarray, w: np.ndarray, bins: int, lo: float, hi: float):
    from uproot.writing.identify import to_TAxis, to_TH1x

    sw, sw2 = weighted_hist(x, w, bins, lo, hi)
    inr = (x >= lo) & (x < hi)
    xs, ws = x[inr], w[inr]
    return to_TH1x(fName=name, fTitle=title, data=sw, fEntries=float(len(x)), fTsumw=float(ws.sum()),
                   fTsumw2=float((ws * ws).sum()), fTsumwx=float((ws * xs).sum()),
                   fTsumwx2=float((ws * xs * xs).sum()), fSumw2=sw2,
                   fXaxis=to_TAxis(fName="xaxis", fTitle=name, fNbins=bins, fXmin=lo, fXmax=hi))


def write_root(path: str | Path, data: dict[str, Any]) -> dict[str, Any]:
    """Write the events and histograms (module docstring) to ``path`` atomically; returns a summary."""
    import uproot

    from fastmc.io import atomic_path

    arrays = event_arrays(data)
    channels = list(data["chunk_attrs"]["channels"])
    regions = list(dict.fromkeys(s[0] for s in data["chunk_attrs"]["slots"]))  # the card's order
    proj = data["projection"]
    n_gen = np.array([proj["channels"][c]["n_generated"] for c in channels], np.float64)
    per_gen = float(proj["mot"]) / n_gen[arrays["channel"]]  # events at MOT per unit MC weight
    hists = []
    with atomic_path(path) as tmp:
        with uproot.recreate(tmp) as f:
            f["events"] = arrays
            f["channels"] = json.dumps(channels)
            f["regions"] = json.dumps(regions)
            from fastmc.chain import TRUTH_PROCESS_NAMES

            f["truth_hardest_proc_names"] = json.dumps({str(k): v for k, v in TRUTH_PROCESS_NAMES.items()})
            for r, region in enumerate(regions):
                in_r = (arrays["region_mask"] >> r) & 1 == 1
                lw_key = f"log_w_region_{region}"
                w_r = (np.exp(arrays[lw_key]) if lw_key in arrays else arrays["weight"]) * per_gen
                for c, chname in enumerate(channels):
                    sel = in_r & (arrays["channel"] == c)
                    for var, (bins, lo, hi) in HISTOGRAMS.items():
                        if var not in arrays:
                            continue
                        name = f"hist/{region}/{chname}/{var}"
                        f[name] = _th1d(var, f"{var} ({region}, {chname}; events at MOT {proj['mot']:g})",
                                        arrays[var][sel], w_r[sel], bins, lo, hi)
                        hists.append(name)
    return {"events": int(len(arrays["weight"])), "branches": sorted(arrays), "histograms": hists}
