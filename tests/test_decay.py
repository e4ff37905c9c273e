"""K⁺/π⁺ decays in flight (fastmc.physics.decay): data file, kinematics, Dalitz sampling.

References are computed here independently of the module: the Dalitz boundary from the PDG
kinematics review (RPP 2024 §49, Eq. 49.23, in the invariant masses m₁₂², m₂₃²), the Kℓ3 density
re-typed from Chounet, Gaillard & Gaillard, Phys. Rep. 4 (1972) 199 with Geant4's
(G4KL3DecayChannel) or PDG form factors, integrated by scipy dblquad.  Fixed keys; tolerances are
MC errors (z < 4) unless stated.
"""

from __future__ import annotations

import math
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import integrate, stats

from fastmc.physics import decay as D

M = {"K+": 493.677, "pi+": 139.57039, "pi0": 134.9768, "mu+": 105.6583755, "e+": 0.51099895069, "nu": 0.0}
PDG_MASS = {-13: M["mu+"], -11: M["e+"], 211: M["pi+"]}
Z_MAX = 4.0


@pytest.fixture(scope="module")
def tables():
    return D.build_decay_tables()


def _sample(tables, parent, pmag, n, seed, mode=None, x64=False, u=None):
    dt = jnp.float64 if x64 else jnp.float32
    with jax.enable_x64(x64):
        if u is None:
            u = jax.random.uniform(jax.random.key(seed), (n, D.N_DECAY_UNIFORMS), dtype=dt)
        u = jnp.asarray(u, dt)
        pm = jnp.full((n,), pmag, dt)
        f = jax.jit(D.sample_decay_from_u, static_argnames=("parent", "mode"))
        out = f(tables.device(dt), parent, pm, u, mode)
        return {k: np.asarray(v) for k, v in out.items()}


# ------------------------------------------------------------------ data file


def test_decay_data_file_has_sources_and_pdg_2024_values():
    data = D.load_decay_data()
    expected = {
        "K+": {"mu_nu": 0.6356, "pi_pi0": 0.2067, "pi_pi_pi": 0.0558, "pi0_e_nu": 0.0507,
               "pi0_mu_nu": 0.0335, "pi_pi0_pi0": 0.0176},
        "pi+": {"mu_nu": 0.999877, "e_nu": 0.000123},
    }
    for parent, key in (("K+", "K_plus"), ("pi+", "pi_plus")):
        modes = data[key]["modes"]
        assert tuple(m["name"] for m in modes) == D.MODES[parent]
        for m in modes:
            assert m["br"] == expected[parent][m["name"]]
            assert "PDG RPP 2024" in m["source"] and m["pdg_id"].startswith(("S010.", "S008."))
    assert data["kl3"]["default_model"] == "geant4"


def test_decay_data_brs_match_pdg_package():
    """Optional offline cross-check with PDG's own `pdg` package (skipped when not installed)."""
    pdg = pytest.importorskip("pdg")
    data = D.load_decay_data()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        api = pdg.connect()
        for key in ("K_plus", "pi_plus"):
            for m in data[key]["modes"]:
                ref = api.get(m["pdg_id"]).best_summary().value
                assert abs(ref - m["br"]) <= 0.5e-4 * max(1.0, 10 ** math.floor(math.log10(m["br"]) + 1)), m


def test_decay_ctau_and_decay_length():
    assert D.ctau_mm("K+") == pytest.approx(3711.25, abs=0.01)
    assert D.ctau_mm("pi+") == pytest.approx(7804.42, abs=0.01)
    # PHYSICS.md §5: βγcτ at 160 GeV/c = 1203 m (K⁺), 8947 m (π⁺)
    assert D.decay_length_mm("K+", 160e3) / 1e3 == pytest.approx(1203, abs=1)
    assert D.decay_length_mm("pi+", np.array([160e3]))[0] / 1e3 == pytest.approx(8947, abs=1)


def test_decay_tables_normalised_brs(tables):
    for ip, parent in enumerate(D.PARENTS):
        n = len(D.MODES[parent])
        assert tables.br[ip, :n].sum() == pytest.approx(1.0, abs=1e-15)
        assert tables.cum_br[ip, n - 1] == 1.0


# ------------------------------------------------------------------ two-body


def _two_body(parent, m1, m2, pmag):
    mp = M[parent]
    e_star = (mp * mp + m1 * m1 - m2 * m2) / (2 * mp)
    p_star = math.sqrt(e_star**2 - m1 * m1)
    e_par = math.hypot(pmag, mp)
    g, gb = e_par / mp, pmag / mp
    cth = np.linspace(-1, 1, 200001)
    pz = gb * e_star + g * p_star * cth
    pt = p_star * np.sqrt(1 - cth**2)
    return g * e_star - gb * p_star, g * e_star + gb * p_star, np.arctan2(pt, pz).max()


@pytest.mark.parametrize("parent,lo_GeV,th_max_mrad", [("K+", 7.33, 6.9), ("pi+", 91.7, 0.25)])
def test_decay_two_body_mu_nu_lab_energy_uniform(tables, parent, lo_GeV, th_max_mrad):
    n = 100_000
    out = _sample(tables, parent, 160e3, n, seed=11, mode=0)
    e_lo, e_hi, th_max = _two_body(parent, M["mu+"], 0.0, 160e3)
    assert math.sqrt(e_lo**2 - M["mu+"] ** 2) / 1e3 == pytest.approx(lo_GeV, abs=0.01)  # PHYSICS.md §5
    assert th_max * 1e3 == pytest.approx(th_max_mrad, rel=0.03)
    assert np.all(out["charged_pdg"] == -13) and np.all(out["mode"] == 0)
    e = np.sqrt(out["p"].astype(np.float64) ** 2 + M["mu+"] ** 2)
    assert e.min() >= e_lo * (1 - 1e-6) and e.max() <= e_hi * (1 + 1e-6)
    ks = stats.kstest((e - e_lo) / (e_hi - e_lo), "uniform")
    assert ks.pvalue > 1e-3, ks
    assert out["theta"].max() <= th_max * (1 + 1e-5) and out["theta"].max() >= th_max * 0.99
    assert np.all((out["phi"] >= 0) & (out["phi"] <= 2 * math.pi))
    np.testing.assert_allclose(out["log_br"], math.log(float(tables.br[D.PARENTS.index(parent), 0])), rtol=1e-6)


@pytest.mark.slow
def test_decay_branching_fractions_sampled(tables):
    for parent, n in (("K+", 200_000), ("pi+", 200_000)):
        out = _sample(tables, parent, 160e3, n, seed=12)
        ip = D.PARENTS.index(parent)
        counts = np.bincount(out["mode"], minlength=len(D.MODES[parent]))
        br = tables.br[ip, : len(D.MODES[parent])]
        z = (counts - n * br) / np.sqrt(n * br * (1 - br))
        assert np.all(np.abs(z) < Z_MAX), (parent, z)
        np.testing.assert_allclose(out["log_br"], np.log(br[out["mode"]]), rtol=1e-6)
        assert np.all(out["log_w_dalitz"] == 0)


# ------------------------------------------------------------------ three-body Dalitz references


def _m12_range(mp, m1, m2, m3, m23sq):
    """PDG RPP §49 Eq. 49.23 (roles permuted): range of m12² at fixed m23²."""
    m23 = math.sqrt(m23sq)
    e2 = (m23sq - m3 * m3 + m2 * m2) / (2 * m23)
    e1 = (mp * mp - m23sq - m1 * m1) / (2 * m23)
    p2 = math.sqrt(max(e2 * e2 - m2 * m2, 0.0))
    p1 = math.sqrt(max(e1 * e1 - m1 * m1, 0.0))
    return (e2 + e1) ** 2 - (p2 + p1) ** 2, (e2 + e1) ** 2 - (p2 - p1) ** 2


class _Dalitz:
    """Dalitz integrals in (m23², m12²) for daughters 1, 2, 3 of a parent of mass mp."""

    def __init__(self, mp, m1, m2, m3, rho):
        self.mp, self.m = mp, (m1, m2, m3)
        self.rho = rho  # rho(E1, E2) in the parent rest frame

    def energies(self, m23sq, m12sq):
        mp, (m1, m2, m3) = self.mp, self.m
        m13sq = mp * mp + m1 * m1 + m2 * m2 + m3 * m3 - m12sq - m23sq
        return (mp * mp + m1 * m1 - m23sq) / (2 * mp), (mp * mp + m2 * m2 - m13sq) / (2 * mp)

    def integral(self, g, e1_max=None, e2_max=None):
        mp, (m1, m2, m3) = self.mp, self.m
        lo, hi = (m2 + m3) ** 2, (mp - m1) ** 2
        if e1_max is not None:  # E1 <= e1_max  <=>  m23² >= M² + m1² - 2 M e1_max
            lo = max(lo, mp * mp + m1 * m1 - 2 * mp * e1_max)

        def f(m12sq, m23sq):
            e1, e2 = self.energies(m23sq, m12sq)
            return g(e1, e2) * self.rho(e1, e2)

        def upper(s):  # E2 <= e2_max  <=>  m12² <= m1² + m3² - m23² + 2 M e2_max
            lo12, hi12 = _m12_range(mp, m1, m2, m3, s)
            return hi12 if e2_max is None else max(lo12, min(hi12, m1 * m1 + m3 * m3 - s + 2 * mp * e2_max))

        return integrate.dblquad(f, lo, hi, lambda s: _m12_range(mp, m1, m2, m3, s)[0], upper,
                                 epsabs=0, epsrel=1e-9)[0]


def _kl3_rho(lepton, model):
    """Re-typed Chounet et al. density; lepton = daughter 1, π⁰ = daughter 2."""
    mk, mpi, ml = M["K+"], M["pi0"], M[lepton]
    if model == "geant4":
        lam = 0.0286 if lepton == "e+" else 0.033

        def fp(t):
            return 1 + lam * t / mpi**2

        def xi(t):
            return -0.35 * fp(t)
    else:
        lp, lpp, l0 = (0.02589, 0.00186, 0.0176) if lepton == "e+" else (0.02427, 0.00183, 0.0176)

        def fp(t):
            return 1 + lp * t / M["pi+"] ** 2 + 0.5 * lpp * (t / M["pi+"] ** 2) ** 2

        def xi(t):
            return ((1 + l0 * t / M["pi+"] ** 2) / fp(t) - 1) * (mk**2 - mpi**2) / t

    def rho(el, epi):
        enu = mk - el - epi
        ep = (mk**2 + mpi**2 - ml**2) / (2 * mk) - epi
        t = mk**2 + mpi**2 - 2 * mk * epi
        a = mk * (2 * el * enu - mk * ep) + ml**2 * (ep / 4 - enu)
        x = xi(t)
        return fp(t) ** 2 * (a + ml**2 * (enu - ep / 2) * x + ml**2 * ep / 4 * x * x)

    return rho


def _check_cdf(sample, dal, points):
    norm = dal.integral(lambda a, b: 1.0)
    n = sample.size
    for q in points:
        ref = dal.integral(lambda a, b: 1.0, e1_max=q) / norm
        got = np.mean(sample <= q)
        z = (got - ref) / math.sqrt(ref * (1 - ref) / n)
        assert abs(z) < Z_MAX, (q, got, ref, z)


def _check_mean(sample, dal, g):
    ref = dal.integral(g) / dal.integral(lambda a, b: 1.0)
    z = (sample.mean() - ref) / (sample.std() / math.sqrt(sample.size))
    assert abs(z) < Z_MAX, (sample.mean(), ref, z)
    return ref


@pytest.mark.slow
@pytest.mark.parametrize("model", ["geant4", "pdg"])
@pytest.mark.parametrize("mode_name,lepton", [("pi0_mu_nu", "mu+"), ("pi0_e_nu", "e+")])
def test_decay_kl3_rest_frame_spectra_match_dalitz_integration(mode_name, lepton, model):
    tables = D.build_decay_tables(kl3_model=model)
    mode = D.MODES["K+"].index(mode_name)
    n = 100_000
    out = _sample(tables, "K+", 0.0, n, seed=13, mode=mode, x64=True)  # pmag = 0: lab = rest frame
    ml = M[lepton]
    e_l = np.sqrt(out["p"] ** 2 + ml**2)
    dal = _Dalitz(M["K+"], ml, M["pi0"], 0.0, _kl3_rho(lepton, model))
    e_max = (M["K+"] ** 2 + ml**2 - M["pi0"] ** 2) / (2 * M["K+"])
    _check_cdf(e_l, dal, np.linspace(ml, e_max, 8)[1:-1])
    _check_mean(e_l, dal, lambda a, b: a)
    _check_mean(out["e_visible_neutral"], dal, lambda a, b: b)  # π⁰ energy: tests the conditional
    _check_mean(out["e_invisible"], dal, lambda a, b: M["K+"] - a - b)


@pytest.mark.slow
def test_decay_three_pion_rest_frame_spectra_match_phase_space(tables):
    n = 100_000
    mpi, mpi0, mk = M["pi+"], M["pi0"], M["K+"]
    # π⁺π⁰π⁰: the π⁺ energy
    out = _sample(tables, "K+", 0.0, n, seed=14, mode=D.MODES["K+"].index("pi_pi0_pi0"), x64=True)
    e = np.sqrt(out["p"] ** 2 + mpi**2)
    dal = _Dalitz(mk, mpi, mpi0, mpi0, lambda a, b: 1.0)
    e_max = (mk**2 + mpi**2 - 4 * mpi0**2) / (2 * mk)
    _check_cdf(e, dal, np.linspace(mpi, e_max, 8)[1:-1])
    _check_mean(e, dal, lambda a, b: a)
    # π⁺π⁺π⁻: the track is the π⁺ of larger momentum: P(max(E_a, E_b) <= q)
    out = _sample(tables, "K+", 0.0, n, seed=15, mode=D.MODES["K+"].index("pi_pi_pi"), x64=True)
    assert np.all(out["charged_pdg"] == 211)
    e = np.sqrt(out["p"] ** 2 + mpi**2)
    dal = _Dalitz(mk, mpi, mpi, mpi, lambda a, b: 1.0)
    e_max = (mk**2 + mpi**2 - 4 * mpi**2) / (2 * mk)
    norm = dal.integral(lambda a, b: 1.0)
    for q in np.linspace(mpi, e_max, 8)[2:-1]:
        ref = dal.integral(lambda a, b: 1.0, e1_max=q, e2_max=q) / norm
        got = np.mean(e <= q)
        assert abs(got - ref) < Z_MAX * math.sqrt(ref * (1 - ref) / n), (q, got, ref)
    _check_mean(out["e_other_charged"], dal, lambda a, b: mk - max(a, b))


# ------------------------------------------------------------------ lab frame, precision, gradients


@pytest.mark.slow
@pytest.mark.parametrize("pmag", [0.0, 2e3, 160e3])
def test_decay_lab_energy_conservation_float64(tables, pmag):
    for parent in D.PARENTS:
        for mode in range(len(D.MODES[parent])):
            out = _sample(tables, parent, pmag, 2000, seed=16 + mode, mode=mode, x64=True)
            m_tr = np.vectorize(PDG_MASS.get)(out["charged_pdg"])
            e_sum = np.hypot(out["p"], m_tr) + out["e_visible_neutral"] + out["e_invisible"] + out["e_other_charged"]
            np.testing.assert_allclose(e_sum, math.hypot(pmag, M[parent]), rtol=1e-12, err_msg=f"{parent} {mode}")
            assert np.all(out["theta"] >= 0) and np.all(out["theta"] <= math.pi)


@pytest.mark.slow
def test_decay_float32_matches_float64(tables):
    n = 20_000
    u = np.random.default_rng(17).random((n, D.N_DECAY_UNIFORMS)).astype(np.float32)  # exact in both
    for parent in D.PARENTS:
        o32 = _sample(tables, parent, 160e3, n, seed=17, u=u)
        o64 = _sample(tables, parent, 160e3, n, seed=17, x64=True, u=u.astype(np.float64))
        # same uniforms up to rounding: compare events whose mode agrees (u0 at a BR edge may differ)
        same = o32["mode"] == o64["mode"]
        assert same.mean() > 0.999
        np.testing.assert_allclose(o32["p"][same], o64["p"][same], rtol=2e-5)
        np.testing.assert_allclose(o32["theta"][same], o64["theta"][same], rtol=2e-4, atol=1e-9)
        for key in ("e_visible_neutral", "e_invisible", "e_other_charged"):
            np.testing.assert_allclose(o32[key][same], o64[key][same], rtol=2e-5, atol=0.05)  # MeV


@pytest.mark.slow
def test_decay_gradient_of_p_wrt_pmag_finite_and_matches_fd(tables):
    with jax.enable_x64(True):
        t64 = tables.device(jnp.float64)
        u = jax.random.uniform(jax.random.key(18), (64, D.N_DECAY_UNIFORMS), dtype=jnp.float64)
        pm = jnp.linspace(20e3, 200e3, 64)
        for parent in D.PARENTS:
            for mode in (None, 0):

                def f(p, parent=parent, mode=mode):
                    return D.sample_decay_from_u(t64, parent, p, u, mode)["p"]

                g = np.asarray(jax.grad(lambda p: f(p).sum())(pm))  # events are independent: the diagonal
                h = 1.0
                fd = (np.asarray(f(pm + h)) - np.asarray(f(pm - h))) / (2 * h)
                assert np.all(np.isfinite(g))
                np.testing.assert_allclose(g, fd, rtol=1e-6, atol=1e-9)


def test_decay_forced_mode_out_of_range_raises(tables):
    with pytest.raises(ValueError):
        D.sample_decay_from_u(tables.device(), "pi+", jnp.ones(2), jnp.full((2, D.N_DECAY_UNIFORMS), 0.5), mode=2)
    with pytest.raises(ValueError):
        D.ctau_mm("K-")


def test_decay_dalitz_inverse_cdf_round_trip(tables):
    """F(x_inv(u)) = u for every 3-body marginal table, F by nested scipy quad (measured ≤ 1e-7)."""
    u_nodes = np.sin(0.5 * np.pi * np.linspace(0.0, 1.0, tables.x_inv.shape[-1])) ** 2
    for k, name in enumerate(D.MODES["K+"]):
        if tables.is3[0, k] < 0.5:
            continue
        mk, m1, m2, m3 = tables.parent_mass[0], tables.m1[0, k], tables.m2[0, k], tables.m3[0, k]
        if name in ("pi0_e_nu", "pi0_mu_nu"):
            rho = _kl3_rho("e+" if name == "pi0_e_nu" else "mu+", "geant4")
        else:

            def rho(a, b):
                return 1.0

        def marg(e1, m1=m1, m2=m2, m3=m3, rho=rho):
            m23sq = mk * mk + m1 * m1 - 2 * mk * e1
            lo, hi = _m12_range(mk, m1, m2, m3, m23sq)  # E2 is linear in m12² at fixed m23²
            e2a = (mk * mk + m2 * m2 - (mk * mk + m1 * m1 + m2 * m2 + m3 * m3 - lo - m23sq)) / (2 * mk)
            e2b = (mk * mk + m2 * m2 - (mk * mk + m1 * m1 + m2 * m2 + m3 * m3 - hi - m23sq)) / (2 * mk)
            return integrate.quad(lambda e2: rho(e1, e2), e2a, e2b, epsrel=1e-11)[0]

        e1_lo, e1_hi = m1, m1 + tables.de1[0, k]
        total = integrate.quad(marg, e1_lo, e1_hi, epsrel=1e-11, limit=200)[0]
        for i in range(8, len(u_nodes) - 1, 16):
            e1 = e1_lo + tables.x_inv[0, k, i] * (e1_hi - e1_lo)
            got = integrate.quad(marg, e1_lo, e1, epsrel=1e-11, limit=200)[0] / total
            assert abs(got - u_nodes[i]) < 1e-6, (name, i, got, u_nodes[i])
