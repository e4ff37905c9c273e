"""Muon deflection in discrete interactions (fastmc.physics.deflection) against independent references."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fastmc import units as u
from fastmc.physics import deflection as D

M = u.muon_mass_c2
ME = u.electron_mass_c2
E160 = 160e3 + M


def _u(n, cols, seed=0):
    return jax.random.uniform(jax.random.PRNGKey(seed), (n, cols), jnp.float64, 1e-12, 1.0)


@pytest.fixture(autouse=True)
def _x64():
    with jax.enable_x64(True):
        yield


def test_knock_on_pt_is_two_body_kinematics():
    """p_T of the δ-ray = that of the muon, from p'² = p² + p_e² − 2 p p_e cos θ_e (momentum
    conservation, solved independently in float64 for several T up to T_max)."""
    p = math.sqrt(E160**2 - M**2)
    tmax = 2 * ME * p**2 / (M**2 + ME**2 + 2 * ME * E160)
    ts = np.array([0.2, 1.0, 30.0, 160.0, 5e3, 0.3 * tmax, 0.9 * tmax])
    pe = np.sqrt(ts * (ts + 2 * ME))
    e_out = E160 - ts
    p_out = np.sqrt(e_out**2 - M**2)
    cos_e = (p**2 + pe**2 - p_out**2) / (2 * p * pe)
    ref = pe * np.sqrt(np.maximum(1 - cos_e**2, 0))
    got = np.asarray(D.muon_kick_pt(jnp.zeros(len(ts), jnp.int32), jnp.full(len(ts), E160), jnp.asarray(ts),
                                    jnp.full((len(ts), D.N_KICK_UNIFORMS - 1), 0.5)))
    # the reference loses ~1e-16·p²/p_T² to cancellation at small T: 1e-6 relative is ample
    np.testing.assert_allclose(got, ref, rtol=1e-6)


@pytest.mark.slow
def test_brems_photon_angle_follows_modified_mephi_law():
    """γ·θ_γ = r has CDF r²/(1 + r²) normalised at r_max = γπ/2·min(1, E/k − 1) (Tsai 1974 eq. 3.83
    small-angle form, Geant4 G4ModifiedMephi): KS test of 2e5 kicks at two photon energies."""
    n = 200_000
    uu = _u(n, D.N_KICK_UNIFORMS - 1, seed=3)
    gam = E160 / M
    for v in (0.01, 0.7):
        k = v * 160e3
        pt = np.asarray(D.muon_kick_pt(jnp.full(n, 1, jnp.int32), jnp.full(n, E160), jnp.full(n, k), uu))
        r = np.sort(gam * np.arcsin(pt / k))
        rmax = gam * math.pi / 2 * min(1.0, E160 / k - 1.0)
        cdf = (r**2 / (1 + r**2)) / (rmax**2 / (1 + rmax**2))
        ks = np.max(np.abs(cdf - np.arange(1, n + 1) / n))
        assert ks < 1.63 / math.sqrt(n), f"v={v}: KS {ks:.4g}"  # 1 % critical value


@pytest.mark.slow
def test_pair_kick_is_difference_of_lepton_pts():
    """Pair: |p₋ sin θ₁ − p₊ sin θ₂| with both angles from the same law — its mean equals the
    numerically integrated expectation over the asymmetry and the two angles (independent
    quadrature, float64)."""
    n = 400_000
    v = 0.05
    eps = v * 160e3
    uu = _u(n, D.N_KICK_UNIFORMS - 1, seed=5)
    pt = np.asarray(D.muon_kick_pt(jnp.full(n, 2, jnp.int32), jnp.full(n, E160), jnp.full(n, eps), uu))
    gam = E160 / M
    rmax = gam * math.pi / 2 * min(1.0, E160 / eps - 1.0)
    # quadrature: the r-law through its quantile function at g = 1 − (1 − h)², h on a midpoint
    # grid with weight 2(1 − h) (removes the 1/√(1 − g) end-point singularity); asymmetry uniform
    h = (np.arange(400) + 0.5) / 400
    g, wg = 1 - (1 - h) ** 2, 2 * (1 - h) / 400
    c = rmax**2 / (1 + rmax**2)
    th = np.sqrt(g * c / (1 - g * c)) / gam
    rm = (1 - 6 * M**2 / (E160 * (E160 - eps))) * math.sqrt(1 - 4 * ME / eps)
    a = rm * (2 * (np.arange(40) + 0.5) / 40 - 1)
    em = 0.5 * (1 - a) * eps
    ep = eps - em
    vals = np.abs(em[:, None, None] * np.sin(th)[None, :, None] - ep[:, None, None] * np.sin(th)[None, None, :])
    ref = float(np.einsum("aij,i,j->", vals, wg, wg)) / len(a)
    se = pt.std() / math.sqrt(n)
    assert abs(pt.mean() - ref) < 4 * se + 2e-3 * ref, f"{pt.mean():.5g} vs {ref:.5g} ± {se:.2g}"


def _pn_density(t, etot, nu):
    """Geant4 G4MuonVDNuclearModel accept-reject law, written out independently (float64)."""
    y = nu / etot
    tmin = M * M * y * y / (1 - y)
    tmax = 2 * u.proton_mass_c2 * nu
    m0 = 200.0
    t1, t2 = (m0 * m0, nu * nu) if nu > m0 else (nu * nu, m0 * m0)
    y1, y2 = 1 - y, 0.5 * y * y
    acc = (1 - t / tmax) * (y1 * (1 - tmin / t) + y2) / ((y1 + y2) * (1 - t / t2))
    return np.where((t >= tmin) & (t <= tmax), np.clip(acc, 0.0, 1.0) / (t * (t + t1)), 0.0), tmin, tmax


@pytest.mark.parametrize("nu", [300.0, 5e3, 80e3])
def test_photonuclear_t_matches_exact_inverse_cdf(nu):
    """t from N_PN_TRIES fixed proposals vs the exact law (numerical CDF on a fine log grid):
    quantiles of ln t agree within their statistical error plus the fallback bias (documented
    < 1e-2 of the draws, all near t_min)."""
    n = 200_000
    uu = _u(n, 2 * D.N_PN_TRIES, seed=11)
    t, tmin = D.photonuclear_t(jnp.full(n, E160), jnp.full(n, nu), uu)
    lt = np.log(np.asarray(t))
    grid_t = np.exp(np.linspace(math.log(float(tmin[0])), math.log(2 * u.proton_mass_c2 * nu), 20001))
    f, _, _ = _pn_density(grid_t, E160, nu)
    w = f * grid_t  # density in ln t
    cdf = np.concatenate([[0], np.cumsum(0.5 * (w[1:] + w[:-1]) * np.diff(np.log(grid_t)))])
    w, cdf = w / cdf[-1], cdf / cdf[-1]
    for q in (0.05, 0.25, 0.5, 0.75, 0.95, 0.995):
        ref = np.interp(q, cdf, np.log(grid_t))
        got = np.quantile(lt, q)
        # σ of a quantile: √(q(1−q)/n)/f(x); with f in ln t taken from the reference
        dens = np.interp(ref, np.log(grid_t), w)
        se = math.sqrt(q * (1 - q) / n) / max(dens, 1e-12)
        assert abs(got - ref) < 5 * se + 0.02, f"nu={nu} q={q}: {got:.4f} vs {ref:.4f} (σ {se:.3g})"


@pytest.mark.slow
def test_zero_transfer_gives_no_kick_and_gradients_are_finite():
    uu = jnp.full((4, D.N_KICK_UNIFORMS - 1), 0.37)
    procs = jnp.arange(4, dtype=jnp.int32)
    assert np.all(np.asarray(D.muon_kick_pt(procs, jnp.full(4, E160), jnp.zeros(4), uu)) == 0.0)

    def f(de):
        return jnp.sum(D.muon_kick_pt(procs, jnp.full(4, E160), jnp.full(4, de), uu))

    for de in (0.0, 500.0, 5e4):
        g = jax.jacfwd(f)(jnp.asarray(de))
        assert np.isfinite(float(g))


@pytest.mark.slow
def test_kick_float32_is_finite_and_close_to_float64():
    n = 20_000
    uu = _u(n, D.N_KICK_UNIFORMS - 1, seed=2)
    proc = jnp.asarray(np.arange(n) % 4, jnp.int32)
    de = jnp.asarray(np.exp(np.linspace(np.log(160.0), np.log(150e3), n)))
    p64 = np.asarray(D.muon_kick_pt(proc, jnp.full(n, E160), de, uu))
    p32 = np.asarray(D.muon_kick_pt(proc, jnp.full(n, E160, jnp.float32), de.astype(jnp.float32),
                                    uu.astype(jnp.float32)))
    assert np.all(np.isfinite(p32))
    # float32 inputs (uniforms rounded to 2^-24) move a quantile-sampled p_T by ≲ 1e-3 relative
    big = p64 > 1e-2
    assert np.quantile(np.abs(p32[big] / p64[big] - 1), 0.999) < 1e-2
