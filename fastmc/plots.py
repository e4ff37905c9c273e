"""Plots (optional extra ``plot``: matplotlib, imported lazily, Agg backend): validation, sensitivity, projections.

One PNG per observable: top, fastmc vs Geant4 per generated event (log y; log x for log-binned
observables); middle, ratio fastmc/Geant4 with the combined statistical error; bottom, per-bin
pulls with the pooled Poisson variance.  Under/overflow are not drawn but are in the numbers.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from fastmc import units as u
from fastmc.limits import g2_band

_LABELS = {
    "eloss": r"$\Delta E = E_\mathrm{kin,in} - E_\mathrm{kin,out}$",
    "theta_x": r"$\theta_x$",
    "theta_y": r"$\theta_y$",
    "theta_space": r"space angle $\theta$",
    "disp_x": r"lateral displacement $x$",
    "p_mu": r"$p_{\mu^+}$",
    "theta_mu": r"$\theta_{\mu^+}$ (to parent)",
    "p_pi": r"$p_{\pi^+}$",
    "theta_pi": r"$\theta_{\pi^+}$ (to parent)",
}
_UNITS = {"GeV": "GeV", "mrad": "mrad", "mm": "mm"}


def require_matplotlib():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def _is_log_binned(edges: np.ndarray) -> bool:
    if edges[0] <= 0:
        return False
    r = edges[1:] / edges[:-1]
    return bool(np.allclose(r, r[0], rtol=1e-3)) and r[0] > 1.01


def plot_observable(ob: dict[str, Any], path: Path) -> None:
    plt = require_matplotlib()
    ref, mc, cmp = ob["ref"], ob["mc"], ob["compare"]
    e = ref.edges
    logx = _is_log_binned(e)
    unit = "GeV/c" if ob["observable"].startswith("p_") else ref.unit
    if logx:
        # equal log-width bins: the fraction per bin is proportional to dN/dln x
        yr, ym = ref.counts / ref.n_events, mc.counts / mc.n_events
        er, em = np.sqrt(ref.counts) / ref.n_events, np.sqrt(mc.counts) / mc.n_events
        ylabel = f"fraction per bin ({1 / np.log10(e[1] / e[0]):.0f} bins/decade)"
    else:
        w = np.diff(e)
        yr, ym = ref.counts / ref.n_events / w, mc.counts / mc.n_events / w
        er, em = np.sqrt(ref.counts) / ref.n_events / w, np.sqrt(mc.counts) / mc.n_events / w
        ylabel = f"(1/N) dN/dx  [1/{unit}]"
    x = np.sqrt(e[1:] * e[:-1]) if logx else 0.5 * (e[1:] + e[:-1])

    fig, (a0, a1, a2) = plt.subplots(3, 1, figsize=(9, 8.2), sharex=True,
                                     gridspec_kw={"height_ratios": [3, 1.2, 1.2], "hspace": 0.06})
    chi = f"χ²/ndf = {cmp['chi2']:.0f}/{cmp['ndf']}" if cmp["ndf"] else "χ²: no bins"
    a0.stairs(yr, e, color="black", lw=1.4, label=f"Geant4 (N = {ref.n_events:,.0f})")
    a0.errorbar(x, yr, er, fmt="none", ecolor="black", lw=0.8)
    a0.stairs(ym, e, color="tab:red", lw=1.4, label=f"fastmc (N = {mc.n_events:,.0f}); {chi}")
    a0.errorbar(x, ym, em, fmt="none", ecolor="tab:red", lw=0.8)
    pos = np.concatenate([yr[yr > 0], ym[ym > 0]])
    a0.set_yscale("log")
    if pos.size:
        a0.set_ylim(pos.min() * 0.3, pos.max() * 3)
    a0.set_ylabel(ylabel)
    a0.legend(loc="upper right", fontsize=9, framealpha=0.9)
    title = f"{ob['suite']}: {ob['group']} — {ob['observable']}"
    a0.set_title(title, fontsize=11)
    lines = []
    for r in ob["rows"]:
        status = "N/C" if r["passed"] is None else ("PASS" if r["passed"] else "FAIL")
        if r["passed"] is None:
            lines.append("N/C: fastmc reports only the leading π⁺ of π⁺π⁺π⁻ (table: both)")
        else:
            lines.append(f"{status}  {r['check']}: {r['value']}  [{r['tolerance']}]")
    if ob.get("note"):
        lines.append("note: " + ob["note"])
    if ob.get("n_stopped_mc") is not None and ob["suite"] == "eloss":
        lines.append(f"stopped (not histogrammed): G4 {ob['n_stopped_ref']}, fastmc {ob['n_stopped_mc']}")
    if lines:
        import textwrap

        wrapped = [w for ln in lines for w in textwrap.wrap(ln, 105, subsequent_indent="      ")]
        fig.text(0.02, -0.01, "\n".join(wrapped), fontsize=7.5, va="top", ha="left", family="monospace")
    nz = np.nonzero((ref.counts > 0) | (mc.counts > 0))[0]
    if nz.size:
        lo, hi = e[nz[0]], e[nz[-1] + 1]
        if logx:
            a0.set_xlim(lo / 1.5, hi * 1.5)
        else:
            pad = 0.03 * (hi - lo)
            a0.set_xlim(lo - pad, hi + pad)
    if ref.scale and ob["suite"] == "deflection":
        for k in (3, 10):
            for sgn in ((1,) if e[0] >= 0 else (-1, 1)):
                a0.axvline(sgn * k * ref.scale, color="0.6", ls=":", lw=0.8)

    ratio = cmp["ratio"][1:-1]
    rerr = cmp["ratio_err"][1:-1]
    ok = np.isfinite(ratio)
    a1.axhline(1.0, color="black", lw=0.8)
    a1.errorbar(x[ok], ratio[ok], np.nan_to_num(rerr[ok]), fmt="o", ms=2.5, color="tab:red", lw=0.8)
    a1.set_ylim(0.5, 1.5)
    a1.set_ylabel("fastmc / G4")
    a1.grid(alpha=0.3)

    pull = cmp["pull"][1:-1]
    used = cmp["used"][1:-1]
    a2.axhspan(-3, 3, color="0.9")
    a2.axhline(0.0, color="black", lw=0.8)
    a2.plot(x[used], np.clip(pull[used], -10, 10), "o", ms=2.5, color="tab:blue")
    a2.set_ylim(-10.5, 10.5)
    a2.set_ylabel("pull [σ]\n(clipped ±10)")
    a2.set_xlabel(f"{_LABELS.get(ob['observable'], ob['observable'])}  [{unit}]")
    if logx:
        a2.set_xscale("log")
    a2.grid(alpha=0.3)
    fig.align_ylabels()
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)


# ----------------------------------------------------------------------------------------
# Sensitivity (``fastmc sensitivity``) and projection figures (``fastmc plot``)
# ----------------------------------------------------------------------------------------

_COUPLING = {"z_prime": r"$g_{Z'}$", "dark_photon": r"$\varepsilon = g/e$", "scalar": r"$g_S$"}
_BOSON = {"z_prime": r"$Z'$ ($L_\mu - L_\tau$)", "dark_photon": r"dark photon $A'$", "scalar": "scalar $S$"}


def plot_exclusion(summary: dict[str, Any], path: Path) -> None:
    """Expected 90 % CL upper limit on the coupling vs mass (log–log) with the (g−2)_μ band."""
    import math


    plt = require_matplotlib()
    rows = summary["rows"]
    model = summary["model"]
    m = np.array([r["mass_MeV"] for r in rows])
    scale = 1.0 / math.sqrt(4.0 * math.pi * u.fine_structure) if model == "dark_photon" else 1.0
    g = np.array([r["g_up"] for r in rows]) * scale
    ge = np.array([r["g_up_stat_err"] for r in rows]) * scale
    fig, ax = plt.subplots(figsize=(7.5, 5.5))

    mm = np.geomspace(m.min(), m.max(), 200) if len(m) > 1 else m
    band = {k: v * scale for k, v in g2_band(mm, model).items()}
    ax.fill_between(mm, band["low"], band["high"], color="tab:green", alpha=0.3, lw=0,
                    label=r"$(g-2)_\mu$ favoured, $\pm 2\sigma$ ($\Delta a_\mu = 251(59)\times 10^{-11}$)")
    ax.plot(mm, band["central"], color="tab:green", lw=1)
    ax.fill_between(m, g - ge, g + ge, color="tab:blue", alpha=0.25, lw=0)
    ax.plot(m, g, "o-", color="tab:blue", ms=4,
            label=f"fastmc expected 90% CL limit, {summary['mot']:.3g} MOT (band: MC stat.)")
    top = 5.0 * max(band["high"].max(), g.max())
    ax.fill_between(m, g, np.full_like(g, top), color="tab:blue", alpha=0.08, lw=0)
    ax.set_ylim(0.5 * min(band["low"].min(), g.min()), top)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel(r"boson mass $m_X$ [MeV]")
    ax.set_ylabel(_COUPLING.get(model, "g"))
    b = summary["background"]
    if b.get("n_selected") == 0:
        btxt = "background: no MC event selected"
    else:
        btxt = f"background {b['expected']:.2g} ± {b['stat_err']:.2g} events"
    ax.set_title(f"{_BOSON.get(model, model)} → invisible: NA64μ-like reach\n"
                 f"{btxt}; signal limit {summary['limit']['s_up']:.2f} events (CLs)", fontsize=10)
    ax.grid(alpha=0.3, which="both")
    ax.legend(loc="upper left", fontsize=8.5, framealpha=0.9)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)


def _signal_box(regions: list, region_name: str) -> tuple[float | None, float | None, list[str]]:
    """p_out maximum and the sum of the calorimeter-energy maxima [GeV] of a region's cuts."""
    for name, cuts in regions:
        if name != region_name:
            continue
        p_max, e_max, groups = None, 0.0, []
        for c in cuts:
            if c["var"] == "p_out_GeV" and c["max"] is not None:
                p_max = c["max"]
            elif c["var"].startswith("e_") and c["var"].endswith("_GeV") and c["max"] is not None:
                e_max += c["max"]
                groups.append(c["var"])
        return p_max, (e_max if groups else None), groups
    return None, None, []


def _save(plt, fig, path: Path, written: list[Path]) -> None:
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    written.append(path)


def plot_projection(data: dict[str, Any], out_dir: Path, stem: str) -> list[Path]:
    """The standard figures of a ``fastmc project`` output: cut flows (weighted, per channel) and,
    when events were stored (``--save-events``), p_out vs calorimeter energy with the signal box
    and the weighted p_out distribution per channel.  Returns the PNG paths written."""
    plt = require_matplotlib()
    proj = data["projection"]
    written = []
    # --- cut flow
    fig, ax = plt.subplots(figsize=(9, 5.5))
    region = proj["region"]
    for ch, regions in proj["cutflow"].items():
        steps = regions.get(region, [])
        y = [s["expected"] if s["n_selected"] else np.nan for s in steps]
        ax.plot(range(len(steps)), y, "o-", ms=4, label=ch)
        labels = [s["cut"] for s in steps]
    ax.set_yscale("log")
    ax.set_xticks(range(len(labels)))
    ax.set_xticklabels(labels, rotation=35, ha="right", fontsize=8)
    ax.set_ylabel(f"expected events at {proj['mot']:.3g} MOT")
    ax.set_title(f"cut flow, region '{region}' (weighted; points absent where no MC event is left)", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    p = out_dir / f"{stem}_cutflow.png"
    _save(plt, fig, p, written)
    ev = data.get("events")
    if not ev or len(ev["log_w"]) == 0:
        return written
    var = ev["variables"]
    channels = list(proj["channels"])
    groups = [k for k in var if k.startswith("e_") and k.endswith("_GeV") and k != "e_veto_GeV"]
    e_cal = sum(np.asarray(var[k], dtype=np.float64) for k in groups)
    p_out = np.asarray(var.get("p_out_GeV", np.zeros_like(e_cal)), dtype=np.float64)
    p_max, e_max, cut_groups = _signal_box(data["config"]["regions"], region)
    # --- p_out vs calorimeter energy
    fig, ax = plt.subplots(figsize=(8, 6))
    for ci, ch in enumerate(channels):
        sel = np.asarray(ev["channel"]) == ci
        if sel.any():
            ax.scatter(e_cal[sel], p_out[sel], s=4, alpha=0.5, label=f"{ch} ({sel.sum()} stored events)")
    if p_max is not None:
        xmax = e_max if e_max is not None else ax.get_xlim()[1]
        ax.add_patch(plt.Rectangle((ax.get_xlim()[0], 0), xmax - ax.get_xlim()[0], p_max, fill=False,
                                   ec="red", lw=1.5, ls="--", label="signal box (p_out and calorimeter cuts)"))
    ax.set_xlabel(f"calorimeter energy {' + '.join(groups)} [GeV]")
    ax.set_ylabel(r"$p_\mathrm{out}$ [GeV/c]")
    ax.set_title("stored events (selected in any region; unweighted)", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, markerscale=3)
    p = out_dir / f"{stem}_pout_vs_ecal.png"
    _save(plt, fig, p, written)
    # --- weighted p_out per channel
    fig, ax = plt.subplots(figsize=(8, 5.5))
    edges = np.linspace(0.0, 200.0, 51)
    for ci, ch in enumerate(channels):
        sel = np.asarray(ev["channel"]) == ci
        if not sel.any():
            continue
        n_gen = proj["channels"][ch]["n_generated"]
        w = np.exp(np.asarray(ev["log_w"], dtype=np.float64)[sel]) * proj["mot"] / n_gen
        h, _ = np.histogram(p_out[sel], edges, weights=w)
        h2, _ = np.histogram(p_out[sel], edges, weights=w * w)
        ax.stairs(h, edges, lw=1.4, label=ch)
        c = 0.5 * (edges[1:] + edges[:-1])
        ax.errorbar(c, h, np.sqrt(h2), fmt="none", lw=0.7)
    if p_max is not None:
        ax.axvline(p_max, color="red", ls="--", lw=1, label=f"p_out < {p_max:g} GeV")
    ax.set_yscale("log")
    ax.set_xlabel(r"$p_\mathrm{out}$ [GeV/c]")
    ax.set_ylabel(f"expected events / 4 GeV at {proj['mot']:.3g} MOT")
    ax.set_title("weighted p_out of the stored events, per channel", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    p = out_dir / f"{stem}_pout.png"
    _save(plt, fig, p, written)
    return written


def plot_optimisation(hist: dict[str, Any], path: Path) -> None:
    """History of ``fastmc optimize``: soft loss and FOM, the parameters within their bounds, and the
    hard-mode FOM of baseline and optimum (with statistical errors) when evaluated."""
    plt = require_matplotlib()
    steps = np.arange(len(hist["loss"]))
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.5))
    ax = axes[0]
    ax.plot(steps, hist["loss"], color="tab:blue", label="soft loss")
    ax.set_xlabel("step")
    ax.set_ylabel("loss = −log FOM + penalties", color="tab:blue")
    ax2 = ax.twinx()
    ax2.plot(steps, hist["penalty_cost"] + hist["penalty_length"], color="tab:red", lw=1, label="penalties")
    ax2.set_ylabel("penalties", color="tab:red")
    ax.set_title("soft objective (per-step keys)")
    ax = axes[1]
    x = np.asarray(hist["x"])
    frac = (x - hist["min"]) / (hist["max"] - hist["min"])
    for i, name in enumerate(hist["names"]):
        ax.plot(steps, frac[:, i], label=f"{name} [{x[0, i]:.4g} → {x[-1, i]:.4g} {hist['units'][i]}]")
    ax.set_ylim(-0.02, 1.02)
    ax.set_xlabel("step")
    ax.set_ylabel("(x − min)/(max − min)")
    ax.legend(fontsize=7, loc="best")
    ax.set_title("parameters within their bounds")
    ax = axes[2]
    ev = hist.get("evaluation") or {}
    if ev.get("baseline") and ev.get("optimised"):
        labels = ["baseline", "optimised"]
        f = [ev[k]["fom"] for k in labels]
        fe = [ev[k]["fom_err"] for k in labels]
        ax.bar(labels, f, yerr=fe, color=["tab:gray", "tab:green"], capsize=6)
        ax.set_ylabel("Punzi FOM, hard mode, fresh keys")
        for i, k in enumerate(labels):
            ax.text(i, f[i] * 0.5, f"B = {ev[k]['background']:.3g} ± {ev[k]['background_err']:.2g}\n"
                    f"S(g=1) = {ev[k]['signal_events_g1']:.3g}", ha="center", fontsize=8)
        ax.set_title("the result: hard-mode re-evaluation")
    else:
        ax.plot(steps, hist["fom"], color="tab:green")
        ax.set_xlabel("step")
        ax.set_ylabel("soft FOM")
        ax.set_title("soft figure of merit (not evaluated in hard mode)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
