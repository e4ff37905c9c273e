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


class HitProposal(Protocol):
    """A biased law of the hit categories and offsets (importance sampling of tracker pathologies).

    ``propose`` receives the natural draws of every plane — ``p`` (P, B, 4) the natural category
    probabilities, ``cat`` (P, B) and offsets ``off_x``, ``off_y`` drawn from them, the uniforms
    ``uu`` (P, B, 5) and normals ``z1``, ``z2`` (P, B) they came from, the planes' ``sig``,
    ``sig_t``, ``road`` (P, 1) — and returns the categories and offsets to use instead, and the
    log-weight log P/Q (B,) of what it drew.  It may draw more uniforms from ``key_r`` with
    ``fold_in`` constants of its own (the kernel uses 10 000 and the calorimeters 30 000–30 002)."""

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
    p = category_probabilities(eff, f_t, pick) * jnp.ones((n_p, bsz, 1), dtype)  # (P, B, 4)
    log_w = jnp.zeros((bsz,), dtype)
    z1, z2 = normal_from_uniform(uu[..., 1]), normal_from_uniform(uu[..., 2])
    cat = draw_category(p, uu[..., 0])
    width = jnp.where(cat == 1, sig_t, sig)
    off_x = jnp.where(cat == 3, (2 * uu[..., 3] - 1) * road, width * z1)
    off_y = jnp.where(cat == 3, (2 * uu[..., 4] - 1) * road, width * z2)
    if proposal is not None:
        cat, off_x, off_y, log_w = proposal.propose(setup, names, p, cat, off_x, off_y, uu, z1, z2,
                                                    sig, sig_t, road, key_r)
    if apertures:
        reached = reached & jnp.stack([inside_area(e, x[i], y[i]) for i, e in enumerate(els)])
    present = reached & (cat != 2)
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
