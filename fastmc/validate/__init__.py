"""``fastmc validate``: fastmc against the Geant4 reference tables of calibration/ (DESIGN.md §6.2).

For every configuration (HDF5 group) of a suite's table, fastmc is run on the same configuration
(particle, kinetic energy, layers) with ``round(n_events × stat_scale)`` primaries, histogrammed
with the table's own bin edges, and compared bin by bin:

* per-bin pulls (p_fastmc − p_G4)/σ with probabilities *per generated event* (under/overflow are
  bins too) and the pooled Poisson variance σ² = p̂ (1/N_G4 + 1/N_fastmc),
  p̂ = (c_G4 + c_fastmc)/(N_G4 + N_fastmc), which stays defined for empty bins;
* χ²/ndf over the bins with enough entries, and its p-value;
* tail fractions P(X > x) (two-proportion z-test and ratio), medians and Gaussian core widths
  (errors by Poisson bootstrap of both histograms), a binned Kolmogorov distance for the decays.

Which of these decide PASS/FAIL, and with which tolerance and reason, is read from
``calibration/tolerances.toml``.  The comparison machinery (:func:`compare_bins`,
:func:`tail_check`, :func:`median_check`, :func:`core_width_check`, :func:`chi2_check`) is pure
numpy on :class:`Hist` objects, so it is testable on synthetic histograms.

fastmc homogenises sampling cells (a repeating pattern of layers becomes one mixture,
:func:`homogenise_layers`); Geant4 tracked the real layers.  The report says so for every
configuration where it happens.

Modules, each importing only those above it:

* :mod:`fastmc.validate.statistics`: histograms and the comparison statistics (numpy only);
* :mod:`fastmc.validate.tables`: reading the reference tables and the tolerances;
* :mod:`fastmc.validate.report`: the summary text, ``summary.json`` and the plots;
* :mod:`fastmc.validate.simulate`: running fastmc on a table's configuration (JAX, lazily);
* :mod:`fastmc.validate.suites`: :func:`run_validation`, which ties them together.
"""

from __future__ import annotations

from fastmc.validate.report import format_summary, format_timing, write_report

# `name as name`: importable from here as before the split, and outside __all__ as before
# (cli.py imports jsonable; calibration/README.md cites gaussian_core_width).
from fastmc.validate.report import jsonable as jsonable
from fastmc.validate.simulate import homogenise_layers
from fastmc.validate.simulate import simulate_decay as simulate_decay
from fastmc.validate.simulate import simulate_transport as simulate_transport
from fastmc.validate.statistics import INFO_MIN_COUNT as INFO_MIN_COUNT
from fastmc.validate.statistics import N_BOOTSTRAP as N_BOOTSTRAP
from fastmc.validate.statistics import (
    Hist,
    chi2_check,
    chi2_sf,
    compare_bins,
    core_width_check,
    hist_from_samples,
    median_check,
    tail_check,
)
from fastmc.validate.statistics import binned_ks as binned_ks
from fastmc.validate.statistics import binned_median as binned_median
from fastmc.validate.statistics import gaussian_core_width as gaussian_core_width
from fastmc.validate.statistics import tail_fraction as tail_fraction
from fastmc.validate.suites import run_validation
from fastmc.validate.tables import CHECK_KINDS as CHECK_KINDS
from fastmc.validate.tables import SUITES, Group, TableError, default_tables_dir, load_tables, load_tolerances

__all__ = [
    "SUITES",
    "Group",
    "Hist",
    "TableError",
    "chi2_check",
    "chi2_sf",
    "compare_bins",
    "core_width_check",
    "default_tables_dir",
    "format_summary",
    "format_timing",
    "hist_from_samples",
    "homogenise_layers",
    "load_tables",
    "load_tolerances",
    "median_check",
    "run_validation",
    "tail_check",
    "write_report",
]
