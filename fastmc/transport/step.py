"""One element of material: the per-step kernel of the transport (:func:`material_step`, :func:`drift`).

Inside one piece of material of length L (:func:`material_step`):
1. the number N of stochastic interactions (v > v_c, all processes) is drawn from a Poisson
   law of mean Σ(E_in)·L by inverse CDF of one uniform, capped at the element's static
   ``max_interactions`` K.  Draws beyond the cap are *counted* (``overflow``), never silent;
2. their depths are N ordered uniforms in [0, L] (K uniforms, the unused slots parked at L,
   sorted);
3. between interactions the muon loses energy continuously along the CSDA range table of the
   sub-cut loss; at each interaction the process is chosen with probability σ_p/Σ and
   v = ΔE/E from its inverse-CDF table (``fastmc.physics``);
4. the straggling of the sub-cut loss is added once (``fastmc.physics.straggling``: Landau–Vavilov
   knock-ons and a compound-Poisson radiative part; one Gaussian in the soft optimisation mode);
5. multiple scattering (``fastmc.physics.scattering``) changes the slopes and shifts the
   position at the exit, at the momentum p_eff of the segments between the interactions
   (1/p_eff² = Σ f_s/p_s²); each interaction adds its own deflection of the muon
   (``fastmc.physics.deflection``: the p_T taken by the δ-ray, photon, pair or virtual photon).

Σ is evaluated at the entry energy: at the energies and thicknesses of NA64μ the cross sections
above v_c change by < 1 % across one element (they are nearly flat in E), and the bias of that
approximation is far below the statistical precision of the validation tables.

Every piece of randomness comes as one uniform array per step (DESIGN.md §4).  Also here: the
device-side :class:`Physics` bundle, the two protocols a channel's transport forcing satisfies
(:class:`StepForcing`, :class:`ForcedVertex`) and the helpers a forced vertex builds on
(:func:`split_reference_lengths`, :func:`combine_split_records`).
"""

from __future__ import annotations

from typing import Any, Protocol

import jax
import jax.numpy as jnp
import numpy as np

from fastmc import units as u
from fastmc.physics import (
    continuous_dedx,
    continuous_ekin_after,
    continuous_straggling_var,
    sample_v_from_u,
    stochastic_xs,
)
from fastmc.physics.deflection import N_KICK_UNIFORMS, PROC_PHOTONUCLEAR, muon_kick_pt
from fastmc.physics.scattering import N_UNIFORMS as N_SCAT_UNIFORMS
from fastmc.physics.scattering import (
    SPARSE_SINGLE,
    half_circle_azimuth,
    sample_scattering,
    sample_scattering_info,
)
from fastmc.physics.straggling import (
    N_RAD_UNIFORMS,
    fluctuation_variance,
    sample_fluctuation,
    sample_radiative_fluctuation,
)
from fastmc.physics.straggling import N_UNIFORMS as N_ION_UNIFORMS
from fastmc.rng import normal_from_uniform, uniforms
from fastmc.species import SPECIES_K, SPECIES_MU, SPECIES_PI, species_masses

N_STRAGGLE_UNIFORMS = N_ION_UNIFORMS + N_RAD_UNIFORMS

N_PROC = 4


def state_mass(state: dict) -> Any:
    """Per-particle mass (MeV): the muon mass unless the state carries hadron species."""
    if "species" not in state:
        return u.muon_mass_c2
    m = species_masses()
    sp = state["species"]
    return jnp.where(sp == SPECIES_K, m[1], jnp.where(sp == SPECIES_PI, m[2], m[0])).astype(state["ekin"].dtype)


def kinematics(ekin: jnp.ndarray, mass: Any = u.muon_mass_c2) -> tuple[jnp.ndarray, jnp.ndarray]:
    """(|p|, β) of a particle of kinetic energy ``ekin`` (MeV) and mass ``mass`` (muon by default)."""
    m = mass
    etot = ekin + m
    pmag = jnp.sqrt(jnp.maximum(ekin * (ekin + 2.0 * m), 0.0))
    return pmag, pmag / etot


class Physics:
    """Device-side physics bundle: energy-loss tables + scattering parameters + static settings.

    Registered as a pytree (tables and params are pytrees; the settings are static).
    """
    def __init__(
        self,
        tables: Any,
        scattering: Any,
        scattering_model: str = "highland_single",
        lambda_i: Any = None,
        decay: Any = None,
    ):
        self.tables = tables
        self.scattering = scattering
        self.scattering_model = scattering_model
        self.lambda_i = lambda_i  # (n_mat,) nuclear interaction length [mm] (hadron absorption)
        self.decay = decay  # fastmc.physics.decay.DecayTables (hadron channels) or None

    def tree_flatten(self):
        return (self.tables, self.scattering, self.lambda_i, self.decay), (self.scattering_model,)

    @classmethod
    def tree_unflatten(cls, aux, children):
        return cls(children[0], children[1], aux[0], children[2], children[3])


jax.tree_util.register_pytree_node(Physics, Physics.tree_flatten, Physics.tree_unflatten)


def n_step_uniforms(k: int) -> int:
    """Uniforms one material step with ``k`` interaction slots consumes per muon."""
    return 2 + 3 * k + N_SCAT_UNIFORMS + N_KICK_UNIFORMS * k + N_STRAGGLE_UNIFORMS


def _knock_on_kinematics(etot: jnp.ndarray, mass: float = u.muon_mass_c2):
    """(β², γ, T_max) of a projectile of total energy ``etot`` [MeV] (PDG RPP 2024 eq. 34.4)."""
    gamma = etot / mass
    bg2 = jnp.maximum(gamma * gamma - 1.0, 0.0)
    r = u.electron_mass_c2 / mass
    return bg2 / (gamma * gamma), gamma, 2.0 * u.electron_mass_c2 * bg2 / (1.0 + 2.0 * gamma * r + r * r)


def kick_angles(proc, ekin_before, de, uk):
    """Projected angle changes (rad) of muons of kinetic energy ``ekin_before`` [MeV] in an
    interaction of process ``proc`` transferring ``de`` (:mod:`fastmc.physics.deflection`);
    ``uk`` (..., N_KICK_UNIFORMS): the azimuth, then the process's own draws."""
    m = u.muon_mass_c2
    pt = muon_kick_pt(proc, ekin_before + m, de, uk[..., 1:])
    p_after, _ = kinematics(jnp.maximum(ekin_before - de, 0.0), m)
    dth = pt / jnp.maximum(p_after, 1.0)
    phi = 2.0 * np.pi * uk[..., 0]
    return dth * jnp.cos(phi), dth * jnp.sin(phi)


def sort_slots(x: jnp.ndarray) -> jnp.ndarray:
    """``jnp.sort(x, axis=-1)`` for the few interaction slots of a step, as an odd–even
    transposition network (K rounds of compare-exchange, Knuth, TAOCP vol. 3 §5.3.4 ex. 37):
    elementwise min/max that XLA fuses with the rest of the step.  Same values bit for bit; on
    the CPU backend ~10× faster than XLA's comparator sort for (2²⁰, 8) float32."""
    k = x.shape[-1]
    if k > 16:  # the network is O(K²): XLA's sort beyond a handful of slots
        return jnp.sort(x, axis=-1)
    cols = [x[..., i] for i in range(k)]
    for r in range(k):
        for i in range(r % 2, k - 1, 2):
            cols[i], cols[i + 1] = jnp.minimum(cols[i], cols[i + 1]), jnp.maximum(cols[i], cols[i + 1])
    return jnp.stack(cols, axis=-1)


def _slot_losses(e_at, v, active, k: int) -> tuple[list, list]:
    """The interactions of the slots in depth order: slot j takes ΔE_j = min(v_j (E_j + m), E_j)
    of what is left, E_j = E_at,j − (earlier transfers), 0 in unused slots.  Returns the lists of
    E_j (the energy before each interaction) and ΔE_j, each (R,) per slot."""
    m = u.muon_mass_c2
    lost = jnp.zeros_like(e_at[:, 0])
    e_before, de_all = [], []
    for j in range(k):
        avail = jnp.maximum(e_at[:, j] - lost, 0.0)
        de = jnp.where(active[:, j], jnp.minimum(v[:, j] * (avail + m), avail), 0.0)
        e_before.append(avail)
        de_all.append(de)
        lost = lost + de
    return e_before, de_all


def _poisson_count(lam: jnp.ndarray, u0: jnp.ndarray, k: int) -> tuple[jnp.ndarray, jnp.ndarray]:
    """N ~ Poisson(lam) by inverse CDF, capped at k; also the overflow flag (N would exceed k)."""
    term = jnp.exp(-lam)
    cdf = term
    n = jnp.zeros(lam.shape, dtype=jnp.int32)
    for j in range(k):
        n = n + (u0 > cdf).astype(jnp.int32)
        term = term * lam / (j + 1)
        cdf = cdf + term
    return n, u0 > cdf


class StepForcing(Protocol):
    """What a deflection forcing hands :func:`material_step` and :func:`transport` (importance
    sampling of the multiple scattering and of the hard deflections in some slots; the proposal's
    log q/p is accumulated in the state, the caller turns it into a weight)."""

    slots: tuple[bool, ...]  # per element slot: forced there
    axis: str  # projection ("x" or "y") in which the deflection is forced
    pn_share: float  # share of a forced muon's interactions made photonuclear
    pn_t_power: float  # the t-proposal uniform u of a forced photonuclear kick becomes u^(1/pn_t_power)


class ForcedVertex(Protocol):
    """A material step with one interaction forced in it (the ``BRANCH_FORCED`` slots of
    :func:`transport`): it adds log P(interaction) to ``state["log_w"]`` and returns the new state
    and the step's truth record (:func:`combine_split_records` builds it for a split step)."""

    def __call__(self, physics: Physics, state: dict, mat: jnp.ndarray, length: jnp.ndarray,
                 density_scale: jnp.ndarray, k: int, key: jax.Array,
                 length_ref: jnp.ndarray | None = None) -> tuple[dict, dict]: ...


def material_step(
    physics: Physics,
    state: dict[str, jnp.ndarray],
    mat: jnp.ndarray,
    length: jnp.ndarray,
    density_scale: jnp.ndarray,
    k: int,
    uu: jnp.ndarray,
    length_ref: jnp.ndarray | None = None,
    forcing: StepForcing | None = None,
    tilt_on: jnp.ndarray | None = None,
    sparse: tuple[int, int] | None = None,
    key_side: jax.Array | None = None,
) -> tuple[dict[str, jnp.ndarray], dict[str, jnp.ndarray]]:
    """Transport through ``length`` mm of material ``mat``; ``uu`` has shape (B, n_step_uniforms(k)).

    Compacted interaction slots (``sparse = (k_main, cap)``, static; hard mode without forcing
    only): same laws, computed on fewer rows (:func:`_sparse_slots`).  ``uu`` then has shape
    (B, n_step_uniforms(k_main)) and the slot uniforms of the muons with more than k_main
    interactions are drawn from ``key_side``.

    Deflection forcing (``forcing``, a :class:`StepForcing`; ``tilt_on`` ∈ {0, 1} flags this slot,
    and the state carries ``tilt_c``, ``kick_force``, ``kick_sign``, ``tilt_x``, ``tilt_v``,
    ``kick_lr``): the Gaussian core of
    the multiple scattering in projection ``forcing.axis`` is drawn with its mean shifted by
    tilt_c·σ² (:func:`fastmc.physics.scattering.sample_scattering_info`), and the Gaussian angle
    and σ² of the flagged slots are summed in ``state["tilt_x"]``, ``state["tilt_v"]`` for the
    likelihood ratio exp(c·X − c²V/2) of the whole sequence (exponential tilting).  Where
    ``state["kick_force"]`` is 1, the hard deflections are forced instead: interactions are made
    photonuclear with probability ``forcing.pn_share`` and their kicks pushed (t-proposal uniform
    raised to 1/``forcing.pn_t_power``: large t; azimuth on the side
    ``state["kick_sign"]``), and so are the single Coulomb scatters (``force`` of
    sample_scattering_info); log q/p of that proposal at the realised draws is summed in
    ``state["kick_lr"]`` for every muon.

    ``length_ref`` (soft mode, :mod:`fastmc.optimise`): the number of interactions is drawn from
    the Poisson law of a *reference* length (a frozen proposal) and the likelihood ratio
    Pois(N; Σℓ)/Pois(N; Σℓ_ref) = (ℓ/ℓ_ref)^N e^{−Σ(ℓ − ℓ_ref)} goes into ``state["log_w"]``: the
    estimate is unchanged in expectation and, for fixed random numbers, smooth in ℓ (a count
    drawn by inverse CDF jumps when ℓ moves; Glasserman, "Monte Carlo Methods in Financial
    Engineering" (2004) §7.3, the likelihood-ratio method).  At ℓ = ℓ_ref the weight is 1.

    Returns the new state and the truth record of the step: continuous (sub-cut) loss
    ``e_cont``, stochastic loss per process ``e_proc`` (B, 4), hardest single transfer
    ``hardest`` and its process ``hardest_proc`` (−1 if none), ``overflow`` (bool).
    """
    tables = physics.tables
    m = u.muon_mass_c2
    ekin_in = state["ekin"]
    alive = state["alive"]
    mass = state_mass(state)
    is_mu = state["species"] == SPECIES_MU if "species" in state else jnp.ones_like(alive)
    path = length * density_scale  # mass-equivalent length at nominal density
    # Tables are muon tables.  A hadron loses energy by ionisation like a muon of the same βγ (the
    # Bethe formula depends on βγ only), i.e. of kinetic energy m_μ(γ − 1); its radiative losses
    # are (m_μ/M)² smaller and are neglected (no stochastic interactions for hadrons).
    ekin_eq = jnp.where(is_mu, ekin_in, ekin_in * (m / mass))
    safe_e = jnp.maximum(ekin_eq, 1.0)
    xs = stochastic_xs(tables, mat, safe_e) * density_scale  # (B, 4) 1/mm
    xs = jnp.where((alive & is_mu)[:, None], xs, 0.0)
    xs_tot = jnp.sum(xs, axis=-1)
    if length_ref is None:
        n, overflow = _poisson_count(xs_tot * length, uu[:, 0], k)
    else:
        lam, lam_ref = xs_tot * length, xs_tot * length_ref
        n, overflow = _poisson_count(lam_ref, uu[:, 0], k)
        ratio = jnp.where(lam_ref > 0, length / jnp.where(lam_ref > 0, length_ref, 1.0), 1.0)
        lw_count = n * jnp.log(jnp.maximum(ratio, 1e-300)) - (lam - lam_ref)
    overflow = overflow & alive
    if sparse is not None and (forcing is not None or length_ref is not None):
        raise ValueError("material_step: sparse slots need the hard mode without forcing")
    kc = k if sparse is None else sparse[0]  # interaction slots laid out in uu

    # ordered depths (fractions of the length) of the N interactions; unused slots parked at 1
    slot = jnp.arange(k)
    if sparse is None:
        depth = sort_slots(jnp.where(slot[None, :] < n[:, None], uu[:, 2 : 2 + k], 1.0))
    cum = jnp.cumsum(xs, axis=-1) / jnp.maximum(xs_tot, 1e-30)[:, None]

    # Continuous (sub-cut) loss over the whole step, once: Δc = E_in − R⁻¹(R(E_in) − L).  The
    # energy at an interaction at depth d is taken as E_in − Δc·d − (earlier stochastic losses),
    # and the continuous loss after a hard interaction as unchanged: the sub-cut dE/dx varies by
    # < 5 % between 20 and 200 GeV (a(E) rises logarithmically), so the error is < 5 % of Δc
    # (≲ 25 MeV in the 2022 ECAL) — far below every resolution in the chain.
    e_after_cont = continuous_ekin_after(tables, mat, safe_e, path)
    d_cont = jnp.where(alive, safe_e - e_after_cont, 0.0)
    e_proc = jnp.zeros(ekin_in.shape + (N_PROC,), dtype=ekin_in.dtype)
    hardest = jnp.zeros_like(ekin_in)
    hardest_proc = jnp.full(ekin_in.shape, -1, dtype=jnp.int32)
    hardest_depth = jnp.zeros_like(ekin_in)
    kick_force = forcing is not None
    tilt_axis = "x" if forcing is None else forcing.axis
    if k and sparse is not None:
        k0c = 2 + 3 * kc + N_SCAT_UNIFORMS
        u_main = jnp.concatenate([uu[:, 2 : 2 + 3 * kc], uu[:, k0c : k0c + N_KICK_UNIFORMS * kc]], axis=1)
        depth, proc, e_at, de_k, kx, ky = _sparse_slots(tables, mat, k, sparse, n, cum, ekin_in, d_cont, u_main,
                                                        key_side)
        for j in range(k):
            e_proc = e_proc + jax.nn.one_hot(proc[:, j], N_PROC, dtype=ekin_in.dtype) * de_k[:, j, None]
            harder = de_k[:, j] > hardest
            hardest = jnp.where(harder, de_k[:, j], hardest)
            hardest_proc = jnp.where(harder, proc[:, j], hardest_proc)
            hardest_depth = jnp.where(harder, depth[:, j], hardest_depth)
    elif k:
        # process choice and v for all K slots in one vectorised look-up, from E_in − Δc·d
        e_at = jnp.maximum(ekin_in[:, None] - d_cont[:, None] * depth, 1.0)
        u_proc = uu[:, 2 + k : 2 + 2 * k]
        if kick_force:
            # photonuclear forcing: a forced muon's interactions in a flagged slot are photonuclear
            # with probability pn_share instead of p_pn (the last process: the interval [1 − p_pn, 1)
            # of the choice uniform)
            pn_share = forcing.pn_share
            p_pn = jnp.clip(xs[:, PROC_PHOTONUCLEAR] / jnp.maximum(xs_tot, 1e-30), 1e-12, 1.0 - 1e-6)[:, None]
            forced_mu = (state["kick_force"] * tilt_on > 0)[:, None]
            u_forced = jnp.where(u_proc < 1.0 - pn_share, u_proc * (1.0 - p_pn) / (1.0 - pn_share),
                                 1.0 - p_pn + (u_proc - (1.0 - pn_share)) * p_pn / pn_share)
            u_proc = jnp.where(forced_mu, u_forced, u_proc)
        proc = jnp.sum(u_proc[:, :, None] > cum[:, None, :-1], axis=-1).astype(jnp.int32)
        v = sample_v_from_u(tables, mat, proc, e_at, uu[:, 2 + 2 * k : 2 + 3 * k])
        active = slot[None, :] < n[:, None]
        e_before, de_all = _slot_losses(e_at, v, active, k)
        for j in range(k):
            de = de_all[j]
            e_proc = e_proc + jax.nn.one_hot(proc[:, j], N_PROC, dtype=ekin_in.dtype) * de[:, None]
            harder = de > hardest
            hardest = jnp.where(harder, de, hardest)
            hardest_proc = jnp.where(harder, proc[:, j], hardest_proc)
            hardest_depth = jnp.where(harder, depth[:, j], hardest_depth)
    # deflection of the muon in its discrete interactions (fastmc.physics.deflection): the kick
    # of slot j turns the direction by p_T/p_after and displaces the exit point by that angle
    # times the remaining depth (1 − d_j)·L
    kick_tx = kick_ty = kick_dx = kick_dy = jnp.zeros_like(ekin_in)
    if k and sparse is not None:
        kick_tx, kick_ty = jnp.sum(kx, axis=-1), jnp.sum(ky, axis=-1)
        rest = jnp.asarray(length)[..., None] * (1.0 - depth)
        kick_dx, kick_dy = jnp.sum(kx * rest, axis=-1), jnp.sum(ky * rest, axis=-1)
    elif k:
        k0 = 2 + 3 * k + N_SCAT_UNIFORMS
        uk = uu[:, k0 : k0 + N_KICK_UNIFORMS * k].reshape(ekin_in.shape[0], k, N_KICK_UNIFORMS)
        de_k = jnp.stack(de_all, axis=-1)
        if kick_force:
            # ... and their kick is pushed: the first proposal uniform of the momentum transfer t
            # drawn as u^(1/pn_t_power) (large t), the azimuth on the half circle of the bend-plane
            # side ``kick_sign``
            pn_t_power = forcing.pn_t_power

            is_pn = (proc == PROC_PHOTONUCLEAR) & active
            push = forced_mu & is_pn
            az, lr_az = half_circle_azimuth(uk[..., 0], push, tilt_axis, state["kick_sign"])
            uk = uk.at[..., 0].set(az)
            uk = uk.at[..., 1].set(jnp.where(push, uk[..., 1] ** (1.0 / pn_t_power), uk[..., 1]))
            # log q/p of the forced component at the realised draws, for every muon
            lr_pn = jnp.log(pn_t_power) + (pn_t_power - 1.0) * jnp.log(uk[..., 1]) + lr_az
            lr_choice = jnp.where(proc == PROC_PHOTONUCLEAR, jnp.log(pn_share / p_pn),
                                  jnp.log((1.0 - pn_share) / (1.0 - p_pn)))
            lr_kick = jnp.sum(jnp.where(active, lr_choice + jnp.where(is_pn, lr_pn, 0.0), 0.0), axis=-1)
        kx, ky = kick_angles(proc, jnp.stack(e_before, axis=-1), de_k, uk)
        kick_tx, kick_ty = jnp.sum(kx, axis=-1), jnp.sum(ky, axis=-1)
        rest = jnp.asarray(length)[..., None] * (1.0 - depth)
        kick_dx, kick_dy = jnp.sum(kx * rest, axis=-1), jnp.sum(ky * rest, axis=-1)
    e_stoch = jnp.sum(e_proc, axis=-1)
    # Straggling of the sub-cut loss (one draw per step).  Hard mode: the knock-on part by
    # fastmc.physics.straggling.sample_fluctuation (Landau–Vavilov: exact large knock-ons above ξ
    # + a three-cumulant body) and the rest of the tabulated sub-cut variance (radiation below the
    # cut) by sample_radiative_fluctuation (dN/dε ∝ 1/ε, variance matched); a thin layer gets its
    # Landau peak and tail instead of a symmetric Gaussian.  Soft
    # mode (length_ref given, fastmc.optimise) keeps one Gaussian of the same variance: its draw
    # is smooth in the geometry, the tail slots' knock-on counts are not.
    var = continuous_straggling_var(tables, mat, safe_e, path)
    if length_ref is None:

        etot_eq = safe_e + m
        beta2 = 1.0 - (m / etot_eq) ** 2
        _, _, t_max = _knock_on_kinematics(etot_eq)
        t_cut = jnp.minimum(jnp.maximum(tables.v_cut * etot_eq, tables.e_cut), t_max)
        xi = tables.xi_per_mm[jnp.asarray(mat, jnp.int32)] * path / beta2
        b = beta2 / t_max
        var_rad = jnp.maximum(var - fluctuation_variance(xi, t_cut, b), 0.0)
        us = uu[:, n_step_uniforms(kc) - N_STRAGGLE_UNIFORMS :]
        fluct = sample_fluctuation(xi, t_cut, us[:, :N_ION_UNIFORMS], b) + sample_radiative_fluctuation(
            var_rad, t_cut, us[:, N_ION_UNIFORMS:])
    else:
        fluct = jnp.sqrt(var) * normal_from_uniform(uu[:, 1])
    ekin = ekin_in - d_cont - e_stoch - jnp.where(alive, fluct, 0.0)  # loss = Δc + fluctuation
    ekin = jnp.where(e_after_cont > 0.0, ekin, 0.0)  # ranged out
    ekin = jnp.clip(ekin, 0.0, ekin_in)
    ekin = jnp.where(alive, ekin, ekin_in)
    e_cont = jnp.where(alive, ekin_in - ekin - e_stoch, 0.0)

    # multiple scattering at the momentum p_eff with 1/p_eff² = Σ_s f_s/p_s² over the segments
    # between the interactions (fractions f_s of the step, p_s at each segment's midpoint): θ0² ∝
    # ∫ dx/p(x)² (PDG RPP 2024 eq. 34.15 without its logarithm), so a muon that radiates early in
    # a thick absorber scatters at its lower momentum over the rest of it.  Without interactions
    # this is the continuous-loss midpoint (≈ √(p_in p_out) used before).
    if k:
        lost_cum = jnp.cumsum(de_k, axis=-1)
        start = jnp.concatenate([jnp.zeros_like(depth[:, :1]), depth], axis=-1)
        end = jnp.concatenate([depth, jnp.ones_like(depth[:, :1])], axis=-1)
        e_start = jnp.concatenate([ekin_in[:, None], e_at - lost_cum], axis=-1)
    else:
        start, end, e_start = jnp.zeros_like(ekin_in)[:, None], jnp.ones_like(ekin_in)[:, None], ekin_in[:, None]
    frac = end - start
    e_mid = jnp.maximum(e_start - 0.5 * d_cont[:, None] * frac, 0.0)
    p_seg, _ = kinematics(e_mid, jnp.asarray(mass)[..., None] if jnp.ndim(mass) else mass)
    ip2 = 1.0 / jnp.maximum(p_seg, 1.0) ** 2
    inv_p2 = jnp.sum(frac * ip2, axis=-1)
    p_mid = jax.lax.rsqrt(jnp.maximum(inv_p2, 1e-30))
    # where along the step the scattering happens (weight f_s/p_s²): the lever arms of the exit
    # displacement, ∫w(1 − z) and ∫w(1 − z)² — a muon that radiates early scatters late, and its
    # displacement is smaller than L θ/√3
    norm = jnp.maximum(inv_p2, 1e-30)
    lever = (jnp.sum(ip2 * frac * (1.0 - 0.5 * (start + end)), axis=-1) / norm,
             jnp.sum(ip2 * ((1.0 - start) ** 3 - (1.0 - end) ** 3), axis=-1) / (3.0 * norm))
    beta_mid = p_mid / jnp.sqrt(p_mid**2 + mass**2)
    scat = sample_scattering_info(
        physics.scattering,
        mat,
        jnp.maximum(p_mid, 1.0),
        beta_mid,
        path,
        uu[:, 2 + 3 * kc : 2 + 3 * kc + N_SCAT_UNIFORMS],
        model=physics.scattering_model,
        lever=lever,
        tilt=None if tilt_on is None else state["tilt_c"] * tilt_on,
        tilt_axis=tilt_axis,
        force=state["kick_force"] * tilt_on if kick_force else None,
        force_sign=state["kick_sign"] if kick_force else None,
        sparse=SPARSE_SINGLE,
    )
    dtx, dty = scat["dtheta_x"] + kick_tx, scat["dtheta_y"] + kick_ty
    dx, dy = scat["dx"] + kick_dx, scat["dy"] + kick_dy
    overflow = overflow | (scat["overflow"] & alive)
    still = alive & (ekin > 0.0)
    new = dict(state)
    new["x"] = state["x"] + state["tx"] * length + jnp.where(still, dx, 0.0)
    new["y"] = state["y"] + state["ty"] * length + jnp.where(still, dy, 0.0)
    new["tx"] = state["tx"] + jnp.where(still, dtx, 0.0)
    new["ty"] = state["ty"] + jnp.where(still, dty, 0.0)
    new["ekin"] = ekin
    new["alive"] = still
    rec = {
        "e_cont": e_cont,
        "e_proc": e_proc,
        "hardest": hardest,
        "hardest_proc": hardest_proc,
        "hardest_depth": hardest_depth,  # fraction of the step length
        "overflow": overflow,
    }
    if length_ref is not None:
        new["log_w"] = state["log_w"] + jnp.where(alive & is_mu, lw_count, 0.0)
    if tilt_on is not None:
        new["tilt_x"] = state["tilt_x"] + jnp.where(alive, tilt_on * scat["gauss_angle"], 0.0)
        new["tilt_v"] = state["tilt_v"] + jnp.where(alive, tilt_on * scat["sigma_core"] ** 2, 0.0)
    if kick_force:
        lr_force = scat["force_lr"] + (lr_kick if k else 0.0)
        new["kick_lr"] = state["kick_lr"] + jnp.where(alive & (tilt_on > 0), lr_force, 0.0)
    return new, rec


def _slot_block(tables, mat, k: int, n, cum, ekin_in, d_cont, us):
    """The K interaction slots of a step for the rows given (steps 2–3 of the module docstring and
    the kicks), exactly as :func:`material_step` computes them without forcing.  ``us`` (R, 10·K
    columns: depths K | process choice K | v K | kicks N_KICK_UNIFORMS·K).  Returns (R, K) arrays:
    depth, process, energy at the interaction E_in − Δc·d, transfer ΔE (0 in unused slots), kick x, y."""
    slot = jnp.arange(k)
    depth = sort_slots(jnp.where(slot[None, :] < n[:, None], us[:, :k], 1.0))
    e_at = jnp.maximum(ekin_in[:, None] - d_cont[:, None] * depth, 1.0)
    proc = jnp.sum(us[:, k : 2 * k, None] > cum[:, None, :-1], axis=-1).astype(jnp.int32)
    v = sample_v_from_u(tables, mat, proc, e_at, us[:, 2 * k : 3 * k])
    active = slot[None, :] < n[:, None]
    e_before, de_all = _slot_losses(e_at, v, active, k)
    de_k = jnp.stack(de_all, axis=-1)
    uk = us[:, 3 * k : 3 * k + N_KICK_UNIFORMS * k].reshape(ekin_in.shape[0], k, N_KICK_UNIFORMS)
    kx, ky = kick_angles(proc, jnp.stack(e_before, axis=-1), de_k, uk)
    return depth, proc, e_at, de_k, kx, ky


SPARSE_THIN = (0, 32)
"""(k_main, B/cap) of the thin kernel: the one interaction slot is computed only for the muons that
interact (P ≤ 1 − e^{−THIN_LAMBDA} ≈ 0.02 by construction of the thin slots, ~1e-4 … 2e-3 in the 2022
setup), gathered in pieces of B/32 rows (one piece runs in the 2022 setup; more only if needed)."""

SPARSE_THICK = (2, 8)
"""(k_main, B/cap) of the thick kernel: two slots for every muon, all K for the muons with N > 2
(P = 9.5 % at λ = 1.08, a 2022 HCAL module at 160 GeV) gathered in pieces of B/8 rows."""


def sparse_cap(bsz: int, spec: tuple[int, int]) -> tuple[int, int]:
    """(k_main, cap) for a batch of ``bsz`` from a ``SPARSE_*`` spec."""
    return spec[0], max(1, min(bsz, bsz // spec[1]))


def _sparse_slots(tables, mat, k: int, sparse: tuple[int, int], n, cum, ekin_in, d_cont, u_main, key_side):
    """:func:`_slot_block` for all rows, computed on fewer rows (same laws, same count N).

    Rows with N ≤ k_main: ``k_main`` slots from ``u_main`` (their own uniforms), padded with unused
    slots (depth 1, ΔE 0: exactly what the unused slots of a K-slot step give).  Rows with
    N > k_main (the rarer ones) are gathered in index order and computed with all K slots, ``cap``
    rows at a time: a ``lax.scan`` over the ⌈B/cap⌉ pieces (static) whose body runs (``lax.cond`` on
    a scalar) only while rows are left, piece p with uniforms drawn from ``fold_in(key_side, p)``.
    So the law does not depend on the cap, only the cost; one K-slot block is compiled.  N and
    everything after the slots come from the same columns of the step, and the slot uniforms of a
    row are independent of N, so the law is the K-slot step's (tests/test_sparse_slots.py compares
    both with matched uniforms).
    """
    k_main, cap = sparse
    bsz = n.shape[0]
    dtype = ekin_in.dtype
    width = (3 + N_KICK_UNIFORMS) * k
    pad = k - k_main
    e_end = jnp.maximum(ekin_in - d_cont, 1.0)[:, None]
    zeros = jnp.zeros((bsz, pad), dtype)
    main = (jnp.ones((bsz, pad), dtype), jnp.zeros((bsz, pad), jnp.int32), jnp.broadcast_to(e_end, (bsz, pad)),
            zeros, zeros, zeros)
    if k_main:
        part = _slot_block(tables, mat, k_main, jnp.minimum(n, k_main), cum, ekin_in, d_cont, u_main)
        main = tuple(jnp.concatenate([a, b], axis=1) for a, b in zip(part, main))
    big = n > k_main
    count = jnp.sum(big)
    n_pieces = -(-bsz // cap)
    order = jnp.nonzero(big, size=n_pieces * cap, fill_value=bsz)[0].reshape(n_pieces, cap)

    def take(x, idx):
        return jnp.take(x, idx, axis=0, mode="clip")

    def piece(out, xs):
        p, idx = xs

        def run(out):
            mat_b = mat if jnp.ndim(mat) == 0 else take(jnp.asarray(mat), idx)
            n_b = jnp.where(idx < bsz, take(n, idx), 0)
            side = _slot_block(tables, mat_b, k, n_b, take(cum, idx), take(ekin_in, idx), take(d_cont, idx),
                               uniforms(jax.random.fold_in(key_side, p), (cap, width), dtype))
            return tuple(a.at[idx].set(b, mode="drop") for a, b in zip(out, side))

        return jax.lax.cond(p * cap < count, run, lambda out: out, out), None

    out, _ = jax.lax.scan(piece, main, (jnp.arange(n_pieces), order))
    return out


def drift(physics: Physics, state: dict, mat, length, density_scale, uu: jnp.ndarray) -> dict:
    """Straight drift through a gap medium (air): sub-cut continuous loss + Gaussian scattering.

    Gaps hold ~3 g/cm² of air in the whole 2022 setup: the stochastic losses there (mean
    ≈ 1 MeV at 160 GeV) and the single-scatter tail are neglected; ``uu`` has 4 columns.
    """
    path = length * density_scale
    # one Euler step: the gaps of a setup hold a few g/cm² of air (relative change of dE/dx ≪ 1e-3)
    ekin = state["ekin"] - continuous_dedx(physics.tables, mat, state["ekin"]) * path
    ekin = jnp.where(state["alive"], ekin, state["ekin"])
    pmag, beta = kinematics(jnp.maximum(ekin, 1.0), state_mass(state))
    pad = jnp.full(uu.shape[:1] + (N_SCAT_UNIFORMS - uu.shape[1],), 0.5, uu.dtype)
    dtx, dty, dx, dy = sample_scattering(
        physics.scattering, mat, pmag, beta, path, jnp.concatenate([uu, pad], axis=1), model="highland"
    )
    alive = state["alive"] & (ekin > 0.0)
    new = dict(state)
    new["x"] = state["x"] + state["tx"] * length + jnp.where(alive, dx, 0.0)
    new["y"] = state["y"] + state["ty"] * length + jnp.where(alive, dy, 0.0)
    new["tx"] = state["tx"] + jnp.where(alive, dtx, 0.0)
    new["ty"] = state["ty"] + jnp.where(alive, dty, 0.0)
    new["ekin"] = jnp.where(alive, ekin, 0.0)
    new["alive"] = alive
    return new


REC_KEYS = ("e_cont", "e_proc", "hardest", "hardest_proc", "hardest_depth", "e_other")


def split_reference_lengths(length_ref, f):
    """Reference lengths (soft mode) of a step split at fraction ``f``; (None, None) otherwise."""
    if length_ref is None:
        return None, None
    return f * length_ref, (1.0 - f) * length_ref


def combine_split_records(r1: dict, r2: dict, f, forced: dict | None = None) -> dict:
    """Truth record of a step split at fraction ``f`` of its length into r1 (before) and r2 (after),
    with an optional ``forced`` interaction at ``f`` ({"de", "proc"}): sums, and the hardest one
    with its depth as a fraction of the whole step."""
    cands = [(r1["hardest"], r1["hardest_proc"], r1["hardest_depth"] * f),
             (r2["hardest"], r2["hardest_proc"], f + (1.0 - f) * r2["hardest_depth"])]
    e_proc = r1["e_proc"] + r2["e_proc"]
    if forced is not None:
        cands.append((forced["de"], jnp.full_like(r1["hardest_proc"], forced["proc"]), f))
        e_proc = e_proc.at[:, forced["proc"]].add(forced["de"])
    hardest, proc, depth = cands[0]
    for h, p, d in cands[1:]:
        harder = h > hardest
        hardest, proc, depth = jnp.where(harder, h, hardest), jnp.where(harder, p, proc), jnp.where(harder, d, depth)
    return {
        "e_cont": r1["e_cont"] + r2["e_cont"],
        "e_proc": e_proc,
        "hardest": hardest,
        "hardest_proc": proc,
        "hardest_depth": depth,
        "overflow": r1["overflow"] | r2["overflow"],
    }


