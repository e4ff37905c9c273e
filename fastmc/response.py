"""Parameterised detector response: tracker hits, calorimeter and counter signals.

Trackers.  Each plane's hit falls in one of four categories (both projections together):

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
plane.  Simplification: when the true hit is present, a closer stray hit is never preferred.

Biasing (channel ``momentum_misreconstruction``).  In m planes S chosen uniformly among the
channel's P planes the category is drawn from the defensive mixture q_j = β p_j + (1 − β) f_j,
where f_j puts probability ½ on each pathology (c = 1 and c = 3; all on the one that exists if
only one has p > 0).  Offsets given the category have the same law under p and q.  The proposal
of the whole configuration is Q(c) = Π_i p_i(c_i) · e_m(r)/C(P, m) with r_i = q_i(c_i)/p_i(c_i)
and e_m the elementary symmetric polynomial, so the exact weight is w = C(P, m)/e_m(r) ≤ β^−m
(Hesterberg, Technometrics 37 (1995) 185, defensive mixtures; Owen, "Monte Carlo theory,
methods and examples" (2013) ch. 9–10).

Calorimeters and counters: the energy lost in the element (and the energy of decay photons or
absorbed hadrons deposited there) is scaled by ``response_scale`` and smeared with
σ/E = a/√E ⊕ b ⊕ c/E (PDG RPP 2024 "Calorimetry" §35.9, E in GeV).  Full containment of
secondaries: leakage and non-hermeticity are the calorimeter channel's business.  Visible
energies of elements sharing a readout ``group`` are summed.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from fastmc import units as u
from fastmc._pytree import pytree_dataclass, static_field
from fastmc.geometry import Setup
from fastmc.rng import STREAM_RESPONSE, normal_from_uniform, stream_key, uniforms

N_CATEGORIES = 4


@pytree_dataclass
class HitBias:
    """The misreconstruction channel's forcing: which planes, how many, defensive weight β."""

    beta: jnp.ndarray
    planes: tuple[str, ...] = static_field()
    n_forced: int = static_field(default=2)


def calorimeter_sigma(edep, stochastic_term, constant_term, noise):
    """σ (MeV) of a calorimeter signal of ``edep`` MeV: a/√E ⊕ b ⊕ c/E with E in GeV."""
    e_gev = jnp.maximum(edep, 0.0) / u.GeV
    var = (stochastic_term**2) * e_gev * u.GeV**2 + (constant_term * edep) ** 2 + noise**2
    return jnp.sqrt(var)


def category_probabilities(eff, tail_fraction, pickup):
    """Natural p(c) (…, 4) of the hit categories of module docstring."""
    return jnp.stack(
        [eff * (1 - tail_fraction), eff * tail_fraction, (1 - eff) * (1 - pickup), (1 - eff) * pickup], axis=-1
    )


def pathology_probabilities(p):
    """f(c): ½ on each pathology (wide hit, stray hit) that has p > 0; p itself if neither has."""
    has = (p[..., jnp.array([1, 3])] > 0).astype(p.dtype)
    n = jnp.sum(has, axis=-1, keepdims=True)
    f = jnp.zeros_like(p).at[..., 1].set(has[..., 0]).at[..., 3].set(has[..., 1]) / jnp.maximum(n, 1.0)
    return jnp.where(n > 0, f, p)


def _draw_category(prob, uu):
    cum = jnp.cumsum(prob, axis=-1)
    return jnp.sum(uu[..., None] > cum[..., :-1] / cum[..., -1:], axis=-1).astype(jnp.int32)


def tracker_hits(setup: Setup, truth: dict, key_r: jax.Array, bias: HitBias | None = None):
    """Measured hits ``{name: (mx, my, present)}`` and the log-weight of the hit biasing (B,)."""
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
    if bias is None:
        cat = _draw_category(p, uu[..., 0])
    else:
        biased = jnp.asarray([n in bias.planes for n in names])
        q = bias.beta * p + (1 - bias.beta) * pathology_probabilities(p)
        # m distinct planes among the biased ones: the m largest of P uniforms (others masked)
        us = uniforms(jax.random.fold_in(key_r, 10_001), (bsz, n_p), dtype)
        us = jnp.where(biased[None, :], us, -1.0)
        kth = jax.lax.top_k(us, bias.n_forced)[0][:, -1:]
        forced = (us >= kth).T  # (P, B)
        cat = _draw_category(jnp.where(forced[..., None], q, p), uu[..., 0])
        pc = jnp.take_along_axis(p, cat[..., None], -1)[..., 0]
        qc = jnp.take_along_axis(q, cat[..., None], -1)[..., 0]
        r = jnp.where(biased[:, None], qc / pc, 0.0)  # (P, B); unbiased planes do not enter
        n_b = len(bias.planes)
        if bias.n_forced == 1:
            e_m = jnp.sum(r, axis=0)
        else:
            e_m = 0.5 * (jnp.sum(r, axis=0) ** 2 - jnp.sum(r * r, axis=0))
        log_w = math.log(math.comb(n_b, bias.n_forced)) - jnp.log(e_m)
    z1, z2 = normal_from_uniform(uu[..., 1]), normal_from_uniform(uu[..., 2])
    width = jnp.where(cat == 1, sig_t, sig)
    off_x = jnp.where(cat == 3, (2 * uu[..., 3] - 1) * road, width * z1)
    off_y = jnp.where(cat == 3, (2 * uu[..., 4] - 1) * road, width * z2)
    present = reached & (cat != 2)
    mx, my = x + off_x, y + off_y
    hits = {n: (mx[i], my[i], present[i]) for i, n in enumerate(names)}
    return hits, log_w


def detector_response(setup: Setup, truth: dict, key_chunk: jax.Array, bias: HitBias | None = None) -> dict:
    """Measured hits ``hits[name] = (mx, my, present)``, ``energies[group]`` (MeV) and ``log_w``."""
    key_r = stream_key(key_chunk, STREAM_RESPONSE)
    hits, log_w = tracker_hits(setup, truth, key_r, bias) if setup.trackers else ({}, 0.0)
    energies: dict[str, jnp.ndarray] = {}
    for i, el in enumerate(setup.elements):
        if el.kind == "slab" and el.readout != "none":
            rec = truth["slabs"][el.name]
            edep = rec["e_cont"] + jnp.sum(rec["e_proc"], axis=-1) + rec.get("e_other", 0.0)
            uu = uniforms(jax.random.fold_in(key_r, i), (edep.shape[0], 1), edep.dtype)
            sigma = calorimeter_sigma(edep, el.stochastic_term, el.constant_term, el.noise)
            vis = el.response_scale * edep + sigma * normal_from_uniform(uu[:, 0])
            energies[el.group] = energies.get(el.group, 0.0) + vis
    return {"hits": hits, "energies": energies, "log_w": log_w}
