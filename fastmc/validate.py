"""``fastmc validate``: fastmc against the Geant4 reference tables of calibration/ (DESIGN.md §6.2).

For every configuration (HDF5 group) of a suite's table, fastmc is run on the same configuration
(particle, kinetic energy, layers) with ``round(n_events × stat_scale)`` primaries, histogrammed
with the table's own bin edges, and compared bin by bin:

* per-bin pulls (p_fastmc − p_G4)/σ with probabilities *per generated event* (under/overflow are
  bins too) and the pooled Poisson variance σ² = p̂ (1/N_G4 + 1/N_fastmc),
  p̂ = (c_G4 + c_fastmc)/(N_G4 + N_fastmc), which stays defined for empty bins;
* χ²/ndf over the bins with enough entries, and its p-value;
* tail fractions P(X > x) (two-proportion z-test and ratio), medians and Gaussian core widths
  (errors by Poisson bootstrap of both histograms), a binned Kolmogorov distance for the decays.

Which of these decide PASS/FAIL, and with which tolerance and reason, is read from
``calibration/tolerances.toml``.  The comparison machinery (:func:`compare_bins`,
:func:`tail_check`, :func:`median_check`, :func:`core_width_check`, :func:`chi2_check`) is pure
numpy on :class:`Hist` objects, so it is testable on synthetic histograms.

fastmc homogenises sampling cells (a repeating pattern of layers becomes one mixture,
:func:`homogenise_layers`); Geant4 tracked the real layers.  The report says so for every
configuration where it happens.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import time
import tomllib
import zlib
from pathlib import Path
from typing import Any, Callable

import numpy as np

__all__ = [
    "SUITES",
    "TableError",
    "Hist",
    "Group",
    "load_tables",
    "load_tolerances",
    "default_tables_dir",
    "hist_from_samples",
    "compare_bins",
    "chi2_sf",
    "tail_check",
    "median_check",
    "core_width_check",
    "chi2_check",
    "homogenise_layers",
    "run_validation",
    "format_summary",
    "format_timing",
    "write_report",
]

SUITES = ("eloss", "deflection", "decay")
CHECK_KINDS = ("tail_fraction", "median", "core_width", "chi2")
_CHECK_KEYS = {
    "tail_fraction": {"thresholds_GeV", "thresholds_theta0", "two_sided", "rel_tol", "n_sigma", "reason"},
    "median": {"rel_tol", "n_sigma", "reason"},
    "core_width": {"rel_tol", "n_sigma", "reason"},
    "chi2": {"p_min", "min_count", "modes", "reason"},
}
N_BOOTSTRAP = 40
INFO_MIN_COUNT = 10


class TableError(ValueError):
    """An unreadable or inconsistent reference table or tolerance file (one line)."""


# ======================================================================================
# Histograms
# ======================================================================================


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

    def with_full(self, full: np.ndarray) -> "Hist":
        return dataclasses.replace(self, counts=full[1:-1], underflow=float(full[0]), overflow=float(full[-1]))


def hist_from_samples(values: np.ndarray, edges: np.ndarray, n_events: float, **kw: Any) -> Hist:
    """Histogram ``values`` with ``edges`` (bin i: edges[i] ≤ v < edges[i+1]; v ≥ edges[-1] → overflow)."""
    values = np.asarray(values, float)
    idx = np.searchsorted(edges, values, side="right") - 1
    nb = len(edges) - 1
    counts = np.bincount(np.clip(idx, 0, nb - 1)[(idx >= 0) & (idx < nb)], minlength=nb)
    return Hist(np.asarray(edges, float), counts.astype(np.int64), float(np.sum(idx < 0)), float(np.sum(idx >= nb)),
                float(n_events), **kw)


# ======================================================================================
# Statistics (numpy only)
# ======================================================================================


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


# ======================================================================================
# Tables and tolerances
# ======================================================================================


@dataclasses.dataclass
class Group:
    suite: str
    name: str
    attrs: dict[str, Any]
    hists: dict[str, Hist]

    @property
    def n_events(self) -> int:
        return int(self.attrs["n_events"])


def default_tables_dir() -> Path:
    return Path(__file__).resolve().parent.parent / "calibration"


def _attr(v: Any) -> Any:
    if isinstance(v, bytes):
        return v.decode()
    if isinstance(v, np.generic):
        return v.item()
    return v


def load_tables(tables_dir: Path, suites: tuple[str, ...]) -> dict[str, list[Group]]:
    """Read ``<tables_dir>/<suite>.h5`` for every suite; raises :class:`TableError` (one line)."""
    import h5py

    tables_dir = Path(tables_dir)
    if not tables_dir.is_dir():
        raise TableError(f"--tables = {str(tables_dir)!r}: not a folder")
    out: dict[str, list[Group]] = {}
    for suite in suites:
        path = tables_dir / f"{suite}.h5"
        if not path.is_file():
            raise TableError(f"{path}: missing reference table for suite '{suite}'")
        try:
            with h5py.File(path, "r") as fh:
                groups = []
                for gname in fh:
                    g = fh[gname]
                    attrs = {k: _attr(v) for k, v in g.attrs.items()}
                    for key in ("particle", "ekin_GeV", "momentum_GeV", "layers_json", "observable", "n_events"):
                        if key not in attrs:
                            raise TableError(f"{path}: group /{gname} lacks attribute '{key}'")
                    if int(attrs["n_events"]) <= 0:
                        raise TableError(f"{path}: group /{gname}: n_events = {attrs['n_events']} must be > 0")
                    attrs["layers"] = [(str(m), float(t)) for m, t in json.loads(attrs["layers_json"])]
                    hists = {}
                    for obs in str(attrs["observable"]).split(","):
                        obs = obs.strip()
                        if obs not in g or "edges" not in g[obs] or "counts" not in g[obs]:
                            raise TableError(f"{path}: group /{gname} lacks {obs}/edges or {obs}/counts")
                        d = g[obs]
                        edges = np.asarray(d["edges"][()], float)
                        counts = np.asarray(d["counts"][()], np.int64)
                        if edges.ndim != 1 or counts.shape != (len(edges) - 1,) or not np.all(np.diff(edges) > 0):
                            raise TableError(f"{path}: /{gname}/{obs}: edges must increase and have len(counts)+1 entries")
                        if np.any(counts < 0):
                            raise TableError(f"{path}: /{gname}/{obs}: negative counts")
                        da = {k: _attr(v) for k, v in d.attrs.items()}
                        total = int(counts.sum()) + float(da.get("underflow", 0)) + float(da.get("overflow", 0))
                        n_norm = int(attrs.get("n_mode", attrs["n_events"]))
                        if total > n_norm * (2 if obs == "p_pi" or obs == "theta_pi" else 1):
                            raise TableError(f"{path}: /{gname}/{obs}: {total:.0f} entries exceed the "
                                             f"{n_norm} generated events")
                        hists[obs] = Hist(edges, counts, float(da.get("underflow", 0)), float(da.get("overflow", 0)),
                                          float(attrs["n_events"]), str(da.get("unit", "")),
                                          float(da["scale"]) if "scale" in da else None)
                    groups.append(Group(suite, gname, attrs, hists))
        except TableError:
            raise
        except (OSError, KeyError, ValueError, TypeError) as err:
            raise TableError(f"{path}: unreadable table ({type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''})") from None
        if not groups:
            raise TableError(f"{path}: no configuration groups")
        out[suite] = groups
    return out


def load_tolerances(path: Path) -> dict[str, dict[str, dict[str, dict[str, Any]]]]:
    """suite → observable → check → parameters (each with a non-empty ``reason``)."""
    path = Path(path)
    try:
        with open(path, "rb") as fh:
            data = tomllib.load(fh)
    except FileNotFoundError:
        raise TableError(f"{path}: tolerance file not found") from None
    except tomllib.TOMLDecodeError as err:
        raise TableError(f"{path}: invalid TOML ({err})") from None
    if data.get("schema_version") != 1:
        raise TableError(f"{path}: schema_version = {data.get('schema_version')!r}: must be 1")
    out: dict[str, Any] = {}
    known = data.get("known_difference", [])
    if not isinstance(known, list):
        raise TableError(f"{path}: known_difference must be an array of tables ([[known_difference]])")
    for i, kd in enumerate(known):
        where = f"{path}: known_difference[{i}]"
        extra = set(kd) - {"suite", "group", "observable", "note", "source"}
        if extra:
            raise TableError(f"{where}: unknown key {sorted(extra)[0]!r}")
        for key in ("suite", "group", "observable", "note", "source"):
            if not str(kd.get(key, "")).strip():
                raise TableError(f"{where}: needs a non-empty '{key}' (a known difference must name its source)")
    out["known_difference"] = known
    for suite, obs_map in data.items():
        if suite in ("schema_version", "known_difference"):
            continue
        if suite not in SUITES or not isinstance(obs_map, dict):
            raise TableError(f"{path}: [{suite}]: unknown suite (known: {', '.join(SUITES)})")
        for obs, checks in obs_map.items():
            for kind, par in checks.items():
                where = f"{path}: [{suite}.{obs}.{kind}]"
                if kind not in CHECK_KINDS:
                    raise TableError(f"{where}: unknown check (known: {', '.join(CHECK_KINDS)})")
                extra = set(par) - _CHECK_KEYS[kind]
                if extra:
                    raise TableError(f"{where}: unknown key {sorted(extra)[0]!r}")
                if not str(par.get("reason", "")).strip():
                    raise TableError(f"{where}: every tolerance needs a non-empty 'reason'")
                for key in ("rel_tol", "n_sigma", "p_min"):
                    if key in par and not (isinstance(par[key], (int, float)) and par[key] > 0):
                        raise TableError(f"{where}: {key} = {par[key]!r}: must be a number > 0")
                if "modes" in par and par["modes"] not in ("all", "common"):
                    raise TableError(f"{where}: modes = {par['modes']!r}: must be \"all\" or \"common\"")
                if kind == "tail_fraction" and not (par.get("thresholds_GeV") or par.get("thresholds_theta0")):
                    raise TableError(f"{where}: needs thresholds_GeV or thresholds_theta0")
        out[suite] = obs_map
    return out


# ======================================================================================
# Running fastmc on a table's configuration
# ======================================================================================


def homogenise_layers(layers: list[tuple[str, float]]) -> tuple[list[tuple[str, float]], bool]:
    """Collapse repeated sampling cells into homogenised mixtures, as fastmc's setup models do.

    A pattern of 2–4 layers repeated ≥ 2 times becomes one element named by
    :func:`fastmc.config.mixture_name` with the total thickness; adjacent identical slabs merge.
    Returns (layers, changed).
    """
    from fastmc.config import mixture_name

    out: list[tuple[str, float]] = []
    i, n = 0, len(layers)
    changed = False
    while i < n:
        best = (1, 1)  # (period, repeats)
        for p in (2, 3, 4):
            cell = layers[i:i + p]
            if len(cell) < p or len({m for m, _ in cell}) < 2:
                continue
            r = 1
            while layers[i + r * p: i + (r + 1) * p] == cell:
                r += 1
            if r >= 2 and r * p > best[0] * best[1]:
                best = (p, r)
        p, r = best
        if p > 1:
            cell = layers[i:i + p]
            out.append((mixture_name(cell), r * sum(t for _, t in cell)))
            changed = True
            i += p * r
        else:
            m, t = layers[i]
            if out and out[-1][0] == m:
                out[-1] = (m, out[-1][1] + t)
            else:
                out.append((m, t))
            i += 1
    return out, changed


def _config_seed(seed: int, *parts: Any) -> int:
    return (int(seed) * 1000003 + zlib.crc32(json.dumps(parts, sort_keys=True).encode())) % (2**31 - 1)


_TRANSPORT_CACHE: dict[tuple, dict[str, Any]] = {}


def simulate_transport(layers: list[tuple[str, float]], ekin_GeV: float, n: int, seed: int) -> dict[str, Any]:
    """Run fastmc on one slab configuration; cached per (layers, E, n, seed) so eloss and
    deflection share the same muons.  Returns ΔE [GeV], exit slopes [mrad], x [mm], n_stopped and timing."""
    key = (json.dumps(layers), float(ekin_GeV), int(n), int(seed))
    if key in _TRANSPORT_CACHE:
        return _TRANSPORT_CACHE[key]
    import jax.numpy as jnp

    from fastmc.api import propagate_layers

    chunk = int(min(65536, n))
    # first chunk alone: compile + one chunk; then the full run (chunk 0 recomputed, identical)
    t0 = time.perf_counter()
    propagate_layers(layers, ekin_GeV, chunk, seed, chunk_size=chunk, return_record=True)
    t_first = time.perf_counter() - t0
    t0, c0 = time.perf_counter(), time.process_time()
    ekin_out, rec = propagate_layers(layers, ekin_GeV, n, seed, chunk_size=chunk, return_record=True)
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    # ΔE against the incident energy as the engine represents it (float32 by default)
    dtype = np.dtype(jnp.result_type(float))
    ekin_in = float(np.asarray(ekin_GeV * 1000.0, dtype)) / 1000.0
    stopped = ekin_out <= 0.0
    res = {
        "eloss": (ekin_in - ekin_out)[~stopped],
        "theta_x": np.arctan(np.asarray(rec["tx"], float))[~stopped] * 1e3,
        "theta_y": np.arctan(np.asarray(rec["ty"], float))[~stopped] * 1e3,
        "disp_x": np.asarray(rec["x"], float)[~stopped],
        "n_stopped": int(stopped.sum()),
        "n_overflow": int(np.sum(rec["rec_overflow"])),
        "timing": {"n": int(n), "wall_s": wall, "cpu_s": cpu, "us_per_muon": 1e6 * wall / n,
                   "cpu_us_per_muon": 1e6 * cpu / n,
                   "compile_s": max(0.0, t_first - wall * chunk / n), "chunk_size": chunk},
    }
    tx, ty = np.asarray(rec["tx"], float)[~stopped], np.asarray(rec["ty"], float)[~stopped]
    res["theta_space"] = np.arctan(np.sqrt(tx * tx + ty * ty)) * 1e3
    _TRANSPORT_CACHE[key] = res
    return res


PDG_MU_PLUS, PDG_PI_PLUS = -13, 211
_PARENTS = {"K+": 321, "pi+": 211}


def _decay_api():
    try:
        from fastmc.physics import decay as dmod
    except ImportError as err:
        raise RuntimeError(f"fastmc.physics.decay is not available ({err})") from None
    return dmod


def _mode_index(dmod: Any, parent: str, mode_name: str) -> int | None:
    """Index of the table's mode name (e.g. 'mu_nu') in fastmc's MODES for ``parent``."""
    names = _mode_names(dmod, parent)
    return names.index(mode_name) if mode_name in names else None


def _group_mode(group: "Group") -> str:
    """The decay mode of a table group: the name after '<parent>_<p>GeV_' ('all' for all modes)."""
    mode = str(group.attrs.get("decay_mode", "all"))
    if mode == "all":
        return "all"
    parts = group.name.split("GeV_", 1)
    return parts[1] if len(parts) == 2 else mode


_JIT_DECAY: dict[int, Any] = {}


def simulate_decay(parent: str, pmag_GeV: float, n: int, seed: int, mode_name: str | None) -> dict[str, Any]:
    """``n`` decays of ``parent`` at momentum ``pmag_GeV`` along +z: charged-track momenta [GeV/c] and angles [mrad]."""
    import jax.numpy as jnp

    from fastmc.rng import chunk_key, uniforms

    dmod = _decay_api()
    tables = dmod.build_decay_tables()
    mode = None
    if mode_name not in (None, "all"):
        mode = _mode_index(dmod, parent, mode_name)
        if mode is None:
            raise RuntimeError(f"fastmc decay modes have no '{mode_name}' for {parent}")
    import jax

    chunk = int(min(65536, n))
    fn = _JIT_DECAY.setdefault(id(dmod.sample_decay_from_u),
                               jax.jit(dmod.sample_decay_from_u, static_argnames=("parent", "mode")))
    pmag = jnp.full((chunk,), pmag_GeV * 1000.0)
    t0 = time.perf_counter()
    jax.block_until_ready(fn(tables, parent, pmag, uniforms(chunk_key(seed, 0), (chunk, dmod.N_DECAY_UNIFORMS)), mode=mode))
    t_first = time.perf_counter() - t0
    p_mu, t_mu, p_pi, t_pi, modes = [], [], [], [], []
    t0, c0 = time.perf_counter(), time.process_time()
    for c in range(-(-n // chunk)):
        m = min(chunk, n - c * chunk)
        uu = uniforms(chunk_key(seed, c), (chunk, dmod.N_DECAY_UNIFORMS))
        out = fn(tables, parent, pmag, uu, mode=mode)
        pdg = np.asarray(out["charged_pdg"])[:m]
        p = np.asarray(out["p"], float)[:m] / 1000.0
        th = np.asarray(out["theta"], float)[:m] * 1000.0
        p_mu.append(p[pdg == PDG_MU_PLUS])
        t_mu.append(th[pdg == PDG_MU_PLUS])
        p_pi.append(p[pdg == PDG_PI_PLUS])
        t_pi.append(th[pdg == PDG_PI_PLUS])
        modes.append(np.asarray(out["mode"])[:m])
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    return {"p_mu": np.concatenate(p_mu), "theta_mu": np.concatenate(t_mu), "p_pi": np.concatenate(p_pi),
            "theta_pi": np.concatenate(t_pi), "mode": np.concatenate(modes),
            "mode_names": _mode_names(dmod, parent),
            "timing": {"n": int(n), "wall_s": wall, "cpu_s": cpu, "us_per_muon": 1e6 * wall / n,
                       "cpu_us_per_muon": 1e6 * cpu / n, "compile_s": max(0.0, t_first - wall * chunk / n),
                       "chunk_size": chunk}}


def _mode_names(dmod: Any, parent: str) -> list[str]:
    modes = dmod.MODES
    if isinstance(modes, dict):
        modes = modes.get(parent, modes.get(_PARENTS.get(parent), modes))
    return [m if isinstance(m, str) else getattr(m, "name", str(m)) for m in modes]


# ======================================================================================
# The validation run
# ======================================================================================


def _row(suite: str, group: Group, obs: str, check: str, par: dict, result: dict, info: dict) -> dict[str, Any]:
    return {"suite": suite, "group": group.name, "observable": obs, "check": check, "tolerance": _tol_text(check, par),
            "reason": " ".join(str(par["reason"]).split()), "passed": bool(result["passed"]),
            "value": _value_text(check, result), "result": _jsonable(result), "chi2_ndf": info.get("chi2_ndf"),
            "p_value": info.get("p_value")}


def _tol_text(check: str, par: dict) -> str:
    if check == "chi2":
        return f"p > {par['p_min']:g}"
    if check == "tail_fraction":
        return f"|r-1| <= {par['rel_tol']:.0%} or |z| <= {par['n_sigma']:g}"
    return f"|r-1| <= {par['rel_tol']:.0%} or |z| <= {par['n_sigma']:g}"


def _value_text(check: str, r: dict) -> str:
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


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {k: _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return [_jsonable(v) for v in obj.tolist()]
    if isinstance(obj, (np.floating, float)):
        v = float(obj)
        return v if math.isfinite(v) else None
    if isinstance(obj, (np.integer,)):
        return int(obj)
    if isinstance(obj, np.bool_):
        return bool(obj)
    return obj


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
            n_mc = max(1, int(round(group.n_events * stat_scale)))
            a = group.attrs
            note = ""
            try:
                if s in ("eloss", "deflection"):
                    layers, changed = homogenise_layers(a["layers"])
                    if changed:
                        note = (f"fastmc: {len(layers)} homogenised elements "
                                f"({', '.join(m for m, _ in layers)}); Geant4: {len(a['layers'])} real layers")
                    log(f"[{s}] {group.name}: {n_mc} muons through {len(layers)} element(s) ...")
                    sim = simulate_transport(layers, float(a["ekin_GeV"]), n_mc, _config_seed(seed, layers, a["ekin_GeV"]))
                    n_gen = n_mc
                else:
                    mode_name = _group_mode(group)
                    log(f"[{s}] {group.name}: {n_mc} {a['particle']} decays ({mode_name}) ...")
                    sim = simulate_decay(str(a["particle"]), float(a["momentum_GeV"]), n_mc,
                                         _config_seed(seed, a["particle"], a["momentum_GeV"], mode_name),
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
            mode_norm = s == "decay" and _group_mode(group) != "all"
            for obs, ref in group.hists.items():
                if obs not in sim:
                    continue
                why_nc = _not_comparable(s, _group_mode(group) if s == "decay" else "", obs, sim)
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
    if mode in _TWO_PI_PLUS_MODES or (mode == "all" and any(m in sim.get("mode_names", []) for m in _TWO_PI_PLUS_MODES)):
        return ("the Geant4 table counts both π⁺ of K⁺ → π⁺π⁺π⁻; fastmc.physics.decay returns one charged track "
                "per decay (the π⁺ of higher lab momentum), so the spectra differ by construction; shown for "
                "information, not a check")
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


# ======================================================================================
# Output
# ======================================================================================


def format_summary(report: dict[str, Any]) -> str:
    """The summary table: one line per check."""
    hdr = f"{'suite':<11}{'configuration':<26}{'observable':<15}{'check':<14}{'value':<46}{'tolerance':<26}{'chi2/ndf':>9}  result"
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
    lines = [f"{'suite':<11}{'configuration':<26}{'N fastmc':>10}{'wall s':>9}{'us/event':>10}{'compile s':>10}"
             f"{'G4 us/event':>13}{'speed-up':>10}"]
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
        "checks": _jsonable(report["rows"]),
        "observables": [_jsonable({"suite": o["suite"], "group": o["group"], "observable": o["observable"],
                                   "unit": o["ref"].unit, "n_ref": o["ref"].n_events, "n_mc": o["mc"].n_events,
                                   "chi2": o["compare"]["chi2"], "ndf": o["compare"]["ndf"],
                                   "p_value": o["compare"]["p_value"], "max_abs_pull": o["compare"]["max_abs_pull"],
                                   "ks": o["ks"], "n_stopped_ref": o["n_stopped_ref"],
                                   "n_stopped_mc": o["n_stopped_mc"], "note": o["note"], "png": o.get("png")})
                        for o in report["observables"]],
        "timing": _jsonable(report["timing"]),
    }
    tmp = out_dir / ".summary.json.tmp"
    tmp.write_text(json.dumps(summary, indent=1))
    os.replace(tmp, out_dir / "summary.json")
    return written


def _version() -> str:
    from fastmc import __version__

    return __version__
