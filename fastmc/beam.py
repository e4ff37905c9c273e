"""Beam generation at ``z_start``: momentum spectrum, spot and divergence (M2 muon beam).

The M2 muon beam is described by PHYSICS.md §2 (values in models/*.toml with sources).  The
momentum is a mixture (:func:`beam_momentum`): a Gaussian core of relative width
``momentum_spread_rel``; with probability ``tail_fraction`` a low-momentum tail p = p0·(1 − ξ),
ξ exponential of mean ``tail_scale_rel``; with probability ``halo_fraction`` a halo muon (from
π/K decays along the beam line, outside the core's phase space) with its own Gaussian momentum
spread, spot and divergence.  Momenta are truncated at 1 GeV/c.  Spot and divergence are
independent Gaussians per projection.
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

N_BEAM_UNIFORMS = 7  # momentum normal, 4 spot/divergence normals, component choice, tail depth
COMPONENT_CORE, COMPONENT_TAIL, COMPONENT_HALO = 0, 1, 2
P_MIN = 1.0 * u.GeV  # momenta are truncated here (a beam line transports nothing slower)


def beam_momentum(beam: Beam, uu: jnp.ndarray) -> tuple[jnp.ndarray, jnp.ndarray]:
    """Momentum (MeV/c) and component (core 0, tail 1, halo 2) from uniforms ``uu`` (B, 3):
    column 0 the Gaussian deviate, 1 the component (halo if u < f_halo, tail if u < f_halo +
    f_tail, else core), 2 the tail depth ξ = −tail_scale_rel·ln u.  Core: p0·(1 + σ_rel·z); tail:
    p0·(1 − ξ); halo: p0·(1 + σ_halo·z).  With zero fractions this is the Gaussian core exactly."""
    z = normal_from_uniform(uu[:, 0])
    uc = uu[:, 1]
    halo = uc < beam.halo_fraction
    tail = ~halo & (uc < beam.halo_fraction + beam.tail_fraction)
    xi = -beam.tail_scale_rel * jnp.log(uu[:, 2])
    rel = jnp.where(halo, beam.halo_momentum_spread_rel * z, jnp.where(tail, -xi, beam.momentum_spread_rel * z))
    pmag = jnp.maximum(beam.momentum * (1.0 + rel), P_MIN)
    comp = jnp.where(halo, COMPONENT_HALO, jnp.where(tail, COMPONENT_TAIL, COMPONENT_CORE)).astype(jnp.int32)
    return pmag, comp


def sample_beam_from_u(beam: Beam, uu: jnp.ndarray) -> dict[str, jnp.ndarray]:
    """Beam muons from uniforms ``uu`` of shape (B, N_BEAM_UNIFORMS); columns 0, 5, 6 go to
    :func:`beam_momentum`, 1–4 to the spot and divergence (the halo's own widths for halo muons)."""
    z = normal_from_uniform(uu[:, 1:5])
    pmag, comp = beam_momentum(beam, uu[:, jnp.asarray([0, 5, 6])])
    halo = comp == COMPONENT_HALO
    spot = jnp.where(halo, beam.halo_spot_sigma, beam.spot_sigma)
    div = jnp.where(halo, beam.halo_divergence_sigma, beam.divergence_sigma)
    ekin = jnp.sqrt(pmag**2 + u.muon_mass_c2**2) - u.muon_mass_c2
    tx = div * z[:, 2]
    ty = div * z[:, 3]
    back = beam.z_start - beam.focus_z  # drift from the focus back to the start
    # each muon starts on the nominal trajectory of its own momentum p: upstream of the target
    # every kick scales as 1/p, so that trajectory is the 160 GeV one times p0/p (an achromatic
    # focus: the spot at the target does not grow with MS1's dispersion; approx., the M2 optics)
    scale = beam.momentum / pmag
    return {
        "x": beam.x_start * scale + spot * z[:, 0] + tx * back,
        "y": beam.y_start * scale + spot * z[:, 1] + ty * back,
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
