"""Channel ``momentum_misreconstruction``: a full-energy muon whose p_out is mis-measured (MS2), or a
muon of the beam's low-momentum tail whose p_in is (MS1: scenarios of MS1's planes push towards a
smaller bend, :func:`misreco_scenarios`; MS1 has no incoming track, so no deflection is forced).

The selection sees a soft outgoing muon when the hits of a spectrometer arm fake a slope (stray
pile-up hits, wide-component hits, lost hits) and the muon's real deflection in the target hides
the kink that fake leaves against the incoming track.  The channel forces both, with exact
weights: a hit proposal (:class:`HitBias`, satisfying :class:`fastmc.response.trackers.HitProposal`)
and a deflection forcing (:class:`DeflectBias`, satisfying :class:`fastmc.transport.StepForcing`),
and integrates the target-kink cuts over the Gaussian scattering core (:func:`integrated_kink_cuts`).

Hits.  A momentum is mis-measured when the hits of
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
largest slope change is below a quarter of the nominal bend are dropped (:func:`misreco_scenarios`).
Categories and offsets of every biased plane are evaluated under
every component, so the weight

    w = P(x)/Q(x) = 1 / (β + (1 − β)/K · Σ_k Π_i q_k,i(x_i)/p_i(x_i)) ≤ 1/β

is exact (balance heuristic, Veach & Guibas, SIGGRAPH 1995) and bounded.  (One independent mixture
per arm, whose weights multiply, was tried and spread the draws too thinly on the LS3 card.)

Deflection.  A faked upstream slope of MS2 is seen as a kink between the incoming
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

Integrated kink cut (``integrate_kink``, the default).  The core angle X enters the
signed bend-plane kink linearly, k_x = m + X, and nothing else the selection reads, so the cuts on
the target kink need not be sampled: each event contributes P(cut | m, k_y, p_out) with
X ~ N(0, V), a difference of normal CDFs (:func:`integrated_kink_cuts`; conditional Monte Carlo,
which is unbiased and cannot have a larger variance than the sampled cut — Rao–Blackwell).  Tilting
the core then has no effect (J = 0: no tilt), and the forced share 1 − β_d of the muons all get
forced hard deflections (π = 1): they supply the turns of 3–6 σ_core that the core cannot.
Measured on the LS3 card (524 288 muons, same seed): Kish ESS 98 → 218 and relative error
10.1 % → 6.8 % against the sampled cut with the tilt (β_d = 0.9 here, 0.2 before); with the
card's stray window (``push_window`` 0.6, share 0.8) ESS 331 and 5.5 %.
"""

from __future__ import annotations

import dataclasses
import math
from itertools import combinations
from typing import Any

import jax
import jax.numpy as jnp

from fastmc import units as u
from fastmc._pytree import pytree_dataclass, static_field
from fastmc.channels.base import BuildContext, CardContext, Channel, ChannelParams
from fastmc.config import ConfigError
from fastmc.geometry import Setup
from fastmc.physics.scattering import highland_theta0
from fastmc.reconstruct import fit_arm, kink_parts
from fastmc.response.trackers import category_probabilities, hit_offsets
from fastmc.rng import STREAM_CHANNEL, stream_key, uniforms


@dataclasses.dataclass(frozen=True)
class MisrecoSettings:
    """``[channels.momentum_misreconstruction]``: a defensive mixture of the natural hits
    (probability ``beta``) and scenarios in which the hits of one spectrometer arm among
    ``planes`` fake a slope; pushed stray-hit offsets follow a ramp density of power
    ``push_power`` on the pushed side (0: uniform), or, a share ``push_window_share`` of them,
    uniformly in the outer part [``push_window``, 1] of the road.  With ``integrate_kink``
    (default) the cuts on the target kink integrate out the Gaussian scattering core between the
    incoming track and MS2 (:func:`integrated_kink_cuts`), and with probability 1 − ``deflect_beta``
    a muon's hard deflections there are forced towards the side that hides the kink its hits
    fake.  Without it, the muon is turned to hide one of the shares ``deflect_follow`` of that
    kink: its Gaussian scattering core is shifted, or (a share ``deflect_kicks`` of those) its hard
    deflections are forced (:class:`DeflectBias`; ``deflect_follow = []`` then switches the
    deflection forcing off)."""

    planes: tuple[str, ...] = ()  # default: every tracker of the p_out spectrometer and its incoming track
    beta: float = 0.5
    push_power: float = 3.0
    push_window: float = 0.5
    push_window_share: float = 0.0
    deflect_follow: tuple[float, ...] = ()
    deflect_beta: float = 0.9  # LS3 card, integrated kink cut: ESS 205, 218, 207 at 0.8, 0.9, 0.97 (524 288 muons)
    deflect_kicks: float = 0.2
    integrate_kink: bool = True


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

    def propose(self, setup, names, p, cat, off_x, off_y, uu, z1, z2, sig, sig_t, road, key_r):
        """:class:`fastmc.response.trackers.HitProposal`: categories and offsets of the biased planes
        under the scenario mixture, and log w (module docstring).  The natural draws (``cat``,
        offsets) stay for events of the natural component and for planes a scenario leaves natural."""
        if not self.roles:
            return cat, off_x, off_y, jnp.zeros(cat.shape[1:], off_x.dtype)
        return _scenario_hits(setup, self, names, p, cat, off_x, off_y, uu, z1, z2, sig, sig_t, road, key_r)


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
    # fastmc.transport.StepForcing: photonuclear share and t-proposal power of the forced kicks
    pn_share: float = static_field(default=PN_SHARE)
    pn_t_power: float = static_field(default=PN_T_POWER)


def deflect_bias(setup: Setup, x0_mm, follow: tuple[float, ...], beta: float, kick_share: float = 0.5,
                 dtype=jnp.float32, integrate: bool = False) -> DeflectBias | None:
    """The :class:`DeflectBias` of the ``p_out`` spectrometer with incoming trackers (None if
    there is none, no slab lies between them, or ``follow`` is empty and ``integrate`` is off):
    the slabs between the last incoming tracker and the first plane of the upstream arm; V_nom
    from Highland's θ0 of each slab at the beam momentum (PDG RPP 2024 eq. 34.15; any V gives an
    exact weight, it only sets the proposal).  ``integrate``: the target-kink cuts integrate the
    Gaussian core out (:func:`integrated_kink_cuts`), so no tilt is drawn (``follow`` must be
    empty) and the forced muons all get forced hard deflections (``kick_share`` = 1)."""
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
    not on the angles).  Nothing else the selection reads depends on X: the global fit of MS2 absorbs
    a common turn of all its hits (p, χ², the arms' matching), hit counts come from residuals
    (approximations: tracker acceptance edges are neglected, and so is the trigger's dependence on
    X — the true track at the trigger counters moves by X·(z_c − z_target) ≈ 10 mm for X ≈ θ0 — the
    trigger probability is that of the realised X).  A cut lo ≤ √(k_x² + k_y²)·s ≤ hi (s = |p_out| for
    ``kink_…_pt_MeV``, 1 for ``kink_…_mrad``) is then k_x² ∈ [(lo/s)² − k_y², (hi/s)² − k_y²],
    whose probability is a difference of normal CDFs.

    Returns ``{var: f(lo, hi) → log P (B,)}`` for both kink variables (−inf: cannot pass).
    """
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


# the smallest slope change a scenario must reach, as a share of the spectrometer's nominal bend:
# MS2 must fake p_out < 80 GeV from 160 (half the bend; a quarter leaves room for real losses and
# the beam spread); MS1 must move a beam muon of the low-momentum tail into the p_in window of the
# cards (±9 % around 160 GeV): a few per cent of the bend
MIN_REACH = {"p_out": 0.25, "p_in": 0.05}


def misreco_scenarios(setup: Setup, planes: tuple[str, ...], min_reach: dict[str, float] | None = None,
                      min_hits: dict[str, float] | None = None):
    """The scenarios of :class:`HitBias` for the trackers ``planes`` (concrete setup values).

    For every spectrometer and arm: (1) each single plane pushed, the arm's others natural; (2) each
    subset S (|S| ≥ 2) pushed, the arm's other planes lost; (3) each upstream variant together with
    each incoming one (a single plane, or a subset, pushed; the incoming arm's others natural).
    In MS2 (``p_out``) downstream pushes turn the slope up, upstream and incoming ones down (module
    docstring: a larger bend, a lower p); in MS1 (``p_in``) the other way round (a smaller bend: a
    beam muon of the low-momentum tail measured at a higher p).  A plane's push sign is its side of
    the weighted centre of the planes carrying hits (a plane at the centre stays natural).
    Scenarios whose largest slope change — strays at the road edge, or wide hits at 3σ_tail, in a
    weighted least-squares fit — is below ``min_reach[output]`` (default :data:`MIN_REACH`) × the
    nominal bend angle are dropped (the incoming arm only follows the upstream one and is not
    checked), and so are subsets that leave an arm fewer hits than ``min_hits`` asks of it (the smallest
    ``{output}_hits_up``/``_hits_down`` the selection requires: such events are never selected).
    Returns (planes, axis, roles, spectrometer index) with only the planes some scenario touches.
    """
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
        reach = (min_reach or MIN_REACH)[s.output]
        need = reach * abs(u.GEV_PER_TESLA_METRE * bl / (f(setup.beam.momentum) / u.GeV))
        mh = min_hits or {}
        # MS2 (p_out) fakes a LOW momentum: pushes enlarge |Δθ|; MS1 (p_in) fakes a HIGH one (a beam
        # muon of the low-momentum tail measured at the nominal momentum): pushes shrink |Δθ|
        sg = 1 if s.output == "p_out" else -1
        down = (singles(s.downstream, sg, need)
                + subsets(s.downstream, sg, need, mh.get(f"{s.output}_hits_down", 0.0)))
        up = singles(s.upstream, -sg, need) + subsets(s.upstream, -sg, need, mh.get(f"{s.output}_hits_up", 0.0))
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


@pytree_dataclass
class MisrecoParams(ChannelParams):
    """The channel's device-side parameters: the hit proposal and the deflection forcing (None:
    no deflection forcing)."""

    hits: HitBias | None = None
    deflect: DeflectBias | None = None


class MomentumMisreconstruction(Channel):
    """Fakes a low p_out with the hits of one arm and hides the kink with a forced deflection."""

    name = "momentum_misreconstruction"
    table = "channels.momentum_misreconstruction"
    muon_only = True

    def parse_settings(self, sec, ctx: CardContext) -> MisrecoSettings:
        model = ctx.model
        d = MisrecoSettings()
        trackers = [e.name for e in model.elements if e.kind == "tracker"]
        default_planes = tuple(dict.fromkeys(
            n for s in model.spectrometers for n in (*s.incoming, *s.upstream, *s.downstream) if s.output == "p_out"))
        planes = sec.strings("planes", list(default_planes))
        for n in planes:
            if n not in trackers:
                raise sec.fail("planes", list(planes), f"{n!r} is not a tracker of the model")
        if len(planes) < 2 and (self.name in ctx.channels or "planes" in sec.data):
            raise sec.fail("planes", list(planes), "needs at least 2 planes (a faked slope needs two displaced hits)")
        out = MisrecoSettings(
            planes=tuple(planes),
            beta=sec.number("beta", d.beta, gt=0.0, lt=1.0),
            push_power=sec.number("push_power", d.push_power, ge=0.0, le=20.0),
            push_window=sec.number("push_window", d.push_window, ge=0.0, lt=1.0),
            push_window_share=sec.number("push_window_share", d.push_window_share, ge=0.0, lt=1.0),
            deflect_follow=sec.numbers("deflect_follow", [], gt=0.0, le=2.0),
            deflect_beta=sec.number("deflect_beta", d.deflect_beta, gt=0.0, lt=1.0),
            deflect_kicks=sec.number("deflect_kicks", d.deflect_kicks, gt=0.0, lt=1.0),
            integrate_kink=sec.boolean("integrate_kink", True),
        )
        if out.integrate_kink and out.deflect_follow:
            raise sec.fail("deflect_follow", list(out.deflect_follow),
                           "a tilted scattering core has no effect with integrate_kink = true "
                           "(set it to false to tilt)")
        return out

    def build(self, ctx: BuildContext) -> MisrecoParams:
        cfg, setup, dtype = ctx.cfg, ctx.setup, ctx.dtype
        m = ctx.settings
        # hits per arm that every region of the selection asks for (scenarios below it are useless)
        need = {v: min(max((c.min for c in cuts if c.var == v and c.min is not None), default=0.0)
                       for _, cuts in cfg.regions)
                for v in {c.var for _, cuts in cfg.regions for c in cuts if c.var.endswith(("_hits_up", "_hits_down"))}}
        planes, axis, roles, spec = misreco_scenarios(setup, m.planes, min_hits=need)
        if not roles:
            raise ConfigError(f"{cfg.path}: [channels.momentum_misreconstruction] planes = {list(m.planes)}: "
                              "no arm of a spectrometer can fake a slope of a quarter of its bend with these planes")
        hits = HitBias(beta=jnp.asarray(m.beta, dtype), push_power=jnp.asarray(m.push_power, dtype),
                       planes=planes, axis=axis, roles=roles, spectrometer=spec,
                       window_lo=jnp.asarray(m.push_window, dtype),
                       window_share=jnp.asarray(m.push_window_share, dtype))
        deflect = deflect_bias(setup, [mat.X0_mm for mat in ctx.materials], m.deflect_follow, m.deflect_beta,
                               m.deflect_kicks, dtype, m.integrate_kink)
        return MisrecoParams(admixture=self.admixture(ctx), hits=hits, deflect=deflect)

    def before_transport(self, setup: Setup, params: MisrecoParams, state: dict, key_c: jax.Array):
        deflect = params.deflect
        if deflect is None:
            return state, None
        # the hit offsets come first (they do not depend on the muon), then each muon is turned to
        # hide a share of the kink they fake
        n, dtype = state["ekin"].shape[0], jnp.result_type(float)
        hits_pre = hit_offsets(setup, key_c, params.hits, n, dtype)
        base = -faked_kink(setup, hits_pre[0]) * deflect.inv_v
        state = dict(state)
        state.update(deflect_components(deflect, uniforms(stream_key(key_c, STREAM_CHANNEL, 1), (n,), dtype), base))
        return state, hits_pre

    def step_forcing(self, params: MisrecoParams):
        return params.deflect

    def hit_proposal(self, params: MisrecoParams):
        return params.hits

    def after_response(self, setup: Setup, params: MisrecoParams, final: dict, measured: dict, variables: dict,
                       log_w) -> tuple[Any, dict]:
        deflect = params.deflect
        if deflect is None:
            return log_w, {}
        log_w = log_w + deflect_log_weight(deflect, final)
        if not deflect.integrate:
            return log_w, {}
        # the target-kink cuts with the Gaussian core integrated out
        return log_w, integrated_kink_cuts(setup, measured["hits"], variables["p_out_GeV"], final["tilt_x"],
                                           final["tilt_v"])
