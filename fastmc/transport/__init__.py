"""Batch-major muon transport through the ordered elements of a :class:`~fastmc.geometry.Setup`.

All arrays are (B,) over muons.  :func:`transport` is a ``lax.scan`` over element slots (gap
drift → material → magnet kick), so the program compiles once whatever the number of elements
(an unrolled loop over the 24 elements of the 2022 setup took minutes to compile).  The
per-element kernel — interaction counts, losses, straggling, scattering, kicks — is
:func:`fastmc.transport.step.material_step` (its module docstring has the algorithm); beam hadrons'
decays and absorption are :mod:`fastmc.transport.hadrons`.

Every piece of randomness comes as one uniform array per element (DESIGN.md §4).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from fastmc import units as u
from fastmc.geometry import Setup
from fastmc.physics import stochastic_xs
from fastmc.rng import STREAM_TRANSPORT, stream_key, uniforms
from fastmc.transport.hadrons import decay_in_flight, hadron_slot_before_material
from fastmc.transport.step import (
    N_PROC,
    REC_KEYS,
    SPARSE_THICK,
    SPARSE_THIN,
    ForcedVertex,
    Physics,
    StepForcing,
    combine_split_records,
    drift,
    kick_angles,
    kinematics,
    material_step,
    n_step_uniforms,
    sparse_cap,
    split_reference_lengths,
    state_mass,
)

__all__ = ["BRANCH_FORCED", "BRANCH_NONE", "BRANCH_THICK", "BRANCH_THIN", "N_PROC", "REC_KEYS", "ForcedVertex",
           "Physics", "StepForcing", "combine_split_records", "decay_in_flight", "drift", "element_arrays",
           "expected_counts", "kick_angles", "kinematics", "material_step", "n_step_uniforms", "slot_branches",
           "split_reference_lengths", "state_mass", "transport"]

def _kick_angle(ekin: jnp.ndarray, field_integral: jnp.ndarray, charge: int, mass: Any = u.muon_mass_c2) -> jnp.ndarray:
    """Thin-lens dipole kick: Δθ = q·0.2998·∫B dl[T·m] / p[GeV/c].

    Applied at the magnet centre; exact in the small-angle limit for a uniform field (the exit
    position of a thin lens at the centre equals that of the uniform-field arc to O(θ²)).
    """
    pmag, _ = kinematics(ekin, mass)
    return charge * u.GEV_PER_TESLA_METRE * field_integral * u.GeV / jnp.maximum(pmag, 1.0)


def element_arrays(setup: Setup) -> dict[str, jnp.ndarray]:
    """Per-element-slot arrays for the scan, computed from the setup's leaves (differentiable).

    Slot i: drift ``pre`` mm through the gap medium, then ``length`` mm of material ``mat`` (0 for
    magnets), then a kick ``kick_x``/``kick_y`` (T·m; magnets only, at their centre).  A magnet's
    slot ends at its centre, so its second half is part of the next slot's drift.
    """
    z_prev = setup.beam.z_start
    pre, length, mats, dscale, kx, ky, z0, is_slab = [], [], [], [], [], [], [], []
    for el in setup.elements:
        z0.append(z_prev)
        is_slab.append(el.kind == "slab")
        if el.kind == "magnet":
            centre = el.z + 0.5 * el.thickness
            pre.append(centre - z_prev)
            length.append(jnp.zeros_like(el.thickness))
            kx.append(el.field_integral if el.bend_plane == "x" else jnp.zeros_like(el.field_integral))
            ky.append(el.field_integral if el.bend_plane == "y" else jnp.zeros_like(el.field_integral))
            z_prev = centre
        else:
            pre.append(el.z - z_prev)
            length.append(el.thickness)
            kx.append(jnp.zeros_like(el.field_integral))
            ky.append(jnp.zeros_like(el.field_integral))
            z_prev = el.z + el.thickness
        mats.append(el.material)
        dscale.append(el.density_scale)
    return {
        "pre": jnp.maximum(jnp.stack(pre), 0.0),
        "length": jnp.stack(length),
        "mat": jnp.stack(mats).astype(jnp.int32),
        "dscale": jnp.stack(dscale),
        "kick_x": jnp.stack(kx),
        "kick_y": jnp.stack(ky),
        "z0": jnp.stack(z0),
        "is_slab": jnp.asarray(is_slab),
    }


BRANCH_NONE, BRANCH_THIN, BRANCH_THICK, BRANCH_FORCED = 0, 1, 2, 3
THIN_LAMBDA = 0.02  # slots expecting fewer interactions than this get one slot: P(N>1) ≈ λ²/2 ≤ 2e-4


def transport(
    setup: Setup,
    physics: Physics,
    state: dict[str, jnp.ndarray],
    key_chunk: jax.Array,
    max_interactions: int = 8,
    branches: tuple[int, ...] | None = None,
    forced_decay: bool = False,
    forced_vertex: ForcedVertex | None = None,
    setup_ref: Setup | None = None,
    forcing: StepForcing | None = None,
    hadrons: bool = False,
) -> tuple[dict[str, jnp.ndarray], dict[str, Any]]:
    """Transport a batch from ``setup.beam.z_start`` through every element (``lax.scan``).

    The scan body (one element slot: gap drift, material step, kick) is compiled once whatever
    the number of elements; its per-slot numbers are arrays (:func:`element_arrays`).  Inside,
    ``lax.switch`` picks one of three kernels per slot: no material (magnets), *thin* (one
    interaction slot: trackers, counters — mean count < THIN_LAMBDA) and *thick* (the run's
    ``max_interactions`` slots).  ``branches`` (static, from :func:`slot_branches`) says which;
    by default every material slot is thick.  In the hard mode without deflection forcing both compute
    their interaction slots compacted (same laws, :func:`fastmc.transport.step._sparse_slots`): a thin
    slot only for the muons that interact (``SPARSE_THIN``), a thick one two slots for every muon and
    all of them for the muons with more interactions (``SPARSE_THICK``).

    Energy radiated in thin planes: the stochastic transfers of the material step of an element that
    is not a slab (a tracker or counter plane: bremsstrahlung photons, pairs, knock-ons, photonuclear
    systems, all forward within ~m/E) are carried on and added to ``e_other`` of the next slab the
    scan reaches (approx.: whatever that slab's aperture; in the gaps the stochastic losses are
    neglected, :func:`drift`).  Without it a muon that radiates half its energy in a Micromegas
    plane before the target leaves the setup with p_out < 80 GeV and empty calorimeters.

    Returns the final state and the truth record: ``hits[name] = (x, y, reached)`` at each
    tracker's and counter's exit face, ``at[name]`` the same at every non-magnet element's,
    ``slabs[name]`` = the material-step record of every slab, and
    ``n_overflow`` (B,), the number of slots in which an interaction cap was exceeded.

    Hadrons (``hadrons``, static; the state then carries ``species``, ``z_decay``, ``log_w``,
    ``e_pending``): beam K⁺/π⁺ are transported too (:func:`hadron_slot_before_material`): they decay at ``z_decay``
    (sampled by the caller), are absorbed in material with probability 1 − exp(−L/λ_I), and the
    energy of decay photons and absorbed hadrons is deposited in the next slab.
    ``forced_decay`` (static) forces the muonic K⁺ modes (μν, π⁰μν) with weight Σ BR.

    Forced vertex: with ``forced_vertex`` (a :class:`ForcedVertex`, e.g. one dark-boson emission or
    one hard photonuclear interaction at a uniform depth) the slots marked ``BRANCH_FORCED`` in
    ``branches`` (the target) run it instead of the plain material step; the state must carry
    ``log_w``, to which the forced interaction's probability is added.

    Soft mode (``setup_ref``, :mod:`fastmc.optimise`): discrete draws whose law depends on a
    material length — interaction counts and hadron absorption — are drawn with the lengths of
    ``setup_ref`` (a frozen proposal, no gradient) and reweighted to ``setup``'s lengths in
    ``state["log_w"]`` (the state must carry it): the chain is then smooth in the slab
    thicknesses for fixed keys, and unbiased.

    Deflection forcing (``forcing``, a :class:`StepForcing`; the state must carry ``tilt_c``,
    ``tilt_x``, ``tilt_v``, ``kick_force``, ``kick_sign``, ``kick_lr``): the material steps of the
    slots in ``forcing.slots`` shift the Gaussian scattering core and push the hard deflections in
    projection ``forcing.axis`` (:func:`material_step`).
    """
    key_t = stream_key(key_chunk, STREAM_TRANSPORT)
    bsz = state["ekin"].shape[0]
    dtype = state["ekin"].dtype
    arrays = element_arrays(setup)
    if setup_ref is not None:
        arrays["length_ref"] = jax.lax.stop_gradient(element_arrays(setup_ref)["length"])
    if forcing is not None:
        arrays["tilt"] = jnp.asarray(forcing.slots, dtype)
    n_el = len(setup.elements)
    if branches is None:
        branches = tuple(BRANCH_NONE if el.kind == "magnet" else BRANCH_THICK for el in setup.elements)
    charge = setup.beam.charge
    gap_mat = setup.gap_material
    gap_scale = setup.gap_density_scale
    zero = jnp.zeros((bsz,), dtype)
    empty_rec = {
        "e_other": zero,
        "e_cont": zero,
        "e_proc": jnp.zeros((bsz, N_PROC), dtype),
        "hardest": zero,
        "hardest_proc": jnp.full((bsz,), -1, jnp.int32),
        "hardest_depth": zero,
        "overflow": jnp.zeros((bsz,), bool),
    }

    def make_material(k: int, spec: tuple[int, int] | None = None):
        # compacted interaction slots (same laws, fewer rows: step._sparse_slots) in the hard mode
        # without deflection forcing
        sparse = None if spec is None or setup_ref is not None or forcing is not None else sparse_cap(bsz, spec)

        def step(st, a, key):
            uu = uniforms(key, (bsz, n_step_uniforms(k if sparse is None else sparse[0])), dtype)
            st, rec = material_step(physics, st, a["mat"], a["length"], a["dscale"], k, uu, a.get("length_ref"),
                                    forcing, a.get("tilt"), sparse=sparse, key_side=jax.random.fold_in(key, 1))
            rec["e_other"] = zero
            return st, {key_: rec[key_] for key_ in empty_rec}

        return step

    kernels = [lambda st, a, key: (st, empty_rec), make_material(1, SPARSE_THIN),
               make_material(max_interactions, SPARSE_THICK)]
    if forced_vertex is not None:  # the BRANCH_FORCED kernel: a forced interaction in the target slot

        def force_kernel(st, a, key):
            st, rec = forced_vertex(physics, st, a["mat"], a["length"], a["dscale"], max_interactions, key,
                                    length_ref=a.get("length_ref"))
            rec["e_other"] = zero
            return st, {key_: rec[key_] for key_ in empty_rec}

        kernels.append(force_kernel)

    def body(carry, xs):
        st, n_over, radiated = carry
        i, br, a = xs
        key_i = jax.random.fold_in(key_t, i)
        uu = uniforms(jax.random.fold_in(key_i, 0), (bsz, 4), dtype)
        if hadrons:
            st = hadron_slot_before_material(
                physics, st, a, gap_mat, gap_scale, uu, jax.random.fold_in(key_i, 2), forced_decay
            )
        else:
            st = drift(physics, st, gap_mat, a["pre"], gap_scale, uu)
        st, rec = jax.lax.switch(br, kernels, st, a, jax.random.fold_in(key_i, 1))
        if hadrons:
            # energy of decay photons / absorbed hadrons lands in the first slab reached
            dep = jnp.where(a["is_slab"] & (a["length"] > 0), st["e_pending"], 0.0)
            rec = dict(rec)
            rec["e_other"] = rec["e_other"] + dep
            st = dict(st)
            st["e_pending"] = st["e_pending"] - dep
        # stochastic transfers (radiated photons, pairs, knock-ons, photonuclear) in a thin plane that
        # is not a slab (trackers, counters) travel forward and land in the next slab reached
        slab = a["is_slab"] & (a["length"] > 0)
        rec = dict(rec)
        rec["e_other"] = rec["e_other"] + jnp.where(slab, radiated, 0.0)
        radiated = jnp.where(slab, 0.0, radiated + jnp.sum(rec["e_proc"], axis=-1))
        alive = st["alive"]
        st = dict(st)
        mass = state_mass(st)
        st["tx"] = st["tx"] + jnp.where(alive, _kick_angle(st["ekin"], a["kick_x"], charge, mass), 0.0)
        st["ty"] = st["ty"] + jnp.where(alive, _kick_angle(st["ekin"], a["kick_y"], charge, mass), 0.0)
        out = {"x": st["x"], "y": st["y"], "alive": alive, **{key: rec[key] for key in REC_KEYS}}
        return (st, n_over + rec["overflow"].astype(jnp.int32), radiated), out

    (final, n_overflow, _), outs = jax.lax.scan(
        body,
        (state, jnp.zeros((bsz,), jnp.int32), jnp.zeros((bsz,), dtype)),
        (jnp.arange(n_el), jnp.asarray(branches, jnp.int32), arrays),
    )
    hits: dict[str, tuple[jnp.ndarray, jnp.ndarray, jnp.ndarray]] = {}
    slabs: dict[str, dict[str, jnp.ndarray]] = {}
    at: dict[str, tuple[jnp.ndarray, jnp.ndarray, jnp.ndarray]] = {}
    for i, el in enumerate(setup.elements):
        if el.kind != "magnet":  # truth position at the exit face of every element with material
            at[el.name] = (outs["x"][i], outs["y"][i], outs["alive"][i])
        if el.kind in ("tracker", "counter"):
            hits[el.name] = at[el.name]
        elif el.kind == "slab":
            slabs[el.name] = {key: outs[key][i] for key in REC_KEYS}
    return final, {"hits": hits, "slabs": slabs, "at": at, "n_overflow": n_overflow}


def slot_branches(setup: Setup, physics: Physics, e_max: float, e_min: float = 1.0 * u.GeV) -> tuple[int, ...]:
    """Static kernel choice per slot from the expected number of stochastic interactions.

    λ_max = max over kinetic energies in [e_min, e_max] of Σ·L; a slot with λ_max < THIN_LAMBDA
    is thin (one interaction slot), otherwise thick.  Magnets hold no material.
    """
    grid = jnp.geomspace(e_min, e_max, 24)
    out = []
    for el in setup.elements:
        if el.kind == "magnet":
            out.append(BRANCH_NONE)
            continue
        xs = np.asarray(jnp.sum(stochastic_xs(physics.tables, el.material, grid), axis=-1))
        lam = float(xs.max() * float(el.thickness) * float(el.density_scale))
        out.append(BRANCH_THIN if lam < THIN_LAMBDA else BRANCH_THICK)
    return tuple(out)


def expected_counts(setup: Setup, physics: Physics, ekin: float) -> dict[str, float]:
    """Mean number of stochastic interactions per element at kinetic energy ``ekin`` (MeV)."""
    out = {}
    for el in setup.elements:
        if el.kind == "magnet":
            continue
        xs = float(jnp.sum(stochastic_xs(physics.tables, el.material, jnp.asarray([ekin]))))
        out[el.name] = xs * float(el.thickness) * float(el.density_scale)
    return out


