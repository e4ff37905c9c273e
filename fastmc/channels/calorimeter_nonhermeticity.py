"""Channel ``calorimeter_nonhermeticity``: the muon loses most of its energy in a hard photonuclear
interaction in the target, and the hadronic system escapes the calorimeters.

Forced, with exact weights: one photonuclear interaction with v = ΔE/E ≥ ``v_min`` at a uniform
depth in the ``target`` slab (:func:`forced_photonuclear_step`, a
:class:`fastmc.transport.ForcedVertex`), and the law of its leading neutral hadron (:class:`CaloBias`,
a :class:`fastmc.response.calorimeters.LeadingHadronProposal`): a leading neutral with
probability q (instead of the natural ``leading_neutral``), its energy share z half from the
natural law and half focused near 1, half of its p_T from a law ``pt_widen`` times wider (lateral
escapes), and escape with probability ≥ 1 − β (defensive mixture).  The rate is proportional to
the card's ``[showers] leading_neutral``, an external input: the report adds the rate per unit of it.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp

from fastmc import units as u
from fastmc._pytree import pytree_dataclass, static_field
from fastmc.channels.base import BuildContext, CardContext, Channel, ChannelParams, add_per_unit
from fastmc.config import check_signal_target
from fastmc.physics import sample_v_from_u, stochastic_xs
from fastmc.physics.deflection import N_KICK_UNIFORMS
from fastmc.physics.showers import PROC_PHOTONUCLEAR
from fastmc.rng import uniforms
from fastmc.transport import (
    Physics,
    combine_split_records,
    kick_angles,
    material_step,
    n_step_uniforms,
    split_reference_lengths,
)


@dataclasses.dataclass(frozen=True)
class CaloSettings:
    """``[channels.calorimeter_nonhermeticity]``: a photonuclear interaction with v ≥ v_min is forced
    in ``target``; its hadronic system is a leading neutral hadron with probability q_neutral
    (instead of the natural one), whose z is drawn half from the natural law and half from
    [1 − z_focus, 1], and which escapes with probability ≥ 1 − beta (defensive mixture)."""

    target: str = "ECAL"
    v_min: float = 0.4
    q_neutral: float = 0.5
    beta: float = 0.5
    z_focus: float = 0.02
    pt_widen: float = 5.0  # half of the leading neutral's p_T drawn from a law this many times wider


@pytree_dataclass
class CaloBias:
    """Biased law of the hadronic system of the forced photonuclear interaction in slab ``target``
    (:class:`fastmc.response.calorimeters.LeadingHadronProposal`; module docstring)."""

    q_neutral: jnp.ndarray
    beta: jnp.ndarray
    z_focus: jnp.ndarray
    v_min: jnp.ndarray
    pt_widen: jnp.ndarray
    target: str = static_field()

    def propose_z(self, uu, z, z_min):
        """z half from the natural law (``z``), half uniform in [z_lo, 1], z_lo = max(1 − z_focus, z_min)."""
        z_lo = jnp.maximum(1.0 - self.z_focus, z_min)
        z_b = jnp.where(uu[..., 4] < 0.5, z, z_lo + (1.0 - z_lo) * uu[..., 3])
        return z_b, {"z_b": z_b, "z_lo": z_lo}

    def propose_pt(self, uu, p_t, neutral_pt, carry):
        """Half of the p_T from a law ``pt_widen`` times wider (p_T e^{−2p_T/⟨p_T⟩} with ⟨p_T⟩ scaled)."""
        wide = uu[..., 10] >= 0.5
        p_t_b = jnp.where(wide, p_t * self.pt_widen, p_t)
        b1, b2 = 2.0 / neutral_pt, 2.0 / (neutral_pt * self.pt_widen)
        dens = lambda b, x: b * b * x * jnp.exp(-b * x)  # noqa: E731
        w_pt = dens(b1, p_t_b) / (0.5 * dens(b1, p_t_b) + 0.5 * dens(b2, p_t_b))
        return p_t_b, {**carry, "w_pt": w_pt}

    def propose_fate(self, uu, tau, tau_rem, leading_neutral, z_min, carry):
        """A leading neutral with probability q_neutral; it escapes (τ ≥ τ_rem) with probability
        1 − β, else keeps its natural optical depth; log P/Q of z, p_T, choice and fate."""
        f_ln, z_b, z_lo, w_pt = leading_neutral, carry["z_b"], carry["z_lo"], carry["w_pt"]
        ln_b = uu[..., 2] < self.q_neutral
        w_ln = jnp.where(ln_b, f_ln / self.q_neutral, (1.0 - f_ln) / (1.0 - self.q_neutral))
        w_z = (1.0 / (1.0 - z_min)) / (0.5 / (1.0 - z_min) + 0.5 * (z_b >= z_lo) / (1.0 - z_lo))
        tau_b = jnp.where(uu[..., 6] >= self.beta, tau_rem + 1.0, tau)
        escaped = tau_b >= tau_rem
        w_esc = jnp.where(escaped, jnp.exp(-tau_rem) / (self.beta * jnp.exp(-tau_rem) + 1.0 - self.beta),
                          1.0 / self.beta)
        lw = jnp.log(w_ln) + jnp.where(ln_b, jnp.log(w_z) + jnp.log(w_esc) + jnp.log(w_pt), 0.0)
        return ln_b, tau_b, lw


def forced_photonuclear_step(physics: Physics, state: dict, mat, length, density_scale, k: int, key,
                             length_ref=None, *, v_min):
    """A material step with one photonuclear interaction of v = ΔE/E ≥ ``v_min`` forced at a uniform depth.

    The weight added to ``log_w`` is the probability of such an interaction in the step (thin
    target: Σ_pn(E_d; v ≥ v_min)·L with Σ_pn(v ≥ v_min) = Σ_pn(v > v_cut)·(1 − F(v_min)), F the
    CDF of the photonuclear v at E_d, found by 24 bisections of the inverse-CDF table); v is drawn
    from the same table restricted to [v_min, v_max].  Natural photonuclear interactions keep being
    sampled around it: events with a natural one above v_min as well are counted in both the forced
    and the natural way, a relative bias of order Σ_pn·L (≈ 1e-4 in 40 X0 of lead), far below
    the statistical precision.
    """
    m = u.muon_mass_c2
    bsz = state["ekin"].shape[0]
    dtype = state["ekin"].dtype
    ue = uniforms(jax.random.fold_in(key, 17), (bsz, 2 + N_KICK_UNIFORMS), dtype)
    d = ue[:, 0] * length
    ref1, ref2 = split_reference_lengths(length_ref, ue[:, 0])
    st1, r1 = material_step(physics, state, mat, d, density_scale, k,
                            uniforms(jax.random.fold_in(key, 18), (bsz, n_step_uniforms(k)), dtype), ref1)
    ekin = st1["ekin"]
    safe = jnp.maximum(ekin, 1.0)
    proc = jnp.full((bsz,), PROC_PHOTONUCLEAR, jnp.int32)
    lo, hi = jnp.zeros_like(safe), jnp.ones_like(safe)
    for _ in range(24):
        mid = 0.5 * (lo + hi)
        below = sample_v_from_u(physics.tables, mat, proc, safe, mid) < v_min
        lo, hi = jnp.where(below, mid, lo), jnp.where(below, hi, mid)
    u_min = hi
    v = sample_v_from_u(physics.tables, mat, proc, safe, u_min + ue[:, 1] * (1.0 - u_min))
    xs_pn = stochastic_xs(physics.tables, mat, safe)[:, PROC_PHOTONUCLEAR] * density_scale
    prob = xs_pn * (1.0 - u_min) * length
    alive = st1["alive"] & (prob > 0.0) & (v >= v_min * 0.999)
    de = jnp.where(alive, jnp.minimum(v * (ekin + m), ekin), 0.0)
    st1 = dict(st1)
    st1["ekin"] = ekin - de
    # the muon's deflection at the forced vertex (fastmc.physics.deflection)
    kx, ky = kick_angles(proc, ekin, de, ue[:, 2:])
    st1["tx"] = st1["tx"] + jnp.where(alive, kx, 0.0)
    st1["ty"] = st1["ty"] + jnp.where(alive, ky, 0.0)
    # on top of the first half-step's own weight (its count reweighting in soft mode; 0 in hard mode)
    st1["log_w"] = st1["log_w"] + jnp.where(alive, jnp.log(jnp.maximum(prob, 1e-37)), -jnp.inf)
    st2, r2 = material_step(physics, st1, mat, length - d, density_scale, k,
                            uniforms(jax.random.fold_in(key, 19), (bsz, n_step_uniforms(k)), dtype), ref2)
    return st2, combine_split_records(r1, r2, ue[:, 0], {"de": de, "proc": PROC_PHOTONUCLEAR})


@pytree_dataclass
class CaloParams(ChannelParams):
    """The channel's device-side parameters: the leading-hadron proposal (its ``v_min`` also sets
    the forced interaction)."""

    calo: CaloBias | None = None


class CalorimeterNonhermeticity(Channel):
    """Forces a hard photonuclear interaction in the target and the escape of its leading neutral."""

    name = "calorimeter_nonhermeticity"
    table = "channels.calorimeter_nonhermeticity"
    muon_only = True

    def parse_settings(self, sec, ctx: CardContext) -> CaloSettings:
        d = CaloSettings()
        out = CaloSettings(
            target=sec.string("target", d.target),
            v_min=sec.number("v_min", d.v_min, gt=0.0, lt=1.0),
            q_neutral=sec.number("q_neutral", d.q_neutral, gt=0.0, lt=1.0),
            beta=sec.number("beta", d.beta, gt=0.0, lt=1.0),
            z_focus=sec.number("z_focus", d.z_focus, gt=0.0, le=1.0),
            pt_widen=sec.number("pt_widen", d.pt_widen, ge=1.0, le=100.0),
        )
        if self.name in ctx.channels:
            check_signal_target(ctx.model, out.target, lambda why: sec.fail("target", out.target, why))
        return out

    def check_card(self, ctx: CardContext) -> None:
        if ctx.showers.model != "profile":
            raise ctx.run.fail("channels", list(ctx.channels), f'{self.name} needs [showers] model = "profile"')
        if ctx.showers.leading_neutral == 0.0:
            raise ctx.showers_table.fail("leading_neutral", 0.0, f"{self.name} needs leading_neutral > 0")

    def build(self, ctx: BuildContext) -> CaloParams:
        c, dtype = ctx.settings, ctx.dtype
        calo = CaloBias(q_neutral=jnp.asarray(c.q_neutral, dtype), beta=jnp.asarray(c.beta, dtype),
                        z_focus=jnp.asarray(c.z_focus, dtype), v_min=jnp.asarray(c.v_min, dtype),
                        pt_widen=jnp.asarray(c.pt_widen, dtype), target=c.target)
        return CaloParams(admixture=self.admixture(ctx), forced_slot=ctx.setup.index(c.target), calo=calo)

    def forced_vertex(self, params: CaloParams):
        return functools.partial(forced_photonuclear_step, v_min=params.calo.v_min)

    def hadron_proposal(self, params: CaloParams):
        return params.calo

    def report(self, cfg, est: dict) -> None:
        # the leading-neutral probability is an external input (the channel's rate is ∝ it: events
        # without a leading neutral deposit their energy)
        add_per_unit(est, "leading neutral hadron", cfg.showers.leading_neutral)
