"""Validation plots (optional extra ``plot``: matplotlib, imported lazily, Agg backend).

One PNG per observable: top, fastmc vs Geant4 per generated event (log y; log x for log-binned
observables); middle, ratio fastmc/Geant4 with the combined statistical error; bottom, per-bin
pulls with the pooled Poisson variance.  Under/overflow are not drawn but are in the numbers.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

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
