"""The particle species fastmc transports: indices, names, masses and lifetimes (data only).

A batch carries ``species`` as small integers (μ⁺, K⁺, π⁺); masses and cτ come from the
``particle`` package (PDG 2024: m_K = 493.677 MeV, m_π = 139.57039 MeV, cτ_K = 3711.25 mm,
cτ_π = 7804.42 mm).  The beam module draws species with them and the transport kernel uses them
for kinematics and decays; neither owns them.
"""

from __future__ import annotations

from fastmc import units as u

SPECIES_MU, SPECIES_K, SPECIES_PI = 0, 1, 2
SPECIES_NAMES = ("mu+", "K+", "pi+")
_PDGID = {"K+": 321, "pi+": 211}


def species_masses() -> tuple[float, float, float]:
    """Masses (MeV) of the transported species, from the ``particle`` package (PDG 2024)."""
    from particle import Particle

    return (u.muon_mass_c2, float(Particle.from_pdgid(321).mass), float(Particle.from_pdgid(211).mass))


def hadron_ctau_mm(name: str) -> float:
    """cτ [mm] of the beam hadron ``name`` ("K+" or "pi+") from the ``particle`` package."""
    from particle import Particle

    return float(Particle.from_pdgid(_PDGID[name]).ctau)
