"""Running fastmc on a reference table's configuration: the MC side of ``fastmc validate``.

:func:`simulate_transport` sends muons through a list of slabs (:func:`fastmc.api.propagate_layers`)
and returns the energy loss and deflection observables; :func:`simulate_decay` decays K⁺/π⁺ with
:mod:`fastmc.physics.decay`.  fastmc homogenises sampling cells (:func:`homogenise_layers`) where
Geant4 tracked the real layers.  JAX and the physics modules are imported when a simulation runs.
"""

from __future__ import annotations

import json
import time
import zlib
from typing import Any

import numpy as np


def homogenise_layers(layers: list[tuple[str, float]]) -> tuple[list[tuple[str, float]], bool]:
    """Collapse repeated sampling cells into homogenised mixtures, as fastmc's setup models do.

    A pattern of 2–4 layers repeated ≥ 2 times becomes one element named by
    :func:`fastmc.config.mixture_name` with the total thickness; adjacent identical slabs merge.
    Returns (layers, changed).
    """
    from fastmc.config import mixture_name

    out: list[tuple[str, float]] = []
    i, n = 0, len(layers)
    changed = False
    while i < n:
        best = (1, 1)  # (period, repeats)
        for p in (2, 3, 4):
            cell = layers[i:i + p]
            if len(cell) < p or len({m for m, _ in cell}) < 2:
                continue
            r = 1
            while layers[i + r * p: i + (r + 1) * p] == cell:
                r += 1
            if r >= 2 and r * p > best[0] * best[1]:
                best = (p, r)
        p, r = best
        if p > 1:
            cell = layers[i:i + p]
            out.append((mixture_name(cell), r * sum(t for _, t in cell)))
            changed = True
            i += p * r
        else:
            m, t = layers[i]
            if out and out[-1][0] == m:
                out[-1] = (m, out[-1][1] + t)
            else:
                out.append((m, t))
            i += 1
    return out, changed


def config_seed(seed: int, *parts: Any) -> int:
    return (int(seed) * 1000003 + zlib.crc32(json.dumps(parts, sort_keys=True).encode())) % (2**31 - 1)


_TRANSPORT_CACHE: dict[tuple, dict[str, Any]] = {}


def simulate_transport(layers: list[tuple[str, float]], ekin_GeV: float, n: int, seed: int) -> dict[str, Any]:
    """Run fastmc on one slab configuration; cached per (layers, E, n, seed) so eloss and
    deflection share the same muons.  Returns ΔE [GeV], exit slopes [mrad], x [mm], n_stopped and timing."""
    key = (json.dumps(layers), float(ekin_GeV), int(n), int(seed))
    if key in _TRANSPORT_CACHE:
        return _TRANSPORT_CACHE[key]
    import jax.numpy as jnp

    from fastmc.api import propagate_layers

    chunk = int(min(65536, n))
    # first chunk alone: compile + one chunk; then the full run (chunk 0 recomputed, identical)
    t0 = time.perf_counter()
    propagate_layers(layers, ekin_GeV, chunk, seed, chunk_size=chunk, return_record=True)
    t_first = time.perf_counter() - t0
    t0, c0 = time.perf_counter(), time.process_time()
    ekin_out, rec = propagate_layers(layers, ekin_GeV, n, seed, chunk_size=chunk, return_record=True)
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    # ΔE against the incident energy as the engine represents it (float32 by default)
    dtype = np.dtype(jnp.result_type(float))
    ekin_in = float(np.asarray(ekin_GeV * 1000.0, dtype)) / 1000.0
    stopped = ekin_out <= 0.0
    res = {
        "eloss": (ekin_in - ekin_out)[~stopped],
        "theta_x": np.arctan(np.asarray(rec["tx"], float))[~stopped] * 1e3,
        "theta_y": np.arctan(np.asarray(rec["ty"], float))[~stopped] * 1e3,
        "disp_x": np.asarray(rec["x"], float)[~stopped],
        "n_stopped": int(stopped.sum()),
        "n_overflow": int(np.sum(rec["rec_overflow"])),
        "timing": {"n": int(n), "wall_s": wall, "cpu_s": cpu, "us_per_muon": 1e6 * wall / n,
                   "cpu_us_per_muon": 1e6 * cpu / n,
                   "compile_s": max(0.0, t_first - wall * chunk / n), "chunk_size": chunk},
    }
    tx, ty = np.asarray(rec["tx"], float)[~stopped], np.asarray(rec["ty"], float)[~stopped]
    res["theta_space"] = np.arctan(np.sqrt(tx * tx + ty * ty)) * 1e3
    _TRANSPORT_CACHE[key] = res
    return res


PDG_MU_PLUS, PDG_PI_PLUS = -13, 211
_PARENTS = {"K+": 321, "pi+": 211}


def _decay_api():
    try:
        from fastmc.physics import decay as dmod
    except ImportError as err:
        raise RuntimeError(f"fastmc.physics.decay is not available ({err})") from None
    return dmod


def _mode_index(dmod: Any, parent: str, mode_name: str) -> int | None:
    """Index of the table's mode name (e.g. 'mu_nu') in fastmc's MODES for ``parent``."""
    names = _mode_names(dmod, parent)
    return names.index(mode_name) if mode_name in names else None


_JIT_DECAY: dict[int, Any] = {}


def simulate_decay(parent: str, pmag_GeV: float, n: int, seed: int, mode_name: str | None) -> dict[str, Any]:
    """``n`` decays of ``parent`` at momentum ``pmag_GeV`` along +z: charged-track momenta [GeV/c] and angles [mrad]."""
    import jax.numpy as jnp

    from fastmc.rng import chunk_key, uniforms

    dmod = _decay_api()
    tables = dmod.build_decay_tables()
    mode = None
    if mode_name not in (None, "all"):
        mode = _mode_index(dmod, parent, mode_name)
        if mode is None:
            raise RuntimeError(f"fastmc decay modes have no '{mode_name}' for {parent}")
    import jax

    chunk = int(min(65536, n))
    fn = _JIT_DECAY.setdefault(id(dmod.sample_decay_from_u),
                               jax.jit(dmod.sample_decay_from_u, static_argnames=("parent", "mode")))
    pmag = jnp.full((chunk,), pmag_GeV * 1000.0)
    t0 = time.perf_counter()
    jax.block_until_ready(fn(tables, parent, pmag, uniforms(chunk_key(seed, 0), (chunk, dmod.N_DECAY_UNIFORMS)),
                             mode=mode))
    t_first = time.perf_counter() - t0
    p_mu, t_mu, p_pi, t_pi, modes = [], [], [], [], []
    t0, c0 = time.perf_counter(), time.process_time()
    for c in range(-(-n // chunk)):
        m = min(chunk, n - c * chunk)
        uu = uniforms(chunk_key(seed, c), (chunk, dmod.N_DECAY_UNIFORMS))
        out = fn(tables, parent, pmag, uu, mode=mode)
        pdg = np.asarray(out["charged_pdg"])[:m]
        p = np.asarray(out["p"], float)[:m] / 1000.0
        th = np.asarray(out["theta"], float)[:m] * 1000.0
        p_mu.append(p[pdg == PDG_MU_PLUS])
        t_mu.append(th[pdg == PDG_MU_PLUS])
        p_pi.append(p[pdg == PDG_PI_PLUS])
        t_pi.append(th[pdg == PDG_PI_PLUS])
        modes.append(np.asarray(out["mode"])[:m])
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    return {"p_mu": np.concatenate(p_mu), "theta_mu": np.concatenate(t_mu), "p_pi": np.concatenate(p_pi),
            "theta_pi": np.concatenate(t_pi), "mode": np.concatenate(modes),
            "mode_names": _mode_names(dmod, parent),
            "timing": {"n": int(n), "wall_s": wall, "cpu_s": cpu, "us_per_muon": 1e6 * wall / n,
                       "cpu_us_per_muon": 1e6 * cpu / n, "compile_s": max(0.0, t_first - wall * chunk / n),
                       "chunk_size": chunk}}


def _mode_names(dmod: Any, parent: str) -> list[str]:
    modes = dmod.MODES
    if isinstance(modes, dict):
        modes = modes.get(parent, modes.get(_PARENTS.get(parent), modes))
    return [m if isinstance(m, str) else getattr(m, "name", str(m)) for m in modes]
