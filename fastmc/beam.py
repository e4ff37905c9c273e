"""Beam generation at ``z_start``: Gaussian momentum, spot and divergence (M2 muon beam).

The M2 muon beam is described by PHYSICS.md §2 (values in models/*.toml with sources).  The
momentum distribution is Gaussian with relative width ``momentum_spread_rel``, truncated to
positive values; spot and divergence are independent Gaussians per projection.

The beam is centred on the nominal trajectory (:func:`fastmc.geometry.nominal_trajectory`: the
160 GeV muon that crosses the target on axis after MS1's bend), and ``spot_sigma`` is the size at
the beam's focus ``focus_z`` (default the target; approx., PHYSICS.md §2): per projection
x_focus ~ N(0, σ_spot), tx ~ N(0, σ_θ), and the muon starts at x = x_focus + tx·(z_start − z_focus)
plus the nominal trajectory's (x, tx) at z_start for the muon's own momentum (the 160 GeV one
scaled by p0/p: the beam line's focus is taken achromatic, approx.; otherwise MS1's 30 mrad bend
with a 3.5 % momentum spread would smear the spot at the target by ≈ 35 mm).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import jax.numpy as jnp

from fastmc import units as u
from fastmc._pytree import pytree_dataclass, static_field
from fastmc.geometry import Beam
from fastmc.rng import normal_from_uniform, uniforms
from fastmc.species import SPECIES_K, SPECIES_MU, SPECIES_PI, hadron_ctau_mm, species_masses

N_BEAM_UNIFORMS = 5


def sample_beam_from_u(beam: Beam, uu: jnp.ndarray) -> dict[str, jnp.ndarray]:
    """Beam muons from uniforms ``uu`` of shape (B, N_BEAM_UNIFORMS)."""
    z = normal_from_uniform(uu)
    pmag = beam.momentum * (1.0 + beam.momentum_spread_rel * z[:, 0])
    pmag = jnp.maximum(pmag, 1.0 * u.GeV)
    ekin = jnp.sqrt(pmag**2 + u.muon_mass_c2**2) - u.muon_mass_c2
    tx = beam.divergence_sigma * z[:, 3]
    ty = beam.divergence_sigma * z[:, 4]
    back = beam.z_start - beam.focus_z  # drift from the focus back to the start
    # each muon starts on the nominal trajectory of its own momentum p: upstream of the target
    # every kick scales as 1/p, so that trajectory is the 160 GeV one times p0/p (an achromatic
    # focus: the spot at the target does not grow with MS1's dispersion; approx., the M2 optics)
    scale = beam.momentum / pmag
    return {
        "x": beam.x_start * scale + beam.spot_sigma * z[:, 1] + tx * back,
        "y": beam.y_start * scale + beam.spot_sigma * z[:, 2] + ty * back,
        "tx": beam.tx_start * scale + tx,
        "ty": beam.ty_start * scale + ty,
        "ekin": ekin,
    }


def sample_beam(beam: Beam, key, n: int) -> dict[str, jnp.ndarray]:
    return sample_beam_from_u(beam, uniforms(key, (n, N_BEAM_UNIFORMS)))


# ----------------------------------------------------------------------------------------
# Beam admixture (π⁺, K⁺ per muon on target) and decay points: the hadron-capable primaries
# ----------------------------------------------------------------------------------------

N_PRIMARY_UNIFORMS = N_BEAM_UNIFORMS + 2  # + species + decay point


@pytree_dataclass
class Admixture:
    """Species mix of the generated primaries [μ⁺, K⁺, π⁺] and how hadron decays are sampled.

    ``log_f_true``: log of the true fraction per muon on target (the run card's input);
    ``f_gen``: generation probabilities.  A primary of species s carries log w = log f_true(s) −
    log f_gen(s) (DESIGN.md §4), so Σw/N_gen estimates the rate per muon on target whatever f_gen.
    Decays: ``forced = False`` — natural exponential decay point; ``forced = True`` — the decay
    is forced inside [z_min, z_max] with weight P(decay inside) = e^{−(z_min−z_start)/λ}·(1 −
    e^{−L/λ}), λ = βγcτ, written with expm1 for precision.
    """

    log_f_true: jnp.ndarray  # (3,)
    f_gen: jnp.ndarray  # (3,)
    z_min: jnp.ndarray
    z_max: jnp.ndarray
    forced: bool = static_field(default=False)


def true_fractions(kaon_fraction: float, pion_fraction: float) -> list[float]:
    """True species fractions [μ⁺, K⁺, π⁺] per muon on target (the run card's [admixture])."""
    return [1.0 - kaon_fraction - pion_fraction, kaon_fraction, pion_fraction]


def build_admixture(kaon_fraction: float, pion_fraction: float, z_min: float, z_max: float,
                    f_gen: Sequence[float] | None = None, forced: bool = False) -> Admixture:
    """An :class:`Admixture` of the true fractions; generated with ``f_gen`` (default: the true
    fractions, i.e. no bias) and decays natural or ``forced`` into [z_min, z_max]."""
    f_true = true_fractions(kaon_fraction, pion_fraction)
    dtype = jnp.result_type(float)
    log_true = jnp.asarray([math.log(f) if f > 0 else -math.inf for f in f_true], dtype)
    return Admixture(
        log_f_true=log_true,
        f_gen=jnp.asarray(f_true if f_gen is None else list(f_gen), dtype),
        z_min=jnp.asarray(z_min, dtype),
        z_max=jnp.asarray(z_max, dtype),
        forced=forced,
    )


def sample_primaries(beam: Beam, mix: Admixture, key, n: int) -> dict[str, jnp.ndarray]:
    """Beam primaries of mixed species with their decay points and log-weights."""
    uu = uniforms(key, (n, N_PRIMARY_UNIFORMS))
    st = sample_beam_from_u(beam, uu[:, :N_BEAM_UNIFORMS])
    dtype = st["ekin"].dtype
    masses = species_masses()
    cum = jnp.cumsum(mix.f_gen)
    us = uu[:, N_BEAM_UNIFORMS]
    species = jnp.where(us < cum[0], SPECIES_MU, jnp.where(us < cum[1], SPECIES_K, SPECIES_PI)).astype(jnp.int32)
    # the beam line selects momentum: hadrons have the same momentum distribution as the muons
    p_mu = jnp.sqrt(st["ekin"] * (st["ekin"] + 2 * u.muon_mass_c2))
    m = jnp.where(species == SPECIES_K, masses[1], jnp.where(species == SPECIES_PI, masses[2], masses[0])).astype(dtype)
    ekin = jnp.sqrt(p_mu * p_mu + m * m) - m
    ctau = jnp.where(species == SPECIES_K, hadron_ctau_mm("K+"), hadron_ctau_mm("pi+")).astype(dtype)
    lam = p_mu / m * ctau
    ud = uu[:, N_BEAM_UNIFORMS + 1]
    log_w = mix.log_f_true[species] - jnp.log(mix.f_gen[species])
    if mix.forced:
        length = mix.z_max - mix.z_min
        p_in = -jnp.expm1(-length / lam)  # P(decay inside the region | reached z_min)
        z_dec = mix.z_min - lam * jnp.log1p(-ud * p_in)
        log_w = log_w - (mix.z_min - beam.z_start) / lam + jnp.log(p_in)
    else:
        z_dec = beam.z_start - lam * jnp.log(ud)
    is_had = species != SPECIES_MU
    st.update(
        ekin=ekin,
        species=species,
        z_decay=jnp.where(is_had, z_dec, jnp.inf),
        log_w=jnp.where(jnp.isfinite(log_w), log_w, -jnp.inf).astype(dtype),
        e_pending=jnp.zeros((n,), dtype),
        decayed=jnp.zeros((n,), bool),
        hadron=is_had,
    )
    return st
