"""Process registry of the energy-loss processes (helpers they share: :mod:`.common`).

Names follow PROPOSAL's ``<interaction>.<parametrisation>`` convention.  Every process object
is stateless and exposes, in host float64 numpy (broadcasting over ``etot`` and ``v``):

* ``interaction``          — one of :data:`INTERACTIONS`;
* ``dsigma_dv(material, etot, v)`` — dσ/dv per unit v = ΔE/E_total, per gram [cm²/g];
* ``v_min(material, etot)`` / ``v_max(material, etot)`` — support of dσ/dv.

Energies are total energies in MeV (CLHEP).  No import side effects beyond building the dict.
"""

from __future__ import annotations

from fastmc.physics import bremsstrahlung, ionisation, pair, photonuclear
from fastmc.physics.common import CM2, atoms_per_gram, gauss_legendre01

__all__ = ["CM2", "INTERACTIONS", "atoms_per_gram", "gauss_legendre01", "get_process", "processes"]

INTERACTIONS: tuple[str, ...] = ("ionisation", "brems", "pair", "photonuclear")


def _build() -> dict:
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
