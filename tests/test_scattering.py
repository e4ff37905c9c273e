"""Tests of fastmc.physics.scattering against Highland (PDG RPP 2024 eq. 34.15/34.20) and an
independent Molière/Bethe reference (tests/reference/moliere.py).

All samples use fixed keys; tolerances = cited model tolerance, and each test asserts that the
MC error is far below it.
"""

from __future__ import annotations

import math
import os
import sys
from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fastmc import units
from fastmc.physics import scattering as S

try:  # tests/ may or may not be a package
    from tests.reference import moliere as ref
except ImportError:  # pragma: no cover
    sys.path.insert(0, os.path.dirname(__file__))
    from reference import moliere as ref  # type: ignore[no-redef]


# --- materials: fastmc.materials when available, else a stand-in with PDG values ----------------
@dataclass(frozen=True)
class _Mat:
    name: str
    density: float
    elements: tuple
    I: float
    X0: float


_STANDIN = {  # PDG atomic & nuclear properties tables (density g/cm³, X0 g/cm²)
    "lead": _Mat("lead", 11.35, ((82, 207.2, 1.0),), 823.0, 6.37),
    "iron": _Mat("iron", 7.874, ((26, 55.845, 1.0),), 286.0, 13.84),
    "polystyrene": _Mat("polystyrene", 1.06, ((1, 1.008, 0.077418), (6, 12.011, 0.922582)), 68.7,
                        43.79),
}


def _material(name):
    try:
        from fastmc.materials import get_material
    except ImportError:
        return _STANDIN[name]
    return get_material(name)


MATS = [_material(n) for n in ("lead", "iron", "polystyrene")]
P_MU = 160.0 * units.GeV
BETA = P_MU / math.hypot(P_MU, units.muon_mass_c2)


def _x0_mm(m):
    return m.X0 / m.density * 10.0


# (id, material index, length in mm)
SLABS = [
    ("lead_1X0", 0, 1.0 * _x0_mm(MATS[0])),
    ("lead_40X0", 0, 40.0 * _x0_mm(MATS[0])),
    ("iron_1.5m", 1, 1500.0),
    ("polystyrene_1mm", 2, 1.0),
]

N_MU = 200_000


# The references of this file (Molière/Bethe, Lynch & Dahl) use Molière's screening angle; the
# default "geant4" screening (x (1 + e^{-Z²/1000}) on chi_a²) is tested on its own below.
@pytest.fixture(scope="module")
def params():
    return S.build_scattering_params(MATS, screening="moliere").device()


@pytest.fixture(scope="module")
def params_highland():
    """Core width tied to Highland (``core="highland"``): the reference of the issue-#3 test."""
    return S.build_scattering_params(MATS, core="highland", screening="moliere").device()


@pytest.fixture(scope="module")
def params_point():
    return S.build_scattering_params(MATS, nuclear_size=False, screening="moliere").device()


def test_scattering_geant4_screening_scales_chi_a2():
    """Default screening: chi_a² × (1 + exp(−Z²/1000)) element by element (Geant4 11.4
    G4WentzelOKandVIxSection::InitialiseA); everything else unchanged."""
    g4 = S.build_scattering_params(MATS)
    mo = S.build_scattering_params(MATS, screening="moliere")
    assert g4.screening == "geant4"
    for i, m in enumerate(MATS):
        for j, (z, _, _) in enumerate(m.elements):
            assert (g4.screen0[i, j] / mo.screen0[i, j]) ** 2 == pytest.approx(1 + math.exp(-z * z / 1000), rel=1e-12)
    np.testing.assert_array_equal(g4.chi_c2_coef, mo.chi_c2_coef)
    with pytest.raises(ValueError, match="screening"):
        S.build_scattering_params(MATS, screening="thomas")


_INFO = jax.jit(S.sample_scattering_info, static_argnames="model")  # one jit: shapes reused → cache


def _sample(params, mat, length, n=N_MU, seed=0, model="highland_single", pmag=P_MU, u=None):
    if u is None:
        u = jax.random.uniform(jax.random.key(seed), (n, S.N_UNIFORMS))
    p = jnp.full((n,), pmag, jnp.float32)
    beta = p / jnp.sqrt(p * p + units.muon_mass_c2**2)
    return _INFO(params, jnp.int32(mat), p, beta, jnp.full((n,), length, jnp.float32), u, model=model)


def _theta0(mat, length):
    m = MATS[mat]
    return ref.highland_theta0(P_MU, BETA, length / _x0_mm(m))


# --- Highland ------------------------------------------------------------------------------
def test_highland_theta0_pdg_numbers():
    # PHYSICS.md §4: ≈ 0.085 mrad for 1 X0 and ≈ 0.6 mrad for 40 X0 at 160 GeV/c
    assert S.highland_theta0(P_MU, BETA, 1.0) == pytest.approx(0.085e-3, rel=0.01)
    assert S.highland_theta0(P_MU, BETA, 40.0) == pytest.approx(0.613e-3, rel=0.01)
    x = np.array([0.0, 1e-3, 1.0, 100.0])
    got_np = S.highland_theta0(P_MU, BETA, x)
    got_j = S.highland_theta0(jnp.float32(P_MU), jnp.float32(BETA), jnp.asarray(x, jnp.float32))
    want = [0.0] + [ref.highland_theta0(P_MU, BETA, v) for v in x[1:]]
    np.testing.assert_allclose(got_np, want, rtol=1e-12)
    np.testing.assert_allclose(np.asarray(got_j), want, rtol=1e-5)
    assert float(got_j[0]) == 0.0


# --- core width ----------------------------------------------------------------------------
def _gauss_fit_width(theta, t0, window=2.0):
    """Least-squares Gaussian fit to the histogram of |theta| < window*theta0 (the 'central part'
    Highland was fitted to; Lynch & Dahl use the central 98 %, we stay inside it)."""
    from scipy.optimize import curve_fit

    edges = np.linspace(-window * t0, window * t0, 81)
    h, _ = np.histogram(theta, edges)
    c = 0.5 * (edges[1:] + edges[:-1])
    (a, s), cov = curve_fit(lambda x, a, s: a * np.exp(-0.5 * (x / s) ** 2), c, h,
                            p0=[h.max(), t0], sigma=np.sqrt(np.maximum(h, 1.0)))
    return abs(s), math.sqrt(cov[1, 1])


@pytest.mark.slow
@pytest.mark.parametrize("slab", SLABS, ids=[s[0] for s in SLABS])
def test_scattering_core_width_matches_highland(params_highland, slab):
    """Issue #3 ("core width within 5 % of Highland") on the ``core="highland"`` option.  The
    default ``core="moliere"`` differs from Highland by up to +6 % (lead 1 X0) and −8 % (iron 3 m),
    within Highland's 11 %; it is tested against Lynch & Dahl below and against Geant4 by
    ``fastmc validate --suite deflection``."""
    _, mat, length = slab
    r = _sample(params_highland, mat, length)
    t0 = _theta0(mat, length)
    assert float(r["theta0"][0]) == pytest.approx(t0, rel=1e-5)
    for key in ("dtheta_x", "dtheta_y"):
        width, err = _gauss_fit_width(np.asarray(r[key]), t0)
        assert err / t0 < 0.005  # MC error << the 5 % tolerance
        # 5 %: brief; Highland itself is an 11 % fit to Molière (Lynch & Dahl 1991)
        assert abs(width / t0 - 1.0) < 0.05, (key, width / t0)


def _ld_reference(mat, length, ff_on, power=S.FORM_FACTORS["geant4"]):
    """Lynch & Dahl eq. 7 variance method by scipy quadrature (float64), with or without |F|^2."""
    from scipy.integrate import quad

    m = MATS[mat]
    pb = P_MU * BETA
    els = [(Z, A, w) for Z, A, w in m.elements]
    wsum = sum(w for _, _, w in els)
    cc = [S._CHI_C2_PREF * w / wsum * Z * (Z + 1) / A * m.density / 10.0 * length / pb**2
          for Z, A, w in els]
    a2 = [(units.fine_structure * units.electron_mass_c2 * Z ** (1 / 3) / 0.885 / P_MU) ** 2
          * (1.13 + 3.76 * (units.fine_structure * Z / BETA) ** 2) for Z, _, _ in els]
    ffr = [0.6 * (1.2e-12 * A ** (1 / 3)) ** 2 / 12.0 / S._HBARC_MEV_MM**2 for _, A, _ in els]
    xc2 = sum(cc)
    la2 = sum(c * math.log(a) for c, a in zip(cc, a2)) / xc2
    nu = 0.5 * xc2 / (1.167 * math.exp(la2)) / (1 - 0.98)
    tt2 = nu * math.exp(la2)
    if not ff_on:  # closed form, Lynch & Dahl NIM B 58 (1991) 6, eq. 7
        return math.sqrt(xc2 / (1 + 0.98**2) * ((1 + nu) / nu * math.log1p(nu) - 1))
    tot = 0.0
    for c, a, f in zip(cc, a2, ffr):
        def g(lt, a=a, f=f):
            t = math.exp(lt)
            return t * t / (t + a) ** 2 * ((1 + P_MU**2 * t * f) ** -power if ff_on else 1.0)
        tot += c * quad(g, math.log(a) - 30, math.log(tt2), limit=400)[0]
    return math.sqrt((1 + nu) / (nu * (1 + 0.98**2)) * tot)


@pytest.mark.slow
@pytest.mark.parametrize("slab", SLABS, ids=[s[0] for s in SLABS])
def test_scattering_moliere_core_matches_lynch_dahl(params, params_point, slab):
    """``core="moliere"``: point nuclei → Lynch & Dahl eq. 7 in closed form; with the form factor
    → the same variance method by quadrature (float32 closed form vs float64 scipy: 1e-6 is ten
    float32 roundings; the Gauss-Legendre rule it replaced erred by up to 1e-4).  The exponential
    form factor (|F|² to the power 4) keeps the 48-node rule: 2e-4."""
    _, mat, length = slab
    r0 = _sample(params_point, mat, length, n=8)
    want_point = _ld_reference(mat, length, ff_on=False)
    assert float(r0["theta_core"][0]) == pytest.approx(want_point, rel=1e-6)
    r1 = _sample(params, mat, length, n=8)
    assert float(r1["theta_core"][0]) == pytest.approx(_ld_reference(mat, length, ff_on=True), rel=1e-6)
    s = S._setup(params, mat, jnp.full((1,), P_MU, jnp.float32), jnp.full((1,), BETA, jnp.float32), length)
    bff = (P_MU * P_MU) * s["chi_a2"] * s["ff"]
    for power in (2, 4):  # the rule, against the closed form where both apply and as the n = 4 path
        gl = float(S.moliere_core_theta0(s["chi_c2"], s["chi_a2"], bff, power, rule=True)[0])
        want = float(r1["theta_core"][0]) if power == 2 else _ld_reference(mat, length, ff_on=True, power=4)
        assert gl == pytest.approx(want, rel=2e-4), power


@pytest.mark.slow
@pytest.mark.parametrize("slab", SLABS, ids=[s[0] for s in SLABS])
def test_scattering_default_core_width_matches_moliere_core(params, slab):
    """The sampled core (Gaussian + single scatters inside the window) has the width theta_core of
    the default ``core="moliere"`` (variance bookkeeping of the module docstring); 5 % as issue #3."""
    _, mat, length = slab
    r = _sample(params, mat, length)
    tc = float(r["theta_core"][0])
    for key in ("dtheta_x", "dtheta_y"):
        width, err = _gauss_fit_width(np.asarray(r[key]), tc)
        assert err / tc < 0.005
        assert abs(width / tc - 1.0) < 0.05, (key, width / tc)


def test_scattering_highland_model_is_gaussian_with_theta0(params):
    _, mat, length = SLABS[0]
    r = _sample(params, mat, length, model="highland")
    t0 = _theta0(mat, length)
    th = np.asarray(r["dtheta_x"])
    # std of N Gaussian numbers: relative error 1/sqrt(2N) = 0.16 %
    assert np.std(th) / t0 == pytest.approx(1.0, abs=5 / math.sqrt(2 * N_MU))
    assert int(r["n_single"].sum()) == 0


# --- tails vs Molière ----------------------------------------------------------------------
def _tail_with_error(r, t0, k=3.0):
    """Fraction of (muon, projection) beyond k theta0 and its MC error, per muon (x and y of one
    muon are correlated through a shared single scatter, so the error uses the per-muon count)."""
    c = (np.abs(np.asarray(r["dtheta_x"])) > k * t0).astype(float) + (
        np.abs(np.asarray(r["dtheta_y"])) > k * t0).astype(float)
    frac = c.mean() / 2.0
    return frac, c.std() / 2.0 / math.sqrt(c.size)


TAIL_TOL = 0.20  # brief: within 20 % of Molière beyond 3 theta0


@pytest.mark.slow
@pytest.mark.parametrize("slab", SLABS, ids=[s[0] for s in SLABS])
def test_scattering_tail_beyond_3theta0_matches_moliere(params_point, slab):
    """Point nuclei (Molière's assumption) → compare with Molière/Bethe f0+f1/B+f2/B²."""
    _, mat, length = slab
    m = MATS[mat]
    r = _sample(params_point, mat, length, seed=1)
    t0 = _theta0(mat, length)
    frac, err = _tail_with_error(r, t0)
    mp = ref.moliere_params(m.elements, m.density, length, P_MU, BETA)
    want = ref.projected_tail_fraction(mp, 3.0 * t0)
    assert err / frac < 0.03  # MC error (~1.5 %) far below the 20 % tolerance
    assert 0.01 < want < 0.02  # PHYSICS.md §4: 1-2 % beyond 3 theta0 (Gaussian: 0.27 %)
    assert abs(frac / want - 1.0) < TAIL_TOL, (frac, want)
    # and far beyond the core, where only single scattering matters, agreement is much closer:
    frac6, err6 = _tail_with_error(r, t0, 6.0)
    want6 = ref.projected_tail_fraction(mp, 6.0 * t0)
    assert abs(frac6 / want6 - 1.0) < 0.10 + 3 * err6 / want6, (frac6, want6)


def test_scattering_default_tail_thin_plane_matches_moliere(params):
    """With nuclear size on, a thin tracker plane (theta_nuc ≫ 3 theta0) keeps Molière's tail."""
    _, mat, length = SLABS[3]
    m = MATS[mat]
    r = _sample(params, mat, length, seed=2)
    t0 = _theta0(mat, length)
    frac, err = _tail_with_error(r, t0)
    want = ref.projected_tail_fraction(ref.moliere_params(m.elements, m.density, length, P_MU, BETA),
                                       3.0 * t0)
    assert err / frac < 0.03
    assert abs(frac / want - 1.0) < TAIL_TOL


# --- nuclear size ----------------------------------------------------------------------------
@pytest.mark.slow
def test_scattering_nuclear_size_cuts_off_tail(params, params_point):
    """(a) In a thin slab (0.1 X0 of lead: theta0 = 0.025 mrad, theta_nuc = 0.17 mrad) the
    space-angle fraction beyond theta ≫ theta0 equals the expected number of single scatters above
    theta from the reference quadrature with the same form factor.  (b) In 1 X0, far beyond
    theta_nuc, the tail is suppressed by more than 20x w.r.t. point nuclei."""
    mat = 0
    m = MATS[mat]
    n = 500_000
    thin = 0.1 * _x0_mm(m)
    r = _sample(params, mat, thin, n=n, seed=3)
    th = np.hypot(np.asarray(r["dtheta_x"]), np.asarray(r["dtheta_y"]))
    for theta in (0.2e-3, 0.3e-3, 0.5e-3):  # 8-20 theta0; 1.2-2.9 theta_nuc
        k = int((th > theta).sum())
        want = n * ref.single_scatter_count_above(m.elements, m.density, thin, P_MU, BETA, theta)
        # Poisson error + 20 %: the Gaussian core and plural scattering smear a steep tail
        # upwards (+10-15 % here, same for point nuclei: measured, not tuned)
        assert abs(k - want) < 3 * math.sqrt(want) + 0.20 * want, (theta, k, want)
    thick = 1.0 * _x0_mm(m)
    r = _sample(params, mat, thick, n=n, seed=4)
    rp = _sample(params_point, mat, thick, n=n, seed=4)
    th = np.hypot(np.asarray(r["dtheta_x"]), np.asarray(r["dtheta_y"]))
    thp = np.hypot(np.asarray(rp["dtheta_x"]), np.asarray(rp["dtheta_y"]))
    theta_far = 1.5e-3  # ≈ 9 theta_nuc, 18 theta0
    k_ff = int((th > theta_far).sum())
    k_pt = int((thp > theta_far).sum())
    want_pt = n * ref.single_scatter_count_above(m.elements, m.density, thick, P_MU, BETA,
                                                 theta_far, nuclear_size=False)
    want_ff = n * ref.single_scatter_count_above(m.elements, m.density, thick, P_MU, BETA,
                                                 theta_far)
    assert want_ff < 0.05 * want_pt  # (1 + x)^-2 at x ≈ 0.05·81: suppression ≈ 1/60
    assert abs(k_pt - want_pt) < 3 * math.sqrt(want_pt) + 0.20 * want_pt, (k_pt, want_pt)
    assert k_ff <= 3 * want_ff + 3, (k_ff, want_ff)


# --- exact zero, overflow, precision, gradients --------------------------------------------
@pytest.mark.slow
def test_scattering_zero_length_is_exactly_zero(params):
    n = N_MU
    u = jax.random.uniform(jax.random.key(4), (n, S.N_UNIFORMS))
    p = jnp.full((n,), P_MU, jnp.float32)
    length = jnp.where(jnp.arange(n) % 2 == 0, 0.0, 10.0).astype(jnp.float32)
    for model in ("highland", "highland_single"):
        out = _INFO(params, jnp.int32(0), p, jnp.ones_like(p), length, u, model=model)
        for k in ("dtheta_x", "dtheta_y", "dx", "dy"):
            o = np.asarray(out[k])
            assert np.all(o[0::2] == 0.0)
            assert np.any(o[1::2] != 0.0)
    # gradient w.r.t. length at zero length is finite
    m = 256
    g = jax.jit(jax.grad(lambda L: jnp.sum(S.sample_scattering(
        params, 0, p[:m], jnp.ones_like(p[:m]), jnp.full((m,), L), u[:m])[0] ** 2)))(0.0)
    assert np.isfinite(float(g))


def test_scattering_overflow_is_rare_and_reported(params):
    n = N_MU
    r = _sample(params, 2, 1e-3, n=n, seed=5)  # 1 um of polystyrene: the largest mean count
    prob = np.asarray(jax.jit(S.overflow_probability)(params, 2, jnp.full((n,), P_MU),
                                                      jnp.full((n,), BETA), 1e-3))
    assert np.all(prob < 1e-4) and np.all(prob > 0)
    # expected n * prob ≈ 8 with the Molière core (1.2 with core="highland"): Poisson bound at 5 sigma
    mu = float(n * prob.mean())
    assert int(r["overflow"].sum()) <= mu + 5.0 * math.sqrt(mu) + 3.0
    assert int(r["n_single"].max()) <= S.N_SINGLE_MAX
    # forcing the count uniform to 0 hits the cap and raises the flag
    u = jnp.zeros((n, S.N_UNIFORMS)).at[:, 5:].set(0.5)
    out = _sample(params, 2, 1.0, n=n, u=u)
    assert bool(out["overflow"].all())


@pytest.mark.slow
def test_scattering_float32_matches_float64():
    p_np = S.build_scattering_params(MATS)
    n = 20_000
    u = np.asarray(jax.random.uniform(jax.random.key(6), (n, S.N_UNIFORMS)), np.float64)
    pm = np.linspace(5.0, 160.0, n) * units.GeV
    beta = pm / np.hypot(pm, units.muon_mass_c2)
    mat = np.arange(n) % 3
    length = np.where(mat == 2, 1.0, np.where(mat == 1, 1500.0, 56.0))
    info = jax.jit(S.sample_scattering_info)
    out32 = info(p_np.device(jnp.float32), jnp.asarray(mat, jnp.int32),
                                     jnp.asarray(pm, jnp.float32), jnp.asarray(beta, jnp.float32),
                                     jnp.asarray(length, jnp.float32), jnp.asarray(u, jnp.float32))
    with jax.enable_x64(True):
        out64 = jax.jit(S.sample_scattering_info)(p_np.device(jnp.float64), jnp.asarray(mat), jnp.asarray(pm),
                                         jnp.asarray(beta), jnp.asarray(length), jnp.asarray(u))
        out64 = {k: np.asarray(v) for k, v in out64.items()}
        assert out64["dtheta_x"].dtype == np.float64
    same = np.asarray(out32["n_single"]) == out64["n_single"]
    assert same.mean() > 0.999  # thinning decisions may flip at the boundary, very rarely
    for k in ("dtheta_x", "dtheta_y", "dx", "dy"):
        a, b = np.asarray(out32[k])[same], out64[k][same]
        scale = np.asarray(out64["theta0"])[same] * (1.0 if k.startswith("dtheta") else length[same])
        # 2e-4 θ0 for the core; single scatters far in the tail (tens of θ0) are inverted in float32
        # from a 24-bit uniform with cancellation: 1e-4 of their value (measured up to 6e-5)
        assert np.all(np.abs(a - b) < 2e-4 * scale + 1e-4 * np.abs(b)), (k, np.max(np.abs(a - b) / scale))


@pytest.mark.slow
def test_scattering_gradients_finite_and_match_finite_differences(params):
    n = 256
    u = jax.random.uniform(jax.random.key(7), (n, S.N_UNIFORMS))
    length = jnp.full((n,), 56.0, jnp.float32)

    def loss(pm):
        beta = pm / jnp.sqrt(pm * pm + units.muon_mass_c2**2)
        tx, ty, dx, dy = S.sample_scattering(params, 0, pm, beta, length, u)
        return jnp.sum(tx**2 + ty**2) + 1e-6 * jnp.sum(dx**2 + dy**2)

    g = jax.jit(jax.grad(loss))(jnp.full((n,), P_MU, jnp.float32))
    assert np.all(np.isfinite(np.asarray(g))) and np.any(np.asarray(g) != 0)
    # float64: d/dp vs central differences with the same uniforms (the integer draws are
    # piecewise constant in p and do not flip for this small step)
    with jax.enable_x64(True):
        p64 = S.build_scattering_params(MATS).device(jnp.float64)
        u64 = jnp.asarray(np.asarray(u), jnp.float64)

        def f(pm):
            pmv = jnp.full((n,), pm)
            beta = pmv / jnp.sqrt(pmv * pmv + units.muon_mass_c2**2)
            tx, _, dx, _ = S.sample_scattering(p64, 0, pmv, beta, jnp.full((n,), 56.0), u64)
            return jnp.sum(tx * jnp.cos(jnp.arange(n))) + 1e-3 * jnp.sum(dx)

        vg = jax.jit(jax.value_and_grad(f))
        g = float(vg(P_MU)[1])
        h = 1e-3 * P_MU
        fd = (float(vg(P_MU + h)[0]) - float(vg(P_MU - h)[0])) / (2 * h)
        assert g == pytest.approx(fd, rel=1e-4)


# --- displacement-angle correlation ------------------------------------------------------------
def test_scattering_gaussian_displacement_correlation_pdg(params):
    """PDG RPP 2024 eqs. 34.20-21: y_rms = L theta0/sqrt(3), rho(y, theta) = sqrt(3)/2."""
    _, mat, length = SLABS[1]
    r = _sample(params, mat, length, model="highland", seed=8)
    t0 = _theta0(mat, length)
    for a, b in (("dtheta_x", "dx"), ("dtheta_y", "dy")):
        th, y = np.asarray(r[a], np.float64), np.asarray(r[b], np.float64)
        rho = np.corrcoef(th, y)[0, 1]
        err = (1 - rho**2) / math.sqrt(N_MU)  # std. error of a sample correlation
        assert abs(rho - math.sqrt(3) / 2) < 5 * err
        assert np.std(y) / (length * t0 / math.sqrt(3)) == pytest.approx(1.0, abs=5 / math.sqrt(2 * N_MU))


def test_scattering_sparse_single_slots_match_dense(params):
    """``sparse`` (slots only for the muons with a candidate, in pieces) gives the dense result
    to float32 rounding, with and without forcing, and the same gradient in p."""
    n = 3000
    k = jax.random.key(11)
    u = jax.random.uniform(k, (n, S.N_UNIFORMS)).at[:, 4].multiply(0.3)  # many candidates (N ≥ 2 too)
    p = P_MU * (0.2 + jax.random.uniform(jax.random.fold_in(k, 1), (n,)))
    beta = p / jnp.sqrt(p * p + units.muon_mass_c2**2)
    length = jnp.where(jnp.arange(n) % 7 == 0, 0.0, 56.0).astype(jnp.float32)
    force = (jax.random.uniform(jax.random.fold_in(k, 2), (n,)) < 0.5).astype(jnp.float32)
    sign = jnp.where(jnp.arange(n) % 2 == 0, 1.0, -1.0)
    for kw in ({}, dict(force=force, force_sign=sign, tilt_axis="y")):
        dense = jax.jit(lambda p: S.sample_scattering_info(params, 0, p, beta, length, u, **kw))(p)
        assert 0 < int(jnp.sum(dense["n_single"] > 0)) < n // 2 and int(jnp.max(dense["n_single"])) >= 2
        for pieces in (S.SPARSE_SINGLE, 7):
            sp = jax.jit(lambda p: S.sample_scattering_info(params, 0, p, beta, length, u, sparse=pieces, **kw))(p)
            for key, a in dense.items():
                a, b = np.asarray(a), np.asarray(sp[key])
                if a.dtype.kind in "bi":
                    assert np.array_equal(a, b), key
                    continue
                fin = np.isfinite(a)
                assert np.array_equal(fin, np.isfinite(b)) and np.array_equal(a[~fin], b[~fin]), key
                scale = np.max(np.abs(a[fin])) + 1e-30
                assert np.all(np.abs(a[fin] - b[fin]) <= 1e-6 * scale), (key, pieces)

    def loss(pm, sparse):
        r = S.sample_scattering_info(params, 0, pm, beta, length, u, sparse=sparse)
        return jnp.sum(r["dtheta_x"] ** 2 + r["dy"] ** 2)

    g_d, g_s = (np.asarray(jax.jit(jax.grad(lambda pm: loss(pm, s)))(p)) for s in (None, S.SPARSE_SINGLE))
    assert np.all(np.isfinite(g_s)) and np.allclose(g_s, g_d, rtol=1e-5, atol=1e-6 * np.max(np.abs(g_d)))
