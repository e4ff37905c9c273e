"""Muon energy-loss physics: per-process cross sections, tables, device look-ups.

Processes (registry names ``<interaction>.<parametrisation>``, see :mod:`.registry`):
``ionisation.bbk`` (Bethe–Bloch + knock-ons + KKP radiative correction), ``ionisation.bb``,
``brems.kkp``, ``pair.kp``, ``photonuclear.bb`` (Bezrukov–Bugaev), ``photonuclear.bp``
(Borog–Petrukhin as in Geant4).  Importing it imports JAX (PhysicsTables is a pytree) but
builds no tables: build_tables is explicit and cached on disk.
"""

from __future__ import annotations

from fastmc.physics.registry import INTERACTIONS, get_process, processes
from fastmc.physics.tables import (
    TABLES_VERSION,
    PhysicsConfig,
    PhysicsTables,
    build_tables,
    continuous_dedx,
    continuous_ekin_after,
    continuous_straggling_var,
    csda_range,
    dsigma_dv,
    energy_loss_coefficients,
    sample_v_from_u,
    stochastic_xs,
    tables_config,
)

PROCESSES: dict = processes()


__all__ = [
    "INTERACTIONS",
    "PROCESSES",
    "TABLES_VERSION",
    "PhysicsConfig",
    "PhysicsTables",
    "build_tables",
    "continuous_dedx",
    "continuous_ekin_after",
    "continuous_straggling_var",
    "csda_range",
    "dsigma_dv",
    "energy_loss_coefficients",
    "get_process",
    "sample_v_from_u",
    "stochastic_xs",
    "tables_config",
]
