"""Parameterised detector response: tracker hits, calorimeter and counter signals.

Trackers: the true position at the plane's exit face plus Gaussian noise of the plane's
resolution in both projections; a hit is recorded with probability ``efficiency`` and only if
the muon reached the plane.  (Non-Gaussian tails, noise hits and pile-up are the
``momentum_misreconstruction`` channel's business.)

Calorimeters and counters: the energy the muon lost in the element is deposited there (full
containment of secondaries — leakage and non-hermeticity are modelled by the calorimeter
channel), scaled by ``response_scale`` and smeared with σ/E = a/√E ⊕ b ⊕ c/E (PDG RPP 2024
"Calorimetry", eq. 35.13 form; a in √GeV, c in MeV).  Visible energies of elements sharing a
readout ``group`` are summed.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from fastmc import units as u
from fastmc.geometry import Setup
from fastmc.rng import STREAM_RESPONSE, normal_from_uniform, stream_key, uniforms


def calorimeter_sigma(edep, stochastic_term, constant_term, noise):
    """σ (MeV) of a calorimeter signal of ``edep`` MeV: a/√E ⊕ b ⊕ c/E with E in GeV."""
    e_gev = jnp.maximum(edep, 0.0) / u.GeV
    var = (stochastic_term**2) * e_gev * u.GeV**2 + (constant_term * edep) ** 2 + noise**2
    return jnp.sqrt(var)


def detector_response(setup: Setup, truth: dict, key_chunk: jax.Array) -> dict:
    """Measured hits ``hits[name] = (mx, my, present)`` and ``energies[group]`` (MeV)."""
    key_r = stream_key(key_chunk, STREAM_RESPONSE)
    hits = {}
    energies: dict[str, jnp.ndarray] = {}
    for i, el in enumerate(setup.elements):
        if el.kind == "tracker":
            x, y, reached = truth["hits"][el.name]
            uu = uniforms(jax.random.fold_in(key_r, i), (x.shape[0], 3), x.dtype)
            mx = x + el.resolution * normal_from_uniform(uu[:, 0])
            my = y + el.resolution * normal_from_uniform(uu[:, 1])
            present = reached & (uu[:, 2] < el.efficiency)
            hits[el.name] = (mx, my, present)
        elif el.kind == "slab" and el.readout != "none":
            rec = truth["slabs"][el.name]
            edep = rec["e_cont"] + jnp.sum(rec["e_proc"], axis=-1) + rec.get("e_other", 0.0)
            uu = uniforms(jax.random.fold_in(key_r, i), (edep.shape[0], 1), edep.dtype)
            sigma = calorimeter_sigma(edep, el.stochastic_term, el.constant_term, el.noise)
            vis = el.response_scale * edep + sigma * normal_from_uniform(uu[:, 0])
            energies[el.group] = energies.get(el.group, 0.0) + vis
    return {"hits": hits, "energies": energies}
