"""Momentum reconstruction from tracker hits (no truth used).

For each spectrometer, straight lines are fitted in the bend plane to the hits of the upstream
and of the downstream arm (weighted least squares, weights 1/σ² for present hits); the bend
angle Δθ = slope_down − slope_up gives p = q · 0.2998 GeV/(T·m) · Σ∫B dl / Δθ.  An arm with
fewer than two hits gives no track (``ok = 0``, p = −1).
"""

from __future__ import annotations

import jax.numpy as jnp

from fastmc import units as u
from fastmc.geometry import Setup


def fit_line(z, m, w):
    """Weighted LSQ line m = a + b z over the last axis of (n_planes, B) arrays; returns (a, b, n)."""
    s = jnp.sum(w, axis=0)
    sz = jnp.sum(w * z, axis=0)
    sm = jnp.sum(w * m, axis=0)
    szz = jnp.sum(w * z * z, axis=0)
    szm = jnp.sum(w * z * m, axis=0)
    det = s * szz - sz * sz
    ok = det > 0
    det = jnp.where(ok, det, 1.0)
    b = (s * szm - sz * sm) / det
    a = (szz * sm - sz * szm) / det
    return a, b, ok


def _arm(setup: Setup, names, hits, plane: str):
    dtype = hits[names[0]][0].dtype
    zc = jnp.stack([(setup.element(n).z + setup.element(n).thickness).astype(dtype) for n in names])
    meas = jnp.stack([hits[n][0] if plane == "x" else hits[n][1] for n in names])
    present = jnp.stack([hits[n][2] for n in names])
    sig = jnp.stack([setup.element(n).resolution for n in names]).astype(dtype)
    z_ref = zc[0]
    w = jnp.where(present, 1.0 / sig[:, None] ** 2, 0.0)
    a, b, ok = fit_line(zc[:, None] - z_ref, meas, w)
    n_hits = jnp.sum(present, axis=0)
    return b, ok & (n_hits >= 2)


def reconstruct(setup: Setup, measured: dict) -> dict[str, jnp.ndarray]:
    """Selection variables from measured hits and energies (units in the names)."""
    out: dict[str, jnp.ndarray] = {}
    hits = measured["hits"]
    for s in setup.spectrometers:
        b_up, ok_up = _arm(setup, s.upstream, hits, s.plane)
        b_dn, ok_dn = _arm(setup, s.downstream, hits, s.plane)
        bl = sum(setup.element(m).field_integral for m in s.magnets)
        dtheta = b_dn - b_up
        ok = ok_up & ok_dn & (dtheta * setup.beam.charge * jnp.sign(bl) > 0)
        safe = jnp.where(ok, dtheta, 1.0)
        p = setup.beam.charge * u.GEV_PER_TESLA_METRE * bl / safe  # GeV/c
        out[f"{s.output}_GeV"] = jnp.where(ok, p, -1.0)
        out[f"{'in' if s.output == 'p_in' else 'out'}_ok"] = ok.astype(p.dtype)
    for group, e in measured["energies"].items():
        out[f"e_{group}_GeV"] = e / u.GeV
        out[f"e_{group}_MeV"] = e / u.MeV
    return out
