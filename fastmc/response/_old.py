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

Biasing (channel ``momentum_misreconstruction``).  A momentum is mis-measured when the hits of
one spectrometer arm fake a slope: with the others lost, two or more displaced hits (stray pile-up
hits, uniform within the ±road, or wide-component hits) turn the fitted line.  The proposal is a
defensive mixture over *scenarios* (Hesterberg, Technometrics 37 (1995) 185; Owen & Zhou, JASA 95
(2000) 135): with probability β every plane is natural; otherwise one of K scenarios is chosen
uniformly.  A scenario names, for one spectrometer, a subset S (|S| ≥ 2) of an arm's planes whose
hits are displaced, the arm's other planes whose hits are lost, and for the upstream arm possibly
the same for the incoming arm (a faked upstream slope shows as a kink unless the incoming track
turns with it).  Displaced hits are "pushed" to the side σ = ±1 that makes |Δθ| larger
(down-arm slope up, up-arm and incoming slopes down, times the sign of q·∫B dl; each plane signed
by its side of the subset's centre): a pushed plane gets a stray hit (if it has pile-up) or a
wide-component hit (if it has one) — if both, in proportion to their natural chances of an offset
beyond half the road, within [0.1, 0.9] — whose bend-plane offset is drawn on the pushed
side only — strays from (a+1)t^a/ρ, t = σ·o/ρ ∈ [0, 1] (a = ``push_power``, default 3), or, a share
λ = ``push_window_share`` of them (default 0), uniformly in t ∈ [t_lo, 1] (t_lo = ``push_window``):
the ramp peaks at the road edge, where two pushed planes fake more than the kink cut lets a real
turn hide, and the window puts them where the sum of two offsets just fakes the p_out cut — wide hits
from a half-normal three times wider than the wide component (the far wide hits that fake a slope
are 2–4 σ_tail out).  Relative to the natural law the density is 2[(1 − λ)(a+1)t^a + λ·1[t ≥ t_lo]/(1 − t_lo)] resp.
(2/3)·exp(o²(1 − 1/9)/2σ_tail²) times higher on that side and zero on the other.  Scenarios whose
largest slope change is below a quarter of the nominal bend are dropped (:func:`misreco_scenarios`).  Categories and offsets of every biased plane are evaluated under
every component, so the weight

    w = P(x)/Q(x) = 1 / (β + (1 − β)/K · Σ_k Π_i q_k,i(x_i)/p_i(x_i)) ≤ 1/β

is exact (balance heuristic, Veach & Guibas, SIGGRAPH 1995) and bounded.  (One independent mixture
per arm, whose weights multiply, was tried and spread the draws too thinly on the LS3 card.)

Deflection (same channel).  A faked upstream slope of MS2 is seen as a kink between the incoming
track and the upstream arm, unless the muon really turned by about as much in the material between
them (the target and the calorimeters behind it): the selected configurations are a bad arm *and*
a deflection of 2–4 mrad (2–4 θ0 on the LS3 card) in the right direction.  The hit offsets do not
depend on the muon, so they are drawn first (:func:`hit_offsets`); ΔS, the kink they alone fake
(:func:`faked_kink`), then sets each muon's target turn −f·ΔS (f one of ``deflect_follow``: on the
LS3 card a fake passes the p_out and kink cuts when the real turn hides ≈ 0.3–0.42 of it).
:class:`DeflectBias` is a defensive mixture, per muon, of natural transport (β_d), exponential
tilting of the Gaussian scattering core in those slabs towards the target turn (its summed core
angle X ~ N(cV, V) instead of N(0, V), c = −fΔS/V_nom, one component per f), and forced hard deflections on that side
(interactions made photonuclear with probability ``PN_SHARE``, their momentum transfer pushed up and
their azimuth put on that half circle; single Coulomb scatters at larger angles, kept with
|F|^(2/3) instead of |F|², on that half circle: :func:`fastmc.physics.scattering.sample_scattering_info`)
— the tail that carries the configurations the Gaussian cannot reach.  Its weight

    w_d = 1/(β_d + (1 − β_d)[(1 − π)/J Σ_j exp(c_j X − c_j²V/2) + π Π q/p]) ≤ 1/β_d

(π = ``deflect_kicks``) is exact; the hit and deflection weights multiply.

Integrated kink cut (same channel, ``integrate_kink``, the default).  The core angle X enters the
signed bend-plane kink linearly, k_x = m + X, and nothing else the selection reads, so the cuts on
the target kink need not be sampled: each event contributes P(cut | m, k_y, p_out) with
X ~ N(0, V), a difference of normal CDFs (:func:`integrated_kink_cuts`; conditional Monte Carlo,
which is unbiased and cannot have a larger variance than the sampled cut — Rao–Blackwell).  Tilting
the core then has no effect (J = 0: no tilt), and the forced share 1 − β_d of the muons all get
forced hard deflections (π = 1): they supply the turns of 3–6 σ_core that the core cannot.
Measured on the LS3 card (524 288 muons, same seed): Kish ESS 98 → 218 and relative error
10.1 % → 6.8 % against the sampled cut with the tilt (β_d = 0.9 here, 0.2 before); with the
card's stray window (``push_window`` 0.6, share 0.8) ESS 331 and 5.5 %.

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


# roles of a plane in a misreconstruction scenario (:class:`HitBias`)
ROLE_NATURAL, ROLE_LOST, ROLE_PUSH_UP, ROLE_PUSH_DOWN = 0, 1, 2, 3
TAIL_WIDEN = 3.0  # a pushed wide-component hit's offset is half-normal with this many σ_tail
TAIL_REACH = 3.0  # the largest offset of a pushed wide-component hit, in σ_tail, for the reach estimate


@pytree_dataclass
class HitBias:
    """The misreconstruction channel's scenario mixture (module docstring).

    ``roles[k][i]``: what scenario k does to ``planes[i]`` (ROLE_*; the push direction is
    multiplied by the sign of q·∫B dl of spectrometer ``spectrometer[k]`` when sampling);
    ``axis[i]``: the bend plane ("x"/"y") in which plane i's offset is pushed.
    """

    beta: jnp.ndarray
    push_power: jnp.ndarray
    planes: tuple[str, ...] = static_field()
    axis: tuple[str, ...] = static_field()
    roles: tuple[tuple[int, ...], ...] = static_field()
    spectrometer: tuple[int, ...] = static_field()
    # a share ``window_share`` of the pushed stray offsets is drawn uniformly in t ∈ [window_lo, 1]
    # instead of from the ramp (module docstring)
    window_lo: jnp.ndarray = 0.5
    window_share: jnp.ndarray = 0.0


# photonuclear forcing of the deflection mixture (DeflectBias, fastmc.transport.material_step): share
# of a forced muon's interactions made photonuclear, and the power of the first t-proposal uniform.
# With the 1/(t(t + m0²)) proposal of fastmc.physics.deflection, s = ln(t/(t + t1)) is uniform on
# [≈ −12, 0]; kicks of 2–4 mrad at 160 GeV (t ≈ 0.1–0.4 GeV²) sit at u ≈ 0.985–0.998, which
# u^(1/60) reaches 60 % of the time against 1.3 % naturally.  Proposal choices, not physics.
PN_SHARE = 0.5
PN_T_POWER = 60.0


@pytree_dataclass
class DeflectBias:
    """Deflection forcing of the misreconstruction channel (module docstring, "Deflection").

    A defensive mixture of three components for the slab slots flagged in ``slots``, chosen per
    muon after its hits (whose offsets do not depend on the transport) are drawn: natural
    transport (probability ``beta``); the Gaussian core of the multiple scattering in projection
    ``axis`` shifted by c·σ² per step, so that the summed core angle X is drawn from N(c·V, V)
    instead of N(0, V) (V = Σσ²; probability (1 − beta)(1 − ``kick_share``), shared equally by
    the J entries of ``follow``); or the hard deflections forced towards the side that hides the
    fake (probability (1 − beta)·``kick_share``).  Tilt j has c_j = −``follow[j]``·ΔS/V_nom, with
    ΔS the kink between the incoming track and MS2's upstream arm that the muon's hit offsets
    alone would fake and V_nom = 1/``inv_v`` the core variance at the beam momentum: the muon is
    turned to hide that fraction of its faked kink (several fractions: how much is needed depends
    on the faked p_out and on the beam momentum).
    """

    beta: jnp.ndarray
    follow: jnp.ndarray
    inv_v: jnp.ndarray
    kick_share: jnp.ndarray
    slots: tuple[bool, ...] = static_field()
    axis: str = static_field()
    integrate: bool = static_field(default=False)


def deflect_bias(setup: Setup, x0_mm, follow: tuple[float, ...], beta: float, kick_share: float = 0.5,
                 dtype=jnp.float32, integrate: bool = False) -> DeflectBias | None:
    """The :class:`DeflectBias` of the ``p_out`` spectrometer with incoming trackers (None if
    there is none, no slab lies between them, or ``follow`` is empty and ``integrate`` is off):
    the slabs between the last incoming tracker and the first plane of the upstream arm; V_nom
    from Highland's θ0 of each slab at the beam momentum (PDG RPP 2024 eq. 34.15; any V gives an
    exact weight, it only sets the proposal).  ``integrate``: the target-kink cuts integrate the
    Gaussian core out (:func:`integrated_kink_cuts`), so no tilt is drawn (``follow`` must be
    empty) and the forced muons all get forced hard deflections (``kick_share`` = 1)."""
    from fastmc.physics.scattering import highland_theta0

    spec = [s for s in setup.spectrometers if s.output == "p_out" and s.incoming]
    if integrate and follow:
        raise ValueError("a tilted scattering core has no effect when the kink cut integrates the core out")
    if not spec or not (follow or integrate):
        return None
    if integrate:
        kick_share = 1.0
    s = spec[0]
    z_lo = max(float(setup.element(n).z + setup.element(n).thickness) for n in s.incoming)
    z_hi = min(float(setup.element(n).z) for n in s.upstream)
    slots = tuple(el.kind == "slab" and float(el.z) >= z_lo and float(el.z + el.thickness) <= z_hi
                  for el in setup.elements)
    if not any(slots):
        return None
    p = float(setup.beam.momentum)
    v_nom = 0.0
    for el, on in zip(setup.elements, slots):
        if on:
            x = float(el.thickness) * float(el.density_scale) / float(x0_mm[int(el.material)])
            v_nom += float(highland_theta0(jnp.asarray(p), jnp.asarray(1.0), jnp.asarray(x))) ** 2
    return DeflectBias(beta=jnp.asarray(beta, dtype), follow=jnp.asarray(list(follow), dtype),
                       inv_v=jnp.asarray(1.0 / v_nom, dtype), kick_share=jnp.asarray(kick_share, dtype),
                       slots=slots, axis=s.plane, integrate=integrate)


def faked_kink(setup: Setup, offsets: dict):
    """ΔS (B,) rad: the kink, in the bend plane, between MS2's upstream arm and the incoming track
    that hit offsets ``offsets`` (:func:`tracker_hits` of a muon on the z axis) fake by themselves;
    a real turn of −ΔS between them hides it (the fits are linear in the hits)."""
    from fastmc.reconstruct import fit_arm

    s = next(s for s in setup.spectrometers if s.output == "p_out" and s.incoming)
    b_up, ok_up, _, _ = fit_arm(setup, s.upstream, offsets, s.plane)
    b_in, ok_in, _, _ = fit_arm(setup, s.incoming, offsets, s.plane)
    return jnp.where(ok_up & ok_in, b_up - b_in, 0.0)


def deflect_components(bias: DeflectBias, u0, base):
    """State entries of the chosen component for uniforms ``u0`` (B,) and per-muon ``base`` =
    −ΔS/V_nom (B,) rad⁻¹: ``tilt_c`` (the chosen tilt follow[j]·base, or 0), ``tilt_base`` (for
    the weight), ``kick_force`` (1 or 0), ``kick_sign`` (sign of base), and the zeroed sums the
    weight needs."""
    dtype = u0.dtype
    n_f = bias.follow.shape[0]
    forced = u0 >= bias.beta
    zero = jnp.zeros_like(u0)
    base = jnp.asarray(base, dtype)
    if n_f == 0:  # no tilt: every forced muon gets forced hard deflections
        kick, tilt_c = forced, zero
    else:
        tilt_share = (1.0 - bias.beta) * (1.0 - bias.kick_share)
        kick = u0 >= bias.beta + tilt_share
        j = jnp.clip(jnp.floor((u0 - bias.beta) / tilt_share * n_f), 0, n_f - 1).astype(jnp.int32)
        tilt_c = jnp.where(forced & ~kick, bias.follow[j] * base, 0.0).astype(dtype)
    return {"tilt_c": tilt_c, "tilt_base": base,
            "kick_force": kick.astype(dtype), "kick_sign": jnp.where(base < 0, -1.0, 1.0).astype(dtype),
            "tilt_x": zero, "tilt_v": zero, "kick_lr": zero}


def deflect_log_weight(bias: DeflectBias, state: dict):
    """log w = −log(β + (1 − β)[(1 − π)/J Σ_j exp(c_j X − c_j² V/2) + π exp(Σ log q/p)]) of the
    deflection mixture (≤ −log β), from the final transport state: c_j the muon's J tilts, X, V
    the summed core angle and variance, Σ log q/p that of the hard-deflection forcing at the
    realised draws (fastmc.transport.material_step), π = kick_share."""
    if bias.follow.shape[0] == 0:  # kicks only (integrated kink cut)
        return -jnp.logaddexp(jnp.log(bias.beta), jnp.log1p(-bias.beta) + state["kick_lr"])
    c = bias.follow[:, None] * state["tilt_base"][None, :]  # (J, B)
    log_tilt = (jax.scipy.special.logsumexp(c * state["tilt_x"] - 0.5 * c * c * state["tilt_v"], axis=0)
                - jnp.log(bias.follow.shape[0]))
    log_forced = jnp.logaddexp(jnp.log1p(-bias.kick_share) + log_tilt, jnp.log(bias.kick_share) + state["kick_lr"])
    return -jnp.logaddexp(jnp.log(bias.beta), jnp.log1p(-bias.beta) + log_forced)


def _log_prob_abs_below(a, m, sigma):
    """log P(|Y| ≤ a) for Y ~ N(m, σ²), accurate far in the tails (a ≥ 0; by symmetry in m)."""
    am = jnp.abs(m)
    hi = jax.scipy.special.log_ndtr((a - am) / sigma)
    lo = jax.scipy.special.log_ndtr((-a - am) / sigma)
    return hi + jnp.log1p(-jnp.exp(jnp.minimum(lo - hi, 0.0)))


def integrated_kink_cuts(setup: Setup, hits: dict, p_out, core_x, core_v) -> dict:
    """Cuts on the target kink of the ``p_out`` spectrometer with the Gaussian scattering core
    integrated out (conditional Monte Carlo, :func:`fastmc.selection.pass_weights`).

    Between the incoming track and MS2's upstream arm the muon's bend-plane angle gets the sum X
    of the Gaussian core angles of the slabs there (``core_x``, realised, and ``core_v`` = Σσ²,
    accumulated by the transport for the :class:`DeflectBias` slots).  The fits are linear in the
    hits and X turns every later hit by the same angle, so the signed bend-plane kink is
    k_x = m + X with m = k_x,obs − X_obs not depending on X, and X ~ N(0, V) under the natural law
    given everything else (momenta, hard deflections, hits: the widths σ depend on the momentum,
    not on the angles).  Nothing else the selection reads depends on X: p is fitted from the slope
    difference across the magnet, the χ² and hit counts from residuals (tracker acceptance edges,
    mm away, are neglected).  A cut lo ≤ √(k_x² + k_y²)·s ≤ hi (s = |p_out| for
    ``kink_…_pt_MeV``, 1 for ``kink_…_mrad``) is then k_x² ∈ [(lo/s)² − k_y², (hi/s)² − k_y²],
    whose probability is a difference of normal CDFs.

    Returns ``{var: f(lo, hi) → log P (B,)}`` for both kink variables (−inf: cannot pass).
    """
    from fastmc.reconstruct import kink_parts

    s = next(s for s in setup.spectrometers if s.output == "p_out" and s.incoming)
    kx, ky, kok = kink_parts(setup, s, hits)
    m = kx - core_x
    sigma = jnp.sqrt(jnp.maximum(core_v, 1e-30))
    p_ok = p_out > 0  # reconstruct(): −1 where the momentum fit failed

    def make(scale, need_p):
        def log_p(lo, hi):
            def log_below(bound):  # log P(√(k_x² + k_y²)·s ≤ bound)
                a2 = (bound * u.mrad / scale) ** 2 - ky * ky
                return jnp.where(a2 > 0, _log_prob_abs_below(jnp.sqrt(jnp.maximum(a2, 0.0)), m, sigma), -jnp.inf)

            upper = jnp.where(jnp.isfinite(hi), log_below(jnp.where(jnp.isfinite(hi), hi, 0.0)), 0.0)
            lower = jnp.where(lo > 0, log_below(jnp.where(lo > 0, lo, 0.0)), -jnp.inf)
            lp = upper + jnp.log1p(-jnp.exp(jnp.minimum(lower - upper, 0.0)))
            lp = jnp.where(lower >= upper, -jnp.inf, lp)
            # failed fits: the variable is +inf, which passes only an open upper bound
            ok = kok & p_ok if need_p else kok
            return jnp.where(ok, lp, jnp.where(jnp.isinf(hi) & (hi > 0), 0.0, -jnp.inf)).astype(p_out.dtype)
        return log_p

    scale_p = jnp.where(p_ok, jnp.abs(p_out), 1.0)
    return {f"kink_{s.output}_mrad": make(1.0, False), f"kink_{s.output}_pt_MeV": make(scale_p, True)}


def misreco_scenarios(setup: Setup, planes: tuple[str, ...], min_reach: float = 0.25,
                      min_hits: dict[str, float] | None = None):
    """The scenarios of :class:`HitBias` for the trackers ``planes`` (concrete setup values).

    For every spectrometer and arm: (1) each single plane pushed, the arm's others natural; (2) each
    subset S (|S| ≥ 2) pushed, the arm's other planes lost; (3) each upstream variant together with
    each incoming one (a single plane, or a subset, pushed; the incoming arm's others natural).
    Downstream pushes turn the slope up, upstream and incoming ones down (module docstring); a
    plane's push sign is its side of the weighted centre of the planes carrying hits (a plane at the
    centre stays natural).  Scenarios whose largest slope change — strays at the road edge, or wide
    hits at 3σ_tail, in a weighted least-squares fit — is below ``min_reach`` × the nominal bend
    angle are dropped (the incoming arm only follows the upstream one and is not checked), and so
    are subsets that leave an arm fewer hits than ``min_hits`` asks of it (the smallest
    ``{output}_hits_up``/``_hits_down`` the selection requires: such events are never selected).
    Returns (planes, axis, roles, spectrometer index) with only the planes some scenario touches.
    """
    from itertools import combinations

    def f(x):
        return float(jnp.asarray(x))

    def shift(name):  # largest offset a pushed hit of this plane gets (mm)
        e = setup.element(name)
        pc = category_probabilities(f(e.efficiency), f(e.tail_fraction), f(e.pickup))
        return f(e.road) if f(pc[3]) > 0 else TAIL_REACH * f(e.tail_sigma) if f(pc[1]) > 0 else 0.0

    def push(fitted, pushed, direction):
        """Roles of the pushed planes among the ``fitted`` ones, and the largest slope change."""
        z = {n: f(setup.element(n).z + setup.element(n).thickness) for n in fitted}
        w = {n: 1.0 / f(setup.element(n).resolution) ** 2 for n in fitted}
        zbar = sum(w[n] * z[n] for n in fitted) / sum(w.values())
        szz = sum(w[n] * (z[n] - zbar) ** 2 for n in fitted)
        span = max(z.values()) - min(z.values())
        roles, reach = {}, 0.0
        for n in pushed:
            side = 0 if abs(z[n] - zbar) < 1e-6 * span else (1 if z[n] > zbar else -1)
            roles[n] = ROLE_NATURAL if side == 0 else ROLE_PUSH_UP if side * direction > 0 else ROLE_PUSH_DOWN
            reach += w[n] * abs(z[n] - zbar) * shift(n) / max(szz, 1e-30)
        return roles, reach

    allowed = set(planes)

    def subsets(arm, direction, threshold, need_hits=0.0):  # |S| ≥ 2 pushed, the arm's others lost
        mine = [n for n in arm if n in allowed]
        out = []
        for r in range(2, len(mine) + 1):
            for sub in combinations(mine, r):
                if len(arm) - (len(mine) - r) < need_hits:
                    continue
                roles, reach = push(sub, sub, direction)
                if reach >= threshold:
                    out.append({**{n: ROLE_LOST for n in mine}, **roles})
        return out

    def singles(arm, direction, threshold):  # one plane pushed, the arm's others natural
        out = []
        for n in arm if len(arm) >= 2 else ():
            if n in allowed:
                roles, reach = push(arm, [n], direction)
                if reach >= threshold and roles[n] != ROLE_NATURAL:
                    out.append(roles)
        return out

    scen: list[tuple[int, dict[str, int]]] = []
    for si, s in enumerate(setup.spectrometers):
        bl = sum(f(setup.element(m).field_integral) for m in s.magnets)
        need = min_reach * abs(u.GEV_PER_TESLA_METRE * bl / (f(setup.beam.momentum) / u.GeV))
        mh = min_hits or {}
        down = singles(s.downstream, +1, need) + subsets(s.downstream, +1, need, mh.get(f"{s.output}_hits_down", 0.0))
        up = singles(s.upstream, -1, need) + subsets(s.upstream, -1, need, mh.get(f"{s.output}_hits_up", 0.0))
        # the incoming track may follow a faked upstream slope: one or more of its planes pushed,
        # its others natural
        inc = [{k: v for k, v in r.items() if v != ROLE_LOST}
               for r in singles(s.incoming, -1, 0.0) + subsets(s.incoming, -1, 0.0)]
        scen.extend((si, r) for r in down + up)
        scen.extend((si, {**r, **i}) for r in up for i in inc)
    used = tuple(n for n in setup.trackers if any(n in r for _, r in scen))
    axis = tuple(next(s.plane for s in setup.spectrometers if n in (*s.upstream, *s.downstream, *s.incoming))
                 for n in used)
    roles = tuple(tuple(r.get(n, ROLE_NATURAL) for n in used) for _, r in scen)
    return used, axis, roles, tuple(si for si, _ in scen)


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
    z1, z2 = normal_from_uniform(uu[..., 1]), normal_from_uniform(uu[..., 2])
    cat = _draw_category(p, uu[..., 0])
    width = jnp.where(cat == 1, sig_t, sig)
    off_x = jnp.where(cat == 3, (2 * uu[..., 3] - 1) * road, width * z1)
    off_y = jnp.where(cat == 3, (2 * uu[..., 4] - 1) * road, width * z2)
    if bias is not None and bias.roles:
        cat, off_x, off_y, log_w = _scenario_hits(setup, bias, names, p, cat, off_x, off_y, uu, z1, z2,
                                                  sig, sig_t, road, key_r)
    present = reached & (cat != 2)
    mx, my = x + off_x, y + off_y
    hits = {n: (mx[i], my[i], present[i]) for i, n in enumerate(names)}
    return hits, log_w


def _scenario_hits(setup, bias, names, p, cat, off_x, off_y, uu, z1, z2, sig, sig_t, road, key_r):
    """Categories and offsets of the biased planes under the scenario mixture, and log w (module
    docstring).  The natural draws (``cat``, offsets) stay for events of the natural component and
    for planes a scenario leaves natural."""
    dtype = off_x.dtype
    bsz = cat.shape[1]
    idx = jnp.asarray([names.index(n) for n in bias.planes])
    pb, cb = p[idx], cat[idx]
    z1b, z2b, u3, u4 = z1[idx], z2[idx], uu[idx, :, 3], uu[idx, :, 4]
    sg, st, rd = sig[idx], sig_t[idx], road[idx]  # (Pb, 1)
    is_x = jnp.asarray([ax == "x" for ax in bias.axis])[:, None]
    # sign of q·∫B dl per scenario (leaves: a field may change sign without recompiling)
    s_sign = jnp.stack([jnp.sign(setup.beam.charge * sum(setup.element(m).field_integral
                                                         for m in setup.spectrometers[si].magnets))
                        for si in bias.spectrometer]).astype(dtype)  # (K,)
    roles = jnp.asarray(bias.roles, jnp.int32)  # (K, Pb)
    direction = jnp.where(roles == ROLE_PUSH_UP, 1.0, jnp.where(roles == ROLE_PUSH_DOWN, -1.0, 0.0)).astype(dtype)
    direction = direction * s_sign[:, None]
    is_push = (roles == ROLE_PUSH_UP) | (roles == ROLE_PUSH_DOWN)  # (K, Pb)
    p1, p2, p3 = pb[..., 1], pb[..., 2], pb[..., 3]  # (Pb, B)
    lost_ok = p2 > 0
    # a pushed plane gets a stray hit with probability π_s, else a wide hit: in proportion to their
    # natural chances of an offset beyond half the road on one side (within [0.1, 0.9] if both exist)
    far_s = p3 * 0.25
    far_t = p1 * 0.5 * jax.scipy.special.erfc(0.5 * rd / (st * math.sqrt(2.0)))
    pi_s = jnp.where(p3 > 0, jnp.where(p1 > 0, jnp.clip(far_s / jnp.maximum(far_s + far_t, 1e-30), 0.1, 0.9), 1.0),
                     0.0)
    movable = (p3 > 0) | (p1 > 0)
    # the component of each event: −1 natural (probability β), else one of K scenarios uniformly
    n_k = len(bias.roles)
    u0 = uniforms(jax.random.fold_in(key_r, 10_001), (1, bsz), dtype)[0]
    comp = jnp.clip(jnp.floor((u0 - bias.beta) / (1 - bias.beta) * n_k), 0, n_k - 1).astype(jnp.int32)
    safe = jnp.where(u0 < bias.beta, 0, comp)
    role = jnp.where(u0 < bias.beta, ROLE_NATURAL, roles[safe].T)  # (Pb, B)
    d = direction[safe].T
    push = (role == ROLE_PUSH_UP) | (role == ROLE_PUSH_DOWN)
    stray = uu[idx, :, 0] < pi_s  # (the category uniform is free on a pushed plane)
    # given a stray, uu0/π_s is uniform again: it picks the window component of the offset law
    window = uu[idx, :, 0] < pi_s * bias.window_share
    c_b = jnp.where((role == ROLE_LOST) & lost_ok, 2, cb)
    c_b = jnp.where(push & movable, jnp.where(stray, 3, 1), c_b)
    # offsets of the drawn category (natural law), then the push in the bend plane
    width = jnp.where(c_b == 1, st, sg)
    ox = jnp.where(c_b == 3, (2 * u3 - 1) * rd, width * z1b)
    oy = jnp.where(c_b == 3, (2 * u4 - 1) * rd, width * z2b)
    a, t_lo, lam = bias.push_power, bias.window_lo, bias.window_share
    u_b = jnp.where(is_x, u3, u4)
    t_push = jnp.where(window, t_lo + (1.0 - t_lo) * u_b, u_b ** (1.0 / (a + 1.0)))
    o_push = d * jnp.where(stray, rd * t_push, TAIL_WIDEN * st * jnp.abs(jnp.where(is_x, z1b, z2b)))
    moved = push & movable
    ox = jnp.where(moved & is_x, o_push, ox)
    oy = jnp.where(moved & ~is_x, o_push, oy)
    cat, off_x, off_y = cat.at[idx].set(c_b), off_x.at[idx].set(ox), off_y.at[idx].set(oy)
    # log q_k/p of every biased plane under every scenario k, at the realised (category, offset)
    o = jnp.where(is_x, ox, oy)[None]  # (1, Pb, B)
    dk = direction[..., None]  # (K, Pb, 1)
    ninf = jnp.asarray(-jnp.inf, dtype)
    helpful = dk * o >= 0  # (K, Pb, B): the offset lies on the side scenario k pushes to
    t = jnp.clip(dk * o / rd, 1e-30, 1.0)
    # stray offset law on the pushed side: (1 − λ)(a + 1)t^a + λ·1[t ≥ t_lo]/(1 − t_lo)
    q_t = jnp.logaddexp(jnp.log1p(-lam) + jnp.log(a + 1.0) + a * jnp.log(t),
                        jnp.where(t >= t_lo, jnp.log(lam) - jnp.log1p(-t_lo), ninf))
    l_stray = jnp.where((c_b == 3) & helpful, jnp.log(2 * pi_s) + q_t - jnp.log(jnp.where(p3 > 0, p3, 1.0)), ninf)
    # half-normal of width TAIL_WIDEN·σ_tail against the natural N(0, σ_tail)
    l_tail = jnp.where((c_b == 1) & helpful,
                       jnp.log(2.0 / TAIL_WIDEN) + jnp.log1p(-pi_s) - jnp.log(jnp.where(p1 > 0, p1, 1.0))
                       + 0.5 * (o / st) ** 2 * (1.0 - 1.0 / TAIL_WIDEN**2), ninf)
    l_lost = jnp.where(c_b == 2, -jnp.log(jnp.where(lost_ok, p2, 1.0)), ninf)
    l_push = jnp.where(movable, jnp.where(c_b == 3, l_stray, l_tail), 0.0)
    l_k = jnp.where(is_push[..., None], l_push, jnp.where((roles == ROLE_LOST)[..., None] & lost_ok, l_lost, 0.0))
    l_k = jnp.sum(l_k, axis=1)  # (K, B)
    terms = jnp.concatenate([jnp.full((1, bsz), jnp.log(bias.beta), dtype),
                             jnp.log((1 - bias.beta) / n_k) + l_k], axis=0)
    log_w = -jax.scipy.special.logsumexp(terms, axis=0)
    return cat, off_x, off_y, log_w


def hit_offsets(setup: Setup, key_chunk: jax.Array, bias: HitBias | None, n: int, dtype=jnp.float32):
    """The hit draws of :func:`detector_response` for a muon on the z axis that reaches every plane:
    ``(offsets, log_w)``.  They do not depend on the muon, so they may be drawn before the
    transport (the misreconstruction channel conditions its deflection forcing on them) and passed
    to :func:`detector_response` as ``hits_pre``: the result is bit-identical."""
    zero = jnp.zeros((n,), dtype)
    truth = {"hits": {nm: (zero, zero, jnp.ones((n,), bool)) for nm in setup.trackers}}
    return tracker_hits(setup, truth, stream_key(key_chunk, STREAM_RESPONSE), bias)


def detector_response(setup: Setup, truth: dict, key_chunk: jax.Array, bias: HitBias | None = None,
                      showers=None, calo: CaloBias | None = None, temperature=None, hits_pre=None) -> dict:
    """Measured hits ``hits[name] = (mx, my, present)``, ``energies[group]`` (MeV), ``log_w`` and
    ``counts`` (``extra_tracks_p_out``, with ``showers``: punch-through charged hadrons).

    ``showers`` (:class:`fastmc.physics.showers.ShowerParams`): the hardest transfer of each slab
    showers through the slab sequence (:func:`shower_deposits`); without it every transfer is
    deposited where it happened.  ``calo``: the calorimeter channel's biasing of the forced
    photonuclear interaction's hadronic system.  ``temperature`` (soft mode, :mod:`fastmc.optimise`):
    the slab apertures seen by a leading neutral hadron become logistic edges of width
    temperature × half-width.
    """
    key_r = stream_key(key_chunk, STREAM_RESPONSE)
    if hits_pre is not None:  # offsets drawn before the transport (hit_offsets): add the truth
        off, log_w = hits_pre
        hits = {n: (truth["hits"][n][0] + off[n][0], truth["hits"][n][1] + off[n][1],
                    truth["hits"][n][2] & off[n][2]) for n in setup.trackers}
    else:
        hits, log_w = tracker_hits(setup, truth, key_r, bias) if setup.trackers else ({}, 0.0)
    deposits, counts = None, {}
    if showers is not None:
        deposits, lw, counts = shower_deposits(setup, truth, showers, key_r, calo, temperature)
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
    return {"hits": hits, "energies": energies, "log_w": log_w, "counts": counts}


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
N_CHARGED_UNIFORMS = 3  # leading charged hadron: choice, z, optical depth (own stream: key 30_002)


def shower_deposits(setup: Setup, truth: dict, sh, key_r: jax.Array, calo: CaloBias | None = None,
                    temperature=None):
    """Energy (MeV, EM-scale equivalent) reaching each slab when hard transfers shower; log_w; and
    ``counts`` (``extra_tracks_p_out``: leading charged hadrons that got through every slab).

    See :mod:`fastmc.physics.showers`.  Depth along the slab sequence is accumulated in radiation
    lengths (boundaries tb) and interaction lengths (sb); a shower starting at (t0, s0) puts
    E·[G(tb_{j+1} − t0) − G(tb_j − t0)] in slab j (G = 0 for negative depth; hadronic showers: the
    Bock EM term in X0 plus the hadronic term, × h/e, in λ_I), times the share of its lateral
    profile inside slab j's square aperture (``sh.lateral``; EM: GFLASH radial profile at τ = 1 and
    2.5 shower maxima, linear in depth through them, averaged over the slab's part of the
    longitudinal profile; hadronic: one radius, r95·λ_I/√19).  The shower axis is the beam line
    through the muon's position in the beam spot (drawn here, key 30_001; the muon's own angle,
    ≲ 1 mrad, is neglected), the apertures are centred on the z axis; what falls outside is lost.
    Photonuclear transfers may give a leading neutral hadron that interacts after an exponential
    optical depth, or escapes, or a leading charged hadron that does the same along the muon's line
    through every slab downstream, ionising (minimum-ionising dE/dx) up to where it interacts; if
    it gets through, it is one more charged track in the downstream spectrometer.  With ``calo``,
    the hadronic system of the target slab's photonuclear transfer is biased (leading neutral with
    probability q, z focused near 1, p_T half of the time from a law ``pt_widen`` times wider —
    lateral escapes —, escape with probability ≥ 1 − β; exact weights); the charged hadron is drawn
    from its natural law given no leading neutral (no weight).
    All slabs are handled at once: arrays (B, n_source_slabs, n_boundaries).
    """
    from fastmc.physics.showers import (
        LATERAL_TAUS,
        PROC_PHOTONUCLEAR,
        bock_em_share,
        bock_parameters,
        depth_averaged_containment,
        em_square_containment,
        gamma_cdf,
        gamma_moment,
        gflash_parameters,
        hadron_lateral_radius,
        square_containment,
    )

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
    hw = jnp.stack([el.half_width for el in slabs]).astype(dtype)
    # the shower axis in the beam spot (σ per projection), relative to the apertures' centre
    uxy = uniforms(jax.random.fold_in(key_r, 30_001), (bsz, 2), dtype)
    x_ax = setup.beam.spot_sigma.astype(dtype) * normal_from_uniform(uxy[:, 0])
    y_ax = setup.beam.spot_sigma.astype(dtype) * normal_from_uniform(uxy[:, 1])

    def split(cdf):  # (B, n_src, n+1) cumulative → (B, n_src, n) per slab
        return cdf[..., 1:] - cdf[..., :-1]

    def hadronic(energy, t_start, s_start, x0_start, lam_start, xa, ya):
        """(B, n) energies deposited per slab by hadronic showers (B, n_src) starting at (t, s),
        axis at (xa, ya) (B, n_src) from the apertures' centre."""
        e_par = jnp.maximum(energy, 1.0 * u.GeV)
        a, b, d, _ = bock_parameters(e_par)
        share = bock_em_share(e_par, x0_start, lam_start)
        g_em = split(gamma_cdf(a[..., None], b, tb - t_start[..., None]))
        g_h = split(gamma_cdf(a[..., None], d, sb - s_start[..., None]))
        frac = share[..., None] * g_em + (1.0 - share[..., None]) * sh.h_over_e * g_h
        if sh.lateral:  # one radial profile for the whole shower (its π⁰ part included)
            radius = hadron_lateral_radius(lam_start, sh.hadron_r95)[..., None]
            frac = frac * square_containment(radius, hw, -xa[..., None], -ya[..., None])
        return jnp.sum(energy[..., None] * frac, axis=1)

    # --- EM: GFLASH profile with per-shower fluctuations
    alpha, beta_ = gflash_parameters(jnp.maximum(e_h, 1.0), z_eff, normal_from_uniform(uu[..., 0]),
                                     normal_from_uniform(uu[..., 1]))
    depth = tb - t0[..., None]  # (B, n_src, n+1) boundaries' depths from the shower start [X0]
    frac_em = split(gamma_cdf(alpha[..., None], beta_[..., None], depth))
    if sh.lateral:
        t_max = ((alpha - 1.0) / beta_)[..., None]  # (B, n_src, 1)
        e_sh = jnp.maximum(e_h, 1.0)[..., None]
        cont = [em_square_containment(tau, e_sh, z_eff[:, None], sh.r_moliere[mats][:, None], hw,
                                      -x_ax[:, None, None], -y_ax[:, None, None]) for tau in LATERAL_TAUS]
        moment = split(gamma_moment(alpha[..., None], beta_[..., None], depth))
        frac_em = depth_averaged_containment(cont[0], cont[1], LATERAL_TAUS[0] * t_max, LATERAL_TAUS[1] * t_max,
                                             frac_em, moment)
    dep = local - jnp.where(showered, e_h, 0.0) + jnp.sum(jnp.where(is_em, e_h, 0.0)[..., None] * frac_em, axis=1)
    # --- photonuclear: a leading neutral hadron or not
    f_ln, z_min = sh.leading_neutral, sh.z_min
    ln = uu[..., 2] < f_ln
    z = z_min + (1.0 - z_min) * uu[..., 3]
    tau = -jnp.log(uu[..., 5])
    if calo is not None:
        tgt = jnp.asarray([el.name == calo.target for el in slabs])  # (n,)
        # target slab: z half from the natural law, half from [z_lo, 1]; the neutral hadron's angle
        # (below) uses this z too (it once used the natural z: angle and energy of different hadrons)
        z_lo = jnp.maximum(1.0 - calo.z_focus, z_min)
        z_b = jnp.where(uu[..., 4] < 0.5, z, z_lo + (1.0 - z_lo) * uu[..., 3])
        z = jnp.where(tgt, z_b, z)
    # its path: the slabs it meets inside their apertures count, in interaction lengths (sb_eff)
    g2 = -(jnp.log(uu[..., 7]) + jnp.log(uu[..., 8]))  # Gamma(2, 1): p_T = g2·⟨p_T⟩/2 ~ p_T e^{−2p_T/⟨p_T⟩}
    p_t = g2 * 0.5 * sh.neutral_pt
    if calo is not None:  # target slab: half of the p_T drawn from a law `pt_widen` times wider
        wide = uu[..., 10] >= 0.5
        p_t_b = jnp.where(wide, p_t * calo.pt_widen, p_t)
        b1, b2 = 2.0 / sh.neutral_pt, 2.0 / (sh.neutral_pt * calo.pt_widen)
        dens = lambda b, x: b * b * x * jnp.exp(-b * x)  # noqa: E731
        w_pt = dens(b1, p_t_b) / (0.5 * dens(b1, p_t_b) + 0.5 * dens(b2, p_t_b))
        p_t = jnp.where(tgt, p_t_b, p_t)
    theta = p_t / jnp.maximum(z * e_h, 1.0)
    phi = 2.0 * math.pi * uu[..., 9]
    zc = jnp.stack([el.z + 0.5 * el.thickness for el in slabs]).astype(dtype)  # slab centres
    z_src = jnp.stack([el.z + f[:, i] * el.thickness for i, el in enumerate(slabs)], axis=1)  # (B, n)
    # transverse offset from the shower axis (the beam line through the interaction point, on
    # which the calorimeters are centred up to the beam spot; the model's z axis is not the beam
    # axis after MS1's bend)
    dz = zc - z_src[..., None]  # (B, n_src, n)
    xn = theta[..., None] * jnp.cos(phi)[..., None] * dz
    yn = theta[..., None] * jnp.sin(phi)[..., None] * dz
    # the aperture seen by the neutral hadron: centred at −(beam-spot offset) when lateral is on
    xn_c = xn + x_ax[:, None, None] if sh.lateral else xn
    yn_c = yn + y_ax[:, None, None] if sh.lateral else yn
    src = jnp.arange(n)[:, None] == jnp.arange(n)[None, :]
    later = jnp.arange(n)[None, :] > jnp.arange(n)[:, None]
    if temperature is None:
        met = src | ((jnp.abs(xn_c) <= hw) & (jnp.abs(yn_c) <= hw) & later)
        width = jnp.where(met, (sb[1:] - sb[:-1]), 0.0)  # (B, n_src, n)
    else:  # soft aperture: the fraction of the slab's depth that counts is a logistic of the offset
        edge = temperature * hw
        inside_ap = jax.nn.sigmoid((hw - jnp.abs(xn_c)) / edge) * jax.nn.sigmoid((hw - jnp.abs(yn_c)) / edge)
        width = jnp.where(src, 1.0, jnp.where(later, inside_ap, 0.0)) * (sb[1:] - sb[:-1])
        met = width > 0
    sb_eff = jnp.concatenate([jnp.zeros_like(width[..., :1]), jnp.cumsum(width, axis=-1)], axis=-1)
    s0_eff = jnp.take_along_axis(sb_eff, jnp.arange(n)[None, :, None], axis=-1)[..., 0] + f * (sb[1:] - sb[:-1])
    tau_rem = sb_eff[..., -1] - s0_eff
    log_w = jnp.zeros((bsz,), dtype)
    if calo is not None:
        ln_b = uu[..., 2] < calo.q_neutral
        w_ln = jnp.where(ln_b, f_ln / calo.q_neutral, (1.0 - f_ln) / (1.0 - calo.q_neutral))
        w_z = (1.0 / (1.0 - z_min)) / (0.5 / (1.0 - z_min) + 0.5 * (z_b >= z_lo) / (1.0 - z_lo))
        tau_b = jnp.where(uu[..., 6] >= calo.beta, tau_rem + 1.0, tau)
        escaped = tau_b >= tau_rem
        w_esc = jnp.where(escaped, jnp.exp(-tau_rem) / (calo.beta * jnp.exp(-tau_rem) + 1.0 - calo.beta), 1.0 / calo.beta)
        biased = tgt & is_had
        lw = jnp.log(w_ln) + jnp.where(ln_b, jnp.log(w_z) + jnp.log(w_esc) + jnp.log(w_pt), 0.0)
        log_w = jnp.sum(jnp.where(biased, lw, 0.0), axis=1)
        ln, tau = jnp.where(tgt, ln_b, ln), jnp.where(tgt, tau_b, tau)
    ln = ln & is_had
    # --- or, given no leading neutral, a leading charged hadron (probability leading_charged)
    uc = uniforms(jax.random.fold_in(key_r, 30_002), (bsz, n, N_CHARGED_UNIFORMS), dtype)
    lc = is_had & ~ln & (uc[..., 0] < sh.leading_charged)
    z_c = z_min + (1.0 - z_min) * uc[..., 1]
    e_soft = jnp.where(is_had, jnp.where(ln, (1.0 - z) * e_h, jnp.where(lc, (1.0 - z_c) * e_h, e_h)), 0.0)
    xs_ax, ys_ax = jnp.broadcast_to(x_ax[:, None], (bsz, n)), jnp.broadcast_to(y_ax[:, None], (bsz, n))
    dep = dep + hadronic(e_soft, t0, s0, x0, lam, xs_ax, ys_ax)
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
    # leading charged hadron: along the muon's line through every slab downstream (its angle,
    # p_T/p ≲ 10 mrad, is neglected next to the apertures); interacts after an optical depth τ_c
    s_c = s0 - jnp.log(uc[..., 2])
    through = lc & (s_c >= sb[-1])  # got through every slab downstream
    s_end = jnp.where(through, sb[-1], s_c)
    cross = jnp.clip(jnp.minimum(s_end[..., None], sb[1:]) - jnp.maximum(s0[..., None], sb[:-1]), 0.0, None)
    cross = cross / jnp.maximum(sb[1:] - sb[:-1], 1e-12)  # (B, n_src, n): share of each slab crossed
    ion = jnp.where(lc[..., None], cross * (sh.dedx_mip[mats] * length), 0.0)
    ion_tot = jnp.sum(ion, axis=-1)
    dep = dep + jnp.sum(ion, axis=1)
    inside_c = (s_c[..., None] >= sb[:-1]) & (s_c[..., None] < sb[1:])
    frac_c = (s_c[..., None] - sb[:-1]) / jnp.maximum(sb[1:] - sb[:-1], 1e-12)
    pick_c = lambda arr: jnp.sum(jnp.where(inside_c, arr, 0.0), axis=-1)  # noqa: E731
    stopped = lc & ~through
    e_c = jnp.where(stopped, jnp.maximum(z_c * e_h - ion_tot, 0.0), 0.0)
    # the leading hadron's shower, neutral or charged (never both in one source slab): one profile call
    dep = dep + hadronic(
        e_int + e_c,
        jnp.where(ln, t_int, pick_c(tb[:-1] + frac_c * (tb[1:] - tb[:-1]))),
        jnp.where(ln, s_int, pick_c(sb[:-1] + frac_c * (sb[1:] - sb[:-1]))),
        jnp.where(ln, x0_int, jnp.where(stopped, pick_c(jnp.broadcast_to(x0, inside_c.shape)), 1.0)),
        jnp.where(ln, lam_int, jnp.where(stopped, pick_c(jnp.broadcast_to(lam, inside_c.shape)), 1.0)),
        xs_ax + jnp.where(ln, pick(xn), 0.0), ys_ax + jnp.where(ln, pick(yn), 0.0))
    # an extra track in the downstream spectrometer: it got through the slabs between its source and
    # the spectrometer's first plane (probability e^{−L/λ_I}, L in interaction lengths)
    out = [sp for sp in setup.spectrometers if sp.output == "p_out"]
    if out:
        z_sp = jnp.min(jnp.stack([setup.element(nm).z for nm in out[0].upstream]))
        before = jnp.stack([el.z + el.thickness <= z_sp for el in slabs])  # (n,): a prefix of the slabs
        sb_sp = jnp.sum(jnp.where(before, sb[1:] - sb[:-1], 0.0))
        n_extra = jnp.sum(lc & before & (s_c >= sb_sp), axis=1)
    else:
        n_extra = jnp.zeros((bsz,), jnp.int32)
    counts = {"extra_tracks_p_out": n_extra.astype(jnp.int32)}
    return {el.name: jnp.maximum(dep[:, i], 0.0) for i, el in enumerate(slabs)}, log_w, counts
