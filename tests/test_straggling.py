"""Sub-cut ionisation straggling (fastmc.physics.straggling) against independent references.

References (none shares code with the sampler):

* ``_Exact``: Vavilov's law of the same spectrum ξ(1/T² − b/T) on (0, T_c], from its characteristic
  function ln φ(s) = ξ∫(e^{isT} − 1 − isT)(1/T² − b/T)dT in closed form (sine/cosine integrals) and
  the Gil-Pelaez inversion F(x) = ½ − (1/π)∫_0^∞ Im[e^{−isx}φ(s)]/s ds (trapezoid on a grid fine
  against the oscillation; checked against the two others below to < 0.01 ξ);
* ``_brute_force``: numpy Monte Carlo of every knock-on with T ∈ [ε, T_c], ε = ξ/50 — Poisson
  count, T by inverse CDF of 1/T² — plus a Gaussian of variance ξε for T < ε (its neglected third
  cumulant ξε²/2 = ξ³/5000 moves quantiles by < 1e-3 ξ);
* ``scipy.stats.landau`` (Landau 1944) in the κ → 0 limit: δ/ξ = λ + ln κ + 1 − γ_E with
  λ = (π/2) X + ln(π/2), X the scipy (Nolan S1) variable; most probable value ξ(ln κ + 0.200) and
  FWHM 4.018 ξ of Landau’s function (PDG RPP 2024 §34.2.9, eq. 34.12).

Tolerances: |ΔQ| < 4 σ_Q + model tolerance, σ_Q = √(q(1−q)/n)/f(Q) from the exact density f; the
model tolerance is 0.03 in units of min(ξ, √Var δ): twice the sampler's largest systematic error
measured with 2e6 samples over κ = 1e-6 … 20, b T_c = 0 … 1 (0.016, the 1 % quantile; module
docstring).
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import optimize, special, stats

from fastmc.materials import get_material
from fastmc.physics import straggling as st
from fastmc.physics.ionisation import IonisationBB, kinematics
from fastmc.rng import uniforms

EULER = 0.5772156649015329
XI_PB, TC_PB = 0.39, 160.0  # MeV: 160 GeV μ in 5.6 mm of lead (1 X0), T_c = v_cut E
Q5 = np.array([0.05, 0.25, 0.5, 0.75, 0.95])
MODEL_TOL = 0.03  # × min(ξ, σ): see the module docstring

_sample = jax.jit(st.sample_fluctuation)
_sample_overflow = jax.jit(lambda xi, tc, u: st.sample_fluctuation(xi, tc, u, with_overflow=True))


def _u(seed: int, n: int, dtype=jnp.float32):
    return uniforms(jax.random.key(seed), (n, st.N_UNIFORMS), dtype)


N = 200_000  # one batch shape for most tests: one compilation per code path (b dropped / kept)
V0 = np.float32(0.0)


def _draw(xi, tc, n, seed, b=None, var_extra=V0):
    u = _u(seed, n)
    xi = jnp.full(n, xi, jnp.float32)
    tc = jnp.full(n, tc, jnp.float32)
    b = None if b is None else jnp.full(n, b, jnp.float32)
    return np.asarray(_sample(xi, tc, u, b, var_extra), dtype=np.float64)


class _Exact:
    """Exact law of δ/T_c for κ = ξ/T_c and b' = b T_c (Gil-Pelaez)."""

    def __init__(self, kappa: float, bc: float = 0.0):
        sd = math.sqrt(kappa * (1.0 - bc / 2.0))
        self.kappa, self.sd = kappa, sd
        self.hi = 150.0 * kappa if kappa < 0.01 else 1.0 + 8.0 * sd
        self.lo = -8.0 * sd if kappa > 1.0 else max(-8.0 * sd, kappa * (math.log(kappa) - 10.0))
        t_max = max(40.0, math.sqrt(80.0 * kappa))  # t = κ s: |φ| < e^{-40} beyond
        dt = min(1e-3, 0.1 / (max(self.hi, -self.lo) / kappa + 20.0)) * max(1.0, t_max / 40.0)
        t = np.concatenate([np.geomspace(1e-9, 1e-3, 400)[:-1], np.arange(1e-3, t_max, dt)])
        s = t / kappa
        si, ci = special.sici(s)
        ls = np.log(s)
        log_phi = kappa * s * ((1 - np.cos(s)) / s - si + 1j * (1 - np.sin(s) / s + ci - EULER - ls))
        log_phi -= kappa * bc * ((ci - EULER - ls) + 1j * (si - s))
        self.s, self.phi = s, np.exp(log_phi)

    def cdf(self, x: float) -> float:
        f = np.imag(np.exp(-1j * self.s * x) * self.phi) / self.s
        return 0.5 - np.trapezoid(f, self.s) / math.pi

    def pdf(self, x: float) -> float:
        h = 0.02 * min(self.kappa, self.sd)
        return (self.cdf(x + h) - self.cdf(x - h)) / (2 * h)

    def quantile(self, q: float) -> float:
        tol = 1e-4 * min(self.kappa, self.sd)
        return optimize.brentq(lambda x: self.cdf(x) - q, self.lo, self.hi, xtol=tol)


def _brute_force(xi: float, tc: float, n: int, seed: int, eps_frac: float = 1 / 50) -> np.ndarray:
    """δ [MeV] from every knock-on in [ε, T_c] (1/T², b = 0), Gaussian below ε."""
    rng = np.random.default_rng(seed)
    eps = xi * eps_frac
    mu = xi * (1 / eps - 1 / tc)
    cnt = rng.poisson(mu, n)
    v = rng.random(cnt.sum())
    t = 1.0 / (1 / eps - v * (1 / eps - 1 / tc))
    tot = np.bincount(np.repeat(np.arange(n), cnt), weights=t, minlength=n)
    return tot - xi * math.log(tc / eps) + math.sqrt(xi * eps) * rng.standard_normal(n)


def _quantile_se(q, n, density):
    return np.sqrt(q * (1 - q) / n) / density


# ----------------------------------------------------------------------------------- (a) Landau


@pytest.fixture(scope="module")
def exact_pb():
    ex = _Exact(XI_PB / TC_PB)
    qr = np.array([ex.quantile(q) for q in Q5]) * TC_PB
    dens = np.array([ex.pdf(x / TC_PB) for x in qr]) / TC_PB
    return qr, dens


@pytest.mark.slow
def test_straggling_references_agree(exact_pb):
    """The exact inversion, the brute-force Monte Carlo and Landau's law agree (checks the refs)."""
    qr, dens = exact_pb
    n = 100_000
    bf = _brute_force(XI_PB, TC_PB, n, seed=11)
    diff = np.quantile(bf, Q5) - qr
    assert np.all(np.abs(diff) < 4 * _quantile_se(Q5, n, dens) + 0.01 * XI_PB), diff / XI_PB
    # κ → 0: the exact law is Landau's (1e-5: quantiles of δ/ξ within 1e-3 of scipy.stats.landau)
    kappa = 1e-5
    ex = _Exact(kappa)
    lam = (math.pi / 2) * stats.landau.ppf(Q5) + math.log(math.pi / 2)
    landau = lam + math.log(kappa) + 1 - EULER
    got = np.array([ex.quantile(q) for q in Q5]) / kappa
    np.testing.assert_allclose(got, landau, atol=1e-3)
    # PDG eq. 34.12 (T_c-truncated): mode ξ(ln κ + 0.200), FWHM 4.018 ξ
    xs = kappa * np.linspace(math.log(kappa) - 3, math.log(kappa) + 5, 161)
    f = np.array([ex.pdf(x) for x in xs])
    i = int(np.argmax(f))
    c = np.polyfit(xs[i - 2 : i + 3] / kappa, f[i - 2 : i + 3], 2)
    assert abs(-c[1] / (2 * c[0]) - (math.log(kappa) + 0.200)) < 0.01
    half = f[i] / 2
    left = np.interp(half, f[: i + 1], xs[: i + 1])
    right = np.interp(-half, -f[i:], xs[i:])
    assert abs((right - left) / kappa - 4.018) < 0.01


@pytest.mark.slow
def test_straggling_landau_limit_quantiles(exact_pb):
    """160 GeV μ, 5.6 mm Pb (ξ = 0.39 MeV, T_c = 160 MeV): sampler vs brute force and exact law."""
    qr, dens = exact_pb
    n = N
    d = _draw(XI_PB, TC_PB, n, seed=1)
    qs = np.quantile(d, Q5)
    se = _quantile_se(Q5, n, dens)
    model = MODEL_TOL * XI_PB
    assert np.all(np.abs(qs - qr) < 4 * se + model), (qs - qr) / XI_PB
    nb = 100_000
    bf = _brute_force(XI_PB, TC_PB, nb, seed=12)
    qb = np.quantile(bf, Q5)
    assert np.all(np.abs(qs - qb) < 4 * np.hypot(se, _quantile_se(Q5, nb, dens)) + model), (qs - qb) / XI_PB
    # the Gaussian model had median 0: the Landau median is −4.26 ξ, i.e. 1.66 MeV lower
    assert abs(np.median(d) / XI_PB + 4.263) < 0.05


@pytest.mark.slow
def test_straggling_landau_mode_and_fwhm():
    """κ = 1e-5 (ξ = 1.6 keV, T_c = 160 MeV): Landau's mode and FWHM, and its quantiles (scipy)."""
    xi, tc, n = 1.6e-3, 160.0, 1_000_000
    d = np.asarray(_sample_overflow(jnp.full(n, xi, jnp.float32), jnp.full(n, tc, jnp.float32), _u(2, n))[0]) / xi
    kappa = xi / tc
    lam = (math.pi / 2) * stats.landau.ppf(Q5) + math.log(math.pi / 2)
    landau = lam + math.log(kappa) + 1 - EULER
    dens = (2 / math.pi) * stats.landau.pdf(
        (landau - math.log(kappa) - 1 + EULER - math.log(math.pi / 2)) * 2 / math.pi
    )
    se = _quantile_se(Q5, n, dens)
    assert np.all(np.abs(np.quantile(d, Q5) - landau) < 4 * se + MODEL_TOL), np.quantile(d, Q5) - landau
    edges = np.arange(math.log(kappa) - 4, math.log(kappa) + 8, 0.1)
    h, _ = np.histogram(d, bins=edges)
    x_std = ((edges - math.log(kappa) - 1 + EULER) - math.log(math.pi / 2)) * 2 / math.pi
    expected = n * np.diff(stats.landau.cdf(x_std))  # Landau's law in the same bins
    mode_s, fwhm_s = _mode_fwhm(h, edges)
    mode_l, fwhm_l = _mode_fwhm(expected, edges)
    # the estimator on Landau's own histogram: PDG mode ξ(ln κ + 0.200), FWHM 4.018 ξ
    assert abs(mode_l - (math.log(kappa) + 0.200)) < 0.05 and abs(fwhm_l / 4.018 - 1) < 0.01
    assert abs(mode_s - mode_l) < 0.1  # ~0.03 statistical (1e6 events, ±0.4 ξ fit); model 0.01
    assert abs(fwhm_s / fwhm_l - 1) < 0.025  # ~0.5 % statistical; model −1 % (gamma body)


def _mode_fwhm(h, edges):
    """Mode (parabola through the ±0.4 ξ around the highest bin) and FWHM (linear interpolation)."""
    mid = 0.5 * (edges[1:] + edges[:-1])
    i = int(np.argmax(h))
    c = np.polyfit(mid[i - 4 : i + 5], h[i - 4 : i + 5], 2)
    mode = -c[1] / (2 * c[0])
    half = np.polyval(c, mode) / 2
    left = np.interp(half, h[: i + 1], mid[: i + 1])
    right = np.interp(-half, -h[i:], mid[i:])
    return mode, right - left


@pytest.mark.parametrize(
    "kappa,bc",
    [(2.4e-3, 1.0), (0.03, None), (0.35, None), (0.35, 1.0), (1.0, 0.5), (4.0, None)],
)
def test_straggling_vavilov_quantiles(kappa, bc):
    """Finite κ and the spin-½ term: quantiles 1–99 % against the exact (Vavilov) law."""
    q = np.array([0.01, 0.05, 0.25, 0.5, 0.75, 0.95, 0.99])
    tc, n = 100.0, N
    d = _draw(kappa * tc, tc, n, seed=3, b=None if bc is None else bc / tc) / tc
    ex = _Exact(kappa, bc or 0.0)
    qr = np.array([ex.quantile(x) for x in q])
    se = _quantile_se(q, n, np.array([ex.pdf(x) for x in qr]))
    unit = min(kappa, math.sqrt(kappa * (1 - (bc or 0.0) / 2)))
    diff = np.quantile(d, q) - qr
    assert np.all(np.abs(diff) < 4 * se + MODEL_TOL * unit), diff / unit


# ------------------------------------------------------------------------------- (b) moments


@pytest.mark.parametrize(
    "xi,tc,b,var_extra",
    [
        (0.39, 160.0, None, 0.0),
        (5.0, 160.0, None, 0.0),
        (56.0, 160.0, 1.0 / 160e3, 0.0),  # 1 m of iron at 160 GeV
        (30.0, 50.0, 0.6 / 50.0, 0.0),  # ~1 GeV μ: T_c = 50 MeV close to T_max = 83 MeV
        (400.0, 50.0, 0.3 / 50.0, 200.0),
        (16000.0, 160.0, None, 0.0),  # ξ ≫ T_c
    ],
)
def test_straggling_mean_zero_and_variance(xi, tc, b, var_extra):
    n = N
    d = _draw(xi, tc, n, seed=4, b=b, var_extra=np.float32(var_extra))
    bc = 0.0 if b is None else b * tc
    k2 = xi * tc * (1 - bc / 2) + var_extra
    k4 = xi * tc**3 * (1 / 3 - bc / 4)  # fourth cumulant of the knock-on sum
    assert float(st.fluctuation_variance(xi, tc, b)) + var_extra == pytest.approx(k2, rel=1e-6)
    assert abs(d.mean()) < 4 * math.sqrt(k2 / n)
    assert abs(d.var() / k2 - 1) < 4 * math.sqrt((k4 + 2 * k2 * k2) / n) / k2


def test_straggling_thick_is_gaussian():
    """ξ ≫ T_c: skewness → 0.5/√κ (Vavilov) ≈ 0 and quantiles those of a normal."""
    xi, tc, n = 1000.0, 1.0, N
    d = _draw(xi, tc, n, seed=5) / math.sqrt(xi * tc)
    skew = np.mean(d**3) / np.mean(d**2) ** 1.5
    assert abs(skew - 0.5 / math.sqrt(xi / tc)) < 4 * math.sqrt(6 / n)
    assert abs(skew) < 0.05
    q = np.array([0.01, 0.1, 0.5, 0.9, 0.99])
    se = _quantile_se(q, n, stats.norm.pdf(stats.norm.ppf(q)))
    assert np.all(np.abs(np.quantile(d, q) - stats.norm.ppf(q)) < 4 * se + 0.01)


def test_straggling_variance_matches_ionisation_module():
    """Var δ equals ρL·restricted_var of fastmc.physics.ionisation (up to its T_c³/6E² term)."""
    mat = get_material("lead")
    etot = 160e3 + 105.6583755
    beta2, _, tmax = kinematics(etot)
    length_mm = 5.612
    xi = st.xi_mev(mat.Z_over_A, mat.density, length_mm, beta2)
    assert xi == pytest.approx(0.5 * 0.307075 * mat.Z_over_A * mat.density * 0.5612 / beta2)
    assert 0.38 < xi < 0.39
    v_cut = 1e-3
    tc = v_cut * etot
    ref = IonisationBB().restricted_var(mat, etot, v_cut) * mat.density * length_mm / 10
    got = float(st.fluctuation_variance(xi, tc, beta2 / tmax))
    assert got == pytest.approx(float(ref), rel=1e-5)


# ------------------------------------------------------------------------- (c) edge cases, grads


def test_straggling_zero_length_is_exactly_zero():
    """L = 0 → ξ = 0 → δ = 0 exactly (float32 here, float64 in the gradient test); T_c = 0 → 0."""
    n = N
    u = _u(6, n)
    xi = st.xi_mev(0.4, 11.35, jnp.zeros(n, jnp.float32), jnp.full(n, 0.99, jnp.float32))
    tc = jnp.full(n, 160.0, jnp.float32)
    for b in (None, jnp.full(n, 1 / 160.0, jnp.float32)):
        d = _sample(xi, tc, u, b, V0)
        assert d.dtype == jnp.float32
        assert np.all(np.asarray(d) == 0.0)
        d = _sample(jnp.full(n, 0.39, jnp.float32), jnp.zeros(n, jnp.float32), u, b, np.float32(5.0))
        assert np.all(np.asarray(d) == 0.0)  # no cut: nothing below it, var_extra ignored too


@jax.jit
def _tangent(x, t, u, b, v, dx, dt):
    """Per-row directional derivative of δ along (dx, dt) (δ is elementwise in the rows)."""
    return jax.jvp(lambda x, t: st.sample_fluctuation(x, t, u, b, v), (x, t), (dx, dt))


@pytest.mark.slow
def test_straggling_float32_extremes_are_finite():
    """Values and derivatives finite for ξ, T_c from 0 to huge and u at its ends (0 and 1 too)."""
    xi = np.array([0.0, 1e-30, 1e-12, 1e-6, 1.6e-3, 0.39, 56.0, 1e3, 1e8], np.float32)
    tc = np.array([0.0, 1e-6, 0.05, 50.0, 160.0, 1e5], np.float32)
    uu = np.array([0.0, 2.0**-25, 1e-3, 0.5, 1 - 2.0**-24, 1.0], np.float32)
    x, t, k = np.meshgrid(xi, tc, np.arange(uu.size), indexing="ij")
    x, t, k = x.ravel(), t.ravel(), k.ravel()
    u = np.stack([uu[(k + j) % uu.size] for j in range(st.N_UNIFORMS)], axis=-1)
    ones = np.ones_like(x)
    for v in (np.float32(0.0), np.float32(1.0)):
        d = _sample(x, t, u, None, v)
        assert d.dtype == jnp.float32 and np.all(np.isfinite(np.asarray(d)))
        # derivatives on the path with b (a superset of the b-free one but for w = 1 + S/κ)
        for b in (0.0 / np.maximum(t, 1e-6), 1.0 / np.maximum(t, 1e-6), 10.0 / np.maximum(t, 1e-6)):
            d, dd = _tangent(x, t, u, b.astype(np.float32), v, ones, ones)  # d/dξ + d/dT_c
            assert np.all(np.isfinite(np.asarray(d))) and np.all(np.isfinite(np.asarray(dd)))
    d, dd = _tangent(x, t, np.asarray(_u(7, x.size)), np.float32(1.0) / t.clip(1e-6), np.float32(1.0), ones, ones)
    assert np.all(np.isfinite(np.asarray(d))) and np.all(np.isfinite(np.asarray(dd)))


@pytest.mark.slow
def test_straggling_gradients_finite_and_match_finite_differences():
    """float64: ∂δ/∂ξ, ∂δ/∂T_c (Newton path included) against central differences; finite at ξ = 0."""
    with jax.enable_x64(True):
        u = np.full((4, st.N_UNIFORMS), 1e-3)  # tail gaps −ln(1e-3) = 6.9 > μ_tail: no knock-on …
        u[1, 0] = 0.8  # … except one here (S₁ = 0.22 < μ_tail ≈ 1)
        u[:, -1] = [0.3, 0.6, 0.9, 0.05]
        tc = np.array([160.0, 160.0, 10.0, 160.0])
        b = np.array([0.0, 1e-3, 0.05, 0.0])
        v = np.float64(0.0)
        zero, one = np.zeros(4), np.ones(4)
        for xi0 in ([1e-9] * 4, [0.0] * 4):  # ξ → 0 and L = 0 (ξ = xi_mev(…, 0, …) = 0)
            for dx, dt in ((one, zero), (zero, one)):
                d, dd = _tangent(np.array(xi0), tc, u, b, v, dx, dt)
                assert d.dtype == jnp.float64 and np.all(np.isfinite(np.asarray(dd)))
                if xi0[0] == 0.0:
                    assert np.all(np.asarray(d) == 0.0)
        xi0 = np.array([0.39, 0.39, 56.0, 3.0])
        for dx, dt in ((one, zero), (zero, one), (xi0, -0.5 * tc)):
            _, dd = _tangent(xi0, tc, u, b, v, dx, dt)
            h = 1e-6
            up = _tangent(xi0 + h * dx, tc + h * dt, u, b, v, dx, dt)[0]
            down = _tangent(xi0 - h * dx, tc - h * dt, u, b, v, dx, dt)[0]
            np.testing.assert_allclose(
                np.asarray(dd), (np.asarray(up) - np.asarray(down)) / (2 * h), rtol=1e-5, atol=1e-8
            )


# ------------------------------------------------------------------------ (d) determinism, cap


def test_straggling_deterministic_and_rows_independent():
    """Same uniforms → same bits; a muon's δ depends only on its own row (chunk composition)."""
    n, h = N, N // 2
    u = _u(8, n)
    xi = jnp.linspace(1e-3, 100.0, n, dtype=jnp.float32)
    tc = jnp.full(n, 160.0, jnp.float32)
    a = np.asarray(_sample(xi, tc, u, None, V0))
    b = np.asarray(_sample(xi, tc, u, None, V0))
    assert a.tobytes() == b.tobytes()
    mixed = np.asarray(_sample(xi.at[:h].set(xi[::-1][:h]), tc.at[:h].set(50.0), u.at[:h].set(u[::-1][:h]), None, V0))
    assert mixed[h:].tobytes() == a[h:].tobytes()  # rows h: unchanged bit for bit …
    assert not np.array_equal(mixed[:h], a[:h])  # … while the others did change


def test_straggling_tail_slots_rarely_full():
    """K = 7 tail slots: P(more knock-ons) = P(Poisson(1) > 7) = 1.0e-5; 'full' = P(N ≥ 7)."""
    assert st.tail_cap_probability() == pytest.approx(stats.poisson.sf(st.N_TAIL, 1 / st.TAIL_SPLIT), rel=1e-9)
    assert st.tail_cap_probability() < 1.1e-5
    n = 1_000_000
    kappa = 1e-6  # μ_tail = 1/c − κ
    _, full = _sample_overflow(jnp.full(n, kappa * 160.0, jnp.float32), jnp.full(n, 160.0, jnp.float32), _u(9, n))
    p = stats.poisson.sf(st.N_TAIL - 1, 1 / st.TAIL_SPLIT - kappa)
    k = int(np.sum(np.asarray(full)))
    assert abs(k - n * p) < 4 * math.sqrt(n * p)


# --- radiative sub-cut fluctuation (sample_radiative_fluctuation) -----------------------------
@pytest.mark.slow
@pytest.mark.parametrize("a", [0.007, 0.3, 40.0])
def test_radiative_fluctuation_matches_brute_force_compound_poisson(a):
    """δ of the 1/ε model vs a brute-force numpy Monte Carlo of every emission of dN/dε = A/ε on
    [1e-7 T_c, T_c] (independent: Poisson count of the whole range, log-uniform energies): mean 0,
    variance A T_c²/2, and the 5/50/95/99 % quantiles agree within 4σ + 0.02 of the standard
    deviation (the split approximates the emissions below ε_split by a Gaussian)."""
    from fastmc.physics.straggling import N_RAD_UNIFORMS, sample_radiative_fluctuation

    t_c, n = 160.0, 200_000
    var = a * t_c * t_c / 2
    with jax.enable_x64(True):
        u = jax.random.uniform(jax.random.PRNGKey(7), (n, N_RAD_UNIFORMS), jnp.float64)
        d = np.asarray(sample_radiative_fluctuation(jnp.full(n, var), jnp.full(n, t_c), u))
    rng = np.random.default_rng(3)
    lmax = math.log(1e7)
    counts = rng.poisson(a * lmax, n)
    tot = np.zeros(n)
    idx = np.repeat(np.arange(n), counts)
    np.add.at(tot, idx, t_c * np.exp(-lmax * rng.random(idx.size)))
    ref = tot - a * t_c * (1 - math.exp(-lmax))
    sd = math.sqrt(var)
    assert abs(d.mean()) < 5 * sd / math.sqrt(n)
    assert d.var() / var == pytest.approx(1.0, abs=0.1 if a < 0.1 else 0.02)  # heavy tail at small A
    for q in (0.05, 0.5, 0.95, 0.99):
        got, want = np.quantile(d, q), np.quantile(ref, q)
        # σ of a sample quantile √(q(1−q)/n)/f, f from the reference's own quantiles (±0.5 %)
        dens = 0.01 / max(np.quantile(ref, q + 0.005) - np.quantile(ref, q - 0.005), 1e-9 * sd)
        se = math.sqrt(2 * q * (1 - q) / n) / dens
        assert abs(got - want) < 0.02 * sd + 4 * se, (q, got, want, se)


def test_radiative_fluctuation_zero_variance_is_exactly_zero():
    from fastmc.physics.straggling import N_RAD_UNIFORMS, sample_radiative_fluctuation

    u = jnp.full((3, N_RAD_UNIFORMS), 0.3)
    d = sample_radiative_fluctuation(jnp.zeros(3), jnp.asarray([160.0, 50.0, 0.0]), u)
    assert np.all(np.asarray(d) == 0.0)
