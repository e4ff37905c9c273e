"""Materials: PDG numbers, internal consistency, homogenisation."""

from __future__ import annotations

import math

import pytest

from fastmc.materials import MATERIAL_NAMES, get_material, homogenise

# PDG "Atomic and Nuclear Properties of Materials" (pdg.lbl.gov/2024/AtomicNuclearProperties):
# density [g/cm³], X0 [g/cm²], λ_I [g/cm²], I [eV]
PDG = {
    "lead": (11.35, 6.37, 199.6, 823.0),
    "iron": (7.874, 13.84, 132.1, 286.0),
    "copper": (8.960, 12.86, 137.3, 322.0),
    "tungsten": (19.30, 6.76, 191.9, 727.0),
    "polystyrene": (1.060, 43.79, 81.7, 68.7),
    "air": (1.205e-3, 36.62, 90.1, 85.7),
}


def _tsai_x0(z: int, a: float) -> float:
    """Tsai's radiation length (PDG RPP §34 eq. 34.26) [g/cm²], for an independent check."""
    alpha = 1.0 / 137.035999084
    az2 = (alpha * z) ** 2
    fz = az2 * (1.0 / (1.0 + az2) + 0.20206 - 0.0369 * az2 + 0.0083 * az2**2 - 0.002 * az2**3)
    lrad = math.log(184.15 * z ** (-1.0 / 3.0))
    lrad_p = math.log(1194.0 * z ** (-2.0 / 3.0))
    return 716.408 * a / (z * z * (lrad - fz) + z * lrad_p)


@pytest.mark.parametrize("name", sorted(PDG))
def test_material_pdg_numbers(name):
    m = get_material(name)
    rho, x0, lam, i_ev = PDG[name]
    assert m.density == pytest.approx(rho, rel=2e-3)
    assert m.X0 == pytest.approx(x0, rel=1e-3)
    assert m.lambda_I == pytest.approx(lam, rel=1e-3)
    assert m.I == pytest.approx(i_ev, rel=1e-3)
    assert m.source


@pytest.mark.parametrize("name", MATERIAL_NAMES)
def test_material_fractions_sum_to_one_and_x0_matches_tsai(name):
    m = get_material(name)
    assert sum(w for _, _, w in m.elements) == pytest.approx(1.0, abs=1e-5)
    assert len(m.density_effect) == 6
    # 1/X0 = Σ w/X0_i with Tsai's elemental X0 (PDG eq. 34.28): within 2 % of the tabulated X0
    inv = sum(w / _tsai_x0(z, a) for z, a, w in m.elements)
    assert 1.0 / inv == pytest.approx(m.X0, rel=0.02)


def test_material_lengths_in_mm():
    pb = get_material("lead")
    assert pb.X0_mm == pytest.approx(5.612, rel=2e-3)  # PDG: 0.5612 cm
    assert pb.lambda_I_mm == pytest.approx(175.9, rel=2e-3)  # PDG: 17.59 cm
    assert pb.Z_over_A == pytest.approx(82 / 207.2)


def test_material_unknown_name_raises():
    with pytest.raises(ValueError, match="unknown material 'xyz'"):
        get_material("xyz")


def test_homogenise_pb_sc_ecal():
    mix = homogenise("ecal_test", [("lead", 1.5), ("scintillator", 1.5)])
    pb, sc = get_material("lead"), get_material("scintillator")
    # independent expectation: thickness-weighted 1/X0 in mm (each layer counts by its length)
    expect_x0_mm = 3.0 / (1.5 / pb.X0_mm + 1.5 / sc.X0_mm)
    assert expect_x0_mm == pytest.approx(11.08, abs=0.02)
    assert mix.X0_mm == pytest.approx(expect_x0_mm, rel=1e-9)
    assert mix.density == pytest.approx(0.5 * (pb.density + sc.density))
    expect_lam_mm = 3.0 / (1.5 / pb.lambda_I_mm + 1.5 / sc.lambda_I_mm)
    assert mix.lambda_I_mm == pytest.approx(expect_lam_mm, rel=1e-9)
    assert sum(w for _, _, w in mix.elements) == pytest.approx(1.0)
    # Bragg rule: I between the components, pulled towards lead (most of the electrons)
    assert sc.I < mix.I < pb.I and mix.I > 500.0
    # the homogenised material is found by name afterwards
    assert get_material("ecal_test") is mix
    # a 40 X0 ECAL of 1.5+1.5 mm layers needs ~150 layers (PHYSICS.md §3)
    assert 40 * mix.X0_mm / 3.0 == pytest.approx(150, rel=0.05)


def test_homogenise_single_layer_keeps_properties():
    fe = get_material("iron")
    mix = homogenise("iron_copy", [("iron", 25.0)])
    assert mix.density == pytest.approx(fe.density)
    assert mix.X0 == pytest.approx(fe.X0)
    assert mix.I == pytest.approx(fe.I)
