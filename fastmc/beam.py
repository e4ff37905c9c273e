"""Beam generation at ``z_start``: Gaussian momentum, spot and divergence (M2 muon beam).

The M2 muon beam is described by PHYSICS.md §2 (values in models/*.toml with sources).  The
momentum distribution is Gaussian with relative width ``momentum_spread_rel``, truncated to
positive values; spot and divergence are independent Gaussians per projection.
"""

from __future__ import annotations

import jax.numpy as jnp

from fastmc import units as u
from fastmc.geometry import Beam
from fastmc.rng import normal_from_uniform, uniforms

N_BEAM_UNIFORMS = 5


def sample_beam_from_u(beam: Beam, uu: jnp.ndarray) -> dict[str, jnp.ndarray]:
    """Beam muons from uniforms ``uu`` of shape (B, N_BEAM_UNIFORMS)."""
    z = normal_from_uniform(uu)
    pmag = beam.momentum * (1.0 + beam.momentum_spread_rel * z[:, 0])
    pmag = jnp.maximum(pmag, 1.0 * u.GeV)
    ekin = jnp.sqrt(pmag**2 + u.muon_mass_c2**2) - u.muon_mass_c2
    return {
        "x": beam.spot_sigma * z[:, 1],
        "y": beam.spot_sigma * z[:, 2],
        "tx": beam.divergence_sigma * z[:, 3],
        "ty": beam.divergence_sigma * z[:, 4],
        "ekin": ekin,
    }


def sample_beam(beam: Beam, key, n: int) -> dict[str, jnp.ndarray]:
    return sample_beam_from_u(beam, uniforms(key, (n, N_BEAM_UNIFORMS)))
