"""fastmc.trackfit: the global spectrometer fit against an independent reference.

Geometry: the MS2 spectrometer of models/na64mu_2022.toml (planes at the trackers' exit faces,
thin lenses at the magnet centres, resolutions and x/X0 of the model).  Tracks come from the small
numpy float64 generator below (not the fastmc chain): straight lines, thin-lens kicks
κ_m = 0.299792458 ∫B dl_m / p (PDG RPP 2024 §35), Gaussian hits, and, where asked, a Gaussian
scattering angle per projection behind every plane with the Highland width written out here
(PDG RPP 2024 eq. 34.15).  References are numpy float64: (AᵀWA)⁻¹, leverages, a dense GLS of the
reduced plane set.  The fit runs in float32 (the device dtype).  Fixed seeds; every tolerance is
5 standard errors of the quantity at the sample size used (named where it is computed), plus the
float32 rounding where a number is compared with float64.

Two jitted fits (no scattering / with scattering) of B = 20 000 tracks are compiled once per
module and reused with different data (same shapes: no recompilation).
"""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from tests.conftest import MODELS

B = 20_000
P_CLEAN = 50.0  # GeV/c: σ_p/p ≈ 0.4 %, so p = 1/λ is linear to O(1e-5) (see test 1)
SEED_P = 160.0  # θ0 seed of the scattering fits: the nominal beam momentum, as fit_spectrometer uses
GEV_PER_TM = 0.299792458  # PDG RPP 2024 §35: p[GeV/c] = 0.3 B[T] ρ[m]


def highland_np(p_GeV, x_over_X0, mass_GeV=0.1056583755):
    """PDG RPP 2024 eq. 34.15, charge 1: θ0 = 13.6 MeV/(βcp) √(x/X0) (1 + 0.038 ln(x/(X0 β²)))."""
    p = np.asarray(p_GeV, float)
    beta = p / np.sqrt(p**2 + mass_GeV**2)
    x = np.asarray(x_over_X0, float)
    return 13.6e-3 / (beta * p) * np.sqrt(x) * (1.0 + 0.038 * np.log(x / beta**2))


@pytest.fixture(scope="module")
def geo():
    from fastmc.config import load_model
    from fastmc.geometry import build_setup, setup_materials

    model = load_model(MODELS / "na64mu_2022.toml")
    mats, index = setup_materials(model)
    setup = build_setup(model, index)
    spec = next(s for s in setup.spectrometers if s.name == "MS2")
    names = tuple(spec.upstream) + tuple(spec.downstream)

    def el(n):
        return setup.element(n)

    g = {
        "setup": setup, "spec": spec, "names": names, "mats": mats, "index": index,
        "z": np.array([float(el(n).z + el(n).thickness) for n in names]),
        "sigma": np.array([float(el(n).resolution) for n in names]),
        "xx0": np.array([float(el(n).thickness) / mats[int(el(n).material)].X0_mm for n in names]),
        "z_in": np.array([float(el(n).z + el(n).thickness) for n in spec.incoming]),
        "xx0_in": np.array([float(el(n).thickness) / mats[int(el(n).material)].X0_mm for n in spec.incoming]),
        "sigma_in": np.array([float(el(n).resolution) for n in spec.incoming]),
        "zk": np.array([float(el(m).z + 0.5 * el(m).thickness) for m in spec.magnets]),
        "bl": np.array([float(el(m).field_integral) for m in spec.magnets]),
    }
    g["zbar"] = float(np.sum(g["bl"] * g["zk"]) / np.sum(g["bl"]))
    g["a2"] = np.sum(GEV_PER_TM * g["bl"][None] * np.maximum(g["z"][:, None] - g["zk"][None], 0.0), axis=1)
    g["A"] = np.stack([np.ones_like(g["z"]), g["z"] - g["zbar"], g["a2"]], 1)  # bend-plane design, λ = 1/p
    g["up"] = g["z"] < g["zk"].min()
    g["down"] = g["z"] > g["zk"].max()
    # MS covariance per unit θ0²: lever[j, s] = (z_j − z_s)₊
    g["lever"] = np.maximum(g["z"][:, None] - g["z"][None, :], 0.0)
    return g


def simulate(g, seed, p, ms=False):
    """Tracks of momentum p (B,) GeV/c (charge +1): hits (n, B) in both projections, float64."""
    rng = np.random.default_rng(seed)
    z, zin, n = g["z"], g["z_in"], len(g["z"])
    u0, t0 = rng.normal(0, 10.0, B), rng.normal(0, 5e-4, B)  # mm, rad: beam spot / divergence scale
    v0, s0 = rng.normal(0, 10.0, B), rng.normal(0, 5e-4, B)
    mb = u0 + t0 * (z[:, None] - g["zbar"]) + g["a2"][:, None] / p
    mv = v0 + s0 * (z[:, None] - g["zbar"])
    if ms:  # a kink behind every plane, both projections
        th0 = highland_np(p[None, :], g["xx0"][:, None])  # (n, B)
        mb = mb + g["lever"] @ (rng.normal(size=(n, B)) * th0)
        mv = mv + g["lever"] @ (rng.normal(size=(n, B)) * th0)
    mb = mb + rng.normal(size=(n, B)) * g["sigma"][:, None]
    mv = mv + rng.normal(size=(n, B)) * g["sigma"][:, None]
    ib = u0 + t0 * (zin[:, None] - g["zbar"]) + rng.normal(size=(len(zin), B)) * g["sigma_in"][:, None]
    iv = v0 + s0 * (zin[:, None] - g["zbar"]) + rng.normal(size=(len(zin), B)) * g["sigma_in"][:, None]
    return {"mb": mb, "mv": mv, "ib": ib, "iv": iv, "p": p, "present": np.ones((n, B), bool)}


def hits_of(g, ev):
    """reconstruct's hits dict {name: (mx, my, present)} (MS2 bends in x), float32."""
    import jax.numpy as jnp

    f = lambda a: jnp.asarray(a, jnp.float32)  # noqa: E731
    hits = {n: (f(ev["mb"][i]), f(ev["mv"][i]), jnp.asarray(ev["present"][i])) for i, n in enumerate(g["names"])}
    hits |= {n: (f(ev["ib"][i]), f(ev["iv"][i]), jnp.ones(B, bool)) for i, n in enumerate(g["spec"].incoming)}
    return hits


@pytest.fixture(scope="module")
def fitters(geo):
    """fit_spectrometer on MS2, jitted with the Setup as an argument: without and with scattering
    (x/X0 of every tracker from the model; θ0 seeded at 160 GeV/c, one refit at the fitted p)."""
    import jax

    from fastmc.trackfit import fit_spectrometer

    spec = geo["spec"]
    xx0 = dict(zip(geo["names"], geo["xx0"])) | dict(zip(spec.incoming, geo["xx0_in"]))
    clean = jax.jit(lambda setup, hits: fit_spectrometer(setup, spec, hits))
    scat = jax.jit(lambda setup, hits: fit_spectrometer(setup, spec, hits, x_over_X0=xx0, p_scatter_GeV=SEED_P,
                                                        ms_iterations=1))

    def run(fn):
        def call(ev):
            return {k: np.asarray(v, float) for k, v in fn(geo["setup"], hits_of(geo, ev)).items()}
        return call

    return {"clean": run(clean), "ms": run(scat)}


@pytest.fixture(scope="module")
def clean(geo, fitters):
    ev = simulate(geo, 1, np.full(B, P_CLEAN))
    return ev, fitters["clean"](ev)


def test_trackfit_momentum_pull_and_resolution_match_the_analytic_covariance(geo, clean):
    """σ(q/p) equals √[(AᵀWA)⁻¹]₂₂ (numpy float64); q/p pulls are N(0, 1); p pulls have the mean
    −ε that p = 1/λ predicts (pull_p = −z − ε z², ε = σ_λ/λ) and width √(1 + 2ε²); the relative
    resolution of p equals ε."""
    ev, out = clean
    A, W = geo["A"], np.diag(1.0 / geo["sigma"] ** 2)
    cov = np.linalg.inv(A.T @ W @ A)
    sig_lam = np.sqrt(cov[2, 2])
    lam = 1.0 / P_CLEAN
    eps = sig_lam / lam
    assert out["ok"].all()
    # float32: the equilibrated 3×3 inverse carries ~cond·2⁻²⁴ ≈ 1e-5 relative error (cond ~ 1e2)
    np.testing.assert_allclose(out["sigma_qop_per_GeV"], sig_lam, rtol=1e-4)
    np.testing.assert_allclose(out["sigma_p_GeV"] * (out["qop_per_GeV"] / lam) ** 2, sig_lam / lam**2, rtol=1e-4)
    pull_lam = (out["qop_per_GeV"] - lam) / out["sigma_qop_per_GeV"]
    pull_p = (out["p_GeV"] - P_CLEAN) / out["sigma_p_GeV"]
    se_mean, se_sd = 1 / np.sqrt(B), 1 / np.sqrt(2 * B)  # standard errors of a N(0,1) sample's mean, sd
    print(f"\n[test1] eps = sigma_p/p = {eps:.5f}; q/p pull mean {pull_lam.mean():+.4f} sd {pull_lam.std():.4f}; "
          f"p pull mean {pull_p.mean():+.4f} sd {pull_p.std():.4f}; rel. resolution {np.std(out['p_GeV'] / P_CLEAN):.5f}")
    assert abs(pull_lam.mean()) < 5 * se_mean
    assert abs(pull_lam.std() - 1) < 5 * se_sd
    assert abs(pull_p.mean() + eps) < 5 * se_mean
    assert abs(pull_p.std() - np.sqrt(1 + 2 * eps**2)) < 5 * se_sd
    rel = out["p_GeV"] / P_CLEAN - 1
    assert abs(rel.std() / eps - 1) < 5 * se_sd + 3 * eps**2  # O(ε²) from 1/λ's curvature


def test_trackfit_chi2_follows_the_chi2_law(clean):
    """KS of χ² against χ²(ndf): bend (ndf 4), non-bend (5), both (9); p-values > 0.01 at a fixed seed."""
    _, out = clean
    pvals = {}
    for key, ndf in (("chi2_bend", 4), ("chi2_nonbend", 5), ("chi2", 9)):
        assert (out[key.replace("chi2", "ndf")] == ndf).all()
        pvals[key] = stats.kstest(out[key], stats.chi2(ndf).cdf).pvalue
    print(f"\n[test2] KS p-values {pvals}")
    assert min(pvals.values()) > 0.01, pvals


def test_trackfit_chi2_rejects_a_hit_displaced_by_20_sigma(geo, fitters):
    """One hit (GEM2, bend plane) moved by 20σ adds the non-centrality 400 (1 − h) to χ²(4), h the
    plane's leverage from numpy; every track's χ² then lies above the 99.9 % quantile of χ²(4)."""
    ev = simulate(geo, 2, np.full(B, P_CLEAN))
    i = geo["names"].index("GEM2")
    ev["mb"][i] += 20 * geo["sigma"][i]
    out = fitters["clean"](ev)
    A, W = geo["A"], np.diag(1.0 / geo["sigma"] ** 2)
    h = (A @ np.linalg.inv(A.T @ W @ A) @ A.T @ W)[i, i]
    nc = 400 * (1 - h)
    mean_expected, sd = 4 + nc, np.sqrt(2 * (4 + 2 * nc))  # non-central χ²(k, nc): mean k + nc, var 2(k + 2nc)
    q999 = stats.chi2(4).ppf(0.999)
    print(f"\n[test2b] leverage {h:.3f}: mean chi2 {out['chi2_bend'].mean():.1f} (expected {mean_expected:.1f}); "
          f"min {out['chi2_bend'].min():.1f} > q99.9 {q999:.1f}")
    assert out["chi2_bend"].min() > q999
    assert abs(out["chi2_bend"].mean() - mean_expected) < 5 * sd / np.sqrt(B)


def test_trackfit_matching_pulls_are_normal_and_catch_a_faked_upstream_slope(geo, fitters, clean):
    """Clean tracks: matching pulls at z̄ (both projections) and the incoming-vs-upstream kink pulls
    are N(0, 1).  Hits of MM4 and MM5 moved by δ (z − z_MM3), δ = 1.5 mrad (a faked upstream slope, as
    a momentum mis-reconstruction would need: the bend is 5.2 mrad at 160 GeV/c): the bend-plane pull
    shifts by the numpy prediction −g_up·Δ/σ (≈ −12), and > 99 % of the tracks have |pull| > 5."""
    _, out = clean
    se_mean, se_sd = 1 / np.sqrt(B), 1 / np.sqrt(2 * B)
    assert out["match_ok"].all() and out["kink_ok"].all()
    msg = []
    for key in ("match_bend_pull", "match_nonbend_pull"):
        msg.append(f"{key} mean {out[key].mean():+.4f} sd {out[key].std():.4f}")
        assert abs(out[key].mean()) < 5 * se_mean and abs(out[key].std() - 1) < 5 * se_sd, key
    for name in ("bend", "nonbend"):
        pull = out[f"kink_{name}_rad"] / out[f"sigma_kink_{name}_rad"]
        msg.append(f"kink_{name} pull mean {pull.mean():+.4f} sd {pull.std():.4f}")
        assert abs(pull.mean()) < 5 * se_mean and abs(pull.std() - 1) < 5 * se_sd, name
    # analytic σ of the residual: arm lines' values at z̄, var_up + var_dn (no scattering: independent arms)
    z, s = geo["z"], geo["sigma"]
    var, g_up = 0.0, None
    for arm in (geo["up"], geo["down"]):
        A = np.stack([np.ones(arm.sum()), z[arm] - geo["zbar"]], 1)
        W = np.diag(1 / s[arm] ** 2)
        G = np.linalg.inv(A.T @ W @ A) @ A.T @ W
        var += G[0] @ np.diag(s[arm] ** 2) @ G[0]
        g_up = G[0] if g_up is None else g_up
    np.testing.assert_allclose(out["sigma_match_bend_mm"], np.sqrt(var), rtol=1e-4)  # float32 rounding
    ev = simulate(geo, 3, np.full(B, P_CLEAN))
    delta = 1.5e-3
    shift = np.zeros(len(z))
    for n in ("MM4", "MM5"):
        i = geo["names"].index(n)
        shift[i] = delta * (z[i] - z[geo["names"].index("MM3")])
    ev["mb"] += shift[:, None]
    bad = fitters["clean"](ev)
    expected = -(g_up @ shift[geo["up"]]) / np.sqrt(var)  # the upstream line moves, r = x_dn − x_up
    pull = bad["match_bend_pull"]
    msg.append(f"faked slope: pull mean {pull.mean():+.2f} (expected {expected:+.2f}), "
               f"P(|pull| > 5) = {np.mean(np.abs(pull) > 5):.4f}, p mean {bad['p_GeV'].mean():.1f} GeV")
    print("\n[test3] " + "; ".join(msg))
    assert abs(pull.mean() - expected) < 5 * se_mean
    assert np.mean(np.abs(pull) > 5) > 0.99


@pytest.fixture(scope="module")
def scattered(geo, fitters):
    p = np.random.default_rng(40).uniform(10.0, 20.0, B)  # low p: scattering ≈ resolution or more
    ev = simulate(geo, 4, p, ms=True)
    return ev, fitters["ms"](ev), fitters["clean"](ev)


def test_trackfit_scattering_term_restores_pulls_and_chi2(scattered):
    """Tracks with Gaussian kinks behind every plane, 10–20 GeV/c: fitted with the scattering
    covariance (θ0 seeded at 160 GeV/c, one refit at the fitted p) the q/p and matching pulls are
    N(0, 1) and χ² follows χ²(ndf) (KS); fitted without it the pulls are wider than 1 and χ² fails."""
    ev, ms, no = scattered
    se_mean, se_sd = 1 / np.sqrt(B), 1 / np.sqrt(2 * B)
    lam = 1 / ev["p"]
    pull = (ms["qop_per_GeV"] - lam) / ms["sigma_qop_per_GeV"]
    pull_no = (no["qop_per_GeV"] - lam) / no["sigma_qop_per_GeV"]
    ks = {k: stats.kstest(ms[k], stats.chi2(n).cdf).pvalue for k, n in (("chi2_bend", 4), ("chi2_nonbend", 5))}
    ks_no = {k: stats.kstest(no[k], stats.chi2(n).cdf).pvalue for k, n in (("chi2_bend", 4), ("chi2_nonbend", 5))}
    print(f"\n[test4] with MS: q/p pull mean {pull.mean():+.4f} sd {pull.std():.4f}; match pull sd "
          f"{ms['match_bend_pull'].std():.4f}/{ms['match_nonbend_pull'].std():.4f}; KS {ks}\n"
          f"        without: q/p pull sd {pull_no.std():.3f}; match pull sd {no['match_bend_pull'].std():.3f}/"
          f"{no['match_nonbend_pull'].std():.3f}; KS {ks_no}; sigma_p/p {np.median(ms['sigma_p_GeV'] / ev['p']):.4f}"
          f" (with) vs {np.median(no['sigma_p_GeV'] / ev['p']):.4f} (without)")
    assert ms["ok"].all()
    assert abs(pull.mean()) < 5 * se_mean and abs(pull.std() - 1) < 5 * se_sd
    for key in ("match_bend_pull", "match_nonbend_pull"):
        assert abs(ms[key].mean()) < 5 * se_mean and abs(ms[key].std() - 1) < 5 * se_sd, key
    assert min(ks.values()) > 0.01, ks
    # without the term: scattering ≳ resolution at 10–20 GeV/c, so the pull width is far above 1 + 5 se
    assert pull_no.std() > 1.5
    assert max(ks_no.values()) < 1e-6, ks_no


def _gls_np(A, C, m):
    """Dense GLS in float64 on one event's present planes: θ, cov θ, χ²."""
    Ci = np.linalg.inv(C)
    cov = np.linalg.inv(A.T @ Ci @ A)
    th = cov @ A.T @ Ci @ m
    r = m - A @ th
    return th, cov, r @ Ci @ r, cov @ A.T @ Ci


def _reduced_fit_np(g, keep, mb, mv, ms, p_seed, arms=True):
    """The fit of the plane set ``keep`` only (numpy float64): scatterers stay at every plane (a plane
    without a hit still scatters); θ0 at the seed, then once more at the fitted p (as the kernel)."""
    z, s = g["z"], g["sigma"]
    n = len(z)

    def cov(p):
        C = np.diag(s**2)
        if ms:
            C = C + g["lever"] @ np.diag(highland_np(max(abs(p), 1.0), g["xx0"]) ** 2) @ g["lever"].T
        return C

    p = p_seed
    for _ in range(2 if ms else 1):
        C = cov(p)
        th, cv, chi2_b, _ = _gls_np(g["A"][keep], C[np.ix_(keep, keep)], mb[keep])
        p = 1 / th[2]
    _, _, chi2_v, _ = _gls_np(g["A"][keep][:, :2], C[np.ix_(keep, keep)], mv[keep])
    out = {"p_GeV": 1 / th[2], "sigma_p_GeV": np.sqrt(cv[2, 2]) * th[2] ** -2, "chi2_bend": chi2_b,
           "chi2_nonbend": chi2_v, "ndf_bend": keep.sum() - 3.0}
    if not arms:
        return out
    d = np.zeros(n)
    vals = []
    for arm, sign in ((g["up"] & keep, -1), (g["down"] & keep, 1)):
        A = np.stack([np.ones(arm.sum()), z[arm] - g["zbar"]], 1)
        th_a, _, _, G = _gls_np(A, C[np.ix_(arm, arm)], mb[arm])
        d[arm] += sign * G[0]
        vals.append(th_a[0])
    return out | {"match_bend_mm": vals[1] - vals[0], "sigma_match_bend_mm": np.sqrt(d @ C @ d)}


@pytest.mark.parametrize("ms", [False, True], ids=["no_scattering", "scattering"])
def test_trackfit_missing_hit_equals_the_reduced_plane_fit(geo, fitters, ms):
    """Each track loses one plane at random (or none): the masked fit equals a dense float64 GLS of
    the remaining planes (first 300 tracks), with the absent planes' scatterers kept.  Tolerances are
    the float32 rounding of hits ~10 mm off axis (eps 6e-8 × 10 mm × ~10 operations ≈ 1e-5 mm against
    σ = 0.1 mm): rtol 2e-4, atol 1e-4 mm on positions, 2e-3 on χ² (its whitened residuals ~1e-4)."""
    rng = np.random.default_rng(5)
    ev = simulate(geo, 6, rng.uniform(10.0, 20.0, B) if ms else np.full(B, P_CLEAN), ms=ms)
    n = len(geo["z"])
    drop = rng.integers(0, n + 1, B)  # n: keep all
    ev["present"] = np.arange(n)[:, None] != drop[None, :]
    ev["mb"][~ev["present"]] = np.nan  # absent hits may hold anything: the fit must not read them
    ev["mv"][~ev["present"]] = np.nan
    out = fitters["ms" if ms else "clean"](ev)
    assert out["ok"].all() and np.isfinite(out["p_GeV"]).all()
    for b in range(300):
        ref = _reduced_fit_np(geo, ev["present"][:, b], ev["mb"][:, b], ev["mv"][:, b], ms, SEED_P)
        for key, val in ref.items():
            atol = 2e-3 if key.startswith("chi2") else 1e-4
            np.testing.assert_allclose(out[key][b], val, rtol=2e-4, atol=atol, err_msg=f"{key}, track {b}")


@pytest.mark.parametrize("ms", [False, True], ids=["no_scattering", "scattering"])
def test_trackfit_ok_flags_guard_underdetermined_tracks(geo, fitters, ms):
    """Hit patterns cycled over the tracks: all planes; no downstream hit; no upstream hit; MM3 and
    GEM1 only (2 hits < 3 parameters); MM5 + the downstream arm (a global fit, but no upstream line,
    hence no matching and no kink).  Flags as stated; no NaN anywhere; placeholders where not ok;
    the one-upstream-hit fit equals the float64 GLS of its planes (tolerances as above)."""
    names = geo["names"]
    n = len(names)
    keep_sets = [np.ones(n, bool), geo["up"].copy(), geo["down"].copy(),
                 np.isin(names, ("MM3", "GEM1")), np.isin(names, ("MM5",)) | geo["down"]]
    expect = [(1, 1, 1), (0, 0, 1), (0, 0, 0), (0, 0, 0), (1, 0, 0)]  # (ok, match_ok, kink_ok)
    rng = np.random.default_rng(8)
    ev = simulate(geo, 9, rng.uniform(10.0, 20.0, B) if ms else np.full(B, P_CLEAN), ms=ms)
    pattern = np.arange(B) % len(keep_sets)
    ev["present"] = np.stack(keep_sets, 1)[:, pattern]
    out = fitters["ms" if ms else "clean"](ev)
    for key, val in out.items():
        assert not np.isnan(val).any(), key
    for k, (ok, match_ok, kink_ok) in enumerate(expect):
        sel = pattern == k
        assert (out["ok"][sel] == ok).all() and (out["match_ok"][sel] == match_ok).all(), k
        assert (out["kink_ok"][sel] == kink_ok).all(), k
        if not ok:
            assert (out["p_GeV"][sel] == 0).all() and np.isinf(out["chi2"][sel]).all(), k
        if not match_ok:
            assert np.isinf(out["match_bend_pull"][sel]).all(), k
    keep = keep_sets[4]
    for b in np.flatnonzero(pattern == 4)[:50]:
        ref = _reduced_fit_np(geo, keep, ev["mb"][:, b], ev["mv"][:, b], ms, SEED_P, arms=False)
        for key, val in ref.items():
            atol = 2e-3 if key.startswith("chi2") else 1e-4
            np.testing.assert_allclose(out[key][b], val, rtol=2e-4, atol=atol, err_msg=f"{key}, track {b}")


def test_trackfit_wrapper_reads_the_setup_and_the_hits_dict(geo, fitters, clean):
    """Every fit above ran through fit_spectrometer(setup, MS2, hits) and matched references built
    from the numbers taken here by hand; here: the planes it builds (exit faces, resolutions, bend
    projection = x), its kick point (∫B dl-weighted magnet centre), a track bending the other way
    (p < 0 for the assumed μ⁺), and a magnet bending in the wrong plane is refused."""
    import dataclasses

    from fastmc.trackfit import fit_spectrometer, kick_point, planes_of

    ev, ref = clean
    setup, spec = geo["setup"], geo["spec"]
    hits = hits_of(geo, ev)
    pl = planes_of(setup, geo["names"], hits, spec.plane)
    np.testing.assert_array_equal(np.asarray(pl.z), geo["z"].astype(np.float32))
    np.testing.assert_array_equal(np.asarray(pl.sigma), geo["sigma"].astype(np.float32))
    np.testing.assert_array_equal(np.asarray(pl.bend), ev["mb"].astype(np.float32))
    np.testing.assert_allclose(float(kick_point(geo["zk"], geo["bl"])), geo["zbar"], rtol=1e-7)
    mirrored = ev | {"mb": -ev["mb"], "ib": -ev["ib"]}
    neg = fitters["clean"](mirrored)
    np.testing.assert_allclose(neg["p_GeV"], -ref["p_GeV"], rtol=1e-5)
    wrong = dataclasses.replace(spec, magnets=("B6a",))  # MS1's dipole bends in y
    with pytest.raises(ValueError, match="do not bend in plane"):
        fit_spectrometer(setup, wrong, hits)


def test_trackfit_gap_medium_gauss_points_integrate_a_uniform_medium_exactly(geo):
    """C_MS of the two Gauss–Legendre scatterers per gap equals the integral of eq. (1) over a
    uniform medium (20-point Gauss–Legendre per gap in numpy, exact for this quadratic) with the same
    θ0² per gap; rtol 1e-5 (float32)."""
    import jax.numpy as jnp

    from fastmc.trackfit import Planes, add_gap_scatterers, scattering_covariance

    air = geo["mats"][geo["index"]["air"]].X0_mm
    z = geo["z"]
    pl = add_gap_scatterers(Planes(z=jnp.asarray(z, jnp.float32), bend=None, nonbend=None, present=None,
                                   sigma=None), air)
    p = 15.0
    got = np.asarray(scattering_covariance(pl.z, pl.z_scatter, pl.x_over_X0, p))[:, :, 0]
    xg, wg = np.polynomial.legendre.leggauss(20)
    ref = np.zeros((len(z), len(z)))
    zs = np.sort(z)
    for a, b in zip(zs[:-1], zs[1:]):
        L = b - a
        th2 = 2 * highland_np(p, L / (2 * air)) ** 2  # the gap's θ0², as the wrapper assigns it
        s = a + 0.5 * L * (xg + 1)
        lev = np.maximum(z[:, None] - s[None, :], 0.0)
        ref += th2 / L * 0.5 * L * np.einsum("s,js,ks->jk", wg, lev, lev)
    print(f"\n[gap] air X0 {air / 1e3:.1f} m: total x/X0 {(z.max() - z.min()) / air:.4f}; "
          f"sqrt C_MS(last plane) {np.sqrt(ref[-1, -1]):.3f} mm at {p} GeV/c")
    np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-9)


def test_trackfit_arm_blocks_equal_the_full_masked_covariance(geo):
    """fit_track with n_up (each arm factorises its own block of C, as fit_spectrometer does) equals
    the fit that factorises the whole masked C per arm (n_up=None), with scattering and ~15 % of the hits missing: same flags, numbers to float32 rounding."""
    import jax
    import jax.numpy as jnp

    from fastmc.trackfit import fit_track, planes_of

    n_ev = 2000
    ev = simulate(geo, 7, np.random.default_rng(8).uniform(10.0, 160.0, B), ms=True)
    ev["present"] = np.random.default_rng(9).random(ev["mb"].shape) > 0.15
    ev["mb"] = np.where(ev["present"], ev["mb"], np.nan)  # absent hits may carry anything
    hits = {k: tuple(a[:n_ev] for a in v) for k, v in hits_of(geo, ev).items()}
    spec, setup = geo["spec"], geo["setup"]
    pl = planes_of(setup, geo["names"], hits, spec.plane, dict(zip(geo["names"], geo["xx0"])))
    fit = jax.jit(lambda pl, n_up: fit_track(pl, geo["zk"], geo["bl"], p_scatter_GeV=SEED_P, ms_iterations=0,
                                             n_up=n_up), static_argnums=1)
    full, blocks = fit(pl, None), fit(pl, len(spec.upstream))
    assert 0.5 < float(jnp.mean(full["match_ok"])) < 0.99  # both kinds of events are there
    for k in full:
        a, b = np.asarray(full[k], float), np.asarray(blocks[k], float)
        np.testing.assert_array_equal(np.isfinite(a), np.isfinite(b), err_msg=k)
        f = np.isfinite(a)
        np.testing.assert_array_equal(a[~f], b[~f], err_msg=k)
        np.testing.assert_allclose(b[f], a[f], rtol=1e-5, err_msg=k)
