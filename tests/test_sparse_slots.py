"""Compacted interaction slots (fastmc.transport.step._sparse_slots) against the plain K-slot step.

From the same uniforms the compacted step must give the plain step's result: the count N and
everything after the slots read the same columns, and the slot uniforms of a row are the main
columns (N ≤ k_main) or the side draws of its position in the buffer (N > k_main).  The test lays those uniforms out as the plain step reads them and compares.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fastmc.api import layers_physics
from fastmc.config import PhysicsSettings
from fastmc.physics import stochastic_xs
from fastmc.physics.deflection import N_KICK_UNIFORMS
from fastmc.physics.scattering import N_UNIFORMS as N_SCAT
from fastmc.rng import uniforms
from fastmc.transport import material_step, n_step_uniforms
from fastmc.transport.step import _poisson_count

_NK = N_KICK_UNIFORMS


def _plain_uniforms(uu_main, key_side, n, k, k_main, cap, bsz):
    """The (B, n_step_uniforms(k)) array the plain step reads for the draws of the compacted one."""
    rows = np.full((bsz, (3 + _NK) * k), 0.5, np.float32)
    km = k_main
    main = np.concatenate([uu_main[:, 2 : 2 + 3 * km], uu_main[:, 2 + 3 * km + N_SCAT : 2 + 3 * km + N_SCAT + _NK * km]],
                          axis=1)
    for g in range(3):  # depth, process, v: k_main columns of the main layout into the K-slot layout
        rows[:, g * k : g * k + km] = main[:, g * km : (g + 1) * km]
    rows[:, 3 * k : 3 * k + _NK * km] = main[:, 3 * km :]
    idx = np.nonzero(n > k_main)[0]  # in index order, cap rows per piece, piece p from fold_in(key_side, p)
    for p in range(-(-len(idx) // cap)):
        side = np.asarray(uniforms(jax.random.fold_in(key_side, p), (cap, rows.shape[1]), jnp.float32))
        sel = idx[p * cap : (p + 1) * cap]
        rows[sel] = side[: len(sel)]
    out = np.concatenate([uu_main[:, :2], rows[:, : 3 * k], uu_main[:, 2 + 3 * k_main : 2 + 3 * k_main + N_SCAT],
                          rows[:, 3 * k :], uu_main[:, 2 + 3 * k_main + N_SCAT + _NK * k_main :]], axis=1)
    assert out.shape[1] == n_step_uniforms(k)
    return out


@pytest.fixture(scope="module")
def physics():
    return layers_physics(("iron",), PhysicsSettings())


# thick: several pieces of the buffer, the last one partly filled; thin: one row per piece
@pytest.mark.parametrize("k,k_main,length,cap", [(8, 2, 1500.0, 5), (1, 0, 200.0, 4)])
def test_sparse_step_equals_plain_step(physics, k, k_main, length, cap):
    bsz = 128
    key = jax.random.key(3)
    ekin = 10e3 + 190e3 * uniforms(jax.random.fold_in(key, 7), (bsz,), jnp.float32)
    zero = jnp.zeros((bsz,), jnp.float32)
    st = dict(x=zero, y=zero, tx=zero + 1e-3, ty=zero, ekin=ekin, alive=jnp.arange(bsz) != 5)
    mat, ds = jnp.asarray(0), jnp.asarray(1.0, jnp.float32)
    uu_main = uniforms(jax.random.fold_in(key, 1), (bsz, n_step_uniforms(k_main)), jnp.float32)
    key_side = jax.random.fold_in(key, 2)
    new_s, rec_s = jax.jit(lambda st, uu: material_step(physics, st, mat, jnp.asarray(length), ds, k, uu,
                                                         sparse=(k_main, cap), key_side=key_side))(st, uu_main)
    # the count, as the step draws it
    xs = stochastic_xs(physics.tables, mat, jnp.maximum(ekin, 1.0)) * ds
    xs = jnp.where(st["alive"][:, None], xs, 0.0)
    n = np.asarray(_poisson_count(jnp.sum(xs, axis=-1) * length, uu_main[:, 0], k)[0])
    big = int((n > k_main).sum())
    assert cap < big < bsz - cap and big % cap  # several pieces run, one partly, and some are skipped
    uu_plain = _plain_uniforms(np.asarray(uu_main), key_side, n, k, k_main, cap, bsz)
    new_p, rec_p = jax.jit(lambda st, uu: material_step(physics, st, mat, jnp.asarray(length), ds, k, uu))(
        st, jnp.asarray(uu_plain))
    for name in ("x", "y", "tx", "ty", "ekin", "alive"):
        np.testing.assert_allclose(np.asarray(new_s[name]), np.asarray(new_p[name]), rtol=2e-5, atol=1e-6,
                                   err_msg=name)
    for name in ("e_cont", "e_proc", "hardest", "hardest_proc", "hardest_depth", "overflow"):
        np.testing.assert_allclose(np.asarray(rec_s[name]), np.asarray(rec_p[name]), rtol=2e-5, atol=2e-3,
                                   err_msg=name)
