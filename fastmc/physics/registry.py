"""Process registry and small shared helpers of the energy-loss processes.

Names follow PROPOSAL's ``<interaction>.<parametrisation>`` convention.  Every process object
is stateless and exposes, in host float64 numpy (broadcasting over ``etot`` and ``v``):

* ``interaction``          — one of :data:`INTERACTIONS`;
* ``dsigma_dv(material, etot, v)`` — dσ/dv per unit v = ΔE/E_total, per gram [cm²/g];
* ``v_min(material, etot)`` / ``v_max(material, etot)`` — support of dσ/dv.

Energies are total energies in MeV (CLHEP).  No import side effects beyond building the dict.
"""

from __future__ import annotations

import numpy as np

from fastmc import units

INTERACTIONS: tuple[str, ...] = ("ionisation", "brems", "pair", "photonuclear")


def atoms_per_gram(a_gmol: float) -> float:
    """N_A / A [1/g]."""
    return units.avogadro / a_gmol


def gauss_legendre01(n: int) -> tuple[np.ndarray, np.ndarray]:
    """Gauss–Legendre nodes and weights on [0, 1]."""
    x, w = np.polynomial.legendre.leggauss(n)
    return 0.5 * (x + 1.0), 0.5 * w


CM2 = units.cm * units.cm  # mm² per cm²: cross sections in mm² are converted to cm² by /CM2


def _build() -> dict:
    from fastmc.physics import bremsstrahlung, ionisation, pair, photonuclear

    procs = [
        ionisation.IonisationBBK(),
        ionisation.IonisationBB(),
        bremsstrahlung.BremsKKP(),
        pair.PairKP(),
        photonuclear.PhotonuclearBB(),
        photonuclear.PhotonuclearBP(),
    ]
    return {p.name: p for p in procs}


_REGISTRY: dict | None = None


def processes() -> dict:
    """The registry ``name -> process`` (built on first use)."""
    global _REGISTRY
    if _REGISTRY is None:
        _REGISTRY = _build()
    return _REGISTRY


def get_process(name: str):
    reg = processes()
    if name not in reg:
        raise ValueError(f"unknown process {name!r} (known: {', '.join(reg)})")
    return reg[name]
