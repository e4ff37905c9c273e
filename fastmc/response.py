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


def detector_response(setup: Setup, truth: dict, key_chunk: jax.Array, bias: HitBias | None = None,
                      showers=None, calo: CaloBias | None = None, temperature=None) -> dict:
    """Measured hits ``hits[name] = (mx, my, present)``, ``energies[group]`` (MeV) and ``log_w``.

    ``showers`` (:class:`fastmc.physics.showers.ShowerParams`): the hardest transfer of each slab
    showers through the slab sequence (:func:`shower_deposits`); without it every transfer is
    deposited where it happened.  ``calo``: the calorimeter channel's biasing of the forced
    photonuclear interaction's hadronic system.  ``temperature`` (soft mode, :mod:`fastmc.optimise`):
    the slab apertures seen by a leading neutral hadron become logistic edges of width
    temperature × half-width.
    """
    key_r = stream_key(key_chunk, STREAM_RESPONSE)
    hits, log_w = tracker_hits(setup, truth, key_r, bias) if setup.trackers else ({}, 0.0)
    deposits = None
    if showers is not None:
        deposits, lw = shower_deposits(setup, truth, showers, key_r, calo, temperature)
        log_w = log_w + lw
    energies: dict[str, jnp.ndarray] = {}
    for i, el in enumerate(setup.elements):
        if el.kind == "slab" and el.readout != "none":
            rec = truth["slabs"][el.name]
            if deposits is None:
                edep = rec["e_cont"] + jnp.sum(rec["e_proc"], axis=-1) + rec.get("e_other", 0.0)
            else:
                edep = deposits[el.name]
            uu = uniforms(jax.random.fold_in(key_r, i), (edep.shape[0], 1), edep.dtype)
            sigma = calorimeter_sigma(edep, el.stochastic_term, el.constant_term, el.noise)
            vis = el.response_scale * edep + sigma * normal_from_uniform(uu[:, 0])
            energies[el.group] = energies.get(el.group, 0.0) + vis
    return {"hits": hits, "energies": energies, "log_w": log_w}


@pytree_dataclass
class CaloBias:
    """Biasing of the hadronic system of the forced photonuclear interaction (module ``config``
    :class:`~fastmc.config.CaloBiasConfig`) in slab ``target``."""

    q_neutral: jnp.ndarray
    beta: jnp.ndarray
    z_focus: jnp.ndarray
    v_min: jnp.ndarray
    pt_widen: jnp.ndarray
    target: str = static_field()


N_SHOWER_UNIFORMS = 11


def shower_deposits(setup: Setup, truth: dict, sh, key_r: jax.Array, calo: CaloBias | None = None,
                    temperature=None):
    """Energy (MeV, EM-scale equivalent) reaching each slab when hard transfers shower; and log_w.

    See :mod:`fastmc.physics.showers`.  Depth along the slab sequence is accumulated in radiation
    lengths (boundaries tb) and interaction lengths (sb); a shower starting at (t0, s0) puts
    E·[G(tb_{j+1} − t0) − G(tb_j − t0)] in slab j (G = 0 for negative depth; hadronic showers: the
    Bock EM term in X0 plus the hadronic term, × h/e, in λ_I).  Photonuclear transfers may give a
    leading neutral hadron that interacts after an exponential optical depth, or escapes.  With
    ``calo``, the hadronic system of the target slab's photonuclear transfer is biased (leading
    neutral with probability q, z focused near 1, p_T half of the time from a law ``pt_widen``
    times wider — lateral escapes —, escape with probability ≥ 1 − β; exact weights).
    All slabs are handled at once: arrays (B, n_source_slabs, n_boundaries).
    """
    from fastmc.physics.showers import PROC_PHOTONUCLEAR, bock_em_share, bock_parameters, gamma_cdf, gflash_parameters

    slabs = [el for el in setup.elements if el.kind == "slab"]
    n = len(slabs)
    recs = [truth["slabs"][el.name] for el in slabs]
    dtype = recs[0]["e_cont"].dtype
    length = jnp.stack([el.thickness * el.density_scale for el in slabs]).astype(dtype)
    mats = jnp.stack([el.material for el in slabs])
    x0, lam, z_eff = sh.x0[mats], sh.lam[mats], sh.z_eff[mats]
    tb = jnp.concatenate([jnp.zeros((1,), dtype), jnp.cumsum(length / x0)])  # (n+1,)
    sb = jnp.concatenate([jnp.zeros((1,), dtype), jnp.cumsum(length / lam)])
    stack = lambda key: jnp.stack([r[key] for r in recs], axis=1)  # noqa: E731  (B, n)
    e_h, proc, f = stack("hardest"), stack("hardest_proc"), stack("hardest_depth")
    local = jnp.stack([r["e_cont"] + jnp.sum(r["e_proc"], axis=-1) + r.get("e_other", 0.0) for r in recs], axis=1)
    showered = e_h > sh.threshold
    is_had = showered & (proc == PROC_PHOTONUCLEAR)
    is_em = showered & ~is_had
    t0 = tb[:-1] + f * (tb[1:] - tb[:-1])  # (B, n) start depths
    s0 = sb[:-1] + f * (sb[1:] - sb[:-1])
    bsz = e_h.shape[0]
    uu = uniforms(jax.random.fold_in(key_r, 30_000), (bsz, n, N_SHOWER_UNIFORMS), dtype)

    def split(cdf):  # (B, n_src, n+1) cumulative → (B, n_src, n) per slab
        return cdf[..., 1:] - cdf[..., :-1]

    def hadronic(energy, t_start, s_start, x0_start, lam_start):
        """(B, n) energies deposited per slab by hadronic showers (B, n_src) starting at (t, s)."""
        e_par = jnp.maximum(energy, 1.0 * u.GeV)
        a, b, d, _ = bock_parameters(e_par)
        share = bock_em_share(e_par, x0_start, lam_start)
        g_em = split(gamma_cdf(a[..., None], b, tb - t_start[..., None]))
        g_h = split(gamma_cdf(a[..., None], d, sb - s_start[..., None]))
        frac = share[..., None] * g_em + (1.0 - share[..., None]) * sh.h_over_e * g_h
        return jnp.sum(energy[..., None] * frac, axis=1)

    # --- EM: GFLASH profile with per-shower fluctuations
    alpha, beta_ = gflash_parameters(jnp.maximum(e_h, 1.0), z_eff, normal_from_uniform(uu[..., 0]),
                                     normal_from_uniform(uu[..., 1]))
    frac_em = split(gamma_cdf(alpha[..., None], beta_[..., None], tb - t0[..., None]))
    dep = local - jnp.where(showered, e_h, 0.0) + jnp.sum(jnp.where(is_em, e_h, 0.0)[..., None] * frac_em, axis=1)
    # --- photonuclear: a leading neutral hadron or not
    f_ln, z_min = sh.leading_neutral, sh.z_min
    ln = uu[..., 2] < f_ln
    z = z_min + (1.0 - z_min) * uu[..., 3]
    tau = -jnp.log(uu[..., 5])
    # its path: the slabs it meets inside their apertures count, in interaction lengths (sb_eff)
    g2 = -(jnp.log(uu[..., 7]) + jnp.log(uu[..., 8]))  # Gamma(2, 1): p_T = g2·⟨p_T⟩/2 ~ p_T e^{−2p_T/⟨p_T⟩}
    p_t = g2 * 0.5 * sh.neutral_pt
    if calo is not None:  # target slab: half of the p_T drawn from a law `pt_widen` times wider
        wide = uu[..., 10] >= 0.5
        p_t_b = jnp.where(wide, p_t * calo.pt_widen, p_t)
        b1, b2 = 2.0 / sh.neutral_pt, 2.0 / (sh.neutral_pt * calo.pt_widen)
        dens = lambda b, x: b * b * x * jnp.exp(-b * x)  # noqa: E731
        w_pt = dens(b1, p_t_b) / (0.5 * dens(b1, p_t_b) + 0.5 * dens(b2, p_t_b))
    if calo is not None:
        p_t = jnp.where(jnp.asarray([el.name == calo.target for el in slabs]), p_t_b, p_t)
    theta = p_t / jnp.maximum(z * e_h, 1.0)
    phi = 2.0 * math.pi * uu[..., 9]
    zc = jnp.stack([el.z + 0.5 * el.thickness for el in slabs]).astype(dtype)  # slab centres
    hw = jnp.stack([el.half_width for el in slabs]).astype(dtype)
    z_src = jnp.stack([el.z + f[:, i] * el.thickness for i, el in enumerate(slabs)], axis=1)  # (B, n)
    # transverse offset from the beam axis through the interaction point, on which the
    # calorimeters are centred (the beam spot, σ ≈ 1 cm, and the muon's own angle, ≲ 1 mrad, are
    # neglected next to the apertures; the model's z axis is not the beam axis after MS1's bend)
    dz = zc - z_src[..., None]  # (B, n_src, n)
    xn = theta[..., None] * jnp.cos(phi)[..., None] * dz
    yn = theta[..., None] * jnp.sin(phi)[..., None] * dz
    src = jnp.arange(n)[:, None] == jnp.arange(n)[None, :]
    later = jnp.arange(n)[None, :] > jnp.arange(n)[:, None]
    if temperature is None:
        met = src | ((jnp.abs(xn) <= hw) & (jnp.abs(yn) <= hw) & later)
        width = jnp.where(met, (sb[1:] - sb[:-1]), 0.0)  # (B, n_src, n)
    else:  # soft aperture: the fraction of the slab's depth that counts is a logistic of the offset
        edge = temperature * hw
        inside_ap = jax.nn.sigmoid((hw - jnp.abs(xn)) / edge) * jax.nn.sigmoid((hw - jnp.abs(yn)) / edge)
        width = jnp.where(src, 1.0, jnp.where(later, inside_ap, 0.0)) * (sb[1:] - sb[:-1])
        met = width > 0
    sb_eff = jnp.concatenate([jnp.zeros_like(width[..., :1]), jnp.cumsum(width, axis=-1)], axis=-1)
    s0_eff = jnp.take_along_axis(sb_eff, jnp.arange(n)[None, :, None], axis=-1)[..., 0] + f * (sb[1:] - sb[:-1])
    tau_rem = sb_eff[..., -1] - s0_eff
    log_w = jnp.zeros((bsz,), dtype)
    if calo is not None:
        tgt = jnp.asarray([el.name == calo.target for el in slabs])  # (n,)
        ln_b = uu[..., 2] < calo.q_neutral
        w_ln = jnp.where(ln_b, f_ln / calo.q_neutral, (1.0 - f_ln) / (1.0 - calo.q_neutral))
        z_lo = jnp.maximum(1.0 - calo.z_focus, z_min)
        z_b = jnp.where(uu[..., 4] < 0.5, z, z_lo + (1.0 - z_lo) * uu[..., 3])
        w_z = (1.0 / (1.0 - z_min)) / (0.5 / (1.0 - z_min) + 0.5 * (z_b >= z_lo) / (1.0 - z_lo))
        tau_b = jnp.where(uu[..., 6] >= calo.beta, tau_rem + 1.0, tau)
        escaped = tau_b >= tau_rem
        w_esc = jnp.where(escaped, jnp.exp(-tau_rem) / (calo.beta * jnp.exp(-tau_rem) + 1.0 - calo.beta), 1.0 / calo.beta)
        biased = tgt & is_had
        lw = jnp.log(w_ln) + jnp.where(ln_b, jnp.log(w_z) + jnp.log(w_esc) + jnp.log(w_pt), 0.0)
        log_w = jnp.sum(jnp.where(biased, lw, 0.0), axis=1)
        ln, z, tau = jnp.where(tgt, ln_b, ln), jnp.where(tgt, z_b, z), jnp.where(tgt, tau_b, tau)
    ln = ln & is_had
    e_soft = jnp.where(is_had, jnp.where(ln, (1.0 - z) * e_h, e_h), 0.0)
    dep = dep + hadronic(e_soft, t0, s0, x0, lam)
    # leading neutral: interacts after an optical depth τ along its path, or escapes
    s_eff = s0_eff + tau
    inside = met & (s_eff[..., None] >= sb_eff[..., :-1]) & (s_eff[..., None] < sb_eff[..., 1:])  # (B, n_src, n)
    frac_in = (s_eff[..., None] - sb_eff[..., :-1]) / jnp.maximum(width, 1e-12)  # position inside that slab
    pick = lambda arr: jnp.sum(jnp.where(inside, arr, 0.0), axis=-1)  # noqa: E731
    s_int = pick(sb[:-1] + frac_in * (sb[1:] - sb[:-1]))
    t_int = pick(tb[:-1] + frac_in * (tb[1:] - tb[:-1]))
    hit = jnp.any(inside, -1)
    x0_int = jnp.where(hit, pick(jnp.broadcast_to(x0, inside.shape)), 1.0)
    lam_int = jnp.where(hit, pick(jnp.broadcast_to(lam, inside.shape)), 1.0)
    e_int = jnp.where(ln & hit, z * e_h, 0.0)  # no slab met before τ ran out: escaped
    dep = dep + hadronic(e_int, t_int, s_int, x0_int, lam_int)
    return {el.name: jnp.maximum(dep[:, i], 0.0) for i, el in enumerate(slabs)}, log_w
