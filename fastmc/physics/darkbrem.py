"""Dark bremsstrahlung μN → μN X of a new light boson X, in the Weizsäcker–Williams approximation.

Models (``SIGNAL_MODELS``), all coupled to the muon with strength g and decaying invisibly:

* ``z_prime`` — the vector Z′ of L_μ − L_τ (coupling g_Z′); invisible width Z′ → ν_μν̄_μ, ν_τν̄_τ,
  g²M/(24π) per flavour, competing with Z′ → μ⁺μ⁻, g²M/(12π)(1 + 2m²/M²)√(1 − 4m²/M²) above
  2m_μ (e.g. Altmannshofer et al., PRD 89 (2014) 095033; the widths of DMG4's ``DarkZ``), so the
  yield carries BR(Z′ → νν̄) = 1/(1 + (1 + 2r)√(1 − 4r)), r = m_μ²/M²;
* ``dark_photon`` — a vector coupled to the muon with g = εe (invisible decay A′ → χχ̄, BR = 1);
* ``scalar`` — a muon-philic scalar S (coupling g_S), invisible decay, BR = 1.

Cross section (WW; D. Kirpichnikov et al., PRD 104 (2021) 076012, arXiv:2107.13297; the same
formulas as coded in the DMG4 package, M. Bondi et al., CPC 269 (2021) 108129, arXiv:2101.12192,
App. A eqs. 16–17, whose authors found the muon WW totals within 1–2 % of the exact tree-level
calculation).  With x = E_X/E, θ the X angle, M its mass, m the muon mass, E the muon total energy:

    d²σ/(dx dcosθ) = (α² g²/2π) E² x β_X (1 − x) χ(x, θ) |A|² / U²,
    U = E² x θ² + M² (1 − x)/x + m² x,      β_X = √(1 − M²/(x E)²),
    vector: |A|² = 2(2 − 2x + x²)/(1 − x) + 4(M² + 2m²)/U² · (−U x + M²(1 − x) + m² x²),
    scalar: |A|² = x²/(1 − x)           + 2(M² − 4m²)/U² · (−U x + M²(1 − x) + m² x²),

(negative |A|², possible for the scalar far off peak, is set to 0 as in DMG4).  In the massless-
lepton limit the vector formula is eq. A12 of Bjorken, Essig, Schuster & Toro, PRD 80 (2009)
075018 (BEST), and its angle integral is BEST eq. A15, 4α³ε²χβ(1 − x + x²/3)/U(x, 0) (tested).

Photon flux (BEST eqs. A17–A19; Y.-S. Tsai, RMP 46 (1974) 815):

    χ = ∫_{t_min}^{t_max} dt (t − t_min)/t² G₂(t),   t_min = U²/(4E²(1 − x)²),  t_max = M² + m²,
    G₂ = Z² (a²t/(1 + a²t))² (1/(1 + t/d))²      (elastic: atomic screening × nuclear size),
    a = 111 Z^{−1/3}/m_e,  d = 0.164 GeV² A^{−2/3},
in closed form (:func:`photon_flux`); the inelastic term of BEST eq. A19 (≈ 1/Z of it, 1.2 % on
lead) is left out, as in DMG4's muon code.

Numerics (numpy, float64, once per mass and material): the angle is integrated in
v = E²xθ²/U ∈ [0, v_max] (θ ≤ θ_max = 0.3 rad, DMG4's limit), in which 1/U² dθ² becomes a
constant: d²σ/(dx dv) = (α² g²/4π) β_X (1 − x) χ |A|² / U(x, 0) — smooth, 48-point
Gauss–Legendre.  x runs over [M/E, 1 − m/E].

Checks (tests/test_signal.py): a vector of vanishing mass with g = e is a photon, and ∫x dσ/dx
reproduces the published muon-bremsstrahlung coefficient b_brems of lead (PUMAS, PHYSICS.md §4)
3 % low, as expected without the atomic-electron and inelastic terms; the massless-lepton limit
is BEST eq. A15; χ and the angular integral match direct quadrature; σ(Pb, 160 GeV) for ε = 1e-4:
135.6, 60.3, 9.50, 0.107 pb at M = 1, 10, 100, 1000 MeV.

Device tables (:class:`EmissionTables`, a pytree, for one mass; the shapes do not depend on the
mass, so a mass scan never recompiles): macroscopic Σ_X(E) for g = 1 [1/mm], the inverse CDF
x(E, u) and the conditional inverse CDF v(E, ζ, u) (ζ = the position of x in [x_min, x_max]).
:func:`emit` samples (x, θ, φ) from them; the recoil muon gets E′ = (1 − x)E and the transverse
momentum −p_T,X (the nucleus' recoil, |t| ≪ U, is neglected as in WW).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from fastmc import units as u
from fastmc._pytree import pytree_dataclass

SIGNAL_MODELS = ("z_prime", "dark_photon", "scalar")
THETA_MAX = 0.3  # rad, DMG4's integration limit (DarkZ.cc); the integrand is negligible beyond
N_EMIT_UNIFORMS = 3  # x, v, φ

# Table grids
E_MIN, E_MAX, N_E = 2.0 * u.GeV, 400.0 * u.GeV, 25
N_U_X = 1025  # inverse CDF of x: uniform u grid
N_ZETA, N_U_V = 65, 33  # conditional inverse CDF of v
_NX_HALF = 200  # x grid for the integration: log-spaced from each end
_GL_V = np.polynomial.legendre.leggauss(48)

M_P = u.proton_mass_c2
MU_P = 2.79  # proton magnetic moment [μ_N], BEST eq. A19
T_INEL = 0.71 * u.GeV**2  # dipole form-factor scale, BEST eq. A19


def form_factor_g2(t: np.ndarray, Z: float, A: float, inelastic: bool = True) -> np.ndarray:
    """G₂(t) of BEST eqs. A18 (elastic) and A19 (inelastic, optional); t in MeV²."""
    t_a, t_d = _t_scales(Z, A)
    el = Z * Z * (t / (t_a + t)) ** 2 / (1.0 + t / t_d) ** 2
    if not inelastic:
        return el
    ap2 = (773.0 * Z ** (-2.0 / 3.0) / u.electron_mass_c2) ** 2
    inel = Z * (ap2 * t / (1.0 + ap2 * t)) ** 2 * ((1.0 + t * (MU_P**2 - 1.0) / (4.0 * M_P**2))
                                                    / (1.0 + t / T_INEL) ** 4) ** 2
    return el + inel


def _t_scales(Z: float, A: float) -> tuple[float, float]:
    """t_a = 1/a² (atomic screening, a = 111 Z^{−1/3}/m_e) and t_d = d (nuclear size) in MeV²."""
    return (u.electron_mass_c2 / (111.0 * Z ** (-1.0 / 3.0))) ** 2, 0.164 * u.GeV**2 * A ** (-2.0 / 3.0)


def photon_flux(t_min: np.ndarray, t_max: float, Z: float, A: float) -> np.ndarray:
    """χ of the elastic form factor in closed form (0 where t_min ≥ t_max), any shape.

    The integral of (t − t_min)/t² · Z² t²/(t_a + t)² · t_d²/(t_d + t)² by partial fractions (the
    form coded in DMG4, ``DarkMatter::chi``); checked against :func:`photon_flux_numeric` in the
    tests.  The inelastic term of BEST eq. A19 (≈ 1/Z of the elastic one: 1.2 % on lead) is
    neglected, as in DMG4's muon cross sections.
    """
    t_min = np.asarray(t_min, dtype=np.float64)
    ok = t_min < t_max
    tm = np.where(ok, t_min, 0.5 * t_max)
    t_a, t_d = _t_scales(Z, A)
    a = (t_a - t_d) * (t_a + t_d + 2.0 * t_max) * (t_max - tm) / ((t_a + t_max) * (t_d + t_max))
    b = (t_a + t_d + 2.0 * tm) * np.log((t_a + t_max) * (t_d + tm) / ((t_d + t_max) * (t_a + tm)))
    chi = -Z * Z * t_d * t_d * (a + b) / (t_a - t_d) ** 3
    return np.where(ok, chi, 0.0)


def photon_flux_numeric(t_min: np.ndarray, t_max: float, Z: float, A: float, inelastic: bool = False,
                        n: int = 400) -> np.ndarray:
    """χ by Gauss–Legendre quadrature in ln t (reference for tests; optional inelastic term)."""
    t_min = np.atleast_1d(np.asarray(t_min, dtype=np.float64))
    ok = t_min < t_max
    lo = np.log(np.where(ok, t_min, 0.5 * t_max))
    hi = math.log(t_max)
    xg, wg = np.polynomial.legendre.leggauss(n)
    half = 0.5 * (hi - lo)
    t = np.exp((0.5 * (hi + lo))[:, None] + half[:, None] * xg)
    f = (t - np.where(ok, t_min, 0.0)[:, None]) / t * form_factor_g2(t, Z, A, inelastic)
    return np.where(ok, half * (f @ wg), 0.0)


def _amplitude2(model: str, x, U, M2: float) -> np.ndarray:
    m2 = u.muon_mass_c2**2
    tail = -U * x + M2 * (1.0 - x) + m2 * x * x
    if model == "scalar":
        a = x * x / (1.0 - x) + 2.0 * (M2 - 4.0 * m2) / (U * U) * tail
    else:
        a = 2.0 * (2.0 - 2.0 * x + x * x) / (1.0 - x) + 4.0 * (M2 + 2.0 * m2) / (U * U) * tail
    return np.maximum(a, 0.0)


def x_limits(etot: np.ndarray | float, mass: float) -> tuple[Any, Any]:
    """Kinematic range of x = E_X/E: [M/E, 1 − m_μ/E]."""
    return mass / etot, 1.0 - u.muon_mass_c2 / etot


def x_grid(etot: float, mass: float) -> np.ndarray:
    """Integration grid in x, log-spaced towards both ends of [x_min, x_max]."""
    lo, hi = x_limits(etot, mass)
    mid = 0.5 * (lo + hi)
    left = lo + np.geomspace(1e-9 * (hi - lo), mid - lo, _NX_HALF)
    right = hi - np.geomspace(1e-9 * (hi - lo), hi - mid, _NX_HALF)[::-1]
    return np.unique(np.concatenate([[lo], left, right[1:], [hi]]))


def d2sigma_dx_dv(model: str, etot: float, x: np.ndarray, v: np.ndarray, mass: float, Z: float, A: float) -> np.ndarray:
    """d²σ/(dx dv) [mm²] for g = 1 on one nucleus (Z, A); x (n,) or (n, 1), v broadcastable."""
    M2, m2 = mass * mass, u.muon_mass_c2**2
    x = np.asarray(x, dtype=np.float64)
    u0 = M2 * (1.0 - x) / x + m2 * x
    U = u0 / (1.0 - v)
    beta = np.sqrt(np.maximum(1.0 - M2 / (x * etot) ** 2, 0.0))
    t_min = U * U / (4.0 * etot**2 * (1.0 - x) ** 2)
    chi = photon_flux(t_min, M2 + m2, Z, A)
    alpha = u.fine_structure
    val = alpha**2 / (4.0 * math.pi) * beta * (1.0 - x) * chi * _amplitude2(model, x, U, M2) / u0
    return val * u.hbarc**2


def v_max(etot, x, mass: float):
    """Upper end of v for θ ≤ THETA_MAX."""
    a = etot**2 * x * THETA_MAX**2
    u0 = mass * mass * (1.0 - x) / x + u.muon_mass_c2**2 * x
    return a / (a + u0)


def dsigma_dx(model: str, etot: float, x: np.ndarray, mass: float, Z: float, A: float) -> np.ndarray:
    """dσ/dx [mm²] for g = 1: d²σ/(dx dv) integrated over v ∈ [0, v_max(x)]."""
    x = np.atleast_1d(np.asarray(x, dtype=np.float64))
    vm = v_max(etot, x, mass)
    xg, wg = _GL_V
    v = 0.5 * vm[:, None] * (xg + 1.0)
    f = d2sigma_dx_dv(model, etot, x[:, None], v, mass, Z, A)
    return 0.5 * vm * (f @ wg)


def sigma_total(model: str, etot: float, mass: float, Z: float, A: float) -> float:
    """σ(E) [mm²] for g = 1 (trapezoid over :func:`x_grid`)."""
    x = x_grid(etot, mass)
    return float(np.trapezoid(dsigma_dx(model, etot, x, mass, Z, A), x))


def invisible_branching(model: str, mass: float) -> float:
    """BR(X → invisible) (module docstring)."""
    if model != "z_prime":
        return 1.0
    r = (u.muon_mass_c2 / mass) ** 2
    if r >= 0.25:
        return 1.0
    return 1.0 / (1.0 + (1.0 + 2.0 * r) * math.sqrt(1.0 - 4.0 * r))


def material_components(material) -> list[tuple[float, float, float]]:
    """(Z, A, n [1/mm³]) of each element of a :class:`fastmc.materials.Material`."""
    out = []
    for z, a, w in material.elements:
        n_cm3 = material.density * w * u.avogadro / a  # atoms / cm³
        out.append((float(z), float(a), n_cm3 * 1e-3))  # 1/mm³
    return out


@pytree_dataclass
class EmissionTables:
    """Device tables of one boson model and mass in one material (module docstring)."""

    ln_e0: Any  # ln E of the first grid point
    dln_e: Any
    log_xs: Any  # (N_E,) ln Σ_X(E) [1/mm] for g = 1
    x_of_u: Any  # (N_E, N_U_X)
    v_of_u: Any  # (N_E, N_ZETA, N_U_V)
    mass: Any  # MeV


def build_emission_tables(model: str, mass: float, material, *, dtype=None, n_e: int = N_E) -> EmissionTables:
    """Tabulate Σ_X(E), x(E, u) and v(E, ζ, u) for ``model`` and ``mass`` (MeV) in ``material``.

    Grids start above the emission threshold: E ≥ max(E_MIN, 2 (M + m_μ)).
    """
    import jax.numpy as jnp

    if model not in SIGNAL_MODELS:
        raise ValueError(f"unknown signal model {model!r} (known: {', '.join(SIGNAL_MODELS)})")
    comps = material_components(material)
    e_lo = max(E_MIN, 2.0 * (mass + u.muon_mass_c2))
    energies = np.geomspace(e_lo, E_MAX, n_e)
    log_xs = np.empty(n_e)
    x_of_u = np.empty((n_e, N_U_X))
    v_of_u = np.empty((n_e, N_ZETA, N_U_V))
    u_x = np.linspace(0.0, 1.0, N_U_X)
    u_v = np.linspace(0.0, 1.0, N_U_V)
    xg, wg = _GL_V
    for i, e in enumerate(energies):
        x = x_grid(e, mass)
        pdf = sum(n * dsigma_dx(model, e, x, mass, z, a) for z, a, n in comps)
        cdf = np.concatenate([[0.0], np.cumsum(0.5 * (pdf[1:] + pdf[:-1]) * np.diff(x))])
        log_xs[i] = math.log(cdf[-1])
        x_of_u[i] = np.interp(u_x, cdf / cdf[-1], x)
        lo, hi = x_limits(e, mass)
        xz = lo + (hi - lo) * np.linspace(0.0, 1.0, N_ZETA)
        xz = np.clip(xz, lo + 1e-7 * (hi - lo), hi - 1e-7 * (hi - lo))
        vm = v_max(e, xz, mass)
        # fine v grid per ζ: Gauss–Legendre nodes are not a CDF grid; use 257 uniform points
        vv = vm[:, None] * np.linspace(0.0, 1.0, 257)[None, :]
        f = sum(n * d2sigma_dx_dv(model, e, xz[:, None], vv, mass, z, a) for z, a, n in comps)
        trapezia = 0.5 * (f[:, 1:] + f[:, :-1]) * np.diff(vv, axis=1)
        c = np.concatenate([np.zeros((N_ZETA, 1)), np.cumsum(trapezia, axis=1)],
                           axis=1)
        for j in range(N_ZETA):
            if c[j, -1] > 0:
                v_of_u[i, j] = np.interp(u_v, c[j] / c[j, -1], vv[j])
            else:  # no phase space (χ = 0 at the endpoint): forward emission
                v_of_u[i, j] = 0.0
    del xg, wg
    dt = dtype or jnp.result_type(float)
    return EmissionTables(
        ln_e0=jnp.asarray(math.log(energies[0]), dt),
        dln_e=jnp.asarray(math.log(energies[1] / energies[0]), dt),
        log_xs=jnp.asarray(log_xs, dt),
        x_of_u=jnp.asarray(x_of_u, dt),
        v_of_u=jnp.asarray(v_of_u, dt),
        mass=jnp.asarray(mass, dt),
    )


def _energy_coord(tab: EmissionTables, etot):
    import jax.numpy as jnp

    n_e = tab.log_xs.shape[0]
    f = jnp.clip((jnp.log(etot) - tab.ln_e0) / tab.dln_e, 0.0, n_e - 1.000001)
    i0 = jnp.floor(f).astype(jnp.int32)
    return i0, f - i0


def macroscopic_xs(tab: EmissionTables, etot):
    """Σ_X(E) [1/mm] for g = 1 (log-linear in ln E); 0 below the tabulated threshold."""
    import jax.numpy as jnp

    i0, w = _energy_coord(tab, etot)
    lx = tab.log_xs[i0] * (1.0 - w) + tab.log_xs[i0 + 1] * w
    return jnp.where(jnp.log(etot) >= tab.ln_e0, jnp.exp(lx), 0.0)


def sample_emission_from_u(tab: EmissionTables, etot, uu):
    """(x, θ, φ) from uniforms ``uu`` (B, 3) at total energy ``etot`` (B,)."""
    import jax.numpy as jnp

    i0, w = _energy_coord(tab, etot)
    n_u = tab.x_of_u.shape[1]
    fu = uu[:, 0] * (n_u - 1)
    k0 = jnp.clip(jnp.floor(fu).astype(jnp.int32), 0, n_u - 2)
    wu = fu - k0

    def lerp_u(row):
        return tab.x_of_u[row, k0] * (1.0 - wu) + tab.x_of_u[row, k0 + 1] * wu

    x = lerp_u(i0) * (1.0 - w) + lerp_u(i0 + 1) * w
    lo, hi = x_limits(etot, tab.mass)
    x = jnp.clip(x, lo, hi)
    n_z, n_v = tab.v_of_u.shape[1], tab.v_of_u.shape[2]
    fz = jnp.clip((x - lo) / jnp.maximum(hi - lo, 1e-30), 0.0, 1.0) * (n_z - 1)
    z0 = jnp.clip(jnp.floor(fz).astype(jnp.int32), 0, n_z - 2)
    wz = fz - z0
    fv = uu[:, 1] * (n_v - 1)
    l0 = jnp.clip(jnp.floor(fv).astype(jnp.int32), 0, n_v - 2)
    wv = fv - l0
    v = jnp.zeros_like(x)
    for de, we in ((0, 1.0 - w), (1, w)):
        for dz, wzz in ((0, 1.0 - wz), (1, wz)):
            for dv, wvv in ((0, 1.0 - wv), (1, wv)):
                v = v + we * wzz * wvv * tab.v_of_u[i0 + de, z0 + dz, l0 + dv]
    m2 = u.muon_mass_c2**2
    u0 = tab.mass**2 * (1.0 - x) / x + m2 * x
    v = jnp.clip(v, 0.0, 1.0 - 1e-6)
    arg = u0 / (etot**2 * x) * v / (1.0 - v)
    pos = arg > 0  # sqrt only of positive values: finite gradients at v = 0 (soft mode)
    theta = jnp.where(pos, jnp.sqrt(jnp.where(pos, arg, 1.0)), 0.0)
    phi = 2.0 * math.pi * uu[:, 2]
    return x, theta, phi


def emit(tab: EmissionTables, state: dict, mat, path_mm, uu) -> dict:
    """Force one emission on every live muon of ``state`` (inside :func:`transport`).

    Adds log(Σ_X(E)·path) to ``log_w`` (the probability of an emission in the element for g = 1,
    thin target), replaces the muon energy by (1 − x)E and its slopes by the recoil; records
    ``signal_x`` and ``signal_e_x`` (MeV) for studies.  ``mat`` is unused (the tables belong to
    the target's material) but kept for a uniform kernel signature.
    """
    import jax.numpy as jnp

    del mat
    m = u.muon_mass_c2
    etot = state["ekin"] + m
    x, theta, phi = sample_emission_from_u(tab, etot, uu)
    xs = macroscopic_xs(tab, etot)
    alive = state["alive"] & (xs > 0)
    log_p = jnp.log(jnp.maximum(xs * path_mm, 1e-37))
    new = dict(state)
    recoil = x / (1.0 - x) * theta  # muon angle: p_T,μ = −p_T,X = −xEθ, |p_μ| ≈ (1 − x)E
    new["tx"] = jnp.where(alive, state["tx"] - recoil * jnp.cos(phi), state["tx"])
    new["ty"] = jnp.where(alive, state["ty"] - recoil * jnp.sin(phi), state["ty"])
    new["ekin"] = jnp.where(alive, jnp.maximum((1.0 - x) * etot - m, 0.0), state["ekin"])
    new["log_w"] = state["log_w"] + jnp.where(alive, log_p, -jnp.inf)
    new["signal_x"] = jnp.where(alive, x, 0.0)
    new["signal_e_x"] = jnp.where(alive, x * etot, 0.0)
    return new
