"""Independent Molière reference for projected multiple-scattering angles (tests only).

numpy/scipy only; shares no code with :mod:`fastmc.physics.scattering`.  Constants are the
numerical ones quoted in the literature (not derived from fastmc.units) on purpose.

Theory (point-like nuclei)
--------------------------
Molière's theory in Bethe's formulation (H. A. Bethe, Phys. Rev. 89 (1953) 1256) and the
practical formulas of G. R. Lynch and O. I. Dahl, NIM B 58 (1991) 6, eqs. (2)-(6)
(also W. T. Scott, Rev. Mod. Phys. 35 (1963) 231):

    chi_c^2 = 0.157 [MeV^2 cm^2/g] * sum_i w_i Z_i (Z_i+1) / A_i * X[g/cm^2] * z^2 / (p beta)^2
    chi_a^2 = 2.007e-5 [MeV^2] Z^(2/3) (1 + 3.34 (Z z alpha / beta)^2) / p^2
    ln chi_a^2 (mixture) = sum_i w_i Z_i(Z_i+1)/A_i ln chi_ai^2 / sum_i w_i Z_i(Z_i+1)/A_i
    Omega = chi_c^2 / (1.167 chi_a^2),   B - ln B = ln Omega

Bethe's expansion in the reduced angle theta/(chi_c sqrt(B)) gives, for one projection
(Bethe 1953 §6, projected distribution; the 1D cosine transform of the same characteristic
function), with phi = theta_x / (chi_c sqrt(B)):

    f(phi) = sum_n f_n(phi) / B^n,
    f_n(phi) = 1/(pi n!) int_0^inf cos(phi u) exp(-u^2/4) [(u^2/4) ln(u^2/4)]^n du

so that f_0 = exp(-phi^2)/sqrt(pi), and the two-sided tail beyond phi0 is

    P(|phi| > phi0) = 1 - 2/pi sum_n 1/(n! B^n) int_0^inf sin(phi0 u)/u exp(-u^2/4)[...]^n du.

We keep n = 0, 1, 2 (Bethe's f0 + f1/B + f2/B^2).

Single-scattering tail with nuclear size
----------------------------------------
For the nuclear-size test we also provide the expected number of single scatters above a space
angle theta, computed by direct numerical quadrature of the Wentzel-screened Rutherford cross
section times an exponential-charge-distribution form factor |F(q)|^2 = (1 + q^2 <r^2>/12)^-n
with <r^2> = 3/5 R^2, R = 1.2 A^(1/3) fm (uniform-sphere rms radius), q = p theta; the
power of the form factor is an argument (fastmc's default law is (1 + q^2 <r^2>/12)^-2).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import integrate, special

ALPHA = 1.0 / 137.035999084
HBARC_MEV_FM = 197.3269804
CHI_C2_COEF = 0.157  # MeV^2 cm^2 / g, Lynch & Dahl (1991) eq. (2)
CHI_A2_COEF = 2.007e-5  # MeV^2, Lynch & Dahl (1991) eq. (3)
CHI_A2_COUL = 3.34  # Lynch & Dahl (1991) eq. (3)


@dataclass(frozen=True)
class MoliereParams:
    chi_c2: float  # rad^2
    chi_a2: float  # rad^2 (mixture, log-averaged)
    omega: float
    b: float
    B: float


def moliere_params(elements: Sequence[tuple[int, float, float]], density_g_cm3: float,
                   thickness_mm: float, p_mev: float, beta: float, z: int = 1) -> MoliereParams:
    """Molière chi_c^2, chi_a^2, b, B for a slab; elements as (Z, A, mass fraction)."""
    X = density_g_cm3 * thickness_mm / 10.0  # g/cm^2
    pb = p_mev * beta
    wzz = np.array([w * Z * (Z + 1) / A for Z, A, w in elements])
    chi_c2 = CHI_C2_COEF * wzz.sum() * X * z * z / pb**2
    ln_chi_a2 = np.array([
        math.log(CHI_A2_COEF * Z ** (2.0 / 3.0) * (1.0 + CHI_A2_COUL * (Z * z * ALPHA / beta) ** 2)
                 / p_mev**2)
        for Z, A, w in elements])
    chi_a2 = math.exp((wzz * ln_chi_a2).sum() / wzz.sum())
    omega = chi_c2 / (1.167 * chi_a2)
    b = math.log(omega)
    if b < 1.5:
        raise ValueError(f"Molière theory needs Omega >~ 20 (b > 3); got b={b:g}")
    # B - ln B = b, Newton from B = b + ln b
    B = b + math.log(b)
    for _ in range(50):
        B -= (B - math.log(B) - b) / (1.0 - 1.0 / B)
    return MoliereParams(chi_c2, chi_a2, omega, b, B)


def _g(n: int, u: np.ndarray) -> np.ndarray:
    x = 0.25 * u * u
    with np.errstate(divide="ignore", invalid="ignore"):
        lx = np.where(x > 0, np.log(np.where(x > 0, x, 1.0)), 0.0)
    return np.exp(-x) * (x * lx) ** n / math.factorial(n)


_UMAX = 14.0  # exp(-u^2/4) < 1e-21 beyond


def reduced_projected_pdf(phi: float, B: float, n_terms: int = 3) -> float:
    """f(phi) per unit phi, phi = theta_x / (chi_c sqrt(B)); Bethe's f0 + f1/B + f2/B^2."""
    tot = 0.0
    for n in range(n_terms):
        val, _ = integrate.quad(lambda u: _g(n, u), 0.0, _UMAX, weight="cos", wvar=phi, limit=400)
        tot += val / math.pi / B**n
    return tot


def reduced_two_sided_tail(phi0: float, B: float, n_terms: int = 3) -> float:
    """P(|phi| > phi0) for one projection."""
    inside = 0.0
    for n in range(n_terms):
        if n == 0:
            val = 0.5 * math.pi * math.erf(phi0)
        else:
            val, _ = integrate.quad(lambda u: _g(n, u) / u, 1e-12, _UMAX, weight="sin", wvar=phi0,
                                    limit=400)
        inside += 2.0 / math.pi * val / B**n
    return 1.0 - inside


def projected_tail_fraction(params: MoliereParams, theta_x: float, n_terms: int = 3) -> float:
    """Fraction of tracks with |theta_x| > theta_x (one projection), Molière/Bethe."""
    return reduced_two_sided_tail(theta_x / math.sqrt(params.chi_c2 * params.B), params.B, n_terms)


def projected_pdf(params: MoliereParams, theta_x: float, n_terms: int = 3) -> float:
    s = math.sqrt(params.chi_c2 * params.B)
    return reduced_projected_pdf(theta_x / s, params.B, n_terms) / s


def highland_theta0(p_mev: float, beta: float, x_over_X0: float, z: int = 1) -> float:
    """PDG RPP 2024 eq. (34.15)."""
    return 13.6 / (beta * p_mev) * abs(z) * math.sqrt(x_over_X0) * (
        1.0 + 0.038 * math.log(x_over_X0 * z * z / beta**2))


def single_scatter_count_above(elements: Sequence[tuple[int, float, float]], density_g_cm3: float,
                               thickness_mm: float, p_mev: float, beta: float, theta: float,
                               nuclear_size: bool = True, ff_power: int = 2) -> float:
    """Expected number of single scatters with space angle > theta (quadrature, small angle).

    |F|^2 = (1 + q^2 <r^2>/12)^-ff_power (2: the law Geant4 11.4 samples, fastmc's default; 4: the
    exponential charge distribution).

    dN = sum_i 2 chi_ci^2 t dt / (t^2 + chi_ai^2)^2 |F_i(p t)|^2 with each element's own
    (Lynch-Dahl) screening angle; chi_ci^2 as in moliere_params restricted to element i.
    """
    X = density_g_cm3 * thickness_mm / 10.0
    pb = p_mev * beta
    tot = 0.0
    for Z, A, w in elements:
        cc2 = CHI_C2_COEF * w * Z * (Z + 1) / A * X / pb**2
        a2 = CHI_A2_COEF * Z ** (2.0 / 3.0) * (1.0 + CHI_A2_COUL * (Z * ALPHA / beta) ** 2) / p_mev**2
        R_fm = 1.2 * A ** (1.0 / 3.0)
        r2_over_12 = 0.6 * R_fm**2 / 12.0 / HBARC_MEV_FM**2  # MeV^-2

        def integrand(s: float) -> float:  # s = ln t
            t = math.exp(s)
            ff = (1.0 + (p_mev * t) ** 2 * r2_over_12) ** -ff_power if nuclear_size else 1.0
            return 2.0 * cc2 * t * t / (t * t + a2) ** 2 * ff

        val, _ = integrate.quad(integrand, math.log(theta), math.log(theta) + 40.0, limit=400)
        tot += val
    return tot


__all__ = ["MoliereParams", "moliere_params", "reduced_projected_pdf", "reduced_two_sided_tail",
           "projected_tail_fraction", "projected_pdf", "highland_theta0",
           "single_scatter_count_above", "special"]
