"""The core chain against independent references (PHYSICS.md tables, Highland, analytic resolution)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from fastmc import units as u
from fastmc.api import propagate_slab
from fastmc.chain import chunk_variables, prepare
from fastmc.materials import get_material
from fastmc.physics.scattering import highland_theta0
from fastmc.runcard import load_run

from .conftest import ROOT

# PHYSICS.md §4 (PUMAS v1.1 muon tables): a [MeV cm²/g], b_total [1e-6 cm²/g] at T = 100, 200 GeV
PUMAS = {
    "lead": {100: (1.859, 13.59), 200: (1.918, 15.03)},
    "iron": {100: (2.206, 5.74), 200: (2.273, 6.36)},
}


def _reference_mean_loss(material: str, ekin_gev: float, thickness_mm: float) -> float:
    """∫ (a + b E) ρ dx with a, b linear in T between the PUMAS points, integrated by small steps."""
    rho = get_material(material).density
    (a1, b1), (a2, b2) = PUMAS[material][100], PUMAS[material][200]
    t = ekin_gev * 1e3  # MeV
    steps = 200
    dx = thickness_mm / 10.0 / steps  # cm
    for _ in range(steps):
        f = (t / 1e3 - 100.0) / 100.0
        a = a1 + (a2 - a1) * f
        b = (b1 + (b2 - b1) * f) * 1e-6
        t -= (a + b * (t + u.muon_mass_c2)) * rho * dx
    return ekin_gev - t / 1e3


@pytest.mark.parametrize(
    "material,thickness_mm",
    [("lead", 40 * 5.612), ("iron", 1000.0)],
    ids=["lead_40X0", "iron_1m"],
)
@pytest.mark.slow
def test_chain_mean_energy_loss_matches_pumas(material, thickness_mm):
    n = 400_000
    ekin = 160.0
    out = propagate_slab(material, thickness_mm, ekin, n, seed=11)
    loss = ekin - out
    mean, err = loss.mean(), loss.std() / math.sqrt(n)
    ref = _reference_mean_loss(material, ekin, thickness_mm)
    # issue #2 tolerance: 2 %; the MC error must be well below it for the test to mean something
    assert err / ref < 0.007, (mean, err, ref)
    assert abs(mean - ref) / ref < 0.02, f"{material}: mean loss {mean:.4f} ± {err:.4f} GeV vs reference {ref:.4f}"


@pytest.mark.parametrize(
    "material,thickness_mm",
    [("lead", 5.612), ("lead", 40 * 5.612), ("iron", 1500.0)],
    ids=["lead_1X0", "lead_40X0", "iron_1.5m"],
)
@pytest.mark.slow
def test_chain_projected_scattering_width_matches_highland(material, thickness_mm):
    n = 200_000
    out, rec = propagate_slab(material, thickness_mm, 160.0, n, seed=3, return_record=True)
    tx = rec["tx"].astype(np.float64)
    # robust core width: interquartile range of a Gaussian is 1.349 σ (the single-scatter tail
    # moves < 1 % of the muons beyond the quartiles, shifting the IQR by < 1 %)
    q1, q3 = np.percentile(tx, [25, 75])
    width = (q3 - q1) / 1.349
    mat = get_material(material)
    p_in = math.sqrt((160e3 + u.muon_mass_c2) ** 2 - u.muon_mass_c2**2)
    p_out = math.sqrt((out.mean() * 1e3 + u.muon_mass_c2) ** 2 - u.muon_mass_c2**2)
    p = math.sqrt(p_in * p_out)
    theta0 = float(highland_theta0(p, p / math.hypot(p, u.muon_mass_c2), thickness_mm / mat.X0_mm))
    # References: the default core is Molière's (Lynch & Dahl variance method with the nuclear form
    # factor, fastmc/physics/scattering.py), which differs from Highland by +6 % (lead 1 X0) to
    # −6 % (iron 1.5 m).  (a) Highland within its stated 11 % accuracy (PDG RPP 2024 §34.3);
    # (b) the chain (energy loss along the slab, p = √(p_in p_out), single-scatter tail) reproduces
    # the core model's width within 5 % (issue #2).  Agreement with Geant4: `fastmc validate`.
    # σ of an IQR-based width from n samples ≈ 1.1/√n relative → 0.25 %.
    assert abs(width / theta0 - 1.0) < 0.11, f"{material}: width {width:.4g} rad vs Highland {theta0:.4g} rad"
    import jax.numpy as jnp

    from fastmc.physics import scattering as S

    sp = S.build_scattering_params([mat])
    assert sp.core == "moliere"
    dt = jnp.result_type(float)
    pa = jnp.full((4,), p, dt)
    info = S.sample_scattering_info(sp.device(dt), 0, pa, pa / jnp.sqrt(pa**2 + u.muon_mass_c2**2),
                                    jnp.full((4,), thickness_mm, dt), jnp.full((4, S.N_UNIFORMS), 0.5, dt))
    t_core = float(info["theta_core"][0])
    assert abs(width / t_core - 1.0) < 0.05, f"{material}: width {width:.4g} rad vs Molière core {t_core:.4g} rad"


@pytest.mark.slow
@pytest.mark.parametrize("material,thickness_mm", [("lead", 5.612), ("iron", 1500.0)], ids=["lead_1X0", "iron_1.5m"])
def test_chain_highland_model_width_within_5_percent_of_highland(material, thickness_mm):
    """Issue #2's criterion, literally: with the run card's ``scattering = "highland"`` (Gaussian
    Highland multiple scattering in every material) the projected width is Highland's within 5 %."""
    from fastmc.config import PhysicsSettings

    n = 200_000
    out, rec = propagate_slab(material, thickness_mm, 160.0, n, seed=4, return_record=True,
                              settings=PhysicsSettings(scattering="highland"))
    # Gaussian multiple scattering, but the discrete interactions add their own deflections
    # (fastmc.physics.deflection) and a muon that radiates scatters more: the tails are not
    # Gaussian, so the width is taken from the core (IQR/1.349; Highland's θ0 is itself a fit to
    # the central 98 %, PDG RPP 2024 §34.3)
    q25, q75 = np.percentile(rec["tx"].astype(np.float64), [25.0, 75.0])
    width = float((q75 - q25) / 1.3490)
    mat = get_material(material)
    p_in = math.sqrt((160e3 + u.muon_mass_c2) ** 2 - u.muon_mass_c2**2)
    p_out = math.sqrt((out.mean() * 1e3 + u.muon_mass_c2) ** 2 - u.muon_mass_c2**2)
    p = math.sqrt(p_in * p_out)
    theta0 = float(highland_theta0(p, p / math.hypot(p, u.muon_mass_c2), thickness_mm / mat.X0_mm))
    # IQR width of n samples: relative σ ≈ 1.1/√n = 0.25 %; tolerance 5 % (issue #2)
    assert abs(width / theta0 - 1.0) < 0.05, f"{material}: width {width:.4g} rad vs Highland {theta0:.4g} rad"


@pytest.fixture(scope="module")
def spectrometer_chunks():
    prep = prepare(load_run(ROOT / "tests" / "data" / "spectrometer_card.toml"))
    chunks = [chunk_variables(prep, c)[0] for c in range(2)]
    return {k: np.concatenate([c[k] for c in chunks]) for k in chunks[0]}


@pytest.mark.slow
def test_chain_global_fit_chi2_and_matching_pulls_follow_their_laws(spectrometer_chunks):
    """Full chain (transport with Gaussian Highland scattering in the planes, Gaussian hits): the global
    fit's χ² (ndf = 2·4 − 5 = 3) follows χ²(3) and the squared matching pull (two projections) χ²(2)."""
    from scipy import stats

    v = spectrometer_chunks
    ok = v["out_ok"] > 0.5
    chi2 = v["p_out_chi2ndf"][ok] * 3.0
    pull2 = v["p_out_match_pull"][ok] ** 2
    # 40 000 tracks: a KS test at α = 1e-3 fails only on a real mismatch (D ≈ 0.01 is detected)
    assert stats.kstest(chi2, stats.chi2(3).cdf).pvalue > 1e-3
    assert stats.kstest(pull2, stats.chi2(2).cdf).pvalue > 1e-3


@pytest.mark.slow
def test_chain_pout_resolution_matches_analytic(spectrometer_chunks):
    p_rec = spectrometer_chunks["p_out_GeV"]
    ok = p_rec > 0
    assert ok.mean() > 0.999
    p_true = 160.0 - 0.0005  # four 1 mm plastic planes: ≈ 0.2 MeV each of ionisation
    rel = p_rec[ok] / p_true - 1.0
    # analytic: the GLS variance of q/p, [(Aᵀ C⁻¹ A)⁻¹]_λλ, written out here in numpy float64
    # (independent of fastmc.trackfit): planes at their exit faces, the magnet a thin lens at its
    # centre, C = σ² 1 + Σ_s θ0_s² (z_j − z_s)₊ (z_k − z_s)₊ with a scatterer in each plane (vacuum gap)
    sigma = 0.1  # mm
    z = np.array([1.0, 2001.0, 6001.0, 10001.0])
    z_kick = 4000.0
    mat = get_material("polystyrene")
    p = 160e3
    theta0 = float(highland_theta0(p, p / math.hypot(p, u.muon_mass_c2), 1.0 / mat.X0_mm))
    a2 = u.GEV_PER_TESLA_METRE * 2.0 * np.maximum(z - z_kick, 0.0)  # mm per (c/GeV)
    A = np.stack([np.ones(4), z - z_kick, a2], 1)
    lever = np.maximum(z[:, None] - z[None, :], 0.0)
    C = sigma**2 * np.eye(4) + theta0**2 * lever @ lever.T
    var_lam = np.linalg.inv(A.T @ np.linalg.solve(C, A))[2, 2]
    expected = math.sqrt(var_lam) * 160.0  # σ_p/p = σ_λ·p
    measured = rel.std()
    # 40 000 muons: the relative error of a std estimate is 1/√(2n) = 0.35 %; 1/p is not Gaussian
    # at O((σ/p)²) = O(1e-3); tolerance 3 %
    assert abs(rel.mean()) < 3 * measured / math.sqrt(rel.size) + 1e-3
    assert measured == pytest.approx(expected, rel=0.03), (measured, expected)
