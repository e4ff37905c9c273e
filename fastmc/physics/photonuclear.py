"""Photonuclear (inelastic muon–nucleus) interaction.

Two parametrisations, both with the real-photon cross section of Kokoulin (as in Geant4
``G4KokoulinMuonNuclearXS`` and PROPOSAL)::

    σ_γN(ε) = 49.2 + 11.1 ln ε + 151.8/√ε  μb       (ε = vE in GeV)

and a lower limit ε > 0.2 GeV (Geant4's ``CutFixed``; the region below is the Δ resonance,
negligible for the energy loss and not described by either formula), upper limit
ε < E − M_p/2.

``photonuclear.bb`` (default) — Bezrukov & Bugaev, Sov. J. Nucl. Phys. 33 (1981) 635, soft
(vector-meson-dominance) part, in the form of Groom et al. ADNDT 78 (2001) 183 eq. 22 and
PROPOSAL ``photonuclear.bezrukovbugaev``::

    dσ/dv = (α/2π) A σ_γN v { ¾G(x)[κ ln(1 + m₁²/t) − κ m₁²/(m₁² + t) − 2M²/t]
                              + ¼[κ ln(1 + m₂²/t) − 2M²/t]
                              + M²/(2t) [¾G(x) m₁²/(m₁² + t) + ¼ (m₂²/t) ln(1 + t/m₂²)] }

    t = M²v²/(1 − v), κ = 1 − 2/v + 2/v², m₁² = 0.54 GeV², m₂² = 1.8 GeV²,
    G(x) = 3/x³ (x²/2 − 1 + e^{−x}(1 + x)), x = 0.00282 A^{1/3} σ_γN[μb]  (G = 1 for Z = 1).

The hard (DIS) component of Bezrukov–Bugaev/Butkevich is not included (≈ +10 % on b_nucl
at 100 GeV per Groom et al. 2001); the soft part alone is 10–12 % above PUMAS's (DRSS) b_nucl
at 100–200 GeV in Pb and Fe; Borog–Petrukhin is 4–7 % above (tests/test_physics_xs.py).

``photonuclear.bp`` — Borog & Petrukhin, Proc. 14th ICRC 6 (1975) 1949, the form coded in
Geant4 ``G4KokoulinMuonNuclearXS`` (A_eff = 0.22A + 0.78A^0.89, Λ² = 0.4 GeV²).
"""

from __future__ import annotations

import math

import numpy as np

from fastmc import units
from fastmc.materials import Material
from fastmc.physics.common import CM2, atoms_per_gram

_MMU = units.muon_mass_c2
_MP = units.proton_mass_c2
_MICROBARN = 1e-30 * CM2  # 1 μb = 1e-30 cm² → mm²
EPS_MIN = 0.2 * units.GeV


def sigma_gamma_n(eps_mev):
    """Real-photon–nucleon cross section (Kokoulin) [mm²]."""
    e = np.maximum(np.asarray(eps_mev, dtype=float) / units.GeV, 1e-6)
    return (49.2 + 11.1 * np.log(e) + 151.8 / np.sqrt(e)) * _MICROBARN


def _support(etot, v):
    etot = np.asarray(etot, dtype=float)
    eps = v * etot
    return (eps > EPS_MIN) & (eps < etot - 0.5 * _MP)


def dsigma_dv_atom_bb(z: int, a: float, etot, v):
    """Bezrukov–Bugaev soft part, per nucleus [mm²]."""
    etot, v = np.broadcast_arrays(np.asarray(etot, dtype=float), np.asarray(v, dtype=float))
    ok = _support(etot, v)
    vs = np.where(ok, v, 0.5)
    es = np.where(ok, etot, 1e6)
    sig = sigma_gamma_n(vs * es)
    m1 = 0.54 * units.GeV**2
    m2 = 1.80 * units.GeV**2
    mm2 = _MMU * _MMU
    t = mm2 * vs * vs / (1.0 - vs)
    kappa = 1.0 - 2.0 / vs + 2.0 / (vs * vs)
    if z == 1:
        g = 1.0
    else:
        x = 0.00282 * a ** (1.0 / 3.0) * sig / _MICROBARN
        g = 3.0 / x**3 * (0.5 * x * x - 1.0 + np.exp(-x) * (1.0 + x))
    br = (
        0.75 * g * (kappa * np.log1p(m1 / t) - kappa * m1 / (m1 + t) - 2.0 * mm2 / t)
        + 0.25 * (kappa * np.log1p(m2 / t) - 2.0 * mm2 / t)
        + mm2 / (2.0 * t) * (0.75 * g * m1 / (m1 + t) + 0.25 * m2 / t * np.log1p(t / m2))
    )
    out = units.fine_structure / (2.0 * math.pi) * a * sig * vs * br
    return np.where(ok, np.maximum(out, 0.0), 0.0)


def dsigma_dv_atom_bp(z: int, a: float, etot, v):
    """Borog–Petrukhin (Geant4 G4KokoulinMuonNuclearXS), per nucleus [mm²]."""
    etot, v = np.broadcast_arrays(np.asarray(etot, dtype=float), np.asarray(v, dtype=float))
    ok = _support(etot, v)
    vs = np.where(ok, v, 0.5)
    es = np.where(ok, etot, 1e6)
    eps = vs * es
    alam2 = 0.400 * units.GeV**2
    alam = math.sqrt(alam2)
    aeff = 0.22 * a + 0.78 * a**0.89
    sig = sigma_gamma_n(eps)
    v1 = 1.0 - vs
    v2 = vs * vs
    mm2 = _MMU * _MMU
    up = es * es * v1 / mm2 * (1.0 + mm2 * v2 / (alam2 * v1))
    down = 1.0 + eps / alam * (1.0 + alam / (2.0 * _MP) + eps / alam)
    dsde = (
        units.fine_structure / math.pi * aeff * sig / eps
        * (-v1 + (v1 + 0.5 * v2 * (1.0 + 2.0 * mm2 / alam2)) * np.log(up / down))
    )
    return np.where(ok, np.maximum(dsde * es, 0.0), 0.0)


class _Photonuclear:
    interaction = "photonuclear"
    name = ""
    _atom = staticmethod(dsigma_dv_atom_bb)

    def v_min(self, material: Material, etot):
        return EPS_MIN / np.asarray(etot, dtype=float)

    def v_max(self, material: Material, etot):
        return 1.0 - 0.5 * _MP / np.asarray(etot, dtype=float)

    def dsigma_dv(self, material: Material, etot, v):
        out = 0.0
        for z, a, w in material.elements:
            out = out + w * atoms_per_gram(a) * self._atom(z, a, etot, v)
        return out / CM2


class PhotonuclearBB(_Photonuclear):
    """``photonuclear.bb`` — Bezrukov–Bugaev (soft part), Kokoulin σ_γN."""

    name = "photonuclear.bb"
    _atom = staticmethod(dsigma_dv_atom_bb)


class PhotonuclearBP(_Photonuclear):
    """``photonuclear.bp`` — Borog–Petrukhin as in Geant4 G4KokoulinMuonNuclearXS."""

    name = "photonuclear.bp"
    _atom = staticmethod(dsigma_dv_atom_bp)
