"""Muon-only transport through the absorber sequence of a setup: fastmc (JAX) vs plain NumPy.

The NumPy code is a straightforward vectorised port of :func:`fastmc.transport.material_step` in
its hard mode: Poisson count of stochastic interactions by inverse CDF capped at K, ordered
depths, process choice and v = ΔE/E from the inverse-CDF tables, continuous loss along the CSDA
range with RK4 / range inversion, the deflection of every interaction, Landau–Vavilov straggling
of the sub-cut loss with its radiative part, and multiple scattering at p_eff with its lever arms
in the card's model (Molière core and single scatters by default).  The straggling, kick and
scattering samplers are not rewritten: :func:`physics_on_numpy` runs fastmc's own modules with
NumPy as their array namespace.  It goes element by element through the material elements of the
setup (trackers and slabs in z order; magnets and air gaps left out).  The physics tables are
fastmc's, as float32 numpy arrays, and the per-element interaction-slot cap K is fastmc's (1 for
thin elements, ``max_interactions`` for thick ones).  Both sides run in float32 on the same
24-bit uniform grid, with the same columns of uniforms per step, so the comparison is one of
implementation, not of physics: ``tests/test_scaling.py`` feeds both the same uniforms and gets
the same muons; :func:`compare` also returns the mean exit energy of both (different streams).

Used by ``fastmc bench --numpy``; also runnable: ``python -m fastmc.numpy_baseline [CARD]``.
"""

from __future__ import annotations

import functools
import math
import time
from typing import Any

import jax
import numpy as np

MU = 105.6583755  # muon mass [MeV] (fastmc.units.muon_mass_c2)
ME = 0.51099895  # electron mass [MeV] (fastmc.units.electron_mass_c2)


# ------------------------------------------------------------------------------- the sequence


def absorber_sequence(prep: Any) -> list[tuple[int, float, float, int]]:
    """(material index, length mm, density scale, K) of every material element, in z order."""
    from fastmc.transport import BRANCH_NONE, BRANCH_THIN, element_arrays

    arrays = element_arrays(prep.setup)
    mats = np.asarray(arrays["mat"])
    lengths = np.asarray(arrays["length"], dtype=np.float64)
    dscale = np.asarray(arrays["dscale"], dtype=np.float64)
    out = []
    for i, br in enumerate(prep.options.branches):
        if br == BRANCH_NONE or lengths[i] <= 0:
            continue
        k = 1 if br == BRANCH_THIN else prep.options.max_interactions
        out.append((int(mats[i]), float(lengths[i]), float(dscale[i]), k))
    return out


def g4_layers(cfg: Any) -> list[tuple[str, float]]:
    """The same material elements as real layers (sampling cells unrolled) for Geant4."""
    out: list[tuple[str, float]] = []
    for el in cfg.model.elements:
        if el.kind == "magnet" or el.thickness <= 0:
            continue
        if el.layers:
            out += [(m, float(t)) for _ in range(el.n_layers) for m, t in el.layers]
        else:
            out.append((el.material, float(el.thickness)))
    return out


# ------------------------------------------------------------------------------- NumPy port


class NumpyTables:
    """fastmc's physics tables as float32 numpy arrays, with the look-ups of fastmc.physics.tables."""

    def __init__(self, tables: Any, dtype=np.float32):
        def f(a):
            return np.asarray(a, dtype=dtype)

        self.dedx, self.range_mm, self.inv_ln_ekin = f(tables.dedx_cont), f(tables.range_mm), f(tables.inv_ln_ekin)
        self.inv_ln_r0, self.inv_dln_r, self.xs = f(tables.inv_ln_r0), f(tables.inv_dln_r), f(tables.xs)
        self.straggle, self.ln_v_lo, self.ln_v_hi, self.icdf = (f(tables.straggle), f(tables.ln_v_lo),
                                                                f(tables.ln_v_hi), f(tables.icdf))
        # scalars as Python floats: a NumPy float64 scalar would promote every float32 array it meets
        self.ln_ekin0, self.dln_ekin = float(tables.ln_ekin0), float(tables.dln_ekin)
        self.n_energy = int(tables.n_energy)
        self.logit_max, self.n_u = float(tables.logit_max), int(tables.n_u)
        self.v_cut, self.e_cut = float(tables.v_cut), float(tables.e_cut)
        self.xi_per_mm = f(tables.xi_per_mm)
        self.dtype = dtype

    def index(self, ekin):
        f = (np.log(np.maximum(ekin, 1e-30)) - self.ln_ekin0) / self.dln_ekin
        f = np.clip(f, 0.0, self.n_energy - 1.0)
        i0 = np.clip(np.floor(f).astype(np.int32), 0, self.n_energy - 2)
        return i0, (f - i0).astype(self.dtype)

    def dedx_at(self, m, ekin):
        i0, w = self.index(ekin)
        return self.dedx[m, i0] * (1 - w) + self.dedx[m, i0 + 1] * w

    def csda(self, m, ekin):
        i0, t = self.index(ekin)
        h = self.dln_ekin
        e0 = np.exp(self.ln_ekin0 + h * i0).astype(self.dtype)
        e1 = e0 * math.exp(h)
        r0, r1 = self.range_mm[m, i0], self.range_mm[m, i0 + 1]
        m0, m1 = e0 / self.dedx[m, i0], e1 / self.dedx[m, i0 + 1]
        t2, t3 = t * t, t * t * t
        r = (2 * t3 - 3 * t2 + 1) * r0 + (t3 - 2 * t2 + t) * h * m0 + (-2 * t3 + 3 * t2) * r1 + (t3 - t2) * h * m1
        ekin0 = math.exp(self.ln_ekin0)
        return np.where(ekin < ekin0, self.range_mm[m, 0] * np.maximum(ekin, 0.0) / ekin0, r)

    def ekin_after(self, m, ekin, length):
        ekin0 = math.exp(self.ln_ekin0)

        def s(e):
            return self.dedx_at(m, np.maximum(e, ekin0))

        k1 = s(ekin)
        k2 = s(ekin - 0.5 * length * k1)
        k3 = s(ekin - 0.5 * length * k2)
        k4 = s(ekin - length * k3)
        e_short = ekin - length * (k1 + 2 * k2 + 2 * k3 + k4) / 6
        r = self.csda(m, ekin)
        if np.all(length < 0.05 * r):  # as fastmc: no range inversion when no muon needs it
            return np.clip(e_short, 0.0, ekin)
        r_out = r - length
        r_pos = np.maximum(r_out, 1e-30)
        nr = self.inv_ln_ekin.shape[-1]
        f = np.clip((np.log(r_pos) - self.inv_ln_r0[m]) / self.inv_dln_r[m], 0.0, nr - 1.0)
        j0 = np.clip(np.floor(f).astype(np.int32), 0, nr - 2)
        wj = f - j0.astype(self.dtype)  # NumPy: float32 − int32 would be float64
        e_long = np.exp(self.inv_ln_ekin[m, j0] * (1 - wj) + self.inv_ln_ekin[m, j0 + 1] * wj)
        e_long = np.where(r_pos < self.range_mm[m, 0], ekin0 * r_pos / self.range_mm[m, 0], e_long)
        for _ in range(2):
            e_long = np.maximum(e_long - (self.csda(m, e_long) - r_pos) * s(e_long), 0.0)
        e_long = np.where(r_out > 0, e_long, 0.0)
        return np.clip(np.where(length < 0.05 * r, e_short, e_long), 0.0, ekin)

    def xs_at(self, m, ekin):
        i0, w = self.index(ekin)
        return np.maximum(self.xs[m, i0] * (1 - w)[:, None] + self.xs[m, i0 + 1] * w[:, None], 0.0)

    def straggle_at(self, m, ekin):
        i0, w = self.index(ekin)
        return self.straggle[m, i0] * (1 - w) + self.straggle[m, i0 + 1] * w

    def sample_v(self, m, proc, ekin, u):
        i0, w = self.index(ekin)
        lm = self.logit_max
        s = np.clip(np.log(u) - np.log1p(-u), -lm, lm)
        g = (s + lm) / (2.0 * lm / (self.n_u - 1))
        j0 = np.clip(np.floor(g).astype(np.int32), 0, self.n_u - 2)
        wu = g - j0.astype(self.dtype)
        t = self.icdf
        x0 = t[m, proc, i0, j0] * (1 - wu) + t[m, proc, i0, j0 + 1] * wu
        x1 = t[m, proc, i0 + 1, j0] * (1 - wu) + t[m, proc, i0 + 1, j0 + 1] * wu
        x = x0 * (1 - w) + x1 * w
        lnlo = self.ln_v_lo[m, proc, i0] * (1 - w) + self.ln_v_lo[m, proc, i0 + 1] * w
        lnhi = self.ln_v_hi[m, proc, i0] * (1 - w) + self.ln_v_hi[m, proc, i0 + 1] * w
        v = np.exp(lnlo + x * (lnhi - lnlo))
        return np.clip(v, np.maximum(self.v_cut, self.e_cut / (ekin + MU)), np.exp(lnhi))


def physics_on_numpy() -> dict[str, Any]:
    """fastmc's samplers of straggling, interaction kicks and scattering, evaluated by NumPy.

    Fresh copies of :mod:`fastmc.physics.straggling`, :mod:`~fastmc.physics.deflection` and
    :mod:`~fastmc.physics.scattering` whose array namespace ``jnp`` is NumPy (their special
    functions from SciPy): the same source, line for line, run eagerly on NumPy arrays.  These
    modules use only the part of the jax.numpy API that NumPy shares, so the port cannot drift
    from the JAX code; ``tests/test_scaling.py`` checks step by step that both give the same
    muons from the same uniforms.
    """
    import importlib.util

    import scipy.special as sp

    def copy(name):
        spec = importlib.util.find_spec(name)
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
        mod.jnp = np
        return mod

    def normal(u):
        return math.sqrt(2.0) * sp.erfinv(np.clip(2.0 * u - 1.0, -(1.0 - 2.0**-23), 1.0 - 2.0**-23))

    strag, defl, scat = (copy(f"fastmc.physics.{m}") for m in ("straggling", "deflection", "scattering"))
    strag.normal_from_uniform = normal
    scat.ndtri, scat.jax_sigmoid = sp.ndtri, sp.expit
    return {"straggling": strag, "deflection": defl, "scattering": scat}


def numpy_physics(prep: Any) -> tuple[NumpyTables, dict[str, Any], Any]:
    """(tables, samplers, scattering parameters) of a prepared run, on NumPy (float32)."""
    sp = jax.tree_util.tree_map(lambda a: np.asarray(a, np.float32) if np.issubdtype(np.asarray(a).dtype, np.floating)
                                else np.asarray(a), prep.physics.scattering)
    return NumpyTables(prep.physics.tables), physics_on_numpy(), sp


@np.errstate(divide="ignore", invalid="ignore", over="ignore")  # as in JAX: ±inf at u → 0, 1 are clipped
def numpy_material_step(t: NumpyTables, st: dict, m: int, length: float, dscale: float, k: int,
                        rng: np.random.Generator | None, ph: dict, scat_params: Any, model: str,
                        uu: np.ndarray | None = None) -> dict:
    """One element, as :func:`fastmc.transport.material_step` (hard mode, muons, no forcing):
    the same uniforms column by column (``uu``, or drawn from ``rng`` on the same 24-bit grid)."""
    from fastmc.transport.step import N_KICK_UNIFORMS, N_SCAT_UNIFORMS, N_STRAGGLE_UNIFORMS, n_step_uniforms

    strag, defl, scat = ph["straggling"], ph["deflection"], ph["scattering"]
    dt = t.dtype
    ekin_in, alive = st["ekin"], st["alive"]
    b = ekin_in.shape[0]
    if uu is None:
        uu = rng.random((b, n_step_uniforms(k)), dtype=dt) + dt(2.0**-25)
    path = length * dscale
    safe_e = np.maximum(ekin_in, 1.0)
    xs = t.xs_at(m, safe_e) * dscale
    xs[~alive] = 0.0
    xs_tot = xs.sum(axis=-1)
    lam = xs_tot * length
    term = np.exp(-lam)
    cdf = term.copy()
    n = np.zeros(b, np.int32)
    for j in range(k):
        n += uu[:, 0] > cdf
        term = term * lam / (j + 1)
        cdf = cdf + term
    slot = np.arange(k)
    depth = np.sort(np.where(slot[None, :] < n[:, None], uu[:, 2 : 2 + k], 1.0), axis=-1)
    cum = np.cumsum(xs, axis=-1) / np.maximum(xs_tot, 1e-30)[:, None]
    e_after = t.ekin_after(m, safe_e, path)
    d_cont = np.where(alive, safe_e - e_after, 0.0)
    e_at = np.maximum(ekin_in[:, None] - d_cont[:, None] * depth, 1.0)
    proc = np.sum(uu[:, 2 + k : 2 + 2 * k, None] > cum[:, None, :-1], axis=-1).astype(np.int32)
    v = t.sample_v(m, proc, e_at, uu[:, 2 + 2 * k : 2 + 3 * k])
    active = slot[None, :] < n[:, None]
    lost = np.zeros(b, dt)
    e_before, de_k = np.empty((b, k), dt), np.empty((b, k), dt)
    for j in range(k):
        avail = np.maximum(e_at[:, j] - lost, 0.0)
        de_k[:, j] = np.where(active[:, j], np.minimum(v[:, j] * (avail + MU), avail), 0.0)
        e_before[:, j] = avail
        lost = lost + de_k[:, j]
    # kicks of the interactions: p_T / p_after at the azimuth, displaced over the rest of the step
    k0 = 2 + 3 * k + N_SCAT_UNIFORMS
    uk = uu[:, k0 : k0 + N_KICK_UNIFORMS * k].reshape(b, k, N_KICK_UNIFORMS)
    pt = defl.muon_kick_pt(proc, e_before + MU, de_k, uk[..., 1:])
    e_aft = np.maximum(e_before - de_k, 0.0)
    dth = pt / np.maximum(np.sqrt(e_aft * (e_aft + 2 * MU)), 1.0)
    phi = 2.0 * np.pi * uk[..., 0]
    kx, ky = dth * np.cos(phi), dth * np.sin(phi)
    rest = length * (1.0 - depth)
    # straggling of the sub-cut loss: Landau–Vavilov knock-ons + radiative part
    var = t.straggle_at(m, safe_e) * path
    etot = safe_e + MU
    beta2 = 1.0 - (MU / etot) ** 2
    gamma = etot / MU
    r = ME / MU
    t_max = 2.0 * ME * (gamma * gamma - 1.0) / (1.0 + 2.0 * gamma * r + r * r)
    t_cut = np.minimum(np.maximum(t.v_cut * etot, t.e_cut), t_max)
    xi = t.xi_per_mm[m] * path / beta2
    bb = beta2 / t_max
    var_rad = np.maximum(var - strag.fluctuation_variance(xi, t_cut, bb), 0.0)
    us = uu[:, uu.shape[1] - N_STRAGGLE_UNIFORMS :]
    n_ion = strag.N_UNIFORMS
    fluct = strag.sample_fluctuation(xi, t_cut, us[:, :n_ion], bb) + strag.sample_radiative_fluctuation(
        var_rad, t_cut, us[:, n_ion:])
    ekin = ekin_in - d_cont - lost - np.where(alive, fluct, 0.0)
    ekin = np.where(e_after > 0.0, ekin, 0.0)
    ekin = np.where(alive, np.clip(ekin, 0.0, ekin_in), ekin_in)
    # multiple scattering at p_eff over the segments between the interactions, with lever arms
    lost_cum = np.cumsum(de_k, axis=-1)
    start = np.concatenate([np.zeros((b, 1), dt), depth], axis=-1)
    end = np.concatenate([depth, np.ones((b, 1), dt)], axis=-1)
    e_start = np.concatenate([ekin_in[:, None], e_at - lost_cum], axis=-1)
    frac = end - start
    e_mid = np.maximum(e_start - 0.5 * d_cont[:, None] * frac, 0.0)
    ip2 = 1.0 / np.maximum(np.sqrt(e_mid * (e_mid + 2 * MU)), 1.0) ** 2
    inv_p2 = np.maximum(np.sum(frac * ip2, axis=-1), 1e-30)
    p_mid = 1.0 / np.sqrt(inv_p2)
    lever = (np.sum(ip2 * frac * (1.0 - 0.5 * (start + end)), axis=-1) / inv_p2,
             np.sum(ip2 * ((1.0 - start) ** 3 - (1.0 - end) ** 3), axis=-1) / (3.0 * inv_p2))
    beta_mid = p_mid / np.sqrt(p_mid**2 + MU * MU)
    sc = scat.sample_scattering_info(scat_params, m, np.maximum(p_mid, 1.0), beta_mid, path,
                                     uu[:, 2 + 3 * k : 2 + 3 * k + N_SCAT_UNIFORMS], model=model, lever=lever)
    still = alive & (ekin > 0.0)
    dx = sc["dx"] + np.sum(kx * rest, axis=-1)
    dy = sc["dy"] + np.sum(ky * rest, axis=-1)
    return {
        "x": st["x"] + st["tx"] * length + np.where(still, dx, 0.0),
        "y": st["y"] + st["ty"] * length + np.where(still, dy, 0.0),
        "tx": st["tx"] + np.where(still, sc["dtheta_x"] + kx.sum(axis=-1), 0.0),
        "ty": st["ty"] + np.where(still, sc["dtheta_y"] + ky.sum(axis=-1), 0.0),
        "ekin": ekin.astype(dt),
        "alive": still,
    }


def numpy_transport(t: NumpyTables, seq, ekin0: float, n: int, seed: int, ph: dict, scat_params: Any,
                    model: str) -> dict:
    rng = np.random.Generator(np.random.PCG64(seed))
    dt = t.dtype
    st = {k: np.zeros(n, dt) for k in ("x", "y", "tx", "ty")}
    st["ekin"] = np.full(n, ekin0, dt)
    st["alive"] = np.ones(n, bool)
    for m, length, dscale, k in seq:
        st = numpy_material_step(t, st, m, length, dscale, k, rng, ph, scat_params, model)
    return st


# ------------------------------------------------------------------------------- JAX (fastmc)


@functools.partial(jax.jit, static_argnames=("n", "kmax"))
def jax_transport(physics, key, mats, lengths, dscales, thick, ekin0, n: int, kmax: int):
    """The same sequence with fastmc's material_step: a ``lax.scan`` over elements, thin/thick kernels."""
    import jax.numpy as jnp

    from fastmc.rng import uniforms
    from fastmc.transport import material_step, n_step_uniforms

    dt = jnp.result_type(float)
    st = {k: jnp.zeros((n,), dt) for k in ("x", "y", "tx", "ty")}
    st["ekin"] = jnp.full((n,), ekin0, dt)
    st["alive"] = jnp.ones((n,), bool)

    def kernel(k):
        def f(st, i, m, length, ds):
            uu = uniforms(jax.random.fold_in(key, i), (n, n_step_uniforms(k)), dt)
            return material_step(physics, st, m, length, ds, k, uu)[0]

        return f

    thin, thick_k = kernel(1), kernel(kmax)

    def body(st, xs):
        i, m, length, ds, th = xs
        return jax.lax.cond(th, thick_k, thin, st, i, m, length, ds), None

    st, _ = jax.lax.scan(body, st, (jnp.arange(mats.shape[0]), mats, lengths, dscales, thick))
    return st


def compare(cfg: Any, prep: Any, n: int, seed: int = 1, repeats: int = 3, devices: int = 1) -> dict[str, Any]:
    """Time both implementations on ``n`` muons of the beam momentum through the sequence.

    ``devices`` > 1: the JAX side splits the muons over that many local devices (``jax.pmap``, one
    key per device; on CPU, host devices from ``--xla_force_host_platform_device_count``, each run
    on its own thread).  NumPy runs in one thread whatever the machine."""
    import jax.numpy as jnp

    from fastmc.rng import chunk_key
    from fastmc.transport import Physics

    seq = absorber_sequence(prep)
    ekin0 = float(np.sqrt(float(prep.setup.beam.momentum) ** 2 + MU**2) - MU)
    kmax = max(k for *_, k in seq)
    model = prep.physics.scattering_model
    physics = Physics(prep.physics.tables, prep.physics.scattering, model, prep.physics.lambda_i)
    dt = jnp.result_type(float)
    args = (jnp.asarray([s[0] for s in seq], jnp.int32), jnp.asarray([s[1] for s in seq], dt),
            jnp.asarray([s[2] for s in seq], dt), jnp.asarray([s[3] > 1 for s in seq]))
    if n % devices:
        raise ValueError(f"{n} muons do not split over {devices} devices")

    def program(nd):
        if nd == 1:
            return lambda r: jax_transport(physics, chunk_key(seed, r), *args, ekin0, n=n, kmax=kmax)
        split = jax.pmap(lambda ph, key, *a: jax_transport(ph, key, *a, ekin0, n=n // nd, kmax=kmax),
                         in_axes=(None, 0) + (None,) * len(args), devices=jax.local_devices()[:nd])
        return lambda r: split(physics, jnp.stack([jax.random.fold_in(chunk_key(seed, r), d) for d in range(nd)]),
                               *args)

    timing = {}
    for nd in sorted({1, devices}):  # one device, and the requested count
        go = program(nd)
        t0 = time.perf_counter()
        out = jax.block_until_ready(go(0))
        t_first = time.perf_counter() - t0
        t0 = time.perf_counter()
        for r in range(repeats):
            out = go(r + 1)
        out = jax.block_until_ready(out)
        timing[nd] = (t_first, (time.perf_counter() - t0) / repeats)
    t_first, t_jax = timing[devices]
    e_jax = np.asarray(out["ekin"], np.float64).ravel()
    nt, ph, sp = numpy_physics(prep)
    numpy_transport(nt, seq[:2], ekin0, min(n, 1024), seed, ph, sp, model)  # warm-up (allocator, page faults)
    t0 = time.perf_counter()
    for r in range(repeats):  # timed as the JAX side: the mean of ``repeats`` runs
        st = numpy_transport(nt, seq, ekin0, n, seed + r, ph, sp, model)
    t_np = (time.perf_counter() - t0) / repeats
    e_np = st["ekin"].astype(np.float64)
    return {
        "elements": len(seq),
        "scattering_model": model,
        "jax_devices": devices,
        "muons": n,
        "jax_first_call_s": t_first,
        "jax_seconds": t_jax,
        "jax_muons_per_s": n / t_jax,
        "numpy_seconds": t_np,
        "numpy_muons_per_s": n / t_np,
        "speedup_jax_over_numpy": t_np / t_jax,
        "jax_muons_per_s_1_device": n / timing[1][1],
        "speedup_jax_1_device_over_numpy": t_np / timing[1][1],
        "mean_exit_ekin_GeV": {"jax": float(e_jax.mean() / 1e3), "numpy": float(e_np.mean() / 1e3)},
        "stdev_exit_ekin_GeV": {"jax": float(e_jax.std() / 1e3), "numpy": float(e_np.std() / 1e3)},
    }


def geant4_compare(cfg: Any, n: int, seed: int = 1, timeout_s: float = 1800.0) -> dict[str, Any]:
    """Time Geant4 (geant4-pybind, muon-only: secondaries killed) through the same layers.

    Runs ``calibration/scripts/g4common.py`` in a fresh process (one core).  Returns
    ``{"skipped": reason}`` if geant4-pybind or the scripts are missing.
    """
    import importlib.util
    import json
    import os
    import subprocess
    import sys
    import tempfile
    from pathlib import Path

    script = Path(__file__).resolve().parent.parent / "calibration" / "scripts" / "g4common.py"
    if importlib.util.find_spec("geant4_pybind") is None:
        return {"skipped": "geant4-pybind is not installed (pip install 'fastmc[fullsim]')"}
    if not script.is_file():
        return {"skipped": f"{script} not found (needs the source tree)"}
    layers = g4_layers(cfg)
    spec = {"kind": "slab", "layers": layers, "particle": "mu+", "momentum_GeV": float(cfg.model.beam.momentum) / 1e3,
            "n_events": int(n), "seed": int(seed)}
    with tempfile.TemporaryDirectory(prefix="fastmc_bench_g4_") as tmp:
        sp, op = os.path.join(tmp, "spec.json"), os.path.join(tmp, "out.npz")
        Path(sp).write_text(json.dumps(spec))
        r = subprocess.run([sys.executable, str(script), "worker", sp, op], capture_output=True, text=True,
                           timeout=timeout_s, check=False)
        if r.returncode != 0:
            return {"skipped": f"Geant4 worker failed (rc={r.returncode}): {(r.stderr or r.stdout)[-300:]}"}
        with np.load(op) as data:
            meta = json.loads(str(data["meta"]))
            ekin = np.asarray(data["ekin"], np.float64)
    cpu = float(meta["cpu_seconds"])
    return {
        "layers": len(layers),
        "muons": int(n),
        "cpu_seconds": cpu,
        "muons_per_core_s": n / cpu if cpu > 0 else None,
        "geant4_version": meta.get("geant4_version"),
        "mean_exit_ekin_GeV": float(ekin.mean()) if ekin.size else None,
        "n_exited": int(meta.get("n_exited", ekin.size)),
    }


if __name__ == "__main__":  # pragma: no cover
    import json
    import sys
    from pathlib import Path

    from fastmc.chain import prepare
    from fastmc.runcard import load_run

    root = Path(__file__).resolve().parent.parent
    card = sys.argv[1] if len(sys.argv) > 1 else str(root / "runs" / "quickstart.toml")
    cfg = load_run(card)
    print(json.dumps(compare(cfg, prepare(cfg), 65536), indent=1))
