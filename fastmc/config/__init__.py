"""Strict TOML configuration: run cards (runs/*.toml) and setup models (models/*.toml).

Both are read with :mod:`tomllib`, checked key by key, converted to CLHEP units exactly once and
returned as frozen dataclasses.  Every problem raises :class:`ConfigError` whose message is one
line naming the file, the key path and the offending value, e.g.::

    models/na64mu_2022.toml: elements[3].thickness_mm = -2.0: must be > 0

Conventions
-----------
* ``schema_version`` is required at the top of every file and must equal
  :data:`fastmc.SCHEMA_VERSION`.
* Unknown keys are errors (typos must not silently fall back to defaults).
* Keys carry their unit as a suffix (``_mm``, ``_m``, ``_GeV``, ``_MeV``, ``_mrad``, ``_Tm``);
  dimensionless keys carry none.  Values are converted to internal units here and nowhere else.
* Relative paths inside a run card (``model``) are resolved against the card's folder.

Layout
------
* :mod:`.sections` — :class:`ConfigError`, the strict section reader, shared checks;
* :mod:`.model` — the setup model (:func:`load_model`);
* :mod:`.card` — the run card, all but the channels' own tables (:func:`read_run`; the entry
  point that adds them is :func:`fastmc.runcard.load_run`).

The package is a data layer: it imports no kernel (physics, transport, response, run, channels).
"""

from __future__ import annotations

from fastmc.config.card import (
    FORM_FACTORS,
    PROCESS_NAMES,
    RUN_CARD_KEYS,
    SCATTERING_MODELS,
    SCREENINGS,
    SHOWER_MODELS,
    VARIABLE_HELP,
    AdmixtureConfig,
    CardContext,
    CutConfig,
    MuonIdConfig,
    OptimiseSettings,
    PhysicsSettings,
    ReconstructionSettings,
    RunConfig,
    ShowerSettings,
    TriggerConfig,
    read_run,
    selection_variables,
)
from fastmc.config.model import (
    ELEMENT_KINDS,
    OPTIMISE_FIELDS,
    PARTICLES,
    READOUT_KINDS,
    BeamConfig,
    ElementConfig,
    ModelConfig,
    OptimiseParam,
    SpectrometerConfig,
    check_signal_target,
    load_model,
    mixture_name,
)
from fastmc.config.sections import (
    SIGNAL_MAX_MASS,
    SIGNAL_MODELS,
    ConfigError,
    Section,
    check_signal_mass,
    file_sha256,
    validate_override,
)

__all__ = [
    "RUN_CARD_KEYS",
    "CardContext",
    "Section",
    "read_run",
        "ELEMENT_KINDS",
    "FORM_FACTORS",
    "OPTIMISE_FIELDS",
    "PARTICLES",
    "PROCESS_NAMES",
    "READOUT_KINDS",
    "SCATTERING_MODELS",
    "SCREENINGS",
    "SHOWER_MODELS",
    "SIGNAL_MAX_MASS",
    "SIGNAL_MODELS",
    "VARIABLE_HELP",
    "AdmixtureConfig",
    "BeamConfig",
    "ConfigError",
    "CutConfig",
    "ElementConfig",
    "ModelConfig",
    "OptimiseParam",
    "OptimiseSettings",
    "PhysicsSettings",
    "RunConfig",
    "MuonIdConfig",
    "ReconstructionSettings",
    "ShowerSettings",
    "SpectrometerConfig",
    "TriggerConfig",
    "check_signal_mass",
    "check_signal_target",
    "file_sha256",
    "load_model",
    "mixture_name",
    "selection_variables",
    "validate_override",
]
