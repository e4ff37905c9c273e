"""Comparison statistics of ``fastmc validate``: pure numpy on :class:`Hist` objects.

Histograms with under/overflow (:class:`Hist`, :func:`hist_from_samples`), the χ² survival function,
per-bin pulls with the pooled Poisson variance (:func:`compare_bins`), binned quantiles, medians and
Gaussian core widths with Poisson-bootstrap errors, tail fractions, the PASS/FAIL checks
(:func:`tail_check`, :func:`median_check`, :func:`core_width_check`, :func:`chi2_check`) and a binned
Kolmogorov distance (:func:`binned_ks`).  Imports nothing else of fastmc, so it is testable on
synthetic histograms.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from typing import Any

import numpy as np

N_BOOTSTRAP = 40
INFO_MIN_COUNT = 10


@dataclasses.dataclass
class Hist:
    """A 1-D histogram with under/overflow and the number of generated events it is normalised to."""

    edges: np.ndarray
    counts: np.ndarray
    underflow: float
    overflow: float
    n_events: float
    unit: str = ""
    scale: float | None = None  # θ0 (angles) or L θ0/√3 (displacement), same unit as edges

    def full(self) -> np.ndarray:
        """Counts with the underflow prepended and the overflow appended."""
        return np.concatenate([[self.underflow], np.asarray(self.counts, float), [self.overflow]])

    def with_full(self, full: np.ndarray) -> Hist:
        return dataclasses.replace(self, counts=full[1:-1], underflow=float(full[0]), overflow=float(full[-1]))


def hist_from_samples(values: np.ndarray, edges: np.ndarray, n_events: float, **kw: Any) -> Hist:
    """Histogram ``values`` with ``edges`` (bin i: edges[i] ≤ v < edges[i+1]; v ≥ edges[-1] → overflow)."""
    values = np.asarray(values, float)
    idx = np.searchsorted(edges, values, side="right") - 1
    nb = len(edges) - 1
    counts = np.bincount(np.clip(idx, 0, nb - 1)[(idx >= 0) & (idx < nb)], minlength=nb)
    return Hist(np.asarray(edges, float), counts.astype(np.int64), float(np.sum(idx < 0)), float(np.sum(idx >= nb)),
                float(n_events), **kw)


def _gammaincc(a: float, x: float) -> float:
    """Regularised upper incomplete gamma Q(a, x) (series / Lentz continued fraction)."""
    if x <= 0.0:
        return 1.0
    lg = math.lgamma(a)
    if x < a + 1.0:
        term = total = 1.0 / a
        ap = a
        for _ in range(10000):
            ap += 1.0
            term *= x / ap
            total += term
            if abs(term) < abs(total) * 1e-15:
                break
        return max(0.0, 1.0 - total * math.exp(-x + a * math.log(x) - lg))
    tiny = 1e-300
    b = x + 1.0 - a
    c = 1.0 / tiny
    d = 1.0 / b
    h = d
    for i in range(1, 10000):
        an = -i * (i - a)
        b += 2.0
        d = an * d + b
        d = tiny if abs(d) < tiny else d
        c = b + an / c
        c = tiny if abs(c) < tiny else c
        d = 1.0 / d
        delta = d * c
        h *= delta
        if abs(delta - 1.0) < 1e-15:
            break
    return h * math.exp(-x + a * math.log(x) - lg)


def chi2_sf(chi2: float, ndf: int) -> float:
    """P(χ²(ndf) > chi2)."""
    if ndf <= 0:
        return float("nan")
    return _gammaincc(0.5 * ndf, 0.5 * chi2)


def compare_bins(ref: Hist, mc: Hist, min_count: float = INFO_MIN_COUNT) -> dict[str, Any]:
    """Per-bin comparison (under/overflow included as the first/last entries).

    Returns probabilities per generated event, their ratio fastmc/G4 with its error, pulls with the
    pooled Poisson variance, and χ², ndf, p-value over the bins with c_G4 + c_fastmc ≥ min_count.
    """
    cr, cm = ref.full(), mc.full()
    nr, nm = float(ref.n_events), float(mc.n_events)
    pr, pm = cr / nr, cm / nm
    pooled = (cr + cm) / (nr + nm)
    var = pooled * (1.0 / nr + 1.0 / nm)
    with np.errstate(divide="ignore", invalid="ignore"):
        pull = np.where(var > 0, (pm - pr) / np.sqrt(var), 0.0)
        ratio = np.where(pr > 0, pm / pr, np.nan)
        ratio_err = np.where((cr > 0) & (cm > 0), ratio * np.sqrt(1.0 / np.maximum(cr, 1) + 1.0 / np.maximum(cm, 1)),
                             np.nan)
    used = (cr + cm) >= min_count
    chi2 = float(np.sum(pull[used] ** 2))
    ndf = int(np.sum(used))
    return {"p_ref": pr, "p_mc": pm, "ratio": ratio, "ratio_err": ratio_err, "pull": pull, "used": used,
            "chi2": chi2, "ndf": ndf, "chi2_ndf": chi2 / ndf if ndf else float("nan"),
            "p_value": chi2_sf(chi2, ndf), "max_abs_pull": float(np.max(np.abs(pull[used]))) if ndf else 0.0}


def _cdf_quantile(h: Hist, q: float) -> float:
    """q-quantile of the binned distribution (entries in range only; linear inside a bin)."""
    c = np.asarray(h.counts, float)
    tot = c.sum()
    if tot <= 0:
        return float("nan")
    cum = np.concatenate([[0.0], np.cumsum(c)]) / tot
    i = int(np.clip(np.searchsorted(cum, q, side="left") - 1, 0, len(c) - 1))
    lo, hi = cum[i], cum[i + 1]
    f = 0.0 if hi <= lo else (q - lo) / (hi - lo)
    return float(h.edges[i] + f * (h.edges[i + 1] - h.edges[i]))


def binned_median(h: Hist) -> float:
    """Median of all entries (under/overflow count on their side; interpolated in the bin)."""
    c = h.full()
    tot = c.sum()
    if tot <= 0:
        return float("nan")
    cum = np.cumsum(c) / tot
    j = int(np.searchsorted(cum, 0.5, side="left"))  # index in full()
    if j == 0:
        return float(h.edges[0])
    if j == len(c) - 1:
        return float(h.edges[-1])
    i = j - 1
    lo = cum[j - 1]
    f = (0.5 - lo) / max(cum[j] - lo, 1e-300)
    return float(h.edges[i] + f * (h.edges[i + 1] - h.edges[i]))


def gaussian_core_width(h: Hist, window: float = 2.0, iterations: int = 5) -> float:
    """σ of a Gaussian fitted to the core |x − μ| < window·σ (iterated from the IQR).

    Weighted least squares of ln(counts/width) = a + b x + c x² with weights = counts (the
    variance of ln c is 1/c): σ = √(−1/(2c)).
    """
    c = np.asarray(h.counts, float)
    x = 0.5 * (h.edges[1:] + h.edges[:-1])
    w = np.diff(h.edges)
    mu = binned_median(h)
    sigma = (_cdf_quantile(h, 0.75) - _cdf_quantile(h, 0.25)) / 1.349
    if not np.isfinite(sigma) or sigma <= 0:
        return float("nan")
    for _ in range(iterations):
        sel = (np.abs(x - mu) < window * sigma) & (c > 0)
        if sel.sum() < 4:
            return float("nan")
        xs = (x[sel] - mu) / sigma
        y = np.log(c[sel] / w[sel])
        a = np.vstack([np.ones_like(xs), xs, xs * xs]).T
        sw = np.sqrt(c[sel])
        coef, *_ = np.linalg.lstsq(a * sw[:, None], y * sw, rcond=None)
        if coef[2] >= 0:
            return float("nan")
        s_new = sigma * math.sqrt(-1.0 / (2.0 * coef[2]))
        mu = mu + sigma * (-coef[1] / (2.0 * coef[2]))
        sigma = s_new
    return float(sigma)


def _bootstrap_err(fn: Callable[[Hist], float], h: Hist, rng: np.random.Generator, n: int = N_BOOTSTRAP) -> float:
    full = h.full()
    vals = [fn(h.with_full(rng.poisson(full).astype(float))) for _ in range(n)]
    vals = [v for v in vals if np.isfinite(v)]
    return float(np.std(vals, ddof=1)) if len(vals) > 2 else float("nan")


def _snap(edges: np.ndarray, x: float) -> int:
    return int(np.argmin(np.abs(edges - x)))


def tail_fraction(h: Hist, x: float, two_sided: bool = False) -> tuple[float, float, float]:
    """(count with X > x [|X| > x], edge used, edge used on the negative side or nan)."""
    e = h.edges
    full = h.full()  # index 0 = underflow, i+1 = bin i, -1 = overflow
    i = _snap(e, x)
    k = float(np.sum(full[i + 1:]))
    xneg = float("nan")
    if two_sided:
        j = _snap(e, -x)
        k += float(np.sum(full[: j + 1]))
        xneg = float(e[j])
    return k, float(e[i]), xneg


def _score(rel_dev: float, z: float, rel_tol: float, n_sigma: float) -> float:
    """≤ 1 passes: the smaller of |ratio−1|/rel_tol and |z|/n_sigma."""
    a = abs(rel_dev) / rel_tol if np.isfinite(rel_dev) else float("inf")
    b = abs(z) / n_sigma if np.isfinite(z) else float("inf")
    return min(a, b)


def tail_check(ref: Hist, mc: Hist, thresholds: list[float], rel_tol: float, n_sigma: float,
               two_sided: bool = False, x_max: float | None = None) -> dict[str, Any]:
    """P(X > x) at every x: ratio and two-proportion z (pooled).  Passes if every x passes."""
    points = []
    for x in thresholds:
        if x_max is not None and x >= x_max:
            continue
        kr, xe, xn = tail_fraction(ref, x, two_sided)
        km, _, _ = tail_fraction(mc, x, two_sided)
        nr, nm = ref.n_events, mc.n_events
        if kr + km == 0:
            points.append({"x": x, "x_edge": xe, "k_ref": 0, "k_mc": 0, "skipped": True})
            continue
        pr, pm = kr / nr, km / nm
        pp = min((kr + km) / (nr + nm), 1.0)
        sig = math.sqrt(pp * (1 - pp) * (1 / nr + 1 / nm))
        z = (pm - pr) / sig if sig > 0 else 0.0
        ratio = pm / pr if pr > 0 else float("inf")
        s = _score(ratio - 1.0, z, rel_tol, n_sigma)
        points.append({"x": x, "x_edge": xe, "x_edge_neg": xn, "k_ref": kr, "k_mc": km, "p_ref": pr, "p_mc": pm,
                       "ratio": ratio, "z": z, "score": s, "passed": bool(s <= 1.0), "skipped": False})
    active = [p for p in points if not p["skipped"]]
    worst = max(active, key=lambda p: p["score"]) if active else None
    return {"points": points, "worst": worst, "passed": all(p["passed"] for p in active)}


def _ratio_check(fn: Callable[[Hist], float], ref: Hist, mc: Hist, rel_tol: float, n_sigma: float,
                 seed: int = 0) -> dict[str, Any]:
    rng = np.random.default_rng(seed)
    vr, vm = fn(ref), fn(mc)
    er, em = _bootstrap_err(fn, ref, rng), _bootstrap_err(fn, mc, rng)
    ratio = vm / vr if vr else float("nan")
    sig = math.hypot(er, em)
    z = (vm - vr) / sig if sig > 0 and np.isfinite(sig) else float("nan")
    s = _score(ratio - 1.0, z, rel_tol, n_sigma)
    return {"ref": vr, "mc": vm, "ref_err": er, "mc_err": em, "ratio": ratio, "z": z, "score": s,
            "passed": bool(np.isfinite(s) and s <= 1.0)}


def median_check(ref: Hist, mc: Hist, rel_tol: float, n_sigma: float) -> dict[str, Any]:
    return _ratio_check(binned_median, ref, mc, rel_tol, n_sigma)


def core_width_check(ref: Hist, mc: Hist, rel_tol: float, n_sigma: float) -> dict[str, Any]:
    return _ratio_check(gaussian_core_width, ref, mc, rel_tol, n_sigma)


def chi2_check(ref: Hist, mc: Hist, p_min: float, min_count: float = INFO_MIN_COUNT) -> dict[str, Any]:
    cmp = compare_bins(ref, mc, min_count)
    return {"chi2": cmp["chi2"], "ndf": cmp["ndf"], "chi2_ndf": cmp["chi2_ndf"], "p_value": cmp["p_value"],
            "passed": bool(cmp["ndf"] > 0 and cmp["p_value"] > p_min)}


def binned_ks(ref: Hist, mc: Hist) -> dict[str, float]:
    """Largest distance of the binned CDFs (shape only) and the asymptotic KS p-value.

    Binning makes the p-value conservative (the distance is evaluated at bin edges only)."""
    cr, cm = ref.full(), mc.full()
    nr, nm = cr.sum(), cm.sum()
    if nr <= 0 or nm <= 0:
        return {"d": float("nan"), "p_value": float("nan")}
    d = float(np.max(np.abs(np.cumsum(cr) / nr - np.cumsum(cm) / nm)))
    ne = nr * nm / (nr + nm)
    lam = (math.sqrt(ne) + 0.12 + 0.11 / math.sqrt(ne)) * d
    p = 2.0 * sum((-1) ** (k - 1) * math.exp(-2.0 * k * k * lam * lam) for k in range(1, 101))
    return {"d": d, "p_value": float(min(max(p, 0.0), 1.0))}
