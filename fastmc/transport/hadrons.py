"""Beam hadrons in the transport: decays in flight and absorption (:func:`hadron_slot_before_material`).

A beam K⁺/π⁺ carries ``species``, ``z_decay`` (drawn by :func:`fastmc.beam.sample_primaries`),
``log_w`` and ``e_pending``; it decays at ``z_decay`` into its charged daughter
(:func:`decay_in_flight`) and is absorbed in material with probability 1 − exp(−ℓ/λ_I).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from fastmc.physics.decay import MODES, N_DECAY_UNIFORMS, sample_decay_from_u
from fastmc.rng import uniforms
from fastmc.species import SPECIES_K, SPECIES_MU, SPECIES_PI, species_masses
from fastmc.transport.step import drift, kinematics, state_mass

N_HADRON_UNIFORMS = 4 + 2  # 4 drift (second part) + absorption + decay-mode choice


def hadron_slot_before_material(physics, st, a, gap_mat, gap_scale, uu_drift, key, forced_decay: bool):
    """Gap drift with an in-flight decay at ``z_decay``, then hadron absorption in the slot's material.

    Order: drift to the decay point (if it lies in this gap), decay, drift the rest; then a hadron
    entering the material is absorbed with probability 1 − exp(−ℓ/λ_I), ℓ = the path it would
    travel in the material before decaying (all of it if it decays later); an absorbed hadron's
    kinetic energy is deposited in this slab.  A hadron decaying inside the material decays at
    the material's front face (its daughter crosses the full slab): this approximation only
    concerns decays within a slab (≈ 2 % of the decays before the 2022 ECAL).

    Where no particle of the batch is a live hadron (a muon beam with a 1e-8 hadron admixture;
    every slot behind the region where decays are forced) all of this is one gap drift
    for every particle: a ``lax.cond`` on that batch-wide flag runs just the drift there (same law,
    same draws; the hadron work was a third of the transport's time in the quickstart chain).
    """
    live_hadron = jnp.any(st["alive"] & (st["species"] != SPECIES_MU))
    return jax.lax.cond(
        live_hadron,
        lambda s: _hadron_slot(physics, s, a, gap_mat, gap_scale, uu_drift, key, forced_decay),
        lambda s: drift(physics, s, gap_mat, a["pre"], gap_scale, uu_drift),
        st,
    )


def _hadron_slot(physics, st, a, gap_mat, gap_scale, uu_drift, key, forced_decay: bool):
    """:func:`hadron_slot_before_material` for a batch holding live hadrons."""
    dtype = st["ekin"].dtype
    bsz = st["ekin"].shape[0]
    uu = uniforms(key, (bsz, N_HADRON_UNIFORMS + N_DECAY_UNIFORMS), dtype)
    z0, pre = a["z0"], a["pre"]
    z1 = z0 + pre
    z2 = z1 + a["length"]
    zd = st["z_decay"]
    had = st["alive"] & (st["species"] != SPECIES_MU)
    in_gap = had & (zd >= z0) & (zd < z1)
    d1 = jnp.where(in_gap, jnp.clip(zd - z0, 0.0, pre), pre)
    st = drift(physics, st, gap_mat, d1, gap_scale, uu_drift)
    st = decay_in_flight(physics, st, in_gap & st["alive"], uu[:, 6:], uu[:, 5], forced_decay)
    st = drift(physics, st, gap_mat, pre - d1, gap_scale, uu[:, :4])
    # absorption of hadrons in the material of this slot
    had = st["alive"] & (st["species"] != SPECIES_MU)
    zd = st["z_decay"]
    ell = jnp.clip(zd - z1, 0.0, a["length"]) * a["dscale"]
    p_survive = jnp.exp(-ell / physics.lambda_i[a["mat"]])
    st = dict(st)
    if "length_ref" in a:  # soft mode: draw with the reference length, reweight (see transport)
        ell_ref = jnp.clip(zd - z1, 0.0, a["length_ref"]) * a["dscale"]
        p_ref = jnp.exp(-ell_ref / physics.lambda_i[a["mat"]])
        absorbed = had & (uu[:, 4] > p_ref)
        lw = jnp.where(absorbed,
                       jnp.log(jnp.maximum(1.0 - p_survive, 1e-300)) - jnp.log(jnp.maximum(1.0 - p_ref, 1e-300)),
                       (ell_ref - ell) / physics.lambda_i[a["mat"]])
        st["log_w"] = st["log_w"] + jnp.where(had, lw, 0.0)
    else:
        absorbed = had & (uu[:, 4] > p_survive)
    st["e_pending"] = st["e_pending"] + jnp.where(absorbed, st["ekin"], 0.0)
    st["alive"] = st["alive"] & ~absorbed
    in_mat = st["alive"] & had & (zd >= z1) & (zd < z2)
    return decay_in_flight(physics, st, in_mat, uu[:, 6:], uu[:, 5], forced_decay)


def decay_in_flight(physics, st, mask, u_dec, u_mode, forced_decay: bool):
    """Replace the parent hadron by its decay product where ``mask``; weights go into ``log_w``.

    The one charged track that matters downstream continues (μ⁺ → muon; π⁺ → pion; e⁺ is absorbed
    at once); the energies of π⁰ photons and of other charged pions are deposited in the next
    slab (they hit the calorimeter).  With ``forced_decay`` a K⁺ decays only to μ⁺ν or π⁰μ⁺ν,
    chosen with probability ∝ BR, and the weight carries log(BR_μν + BR_π⁰μν).
    """
    tables = physics.decay
    masses = species_masses()
    mass = state_mass(st)
    pmag, _ = kinematics(st["ekin"], mass)
    pmag = jnp.maximum(pmag, 1.0)
    sp = st["species"]
    dk = sample_decay_from_u(tables, "pi+", pmag, u_dec)
    if forced_decay:
        i_mn, i_pmn = MODES["K+"].index("mu_nu"), MODES["K+"].index("pi0_mu_nu")
        a = sample_decay_from_u(tables, "K+", pmag, u_dec, mode=i_mn)
        b = sample_decay_from_u(tables, "K+", pmag, u_dec, mode=i_pmn)
        log_sum = jnp.logaddexp(a["log_br"], b["log_br"])
        take_a = u_mode < jnp.exp(a["log_br"] - log_sum)
        kk = {key: jnp.where(take_a, a[key], b[key]) for key in a}
        kk["log_w_force"] = log_sum
    else:
        kk = sample_decay_from_u(tables, "K+", pmag, u_dec)
        kk["log_w_force"] = jnp.zeros_like(pmag)
    is_k = sp == SPECIES_K
    d = {key: jnp.where(is_k, kk[key], dk[key]) for key in dk}
    log_w = jnp.where(is_k, kk["log_w_force"], 0.0)
    pdg = d["charged_pdg"]
    new_sp = jnp.where(pdg == -13, SPECIES_MU, jnp.where(pdg == 211, SPECIES_PI, SPECIES_MU))
    new_m = jnp.where(new_sp == SPECIES_PI, masses[2], masses[0]).astype(st["ekin"].dtype)
    p = d["p"]
    ekin_d = jnp.sqrt(p * p + new_m * new_m) - new_m
    is_e = pdg == -11
    out = dict(st)
    out["species"] = jnp.where(mask, new_sp, sp)
    out["ekin"] = jnp.where(mask, ekin_d, st["ekin"])
    out["tx"] = jnp.where(mask, st["tx"] + d["theta"] * jnp.cos(d["phi"]), st["tx"])
    out["ty"] = jnp.where(mask, st["ty"] + d["theta"] * jnp.sin(d["phi"]), st["ty"])
    dep = d["e_visible_neutral"] + d["e_other_charged"] + jnp.where(is_e, jnp.sqrt(p * p + 0.511**2), 0.0)
    out["e_pending"] = st["e_pending"] + jnp.where(mask, dep, 0.0)
    out["alive"] = st["alive"] & ~(mask & is_e)
    out["z_decay"] = jnp.where(mask, jnp.inf, st["z_decay"])
    out["log_w"] = st["log_w"] + jnp.where(mask, log_w, 0.0)
    out["decayed"] = st["decayed"] | mask
    return out
