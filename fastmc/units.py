"""Units and physical constants (CLHEP system: mm, ns, MeV, e+ = 1, tesla = 0.001 MeV·ns/(e+·mm²)).

The internal unit system is the one of CLHEP / Geant4, as re-exported by :mod:`hepunits`
(H. Dembinski, E. Rodrigues et al., scikit-hep/hepunits).  Quantities carry these units
everywhere inside fastmc; unit suffixes (``thickness_mm``, ``momentum_GeV``) appear only at
the configuration and I/O boundaries, where they are converted exactly once.

Constants are CODATA 2018 / PDG 2024 values (PDG RPP 2024, Table 1.1 "Physical constants").
"""

from __future__ import annotations

import math

# --- base units (CLHEP) --------------------------------------------------------------
mm = 1.0
cm = 10.0 * mm
m = 1000.0 * mm
um = 1e-3 * mm
ns = 1.0
s = 1e9 * ns
MeV = 1.0
keV = 1e-3 * MeV
eV = 1e-6 * MeV
GeV = 1e3 * MeV
TeV = 1e6 * MeV
mrad = 1e-3
rad = 1.0
tesla = 1e-3  # CLHEP tesla (= hepunits.tesla); only ratios with GEV_PER_TESLA_METRE are used
T = tesla
# Densities are kept in g/cm³ and mass thicknesses in g/cm² (the units of the PDG tables);
# materials.py converts to 1/mm quantities once.

# --- constants (PDG RPP 2024, Table 1.1) ---------------------------------------------
c_light = 299.792458 * mm / ns
electron_mass_c2 = 0.51099895000 * MeV
muon_mass_c2 = 105.6583755 * MeV  # also particle.Particle.from_pdgid(13).mass
proton_mass_c2 = 938.27208816 * MeV
fine_structure = 1.0 / 137.035999084
classic_electr_radius = 2.8179403262e-12 * mm
avogadro = 6.02214076e23  # 1/mol
hbarc = 197.3269804e-12 * MeV * mm  # ħc (PDG RPP 2024, Table 1.1: 197.3269804 MeV fm)
K_bethe = 0.307075  # MeV mol⁻¹ cm² : 4π N_A r_e² m_e c² (PDG RPP 2024, Table 34.1)

# Momentum kick of a unit-charge particle in a field integral: Δp_T = 0.299792458 GeV/c per T·m
# (PDG RPP 2024 §35 "Passage..": p[GeV/c] = 0.3 B[T] ρ[m]).  Kept as an explicit number so
# that the magnet code reads in the units physicists quote.
GEV_PER_TESLA_METRE = 0.299792458

LN10 = math.log(10.0)

__all__ = [name for name in dir() if not name.startswith("_")]
