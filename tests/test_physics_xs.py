"""Energy-loss coefficients and differential cross sections against published values."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.optimize import brentq

from fastmc import units
from fastmc.materials import get_material
from fastmc.physics import PROCESSES, dsigma_dv, energy_loss_coefficients

# PHYSICS.md §4: PUMAS v1.1 muon tables (PDG file format); T in GeV, a in MeV cm²/g,
# b in 1e-6 cm²/g: (a, b_brems, b_pair, b_photonuclear, b_total, dE/dx)
PUMAS = {
    ("lead", 100): (1.859, 5.42, 7.84, 0.32, 13.59, 3.219),
    ("lead", 200): (1.918, 5.98, 8.74, 0.31, 15.03, 4.926),
    ("iron", 100): (2.206, 2.25, 3.13, 0.36, 5.74, 2.781),
    ("iron", 200): (2.273, 2.49, 3.53, 0.35, 6.36, 3.546),
}


@pytest.mark.parametrize("key", sorted(PUMAS))
def test_energy_loss_coefficients_match_pumas(key):
    material, ekin = key
    a, bb, bp, bn, bt, dedx = PUMAS[key]
    c = energy_loss_coefficients(material, ekin)
    assert c["a"] == pytest.approx(a, rel=0.02)
    assert c["b_total"] * 1e6 == pytest.approx(bt, rel=0.05)
    assert c["b_brems"] * 1e6 == pytest.approx(bb, rel=0.10)
    assert c["b_pair"] * 1e6 == pytest.approx(bp, rel=0.10)
    # photonuclear: parametrisations differ by 10–20 % (PHYSICS.md §4)
    assert c["b_photonuclear"] * 1e6 == pytest.approx(bn, rel=0.20)
    assert c["dedx"] == pytest.approx(dedx, rel=0.03)


# Muon critical energy E_μc (ionisation loss = radiative loss), Groom, Mokhov & Striganov,
# ADNDT 78 (2001) 183, as listed on the PDG "Atomic and Nuclear Properties" pages
# ("Muon critical energy"): copper 315 GeV (also PDG RPP §34.6), iron 347 GeV, standard rock
# 693 GeV.  GMS01 use Bezrukov–Bugaev with a hard component and older pair/brems forms: 4 %.
@pytest.mark.parametrize(
    "material, e_crit_GeV", [("copper", 315.0), ("iron", 347.0), ("standard_rock", 693.0)]
)
def test_energy_loss_coefficients_critical_energy_groom(material, e_crit_GeV):
    def diff(t):
        c = energy_loss_coefficients(material, t)
        return c["a"] - c["b_total"] * (t * units.GeV + units.muon_mass_c2) / units.MeV

    t_crit = brentq(diff, 20.0, 5000.0, xtol=0.5)
    assert t_crit == pytest.approx(e_crit_GeV, rel=0.04)


def test_energy_loss_coefficients_minimum_ionising_copper():
    # PDG RPP Table 34.x / ANP: muon minimum ionisation in copper 1.403 MeV cm²/g at βγ ≈ 3.3
    # (p ≈ 0.35 GeV/c, T ≈ 0.26 GeV).  Radiative terms are negligible there.
    t = np.linspace(0.15, 0.6, 46)
    a = [energy_loss_coefficients("copper", x)["a"] for x in t]
    assert min(a) == pytest.approx(1.403, rel=0.01)


@pytest.mark.parametrize("name", sorted(PROCESSES))
def test_dsigma_dv_nonnegative_and_zero_outside_support(name):
    proc = PROCESSES[name]
    mat = get_material("lead")
    etot = 160e3 + units.muon_mass_c2
    vmin, vmax = float(proc.v_min(mat, etot)), float(proc.v_max(mat, etot))
    v = np.geomspace(1e-7, 0.9999, 400)
    f = dsigma_dv(name, "lead", etot, v)
    assert np.all(np.isfinite(f)) and np.all(f >= 0.0)
    assert np.all(f[v > vmax * (1 + 1e-9)] == 0.0)
    inside = (v > vmin * 1.01) & (v < vmax * 0.99)
    assert np.all(f[inside] > 0.0)


def test_dsigma_dv_pair_rho_quadrature_converged():
    from fastmc.physics.pair import dsigma_dv_atom

    etot = 160e3
    v = np.geomspace(1e-4, 0.99, 60)
    f8 = dsigma_dv_atom(82, etot, v, n_rho=8)
    f64 = dsigma_dv_atom(82, etot, v, n_rho=64)
    ok = f64 > 0
    # weight by v² dσ/dv (the energy-loss spectrum); 8 points are enough where it matters
    w = v[ok] ** 2 * f64[ok]
    rel = np.abs(f8[ok] / f64[ok] - 1.0)
    assert np.sum(w * rel) / np.sum(w) < 2e-3
    assert np.max(rel[v[ok] < 0.9]) < 1e-2


def test_dsigma_dv_knock_on_matches_rossi_low_v():
    # far below T_max and E, the knock-on spectrum is the Rutherford one (K/2)(Z/A)/(β² T²)·E
    etot = 160e3
    v = np.array([1e-5, 1e-4])
    f = dsigma_dv("ionisation.bb", "iron", etot, v)
    mat = get_material("iron")
    expect = 0.5 * units.K_bethe * mat.Z_over_A / (v * etot) ** 2 * etot
    np.testing.assert_allclose(f, expect, rtol=1e-3)
