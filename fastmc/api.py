"""Public driver for muon transport through a plain sequence of slabs (validation and studies).

``propagate_layers`` runs the transport kernel (:func:`fastmc.transport.material_step`) through
``(material, thickness)`` layers with no setup, beam or detector: what the energy-loss and
deflection validations against Geant4 need (:mod:`fastmc.validate`), and the quickest way to ask
"what does a 160 GeV muon look like after 40 X0 of lead?"::

    from fastmc.api import propagate
    ekin_GeV = propagate("lead", 200.0, 160.0, n=100_000, seed=1)
"""

from __future__ import annotations

import functools
import re
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from fastmc import units as u
from fastmc.config import PhysicsSettings
from fastmc.materials import get_material, homogenise
from fastmc.physics import build_tables, stochastic_xs, tables_config
from fastmc.physics.scattering import build_scattering_params
from fastmc.physics.tables import enable_compilation_cache
from fastmc.rng import chunk_key, uniforms
from fastmc.transport import Physics, material_step, n_step_uniforms
from fastmc.transport.step import SPARSE_THICK, SPARSE_THIN, sparse_cap


def resolve_material(name: str):
    """A material by name, or the homogenised cell named by :func:`fastmc.config.mixture_name`
    (e.g. ``"lead1.5mm+scintillator1.5mm"``)."""


    try:
        return get_material(name)
    except ValueError:
        parts = [re.fullmatch(r"([a-z_]+?)([0-9.]+)mm", t) for t in name.split("+")]
        if len(parts) < 2 or not all(parts):
            raise
        return homogenise(name, [(m.group(1), float(m.group(2))) for m in parts])


@functools.lru_cache(maxsize=32)
def layers_physics(materials: tuple[str, ...], settings) -> Physics:

    mats = [resolve_material(m) for m in materials]
    dtype = jnp.result_type(float)
    tables = build_tables(mats, tables_config(settings)).device(dtype)
    scat = build_scattering_params(mats, form_factor=settings.form_factor, screening=settings.screening).device(dtype)
    return Physics(tables, scat, settings.scattering, jnp.asarray([m.lambda_I_mm for m in mats], dtype))


@functools.partial(jax.jit, static_argnames=("n", "ks"))
def _propagate_chunk(physics, key, ekin0, mats, lengths, n: int, ks: tuple[int, ...]):
    dtype = jnp.result_type(float)
    state = {
        "x": jnp.zeros((n,), dtype),
        "y": jnp.zeros((n,), dtype),
        "tx": jnp.zeros((n,), dtype),
        "ty": jnp.zeros((n,), dtype),
        "ekin": jnp.full((n,), ekin0, dtype),
        "alive": jnp.ones((n,), bool),
    }
    total = None
    for i, k in enumerate(ks):
        # compacted interaction slots, as in fastmc.transport.transport (same laws)
        sparse = sparse_cap(n, SPARSE_THIN if k == 1 else SPARSE_THICK) if k else None
        uu = uniforms(jax.random.fold_in(key, i), (n, n_step_uniforms(k if sparse is None else sparse[0])), dtype)
        state, rec = material_step(physics, state, mats[i], lengths[i], jnp.asarray(1.0, dtype), k, uu,
                                   sparse=sparse, key_side=jax.random.fold_in(jax.random.fold_in(key, i), 1))
        if total is None:
            total = dict(rec)
        else:
            total["e_cont"] = total["e_cont"] + rec["e_cont"]
            total["e_proc"] = total["e_proc"] + rec["e_proc"]
            harder = rec["hardest"] > total["hardest"]
            total["hardest"] = jnp.where(harder, rec["hardest"], total["hardest"])
            total["hardest_proc"] = jnp.where(harder, rec["hardest_proc"], total["hardest_proc"])
            total["overflow"] = total["overflow"] | rec["overflow"]
    return state, total


def propagate_layers(
    layers,
    ekin_GeV: float,
    n: int,
    seed: int,
    *,
    settings: Any = None,
    chunk_size: int = 65536,
    return_record: bool = False,
    max_interactions: int | None = None,
):
    """Final kinetic energies (GeV, numpy) of ``n`` muons after a sequence of slabs.

    ``layers`` is a sequence of ``(material, thickness_mm)``; a material is a fastmc name or a
    homogenised cell (:func:`resolve_material`).  Full stochastic physics with the run card's
    default :class:`~fastmc.config.PhysicsSettings` unless ``settings`` is given; the muons start
    at x = y = 0 along z.  Randomness is chunk-keyed from ``seed`` (the first m results for n ≥ m
    are identical).  The interaction-slot cap of each layer is set from its expected count λ as
    ⌈λ + 8√λ + 4⌉ (overflow probability < 1e-9) unless ``max_interactions`` is given.  With
    ``return_record``, also returns a dict with the exit state (``tx``, ``ty``, ``x``, ``y``) and
    the summed truth record (``rec_e_cont``, ``rec_e_proc``, ``rec_hardest``, ...).
    """
    enable_compilation_cache()
    s = settings or PhysicsSettings()
    names = tuple(m for m, _ in layers)
    uniq = tuple(dict.fromkeys(names))
    physics = layers_physics(uniq, s)
    dtype = jnp.result_type(float)
    mats = jnp.asarray([uniq.index(m) for m in names], jnp.int32)
    lengths = jnp.asarray([float(t) for _, t in layers], dtype)
    ks = []
    for m, t in layers:
        grid = jnp.geomspace(1e3, ekin_GeV * u.GeV, 16)
        xs = float(jnp.max(jnp.sum(stochastic_xs(physics.tables, uniq.index(m), grid), -1)))
        lam = xs * float(t)
        k_auto = int(max(1, np.ceil(lam + 8.0 * np.sqrt(lam) + 4)))
        ks.append(max_interactions if max_interactions is not None else k_auto)
    outs: list[dict] = []
    n_chunks = -(-n // chunk_size)
    for c in range(n_chunks):
        m = min(chunk_size, n - c * chunk_size)
        new, rec = _propagate_chunk(physics, chunk_key(seed, c), ekin_GeV * u.GeV, mats, lengths, chunk_size, tuple(ks))
        out = {key: np.asarray(val)[:m] for key, val in new.items()}
        if return_record:
            out.update({f"rec_{key}": np.asarray(val)[:m] for key, val in rec.items()})
        outs.append(out)
    merged = {key: np.concatenate([o[key] for o in outs]) for key in outs[0]}
    ekin_out = merged["ekin"].astype(np.float64) / u.GeV
    if return_record:
        return ekin_out, merged
    return ekin_out


def propagate_slab(material: str, thickness_mm: float, ekin_GeV: float, n: int, seed: int, **kw):
    """:func:`propagate_layers` for one slab."""
    return propagate_layers([(material, thickness_mm)], ekin_GeV, n, seed, **kw)


def propagate(material: str, thickness_mm: float, ekin_GeV: float, n: int, seed: int) -> np.ndarray:
    """Final kinetic energies [GeV] of ``n`` muons after one slab (:func:`propagate_slab`)."""
    return propagate_slab(material, thickness_mm, ekin_GeV, n, seed)
