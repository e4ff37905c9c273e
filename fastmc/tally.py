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
        """Tail index ξ of the selected weights (Hill estimator on the largest M ≤ TOP_K−1 weights).

        ξ̂ = (1/M) Σ_{i≤M} ln(w_(i) / w_(M+1)) (B. M. Hill, Ann. Stat. 3 (1975) 1163) estimates the
        shape of a generalised-Pareto tail: ξ < 0.5 means finite variance; ξ > 0.7 means the
        estimate and its error are unreliable (Vehtari, Gelman, Gabry, arXiv:1507.02646).  For
        bounded weights (analog: all w = 1) ξ̂ = 0.  None if fewer than PARETO_MIN_N events.
        """
        if self.n < PARETO_MIN_N:
            return None
        m = min(TOP_K - 1, self.n // 5)
        top = self.top[: m + 1]
        if not np.all(np.isfinite(top)):
            return None
        return float(np.mean(top[:m] - top[m]))

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
