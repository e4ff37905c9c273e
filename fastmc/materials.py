"""Materials: composition, density, mean excitation energy, X0, λ_I, Sternheimer parameters.

Every number carries its source.  Abbreviations used in the ``source`` strings and comments:

* **PDG-ANP** — PDG "Atomic and Nuclear Properties of Materials"
  (https://pdg.lbl.gov/2024/AtomicNuclearProperties/), the per-material pages and the header
  line ``Sternheimer coef: a k=m_s x_0 x_1 I[eV] Cbar delta0`` of the muon tables
  ``MUE/muE_<material>.txt`` (these tables are Groom, Mokhov & Striganov, ADNDT 78 (2001) 183).
* **SBS84** — R. M. Sternheimer, M. J. Berger, S. M. Seltzer, "Density effect for the
  ionization loss of charged particles in various substances", ADNDT 30 (1984) 261.
* **GMS01** — D. E. Groom, N. V. Mokhov, S. I. Striganov, ADNDT 78 (2001) 183 (standard rock
  definition: Z = 11, A = 22, ρ = 2.65 g/cm³).

Standard atomic weights are IUPAC 2021 abridged values as quoted by PDG-ANP.  Mass fractions of
compounds are computed from their chemical formula (``_formula``), which is what PDG-ANP does.
Values marked "(approx.)" are not on the PDG page and are estimated as described next to them.

Lengths: ``X0`` and ``lambda_I`` are mass thicknesses in g/cm²; the properties ``X0_mm`` and
``lambda_I_mm`` convert them to mm with the density (``X0 / density * 10``).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence

# Standard atomic weights [g/mol] (IUPAC 2021 abridged, as in PDG-ANP).
ATOMIC_WEIGHT: dict[int, float] = {
    1: 1.008,
    6: 12.011,
    7: 14.007,
    8: 15.999,
    13: 26.9815385,
    14: 28.085,
    18: 39.948,
    26: 55.845,
    29: 63.546,
    74: 183.84,
    82: 207.2,
}


@dataclasses.dataclass(frozen=True)
class Material:
    """A homogeneous material (element, compound, mixture or homogenised sampling calorimeter).

    ``elements`` holds ``(Z, A [g/mol], mass fraction)``; the fractions sum to one.
    ``density_effect`` is the Sternheimer parametrisation ``(Cbar, x0, x1, a, k, delta0)`` of
    δ(βγ) (PDG RPP §34, eq. 34.7; SBS84).
    """

    name: str
    density: float  # g/cm³
    elements: tuple[tuple[int, float, float], ...]
    I: float  # mean excitation energy [eV]
    X0: float  # radiation length [g/cm²]
    lambda_I: float  # nuclear interaction length [g/cm²]
    density_effect: tuple[float, float, float, float, float, float]
    source: str

    @property
    def Z_over_A(self) -> float:
        """⟨Z/A⟩ = Σ w_i Z_i/A_i [mol/g]."""
        return sum(w * z / a for z, a, w in self.elements)

    @property
    def X0_mm(self) -> float:
        return self.X0 / self.density * 10.0

    @property
    def lambda_I_mm(self) -> float:
        return self.lambda_I / self.density * 10.0


def _formula(*atoms: tuple[int, float]) -> tuple[tuple[int, float, float], ...]:
    """Mass fractions from a chemical formula given as ``(Z, number of atoms)`` pairs."""
    masses = [(z, n * ATOMIC_WEIGHT[z]) for z, n in atoms]
    total = sum(m for _, m in masses)
    return tuple((z, ATOMIC_WEIGHT[z], m / total) for z, m in masses)


def _element(z: int) -> tuple[tuple[int, float, float], ...]:
    return ((z, ATOMIC_WEIGHT[z], 1.0),)


_PDG = "PDG-ANP (pdg.lbl.gov AtomicNuclearProperties, MUE tables = Groom et al. ADNDT 78 (2001) 183)"

# density_effect = (Cbar, x0, x1, a, k, delta0), SBS84 as tabulated in PDG-ANP.
_MATERIALS: dict[str, Material] = {
    m.name: m
    for m in (
        Material(
            "lead",
            11.35,  # PDG-ANP Pb
            _element(82),
            823.0,  # PDG-ANP Pb
            6.37,  # PDG-ANP Pb
            199.6,  # PDG-ANP Pb
            (6.2018, 0.3776, 3.8073, 0.09359, 3.1608, 0.14),  # SBS84 / PDG-ANP Pb
            _PDG + " — lead (Pb)",
        ),
        Material(
            "iron",
            7.874,  # PDG-ANP Fe
            _element(26),
            286.0,  # PDG-ANP Fe
            13.84,  # PDG-ANP Fe
            132.1,  # PDG-ANP Fe
            (4.2911, -0.0012, 3.1531, 0.14680, 2.9632, 0.12),  # SBS84 / PDG-ANP Fe
            _PDG + " — iron (Fe)",
        ),
        Material(
            "copper",
            8.960,  # PDG-ANP Cu
            _element(29),
            322.0,  # PDG-ANP Cu
            12.86,  # PDG-ANP Cu
            137.3,  # PDG-ANP Cu
            (4.4190, -0.0254, 3.2792, 0.14339, 2.9044, 0.08),  # SBS84 / PDG-ANP Cu
            _PDG + " — copper (Cu)",
        ),
        Material(
            "tungsten",
            19.30,  # PDG-ANP W
            _element(74),
            727.0,  # PDG-ANP W
            6.76,  # PDG-ANP W
            191.9,  # PDG-ANP W
            (5.4059, 0.2167, 3.4960, 0.15509, 2.8447, 0.14),  # SBS84 / PDG-ANP W
            _PDG + " — tungsten (W)",
        ),
        Material(
            "aluminium",
            2.699,  # PDG-ANP Al
            _element(13),
            166.0,  # PDG-ANP Al
            24.01,  # PDG-ANP Al
            107.2,  # PDG-ANP Al
            (4.2395, 0.1708, 3.0127, 0.08024, 3.6345, 0.12),  # SBS84 / PDG-ANP Al
            _PDG + " — aluminum (Al)",
        ),
        Material(
            "polystyrene",
            1.060,  # PDG-ANP polystyrene
            _formula((6, 8), (1, 8)),  # (C8H8)n
            68.7,  # PDG-ANP polystyrene
            43.79,  # PDG-ANP polystyrene
            81.7,  # PDG-ANP polystyrene
            (3.2999, 0.1647, 2.5031, 0.16454, 3.2224, 0.0),  # SBS84 / PDG-ANP polystyrene
            _PDG + " — polystyrene",
        ),
        Material(
            "scintillator",
            1.032,  # PDG-ANP "plastic scintillator (vinyltoluene based)"
            _formula((6, 9), (1, 10)),  # polyvinyltoluene (C9H10)n
            64.7,  # PDG-ANP polyvinyltoluene
            43.90,  # PDG-ANP polyvinyltoluene
            81.9,  # (approx.) polystyrene 81.7 scaled by the slightly larger H fraction
            (3.1997, 0.1464, 2.4855, 0.16101, 3.2393, 0.0),  # PDG-ANP MUE/muE_polyvinyltoluene
            _PDG + " — polyvinyltoluene (plastic scintillator)",
        ),
        Material(
            "standard_rock",
            2.65,  # GMS01
            ((11, 22.0, 1.0),),  # GMS01: Z = 11, A = 22
            136.4,  # GMS01 / PDG-ANP standard rock
            26.54,  # PDG-ANP standard rock
            101.3,  # (approx.) PDG-ANP sodium (Z = 11, A = 22.99) value scaled as A^0.29 to A = 22
            (3.7738, 0.0492, 3.0549, 0.08301, 3.4120, 0.0),  # PDG-ANP MUE/muE_standard_rock
            "GMS01 / " + _PDG + " — standard rock",
        ),
        Material(
            "air",
            1.20479e-3,  # PDG-ANP air (dry, 1 atm, 20 °C)
            (
                (6, ATOMIC_WEIGHT[6], 0.000124),  # PDG-ANP air composition by mass
                (7, ATOMIC_WEIGHT[7], 0.755267),
                (8, ATOMIC_WEIGHT[8], 0.231781),
                (18, ATOMIC_WEIGHT[18], 0.012828),
            ),
            85.7,  # PDG-ANP air
            36.62,  # PDG-ANP air
            90.1,  # PDG-ANP air
            (10.5961, 1.7418, 4.2759, 0.10914, 3.3994, 0.0),  # SBS84 / PDG-ANP air
            _PDG + " — air (dry, 1 atm)",
        ),
        Material(
            "water",
            1.000,  # PDG-ANP water (liquid)
            _formula((1, 2), (8, 1)),
            79.7,  # PDG-ANP water (ICRU 73 value; SBS84 used 75.0)
            36.08,  # PDG-ANP water
            83.3,  # PDG-ANP water
            (3.5017, 0.2400, 2.8004, 0.09116, 3.4773, 0.0),  # SBS84 / PDG-ANP water
            _PDG + " — water (liquid)",
        ),
        Material(
            "kapton",
            1.42,  # PDG-ANP polyimide film (Kapton)
            _formula((6, 22), (1, 10), (7, 2), (8, 5)),  # C22H10N2O5
            79.6,  # PDG-ANP kapton
            40.58,  # PDG-ANP kapton
            85.8,  # (approx.) PDG-ANP mylar value (same light composition)
            (3.3497, 0.1509, 2.5631, 0.15972, 3.1921, 0.0),  # SBS84 / PDG-ANP kapton
            _PDG + " — polyimide film (Kapton)",
        ),
        Material(
            "mylar",
            1.40,  # PDG-ANP polyethylene terephthalate (Mylar)
            _formula((6, 10), (1, 8), (8, 4)),  # C10H8O4
            78.7,  # PDG-ANP mylar
            39.95,  # PDG-ANP mylar
            85.7,  # PDG-ANP mylar
            (3.3262, 0.1562, 2.6507, 0.12679, 3.3076, 0.0),  # SBS84 / PDG-ANP mylar
            _PDG + " — polyethylene terephthalate (Mylar)",
        ),
        Material(
            "argon",
            1.662e-3,  # PDG-ANP argon gas (20 °C, 1 atm)
            _element(18),
            188.0,  # PDG-ANP Ar
            19.55,  # PDG-ANP Ar
            119.7,  # PDG-ANP Ar
            (11.9480, 1.7635, 4.4855, 0.19714, 2.9618, 0.0),  # SBS84 / PDG-ANP Ar gas
            _PDG + " — argon gas",
        ),
    )
}

MATERIAL_NAMES: tuple[str, ...] = tuple(_MATERIALS)

# Homogenised materials registered at run time (by name) so that get_material finds them too.
_EXTRA: dict[str, Material] = {}


def get_material(name: str) -> Material:
    """The material called ``name`` (built-in or previously made by :func:`homogenise`)."""
    if name in _MATERIALS:
        return _MATERIALS[name]
    if name in _EXTRA:
        return _EXTRA[name]
    known = ", ".join(MATERIAL_NAMES + tuple(_EXTRA))
    raise ValueError(f"unknown material {name!r} (known: {known})")


def sternheimer_peierls(I_eV: float, density: float, z_over_a: float) -> tuple[float, ...]:
    """Density-effect parameters of a condensed material from I and the plasma energy.

    R. M. Sternheimer and R. F. Peierls, Phys. Rev. B 3 (1971) 3681 (the general formula also
    used by Geant4 ``G4IonisParamMat`` when no tabulated parameters exist):
    ħω_p = 28.816 √(ρ⟨Z/A⟩) eV, C̄ = 2 ln(I/ħω_p) + 1, k = 3, x0/x1 from C̄ and I, and
    a = (C̄ − 2 ln10 · x0)/(x1 − x0)³.  δ0 = 0.  The high-energy limit δ → 2 ln(βγ) + 2 ln(ħω_p/I)
    − 1, which is what matters for muons above a few GeV, is exact by construction.
    """
    plasma = 28.816 * math.sqrt(density * z_over_a)  # eV (PDG RPP Table 34.1)
    cbar = 2.0 * math.log(I_eV / plasma) + 1.0
    if I_eV < 100.0:
        x1 = 2.0
        x0 = 0.2 if cbar < 3.681 else 0.326 * cbar - 1.0
    else:
        x1 = 3.0
        x0 = 0.2 if cbar < 5.215 else 0.326 * cbar - 1.5
    k = 3.0
    a = (cbar - 2.0 * math.log(10.0) * x0) / (x1 - x0) ** k
    return (cbar, x0, x1, a, k, 0.0)


def homogenise(name: str, layers: Sequence[tuple[str, float]]) -> Material:
    """One material equivalent to a stack of layers ``(material name, thickness_mm)``.

    * density: volume (thickness) weighted;
    * mass fractions w_i = t_i ρ_i / Σ t_j ρ_j, element lists merged by Z;
    * 1/X0 = Σ w_i / X0_i and 1/λ_I = Σ w_i / λ_I,i (mass-thickness additivity; this is exactly
      the thickness-weighted 1/X0_mm);
    * I by the Bragg additivity rule, ln I = Σ w_i (Z/A)_i ln I_i / Σ w_i (Z/A)_i (PDG RPP §34);
    * density-effect parameters for the mixture from :func:`sternheimer_peierls` (mixture I,
      density and ⟨Z/A⟩).  This treats the stack as a homogeneous medium, which is what a muon
      at high energy sees (the density effect saturates over distances ≪ one layer).

    The result is also registered under ``name`` for :func:`get_material`.
    """
    if not layers:
        raise ValueError("homogenise needs at least one layer")
    mats = [(get_material(m), float(t)) for m, t in layers]
    if any(t <= 0 for _, t in mats):
        raise ValueError(f"layer thicknesses must be positive, got {[t for _, t in mats]}")
    total_t = sum(t for _, t in mats)
    mass = [m.density * t for m, t in mats]
    total_mass = sum(mass)
    w = [mi / total_mass for mi in mass]
    density = total_mass / total_t
    merged: dict[int, list[float]] = {}
    for (m, _), wi in zip(mats, w):
        for z, a, f in m.elements:
            if z in merged:
                # mass-weighted A (identical for the same Z in practice)
                a_old, f_old = merged[z]
                merged[z] = [(a_old * f_old + a * wi * f) / (f_old + wi * f), f_old + wi * f]
            else:
                merged[z] = [a, wi * f]
    elements = tuple((z, a, f) for z, (a, f) in sorted(merged.items()))
    inv_x0 = sum(wi / m.X0 for (m, _), wi in zip(mats, w))
    inv_lam = sum(wi / m.lambda_I for (m, _), wi in zip(mats, w))
    za = [wi * m.Z_over_A for (m, _), wi in zip(mats, w)]
    ln_i = sum(zai * math.log(m.I) for (m, _), zai in zip(mats, za)) / sum(za)
    I = math.exp(ln_i)
    z_over_a = sum(za)
    desc = " + ".join(f"{t:g} mm {m.name}" for m, t in mats)
    mat = Material(
        name=name,
        density=density,
        elements=elements,
        I=I,
        X0=1.0 / inv_x0,
        lambda_I=1.0 / inv_lam,
        density_effect=sternheimer_peierls(I, density, z_over_a),
        source=f"homogenised ({desc}); density effect: Sternheimer & Peierls PRB 3 (1971) 3681",
    )
    _EXTRA[name] = mat
    return mat


__all__ = ["Material", "MATERIAL_NAMES", "get_material", "homogenise", "sternheimer_peierls"]
