"""Log-space weighted tallies and their diagnostics.

On device, each chunk reduces its events to four numbers per tally slot (DESIGN.md §4):
``log Σw``, ``log Σw²``, ``n`` (raw count) and ``log max w``.  On the host the per-chunk rows are
kept, in float64, keyed by chunk index; the final tally reduces them **in chunk order**, so a
run split into any set of disjoint chunk ranges and merged gives bit-for-bit the same numbers as
one job (floating-point addition is not associative; a fixed order makes it reproducible).

Estimates for an exposure of ``MOT`` muons on target from ``N_gen`` generated primaries
(normalised by generated, never by accepted, events):

* expected  N = MOT · Σw / N_gen
* stat_err  σ = MOT · √(Σw² − (Σw)²/N_gen) / N_gen  (the sample variance of the mean; it tends
  to MOT·√Σw²/N_gen for rare selections)
* Kish ESS = (Σw)² / Σw²;   max_weight_share = max w / Σw;  pareto_k: tail index of the
  largest weights (:meth:`Tally.pareto_k`)
* zero selected events: ``upper_limit_90 = −ln(0.10) · MOT · w_scale / N_gen`` (the 90 % CL
  Poisson bound on a zero-count, 2.303 events, times the weight one more event would carry:
  the largest weight generated in the channel, :meth:`fastmc.run.RunResult.ul_weights`;
  ``w_scale = 1`` for analog), and ``expected = 0`` with ``stat_err = 0`` is *not* reported as
  a measurement: ``upper_limit_90`` is set and flagged.
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np

# 90 % CL upper limit on a Poisson mean for zero observed events (PDG RPP 2024 §40, Table 40.3)
ZERO_EVENT_UL90 = -math.log(0.10)  # 2.302585...

TOP_K = 32  # largest log-weights kept per slot and chunk (exactly mergeable: top-K of a union)
N_FIELDS = 4 + TOP_K  # log_sw, log_sw2, n, log_wmax, then the TOP_K largest log w (descending, −inf padded)
PARETO_MIN_N = 50  # fewer selected events: no tail-index estimate
PARETO_K_WARN = 0.7  # ξ above this: the variance of the estimate is unreliable (Vehtari et al., arXiv:1507.02646, §3)


def chunk_tally(masks: jnp.ndarray, log_w: jnp.ndarray) -> jnp.ndarray:
    """Device reduction of one chunk: (n_slots, B) masks and log-weights, (B,) or per slot
    (n_slots, B) (cuts integrated by conditional Monte Carlo, :func:`fastmc.selection.pass_weights`)
    → (n_slots, N_FIELDS)."""
    neg = jnp.asarray(-jnp.inf, log_w.dtype)
    lw = jnp.where(masks, log_w if log_w.ndim == 2 else log_w[None, :], neg)
    # logsumexp with an all −inf row guarded
    mx = jnp.max(lw, axis=1)
    safe = jnp.where(jnp.isfinite(mx), mx, 0.0)
    lsw = safe + jnp.log(jnp.sum(jnp.exp(lw - safe[:, None]), axis=1))
    lsw2 = 2.0 * safe + jnp.log(jnp.sum(jnp.exp(2.0 * (lw - safe[:, None])), axis=1))
    n = jnp.sum(masks, axis=1).astype(log_w.dtype)
    lsw = jnp.where(n > 0, lsw, neg)
    lsw2 = jnp.where(n > 0, lsw2, neg)
    top, _ = jax.lax.top_k(lw, TOP_K)
    return jnp.concatenate([jnp.stack([lsw, lsw2, n, mx], axis=1), top], axis=1)


@dataclasses.dataclass
class Tally:
    """A float64 tally of one slot (channel × region × cut step)."""

    log_sw: float = -math.inf
    log_sw2: float = -math.inf
    n: int = 0
    log_wmax: float = -math.inf
    n_gen: int = 0
    top: np.ndarray = dataclasses.field(default_factory=lambda: np.full(TOP_K, -np.inf))

    @classmethod
    def from_rows(cls, rows: np.ndarray, n_gen: np.ndarray, start: Tally | None = None) -> Tally:
        """Reduce per-chunk rows (n_chunks, N_FIELDS), already in chunk order, sequentially
        (continuing ``start`` if given)."""
        t = cls() if start is None else dataclasses.replace(start)
        rows = np.asarray(rows, dtype=np.float64)
        for row, ng in zip(rows, np.asarray(n_gen, dtype=np.int64)):
            t.log_sw = float(np.logaddexp(t.log_sw, row[0]))
            t.log_sw2 = float(np.logaddexp(t.log_sw2, row[1]))
            t.n += int(round(row[2]))
            t.log_wmax = float(max(t.log_wmax, row[3]))
            t.n_gen += int(ng)
            if row.shape[0] > 4:
                t.top = np.sort(np.concatenate([t.top, row[4:]]))[::-1][:TOP_K]
        return t

    def pareto_k(self) -> float | None:
        """Shape ξ of a generalised-Pareto tail fitted to the largest weights.

        The M = min(TOP_K − 1, n/5) largest weights exceed the next one, u = w_(M+1), by
        x_i = w_(i) − u; ξ is fitted to these exceedances with the empirical-Bayes estimator of
        J. Zhang and M. A. Stephens, Technometrics 51 (2009) 316 (the fit of Pareto-smoothed
        importance sampling, Vehtari et al., arXiv:1507.02646, §3; ξ here is minus Zhang–Stephens'
        k, and no prior pulls it toward 0.5).  ξ < 0.5: finite variance; ξ > 0.7: the estimate and
        its error are unreliable.  Bounded weights give ξ ≤ 0, including weights bunched near their
        maximum far above the rest (the trigger's probabilities: a few ≈ 1 over many ≪ 1), where a
        Hill estimator of ln(w_(i)/u) would read the gap as a heavy tail; all weights equal
        (analog) give ξ = 0.  None if fewer than PARETO_MIN_N events.
        """
        if self.n < PARETO_MIN_N:
            return None
        m = min(TOP_K - 1, self.n // 5)
        top = self.top[: m + 1]
        if not np.all(np.isfinite(top)):
            return None
        w = np.exp(top - top[0])  # relative to the largest: the fit is scale-free
        x = np.sort(w[:m] - w[m])
        if not x[-1] > 0:
            return 0.0
        return gpd_shape(x)

    @property
    def sum_w(self) -> float:
        return math.exp(self.log_sw) if self.n else 0.0

    @property
    def sum_w2(self) -> float:
        return math.exp(self.log_sw2) if self.n else 0.0

    def estimate(self, mot: float, w_scale: float = 1.0) -> dict:
        """Projection to ``mot`` muons on target with every diagnostic (see module docstring)."""
        if self.n_gen <= 0:
            raise ValueError("tally has no generated events")
        scale = mot / self.n_gen
        if self.n == 0:
            return {
                "expected": 0.0,
                "stat_err": 0.0,
                "rel_err": None,
                "n_selected": 0,
                "n_generated": self.n_gen,
                "sum_w": 0.0,
                "sqrt_sum_w2": 0.0,
                "ess": 0.0,
                "max_weight_share": None,
                "pareto_k": None,
                "upper_limit_90": ZERO_EVENT_UL90 * w_scale * scale,
            }
        # work relative to max w to avoid overflow of (Σw)²
        sw = math.exp(self.log_sw - self.log_wmax)
        sw2 = math.exp(self.log_sw2 - 2.0 * self.log_wmax)
        var_rel = max(sw2 - sw * sw / self.n_gen, 0.0)
        expected = math.exp(self.log_sw) * scale
        stat_err = math.sqrt(var_rel) * math.exp(self.log_wmax) * scale
        return {
            "expected": expected,
            "stat_err": stat_err,
            "rel_err": stat_err / expected if expected > 0 else None,
            "n_selected": self.n,
            "n_generated": self.n_gen,
            "sum_w": math.exp(self.log_sw),
            "sqrt_sum_w2": math.exp(0.5 * self.log_sw2),
            "ess": sw * sw / sw2,
            "max_weight_share": 1.0 / sw,
            "pareto_k": self.pareto_k(),
            "upper_limit_90": None,
        }


def reduce_chunks(chunk_ids: np.ndarray, rows: np.ndarray, n_gen: np.ndarray) -> list[Tally]:
    """Per-slot tallies from per-chunk rows (n_chunks, n_slots, 4), reduced in chunk order.

    Raises ValueError if a chunk index appears twice (double counting).
    """
    chunk_ids = np.asarray(chunk_ids)
    if len(np.unique(chunk_ids)) != len(chunk_ids):
        raise ValueError("overlapping chunk ranges: a chunk would be counted twice")
    order = np.argsort(chunk_ids, kind="stable")
    rows = np.asarray(rows)[order]
    n_gen = np.asarray(n_gen)[order]
    return [Tally.from_rows(rows[:, s, :], n_gen) for s in range(rows.shape[1])]


def diagnose(name: str, est: dict) -> list[str]:
    """Human-readable warnings for an estimate whose diagnostics say it is not trustworthy."""
    out = []
    n = est["n_selected"]
    if n == 0:
        return out
    share = est["max_weight_share"]
    if n > 1 and share is not None and share > 0.5:
        out.append(f"{name}: one event carries {share:.0%} of Σw — the estimate is not trustworthy")
    if n >= 10 and est["ess"] < 10:
        out.append(f"{name}: effective sample size {est['ess']:.3g} from {n} events — weights too uneven")
    k = est.get("pareto_k")
    if k is not None and k > PARETO_K_WARN:
        out.append(f"{name}: Pareto-k {k:.2f} > {PARETO_K_WARN} — heavy weight tail, error estimate unreliable")
    return out


def gpd_shape(x: np.ndarray) -> float:
    """Shape ξ of a generalised Pareto law (location 0) fitted to the exceedances ``x`` (sorted,
    positive largest): the posterior-mean estimator of J. Zhang and M. A. Stephens, Technometrics
    51 (2009) 316, eqs. (5)–(7), on the grid of m = 80 + ⌊√n⌋ values of θ that the loo package uses
    (the paper's 20 + ⌊√n⌋; the estimate depends little on it).  With b = −ξ/σ the profile
    log-likelihood is n·(ln(−b/k(b)) − k(b) − 1), k(b) = mean ln(1 − b·x); the θ grid is weighted by it
    and ξ = k(b̄) at the weighted mean b̄ (positive: heavy tail)."""
    n = x.size
    m = 80 + int(math.sqrt(n))
    q = x[max(int(n / 4 + 0.5) - 1, 0)]  # the lower quartile sets the grid's scale
    if not q > 0:
        q = x[x > 0][0]
    j = np.arange(1, m + 1) - 0.5
    b = 1.0 / x[-1] + (1.0 - np.sqrt(m / j)) / (3.0 * q)
    k = np.mean(np.log1p(-b[:, None] * x[None, :]), axis=1)
    log_l = n * (np.log(-b / k) - k - 1.0)
    post = np.exp(log_l - np.max(log_l))  # the grid's posterior weights (normalised below)
    b_bar = float(np.sum(post * b) / np.sum(post))
    return float(np.mean(np.log1p(-b_bar * x)))
