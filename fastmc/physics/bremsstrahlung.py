"""Muon bremsstrahlung: Kelner–Kokoulin–Petrukhin (KKP) with nuclear and atomic screening.

S. R. Kelner, R. P. Kokoulin, A. A. Petrukhin, Phys. At. Nucl. 60 (1997) 576 and MEPhI preprint
024-95; the form below is the one of the Geant4 Physics Reference Manual ("Muon
bremsstrahlung") and of PROPOSAL ``brems.kkp``.  Per atom, with ε = vE the photon energy and
δ = M²v/(2E(1−v)) the minimal momentum transfer::

    dσ/dv = (16/3) α (r_e mₑ/M)² · Z (Z Φ_n + Φ_e) · (1 − v + ¾v²) / v

    Φ_n = ln[ B Z^{-1/3} (M + δ(D_n'√e − 2)) / (D_n' (mₑ + δ√e B Z^{-1/3})) ]     (≥ 0)
    Φ_e = ln[ B' Z^{-2/3} M / ((1 + δM/(mₑ²√e)) (mₑ + δ√e B' Z^{-2/3})) ]            (≥ 0,
          and 0 for ε > E/(1 + M²/(2mₑE)), the kinematic limit on atomic electrons)

with B = 183, B' = 1429 (B = 202.4, B' = 446 for hydrogen), D_n = 1.54 A^0.27 and
D_n' = D_n^{1 − 1/Z} (nuclear-size correction; D_n' = 1.49 for hydrogen is replaced by the same
formula, which gives D_n' = 1).  The nuclear term is the screened point-nucleus result with the
nuclear form factor; the electron term includes atomic-electron screening (both as in KKP).
"""

from __future__ import annotations

import math

import numpy as np

from fastmc import units
from fastmc.materials import Material
from fastmc.physics.common import CM2, atoms_per_gram

_ME = units.electron_mass_c2
_MMU = units.muon_mass_c2
_SQRTE = math.sqrt(math.e)
_COEFF = 16.0 / 3.0 * units.fine_structure * (units.classic_electr_radius * _ME / _MMU) ** 2


def _screening_constants(z: int) -> tuple[float, float]:
    return (202.4, 446.0) if z == 1 else (183.0, 1429.0)


def _dn_prime(z: int, a: float) -> float:
    dn = 1.54 * a**0.27
    return dn if z == 1 else dn ** (1.0 - 1.0 / z)


def v_end_element(z: int, a: float, etot):
    """Upper end of the KKP spectrum on element (Z, A): the v where Φ_n reaches 0.

    Φ_n = 0  ⇔  δ = M/2 − D_n' mₑ Z^{1/3}/(2B); with δ = M²v/(2E(1−v)) this is closed form.
    """
    etot = np.asarray(etot, dtype=float)
    b, _ = _screening_constants(z)
    dn = _dn_prime(z, a)
    delta = 0.5 * _MMU - dn * _ME * z ** (1.0 / 3.0) / (2.0 * b)
    q = 2.0 * etot * delta / (_MMU * _MMU)
    return np.minimum(q / (1.0 + q), 1.0 - _MMU / etot)


def dsigma_dv_atom(z: int, a: float, etot, v):
    """dσ/dv per atom [mm²]."""
    etot = np.asarray(etot, dtype=float)
    v = np.asarray(v, dtype=float)
    ok = (v > 0.0) & (v < 1.0 - _MMU / etot)
    vs = np.where(ok, v, 0.5)
    b, b1 = _screening_constants(z)
    z13 = z ** (-1.0 / 3.0)
    dn = _dn_prime(z, a)
    eps = vs * etot
    delta = 0.5 * _MMU * _MMU * vs / (etot - eps)
    rab0 = delta * _SQRTE
    rab1 = b * z13
    fn = np.log(rab1 / (dn * (_ME + rab0 * rab1)) * (_MMU + delta * (dn * _SQRTE - 2.0)))
    fn = np.maximum(fn, 0.0)
    rab2 = b1 * z13 * z13
    fe = np.log(rab2 * _MMU / ((1.0 + delta * _MMU / (_ME * _ME * _SQRTE)) * (_ME + rab0 * rab2)))
    epmax1 = etot / (1.0 + 0.5 * _MMU * _MMU / (_ME * etot))
    fe = np.where(eps < epmax1, np.maximum(fe, 0.0), 0.0)
    x = 1.0 - vs + 0.75 * vs * vs
    out = _COEFF * x * z * (fn * z + fe) / vs
    return np.where(ok, out, 0.0)


class BremsKKP:
    """``brems.kkp`` — Kelner–Kokoulin–Petrukhin muon bremsstrahlung."""

    name = "brems.kkp"
    interaction = "brems"

    def v_min(self, material: Material, etot):
        return np.zeros_like(np.asarray(etot, dtype=float))

    def v_max(self, material: Material, etot):
        return np.max([v_end_element(z, a, etot) for z, a, _ in material.elements], axis=0)

    def dsigma_dv(self, material: Material, etot, v):
        out = 0.0
        for z, a, w in material.elements:
            out = out + w * atoms_per_gram(a) * dsigma_dv_atom(z, a, etot, v)
        return out / CM2
