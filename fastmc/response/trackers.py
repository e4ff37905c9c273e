"""Tracker response: each plane's hit falls in one of four categories (both projections together):

====  ===============================  =========================================
 c    what                             natural probability p(c)
====  ===============================  =========================================
 0    true hit, Gaussian core σ        ε (1 − f_tail)
 1    true hit, wide component σ_tail  ε f_tail
 2    no hit                           (1 − ε)(1 − P_pick)
 3    stray hit picked up in the road  (1 − ε) P_pick   (offset uniform in ±road)
====  ===============================  =========================================

(ε efficiency; f_tail, σ_tail the non-Gaussian component; P_pick from beam pile-up,
:func:`fastmc.geometry.pickup_probability`).  A hit is recorded only if the muon reached the
plane inside its active area (:func:`inside_area`: the rectangle of half-sizes
``half_width_x``, ``half_width_y`` around ``(x_centre, y_centre)``, by the true position at the
plane; a stray hit needs it too, as it is picked up in the road around the missing true hit).
Simplification: when the true hit is present, a closer stray hit is never preferred.

Hit times (:func:`hit_times`, drawn after the categories and any proposal, from uniforms of
their own): a true hit (c = 0, 1) has t ~ N(0, σ_t) around the trigger time; the strays of
c = 3 are pile-up muons uniform in the readout window τ.  The reconstruction accepts a hit only
if |t| ≤ cut (card ``[reconstruction]``); a hit outside counts as absent.  Simplification: a true
hit rejected by the time cut is not replaced by a stray in time.

A channel may replace the natural law by a proposal of its own (:class:`HitProposal`); the
response only applies it and returns its log-weight.
"""

from __future__ import annotations

from typing import Protocol

import jax
import jax.numpy as jnp

from fastmc.geometry import Setup
from fastmc.rng import STREAM_RESPONSE, normal_from_uniform, stream_key, uniforms

N_CATEGORIES = 4
CAT_CORE, CAT_WIDE, CAT_LOST, CAT_STRAY = 0, 1, 2, 3
TIME_STREAM = 20_000  # fold_in constant of the hit-time uniforms (10 000, 10 001, 30 000–30 002 are taken)


class HitProposal(Protocol):
    """A biased law of the hit categories and offsets (importance sampling of tracker pathologies).

    ``propose`` receives the natural draws of every plane — ``p`` (P, B, 4) the natural category
    probabilities, ``cat`` (P, B) and offsets ``off_x``, ``off_y`` drawn from them, the uniforms
    ``uu`` (P, B, 5) and normals ``z1``, ``z2`` (P, B) they came from, the planes' ``sig``,
    ``sig_t``, ``road`` (P, 1) — and returns the categories and offsets to use instead, and the
    log-weight log P/Q (B,) of what it drew.  It may draw more uniforms from ``key_r`` with
    ``fold_in`` constants of its own (the kernel uses 10 000 and 20 000 (hit times), the
    calorimeters 30 000–30 002).  Hit times are drawn after the proposal from the natural law
    (:func:`hit_times`): a proposal does not touch them, and its weight needs no time factor."""

    def propose(self, setup: Setup, names: tuple[str, ...], p, cat, off_x, off_y, uu, z1, z2, sig, sig_t, road,
                key_r: jax.Array) -> tuple: ...


def category_probabilities(eff, tail_fraction, pickup):
    """Natural p(c) (…, 4) of the hit categories of module docstring."""
    return jnp.stack(
        [eff * (1 - tail_fraction), eff * tail_fraction, (1 - eff) * (1 - pickup), (1 - eff) * pickup], axis=-1
    )


def draw_category(prob, uu):
    """Category index (…) from the probabilities ``prob`` (…, 4) and uniforms ``uu`` (…)."""
    cum = jnp.cumsum(prob, axis=-1)
    return jnp.sum(uu[..., None] > cum[..., :-1] / cum[..., -1:], axis=-1).astype(jnp.int32)


def hit_times(cat, ut, sig_time, window, cut, pickup):
    """Time (ns) of each plane's hit and whether the reconstruction accepts it (|t| ≤ cut), from
    the categories ``cat`` (P, B) and two uniforms ``ut`` (P, B, 2) per plane.

    True hits (c = 0, 1): t = σ_t Φ⁻¹(u₀).  Strays (c = 3): ``pickup`` = 1 − e^{−λ} is P(≥ 1
    pile-up muon in the road within the readout window τ), λ Poisson; those inside ± cut are
    Poisson with λ_c = λ·min(1, 2 cut/τ), independent of the others, so given ≥ 1 stray, ≥ 1 lies
    in the cut with q = (1 − e^{−λ_c})/(1 − e^{−λ}): its time is then uniform in ± cut (the one the
    reconstruction takes), else uniform in the rest of the window.  Accepted strays per plane:
    (1 − ε)(1 − e^{−λ_c}) ≈ (1 − ε)·rate·2 cut·road density (small λ).  Lost planes (c = 2): t = 0,
    never present anyway.  Untimed planes (σ_t = 0, cut = τ/2): every hit accepted, as before.
    """
    dtype = ut.dtype
    u0, u1 = ut[..., 0], ut[..., 1]
    t_true = sig_time * normal_from_uniform(u0)
    lam = -jnp.log1p(-jnp.minimum(pickup, 1 - 1e-7))
    half = 0.5 * window
    frac = jnp.where(window > 0, jnp.minimum(2 * cut / jnp.maximum(window, 1e-30), 1.0), 1.0)
    q = jnp.where(lam > 0, -jnp.expm1(-lam * frac) / jnp.maximum(-jnp.expm1(-lam), 1e-30), frac)
    inside = u0 < q
    cut_in = jnp.minimum(cut, half)
    t_in = (2 * u0 / jnp.maximum(q, 1e-30) - 1) * cut_in
    sign = jnp.where(u1 < 0.5, -1.0, 1.0).astype(dtype)
    t_out = sign * (cut_in + (u0 - q) / jnp.maximum(1 - q, 1e-30) * (half - cut_in))
    t_stray = jnp.where(inside, t_in, t_out)
    is_true = (cat == CAT_CORE) | (cat == CAT_WIDE)
    t = jnp.where(is_true, t_true, jnp.where(cat == CAT_STRAY, t_stray, 0.0)).astype(dtype)
    accepted = jnp.where(cat == CAT_STRAY, inside, jnp.abs(t_true) <= cut)
    return t, accepted


def inside_area(el, x, y):
    """True where (x, y) (true position at the element's plane) lies in its active area."""
    return (jnp.abs(x - el.x_centre) <= el.half_width_x) & (jnp.abs(y - el.y_centre) <= el.half_width_y)


def tracker_hits(setup: Setup, truth: dict, key_r: jax.Array, proposal: HitProposal | None = None,
                 apertures: bool = True):
    """Measured hits ``{name: (mx, my, present)}`` and the log-weight of a hit proposal (B,; 0
    without one): the natural draws, then ``proposal.propose`` may replace some of them.
    ``apertures`` (static): require the true position inside the plane's active area (False:
    offsets only, :func:`hit_offsets`, whose caller applies the areas)."""
    names = setup.trackers
    els = [setup.element(n) for n in names]
    x = jnp.stack([truth["hits"][n][0] for n in names])  # (P, B)
    y = jnp.stack([truth["hits"][n][1] for n in names])
    reached = jnp.stack([truth["hits"][n][2] for n in names])
    n_p, bsz = x.shape
    dtype = x.dtype
    col = lambda attr: jnp.stack([getattr(e, attr) for e in els]).astype(dtype)[:, None]  # noqa: E731
    eff, f_t, pick, sig, sig_t, road = (col(a) for a in ("efficiency", "tail_fraction", "pickup", "resolution",
                                                         "tail_sigma", "road"))
    uu = uniforms(jax.random.fold_in(key_r, 10_000), (n_p, bsz, 5), dtype)
    p1 = category_probabilities(eff, f_t, pick)  # (P, 1, 4)
    p = p1 * jnp.ones((n_p, bsz, 1), dtype)  # (P, B, 4), for a proposal
    log_w = jnp.zeros((bsz,), dtype)
    z1, z2 = normal_from_uniform(uu[..., 1]), normal_from_uniform(uu[..., 2])
    # the cumulative sum on (P, 1, 4), not on the batch-sized p (with constant rates XLA would fold
    # a (P, B, 4) cumsum at compile time): the same numbers per muon
    cat = draw_category(p1, uu[..., 0])
    width = jnp.where(cat == 1, sig_t, sig)
    off_x = jnp.where(cat == 3, (2 * uu[..., 3] - 1) * road, width * z1)
    off_y = jnp.where(cat == 3, (2 * uu[..., 4] - 1) * road, width * z2)
    if proposal is not None:
        cat, off_x, off_y, log_w = proposal.propose(setup, names, p, cat, off_x, off_y, uu, z1, z2,
                                                    sig, sig_t, road, key_r)
    # hit times after any proposal, from their own uniforms (natural law given the category: the
    # proposal's weight is unchanged)
    sig_time, window, cut = (col(a) for a in ("time_resolution", "time_window", "time_cut"))
    ut = uniforms(jax.random.fold_in(key_r, TIME_STREAM), (n_p, bsz, 2), dtype)
    _, in_time = hit_times(cat, ut, sig_time, window, cut, pick)
    if apertures:
        reached = reached & jnp.stack([inside_area(e, x[i], y[i]) for i, e in enumerate(els)])
    present = reached & (cat != 2) & in_time
    mx, my = x + off_x, y + off_y
    hits = {n: (mx[i], my[i], present[i]) for i, n in enumerate(names)}
    return hits, log_w


def hit_offsets(setup: Setup, key_chunk: jax.Array, proposal: HitProposal | None, n: int, dtype=jnp.float32):
    """The hit draws of :func:`fastmc.response.detector_response` for a muon on the z axis that reaches every plane:
    ``(offsets, log_w)``.  They do not depend on the muon, so they may be drawn before the
    transport (a channel may condition its transport forcing on them) and passed
    to :func:`fastmc.response.detector_response` as ``hits_pre``, which applies the active areas
    to the true positions: the result is bit-identical."""
    zero = jnp.zeros((n,), dtype)
    truth = {"hits": {nm: (zero, zero, jnp.ones((n,), bool)) for nm in setup.trackers}}
    return tracker_hits(setup, truth, stream_key(key_chunk, STREAM_RESPONSE), proposal, apertures=False)
