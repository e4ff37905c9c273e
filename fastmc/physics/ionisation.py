"""Muon ionisation: Bethe–Bloch with density effect, and the knock-on (δ-ray) spectrum.

Mean loss (PDG RPP 2024 §34, eqs. 34.5 and the spin-½ term of Groom et al. ADNDT 78 (2001) 183,
eq. 2)::

    a = K (Z/A) / β² · [ ½ ln(2 mₑβ²γ² T_max / I²) − β² − δ(βγ)/2 + T_max²/(8 E²) ]

with T_max = 2mₑβ²γ² / (1 + 2γ mₑ/M + (mₑ/M)²) and δ the Sternheimer density-effect correction
(PDG eq. 34.7 with the material's (C̄, x0, x1, a, k, δ0)).

Knock-on spectrum of a spin-½ projectile, per gram, in T = vE (PDG §34.2.5; Rossi 1952)::

    dσ/dT = (K/2) (Z/A) / β² · (1/T²) · [1 − β² T/T_max + T²/(2E²)]

``ionisation.bbk`` (the default) multiplies it by the radiative correction of Kelner, Kokoulin
and Petrukhin (Phys. At. Nucl. 60 (1997) 576; Geant4 PRM "Muon ionisation", used by
``G4MuBetheBlochModel``)::

    1 + α/(2π) · ln(1 + 2T/mₑ) · [ln(4E(E − T)/M²) − ln(1 + 2T/mₑ)]

applied at all T (it vanishes as T → 0; Geant4 applies it above 100 keV, which differs by
< 1e-4 in a), and adds its integral over the whole spectrum to a.  ``ionisation.bb`` omits it.
"""

from __future__ import annotations

import math

import numpy as np

from fastmc import units
from fastmc.materials import Material
from fastmc.physics.common import gauss_legendre01

_ME = units.electron_mass_c2
_MMU = units.muon_mass_c2


def kinematics(etot):
    """(β², γ, T_max) of a muon of total energy ``etot`` [MeV]."""
    etot = np.asarray(etot, dtype=float)
    gamma = etot / _MMU
    beta2 = 1.0 - 1.0 / (gamma * gamma)
    bg2 = gamma * gamma - 1.0
    r = _ME / _MMU
    tmax = 2.0 * _ME * bg2 / (1.0 + 2.0 * gamma * r + r * r)
    return beta2, gamma, tmax


def density_effect(material: Material, bg):
    """Sternheimer δ(βγ) (PDG RPP §34 eq. 34.7)."""
    cbar, x0, x1, a, k, delta0 = material.density_effect
    x = np.log10(np.maximum(np.asarray(bg, dtype=float), 1e-30))
    two_ln10 = 2.0 * math.log(10.0)
    high = two_ln10 * x - cbar
    mid = high + a * np.power(np.clip(x1 - x, 0.0, None), k)
    low = delta0 * np.power(10.0, 2.0 * (x - x0))
    return np.where(x >= x1, high, np.where(x >= x0, mid, low))


def bethe_dedx(material: Material, etot):
    """Mean ionisation loss, full δ-ray spectrum, without radiative correction [MeV cm²/g]."""
    beta2, gamma, tmax = kinematics(etot)
    etot = np.asarray(etot, dtype=float)
    bg2 = gamma * gamma - 1.0
    i_mev = material.I * units.eV
    delta = density_effect(material, np.sqrt(bg2))
    bracket = (
        0.5 * np.log(2.0 * _ME * bg2 * tmax / (i_mev * i_mev))
        - beta2
        - 0.5 * delta
        + tmax * tmax / (8.0 * etot * etot)
    )
    return units.K_bethe * material.Z_over_A / beta2 * bracket


def radiative_factor(etot, t):
    """Kelner–Kokoulin–Petrukhin radiative correction factor of the knock-on cross section."""
    a1 = np.log1p(2.0 * t / _ME)
    a3 = np.log(np.maximum(4.0 * etot * (etot - t) / (_MMU * _MMU), 1e-300))
    return 1.0 + units.fine_structure / (2.0 * math.pi) * a1 * (a3 - a1)


class _Ionisation:
    interaction = "ionisation"
    radiative: bool = True
    name = ""

    def v_min(self, material: Material, etot):
        """Lower end used for the knock-on spectrum: T = I (the spectrum is meaningless below)."""
        return material.I * units.eV / np.asarray(etot, dtype=float)

    def v_max(self, material: Material, etot):
        _, _, tmax = kinematics(etot)
        return tmax / np.asarray(etot, dtype=float)

    def dsigma_dv(self, material: Material, etot, v):
        etot = np.asarray(etot, dtype=float)
        v = np.asarray(v, dtype=float)
        beta2, _, tmax = kinematics(etot)
        t = v * etot
        inside = (v > 0) & (t <= tmax)
        ts = np.where(inside, t, 1.0)
        shape = 1.0 - beta2 * ts / tmax + ts * ts / (2.0 * etot * etot)
        base = 0.5 * units.K_bethe * material.Z_over_A / beta2 / (ts * ts) * shape * etot
        if self.radiative:
            base = base * radiative_factor(etot, ts)
        return np.where(inside, np.maximum(base, 0.0), 0.0)

    def dedx(self, material: Material, etot, n_gl: int = 64):
        """Mean ionisation loss a(E) over the full δ-ray spectrum [MeV cm²/g]."""
        a = bethe_dedx(material, etot)
        if not self.radiative:
            return a
        # add ∫ T (factor − 1) dσ/dT dT over T ∈ [1 keV, T_max] (the factor − 1 ∝ T at small T)
        etot = np.asarray(etot, dtype=float)
        beta2, _, tmax = kinematics(etot)

        x, w = gauss_legendre01(n_gl)
        lo = np.log(1e-3)
        hi = np.log(np.maximum(tmax, 2e-3))
        lnt = lo + (hi - lo)[..., None] * x
        t = np.exp(lnt)
        e = etot[..., None]
        shape = 1.0 - beta2[..., None] * t / tmax[..., None] + t * t / (2.0 * e * e)
        f = 0.5 * units.K_bethe * material.Z_over_A / beta2[..., None] / t * shape
        corr = (radiative_factor(e, t) - 1.0) * f * t  # extra T dσ/dT, times T for d ln T
        return a + (hi - lo) * np.sum(w * corr, axis=-1)

    def restricted_var(self, material: Material, etot, v_cut):
        """∫_0^{v_c} (vE)² dσ/dv dv per gram [MeV² cm²/g] (Bohr variance of the sub-cut part).

        Analytic, without the radiative factor (a < 1 % effect on the sub-cut variance).
        """
        etot = np.asarray(etot, dtype=float)
        beta2, _, tmax = kinematics(etot)
        tc = np.minimum(np.asarray(v_cut, dtype=float) * etot, tmax)
        k = 0.5 * units.K_bethe * material.Z_over_A / beta2
        return k * (tc - beta2 * tc * tc / (2.0 * tmax) + tc**3 / (6.0 * etot * etot))


class IonisationBBK(_Ionisation):
    """Bethe–Bloch + knock-ons with the Kelner–Kokoulin–Petrukhin radiative correction."""
    name = "ionisation.bbk"
    radiative = True


class IonisationBB(_Ionisation):
    """Bethe–Bloch + knock-ons, no radiative correction."""
    name = "ionisation.bb"
    radiative = False
