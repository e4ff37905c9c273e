"""Small helpers shared by the energy-loss processes (unit conversions, quadrature nodes)."""

from __future__ import annotations

import numpy as np

from fastmc import units


def atoms_per_gram(a_gmol: float) -> float:
    """N_A / A [1/g]."""
    return units.avogadro / a_gmol


def gauss_legendre01(n: int) -> tuple[np.ndarray, np.ndarray]:
    """Gauss–Legendre nodes and weights on [0, 1]."""
    x, w = np.polynomial.legendre.leggauss(n)
    return 0.5 * (x + 1.0), 0.5 * w


CM2 = units.cm * units.cm  # mm² per cm²: cross sections in mm² are converted to cm² by /CM2
