"""Multiple Coulomb scattering: Highland Gaussian core + single large-angle scatters.

Model ``"highland_single"`` (default) — a *mixed* algorithm in the spirit of Geant4's
WentzelVI model (V. N. Ivanchenko et al., J. Phys. Conf. Ser. 219 (2010) 032045) and of the
class-II schemes reviewed by J. M. Fernández-Varea et al., NIM B 73 (1993) 447: elastic
collisions with a polar angle below a cut ``theta_cut`` are condensed into a Gaussian, collisions
above it are sampled one by one.

Single-scattering cross section (per element i of the material, small-angle, z = 1):

    dN_i = 2 chi_ci^2 theta dtheta / (theta^2 + chi_ai^2)^2 * |F_i(p theta)|^2

* ``chi_ci^2 = 4 pi N_A r_e^2 (m_e c^2)^2 w_i Z_i (Z_i + 1) / A_i * rho L / (p beta c)^2`` — Molière's
  chi_c^2 (Lynch & Dahl, NIM B 58 (1991) 6, eq. 2: the prefactor 4 pi N_A r_e^2 m_e^2 c^4 =
  0.1569 MeV^2 cm^2/g); Z(Z+1) adds scattering on atomic electrons (Bethe 1953).  So
  N_i(> theta) = chi_ci^2 / (theta^2 + chi_ai^2): the Wentzel-screened Rutherford law.
* ``chi_ai`` — Molière's screening angle, which the Wentzel form reproduces exactly in Molière's
  small-angle theory:  chi_a^2 = chi_0^2 (1.13 + 3.76 (alpha Z / beta)^2),
  chi_0 = hbar / (p a_TF) = alpha m_e c^2 Z^(1/3) / (0.885 p c)  (Thomas-Fermi radius
  a_TF = 0.885 a_0 Z^(-1/3); Bethe 1953 eq. 21-22; Lynch & Dahl eq. 3: 2.007e-5 MeV^2 Z^(2/3)).
* ``F_i`` — nuclear form factor, |F(q)|^2 = (1 + q^2 <r^2>/12)^-n with the rms radius of a
  uniform sphere of R = 1.2 A^(1/3) fm (<r^2> = 3/5 R^2).  Static option
  ``ScatteringParams.form_factor`` ("Form factor" below): ``"geant4"`` (default, n = 2) or
  ``"exponential"`` (n = 4, the exact form factor of an exponential charge distribution).

Form factor.  The default n = 2 is the law Geant4 11.4 (G4EmStandardPhysics: WentzelVI msc +
``CoulombScat`` single scattering, exponential form-factor option, coefficient 6.937e-6 MeV^-2
A^0.54 / 2 per q^2, within 5 % of <r^2>/12 above for lead) is seen to sample for muons: with only
``CoulombScat`` active, the single-scatter tail of 160 GeV/c mu+ behind 1 X0 of lead beyond 0.3,
0.425, 0.6, 0.85, 1.2 mrad is 7.41e-3, 2.55e-3, 7.38e-4, 1.74e-4, 2.4e-5 per muon (10^6 muons),
against 7.48e-3, 2.54e-3, 7.33e-4, 1.69e-4, 3.2e-5 from the Wentzel cross section with n = 2 and
4.63e-3, 1.16e-3, 2.10e-4, 2.4e-5, 1.9e-6 with n = 4 (no free parameter; absolute normalisation
checked without form factor to < 2 %).  fastmc validates against Geant4's tables, so it follows
Geant4; n = 2 is also the conservative choice for the backgrounds (more large-angle muons).  The
real lead form factor (Fermi distribution) has its first zero near q ≈ 125 MeV and lies below
both laws there, so beyond ~5 theta_nuc the single-scatter tail is a model uncertainty of a
factor of a few (n = 4 vs n = 2 differ by 7x at 10 theta0 behind 1 X0 of lead).

Screening.  ``ScatteringParams.screening = "geant4"`` (default) multiplies Molière's chi_a^2
above by 1 + exp(-Z^2/1000), as Geant4 11.4 does (G4WentzelOKandVIxSection::InitialiseA,
ScreenRSquare; x1.51 for iron, x1.001 for lead); ``"moliere"`` keeps Molière's value.  A larger
screening angle lowers Omega, hence the core width (-1.5 % for iron at 160 GeV/c), and the rate
of single scatters just above the cut: with Molière's screening the core behind 0.5–3 m of iron
came out 3.2–3.6 % wider than Geant4's, with Geant4's 2.0–2.3 %.

Core width (static option ``ScatteringParams.core``).  ``"moliere"`` (default) — Lynch & Dahl's
variance method (NIM B 58 (1991) 6, eqs. 5-7: the variance of the single-scatter law truncated at
theta_t^2 = nu chi_a^2, nu = Omega/(2(1 - F)), Omega = chi_c^2/(1.167 chi_a^2), F = 0.98, times
(1 + nu)/(nu (1 + F^2))) evaluated with the *same* cross section as the sampled tail, i.e. including
|F_i|^2 (:func:`moliere_core_theta0`; with point nuclei it is their eq. 7 exactly, a 2 % fit to
Molière's central width).  Once theta0 > theta_nuc the form factor caps the variance, so the
width grows like sqrt(L) without Highland's logarithm.  With the default form factor and screening
the fitted core of the full transport (kicks included) agrees with Geant4 11.4 (WentzelVI + single
scattering) to +1.1 … +1.3 % behind 1, 10 and 40 X0 of lead and +1.5 … +2.6 % behind 0.5, 1.5 and
3 m of iron (``fastmc validate --suite deflection``, 2026-11-27), where the Highland core deviated
by −7 % … +9 %.  ``"highland"`` — the core is Highland's theta0 (PDG RPP 2024 eq. 34.15).
Below, theta0 stands for the chosen core width; ``model="highland"`` (pure Gaussian) always uses
Highland.

Core/tail split (documented choice).  Highland's formula (PDG RPP 2024 eq. 34.15) is Lynch &
Dahl's fit to the *central 98 %* of Molière's distribution (accurate to 11 % for
1e-3 < x/X0 < 100).  Molière's central Gaussian corresponds to the scattering variance truncated
at a polar angle of order 2 theta0 (for the Wentzel law the projected variance of the scatters
below theta_c is chi_c^2 [ln(theta_c/chi_a) - 1/2]; equating it to Molière's chi_c^2 B / 2 gives
theta_c ≈ 2.2 chi_c sqrt(B/2)).  We therefore

1. take theta_cut = K_CUT * theta0 (static constant);
2. sample a Poisson number of single scatters above theta_cut (mean lambda = sum_i N_i(> theta_cut),
   thinned by |F|^2: the Poisson process with the screened-Rutherford intensity is sampled and
   each scatter kept with probability |F|^2, which is exactly a Poisson process of intensity dN);
3. give the Gaussian the projected width sigma_g^2 = theta0^2 - V_core, where V_core is the
   projected variance of the single scatters that fall inside the region a core fit sees (polar
   angles between theta_cut and K_WIN * theta0; |F|^2 taken at the geometric mean angle), so the
   core of the total stays at the chosen core width theta0 (sigma_g ≈ 0.95-0.97 theta0).

K_CUT = 1.2, K_WIN = 2.0 were chosen (not fitted per material; with the Highland core) by comparing the fraction beyond
2, 3, 4, 6, 10 theta0 with Molière/Bethe (point nuclei) for 160 GeV/c muons in 1 and 40 X0 of lead,
1.5 m of iron and 1 mm of polystyrene (tests/reference/moliere.py).  Beyond ~4 theta0 the result
is insensitive to the split and agrees with Molière to a few %; at 2-3 theta0 it inherits the
difference between Highland's and Molière's core widths (Molière's is 5-6 % wider than Highland's
in lead, 6-8 % narrower in polystyrene at 160 GeV/c), so the fraction beyond 3 theta0 is ~15 % below
Molière in lead and within 5 % in iron and polystyrene.  A larger K_CUT (e.g. the 2.2 above) gives
a cleaner Gaussian but 20-30 % too few tracks at 3 theta0 in lead.

With finite nuclear size (the default) at 160 GeV/c, theta_nuc is 0.17 mrad in lead and 0.27 mrad
in iron, below 3 theta0 for thick slabs (1.8 mrad for 40 X0 of lead): there the single-scatter tail
beyond a few theta_nuc is suppressed by (1 + 0.05 (theta/theta_nuc)^2)^-4 and the angular
distribution is close to the Gaussian core.  ``nuclear_size=False`` (static) gives Molière's
point-nucleus tail.

The mean number of single scatters is small (~0.1-0.15), so a static cap ``N_SINGLE_MAX = 4`` on
their number is essentially never reached (P ~ lambda^5/120 < 1e-6);
``sample_scattering_info`` returns a per-muon overflow flag and :func:`overflow_probability` the
analytic probability, for the caller to count/report.

Lateral displacement: the Gaussian part uses the PDG correlated pair (RPP 2024 eqs. 34.20-21:
y = L theta0 (z1/sqrt(12) + z2/2), theta = z2 theta0, correlation sqrt(3)/2); each single
scatter happens at a uniform depth s in [0, L] and displaces by theta_x (L - s).

Randomness: the sampler takes uniforms (STYLE.md), ``u`` of shape (B, N_UNIFORMS):
columns 0-3 → four normals (x: angle/offset, y: angle/offset), column 4 → number of single
scatters (inverse Poisson CDF, survival form for float32 precision), then for each of the
N_SINGLE_MAX slots: (element+polar angle, azimuth, depth, form-factor acceptance).  The slots
are computed only for the muons with at least one candidate when ``sparse`` is given
(:func:`sample_scattering_info`; most muons have none): same columns, same law.

Smoothness: all outputs are pathwise-differentiable in pmag, beta and length_mm; the integer
draws (count, thinning) are piecewise constant, so gradients are those of the continuous parts.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.nn import sigmoid as jax_sigmoid
from jax.scipy.special import ndtri

from fastmc import units
from fastmc._pytree import pytree_dataclass, static_field

# --- model constants (sources in the module docstring) ---------------------------------------
HIGHLAND_A_MEV = 13.6 * units.MeV  # PDG RPP 2024 eq. 34.15
HIGHLAND_B = 0.038  # PDG RPP 2024 eq. 34.15
K_CUT = 1.2  # theta_cut / theta0_Highland (choice documented in the module docstring)
K_WIN = 2.0  # core window, in theta0, for the Gaussian-width reduction (module docstring)
CORES = ("moliere", "highland")  # core-width references (module docstring, "Core width")
# nuclear form-factor laws |F|² = (1 + q² <r²>/12)^-n (module docstring, "Form factor")
FORM_FACTORS = {"geant4": 2, "exponential": 4}
SCREENINGS = ("geant4", "moliere")  # screening angle (module docstring, "Screening")
G4_SCREEN_Z2 = 1e-3  # Geant4 11.4 G4WentzelOKandVIxSection::InitialiseA: ScreenRSquare ∝ 1 + exp(-0.001 Z²)
LD_F = 0.98  # Lynch & Dahl NIM B 58 (1991) 6, eq. 7: fraction F of the single-scatter distribution
LD_OMEGA_DIV = 1.167  # ibid.: Omega = chi_c^2 / (1.167 chi_a^2)
N_CORE_GL = 48  # Gauss-Legendre nodes of the form-factor variance integral (error < 1e-4, tested)
N_SINGLE_MAX = 4  # static cap on single scatters per call (P(overflow) ~ lambda^5/120, lambda ~ 0.1)
N_GAUSS_UNIFORMS = 4
N_PER_SINGLE = 4
N_UNIFORMS: int = N_GAUSS_UNIFORMS + 1 + N_PER_SINGLE * N_SINGLE_MAX

# chi_c^2 prefactor 4 pi N_A r_e^2 (m_e c^2)^2 in MeV^2 cm^2/g  (= K_bethe * m_e c^2 = 0.1569;
# Lynch & Dahl quote 0.157)
_CHI_C2_PREF = 4.0 * math.pi * units.avogadro * (units.classic_electr_radius / units.cm) ** 2 * (
    units.electron_mass_c2**2)
# Molière screening: chi_0 p = alpha m_e c^2 Z^(1/3) / 0.885 (Thomas-Fermi); 1.13 + 3.76 (alpha Z/beta)^2
_TF = 0.885
_SCREEN_A = 1.13
_SCREEN_B = 3.76
# hbar c = r_e m_e c^2 / alpha  (CODATA); nuclear radius R = 1.2 fm A^(1/3)
_HBARC_MEV_MM = units.classic_electr_radius * units.electron_mass_c2 / units.fine_structure
_FM = 1e-12 * units.mm
_R0_FM = 1.2
_TINY_U = 1e-7
# forcing of large single scatters (sample_scattering_info ``force``; a channel's
# deflection forcing, fastmc.transport.StepForcing): power of the Rutherford survival
# fraction v.  θ ≈ θ_cut/√v, so P(θ > 16 θ_cut) goes from 1/256 to 1/16 — a 4 mrad scatter behind
# a 45 mm step of the ECAL cell (θ_cut ≈ 0.25 mrad).  A proposal choice, not physics.
FORCE_ANGLE_POWER = 4.0


@pytree_dataclass
class ScatteringParams:
    """Per-material, per-element (padded) scattering constants.

    Leaves (shape (n_mat,) or (n_mat, n_el)); padded elements have ``chi_c2_coef = 0``.

    chi_c2_coef : rad² MeV² / mm — chi_ci² = chi_c2_coef * L / (p beta)²
    screen0     : MeV — chi_0 p = alpha m_e Z^(1/3) / 0.885
    screen_z2   : 3.76 (alpha Z)² (divide by beta²)
    ff_r2       : MeV⁻² — <r²>/(12 (hbar c)²), so |F|² = (1 + (p theta)² ff_r2)^-4
    X0_mm       : radiation length (mm)
    """

    chi_c2_coef: Any
    screen0: Any
    screen_z2: Any
    ff_r2: Any
    X0_mm: Any
    names: tuple[str, ...] = static_field(default=())
    nuclear_size: bool = static_field(default=True)
    k_cut: float = static_field(default=K_CUT)
    k_win: float = static_field(default=K_WIN)
    core: str = static_field(default="moliere")
    form_factor: str = static_field(default="geant4")
    screening: str = static_field(default="geant4")

    @property
    def ff_power(self) -> int:
        return FORM_FACTORS[self.form_factor]

    def device(self, dtype: Any = jnp.float32) -> ScatteringParams:
        import dataclasses

        return dataclasses.replace(
            self,
            chi_c2_coef=jnp.asarray(self.chi_c2_coef, dtype),
            screen0=jnp.asarray(self.screen0, dtype),
            screen_z2=jnp.asarray(self.screen_z2, dtype),
            ff_r2=jnp.asarray(self.ff_r2, dtype),
            X0_mm=jnp.asarray(self.X0_mm, dtype),
        )


def build_scattering_params(materials: Sequence[Any], *, nuclear_size: bool = True,
                            k_cut: float = K_CUT, k_win: float = K_WIN,
                            core: str = "moliere", form_factor: str = "geant4",
                            screening: str = "geant4") -> ScatteringParams:
    """Build float64 numpy constants from ``fastmc.materials.Material`` objects.

    ``core`` (static): reference width of the Gaussian core, ``"moliere"`` (default: Lynch & Dahl's
    variance method with the nuclear form factor) or ``"highland"`` (PDG eq. 34.15); see the module
    docstring, "Core width"."""
    if core not in CORES:
        raise ValueError(f"unknown core {core!r}; expected one of {CORES}")
    if screening not in SCREENINGS:
        raise ValueError(f"unknown screening {screening!r}; expected one of {SCREENINGS}")
    if form_factor not in FORM_FACTORS:
        raise ValueError(f"unknown form_factor {form_factor!r}; expected one of {tuple(FORM_FACTORS)}")
    if len(materials) == 0:
        raise ValueError("build_scattering_params: need at least one material")
    if not (k_win >= k_cut > 0):
        raise ValueError(f"need k_win >= k_cut > 0, got k_cut={k_cut}, k_win={k_win}")
    n_el = max(len(m.elements) for m in materials)
    shape = (len(materials), n_el)
    cc = np.zeros(shape)
    s0 = np.ones(shape)  # harmless positive padding
    sz = np.zeros(shape)
    ff = np.zeros(shape)
    x0 = np.zeros(len(materials))
    for i, m in enumerate(materials):
        wsum = sum(w for _, _, w in m.elements)
        if not (m.density > 0 and m.X0 > 0 and abs(wsum - 1.0) < 1e-3):
            raise ValueError(f"material {m.name!r}: bad density/X0/mass fractions")
        for j, (Z, A, w) in enumerate(m.elements):
            # MeV² cm²/g * g/cm³ / (mm/cm) -> MeV²/mm
            cc[i, j] = _CHI_C2_PREF * w / wsum * Z * (Z + 1) / A * m.density / 10.0
            s0[i, j] = units.fine_structure * units.electron_mass_c2 * Z ** (1.0 / 3.0) / _TF
            if screening == "geant4":  # chi_a^2 x (1 + exp(-Z^2/1000)): module docstring, "Screening"
                s0[i, j] *= math.sqrt(1.0 + math.exp(-Z * Z * G4_SCREEN_Z2))
            sz[i, j] = _SCREEN_B * (units.fine_structure * Z) ** 2
            r_mm = _R0_FM * _FM * A ** (1.0 / 3.0)
            ff[i, j] = 0.6 * r_mm**2 / 12.0 / _HBARC_MEV_MM**2
        x0[i] = m.X0 / m.density * 10.0  # g/cm² / g/cm³ = cm -> mm
    return ScatteringParams(cc, s0, sz, ff, x0, names=tuple(m.name for m in materials),
                            nuclear_size=bool(nuclear_size), k_cut=float(k_cut),
                            k_win=float(k_win), core=core, form_factor=form_factor,
                            screening=screening)


# --- Highland -------------------------------------------------------------------------------
def highland_theta0(pmag: Any, beta: Any, x_over_X0: Any) -> Any:
    """PDG RPP 2024 eq. 34.15 for charge 1: 13.6 MeV/(beta c p) sqrt(x/X0) (1 + 0.038 ln(x/(X0 beta²))).

    Works on numpy and jax arrays; returns exactly 0 for x_over_X0 = 0 (safe gradients).  The
    bracket is clipped at 0 (it would turn negative only for x/X0 < 4e-12, far outside the
    formula's range 1e-3 < x/X0 < 100).
    """
    xp = jnp if any(isinstance(a, jnp.ndarray) for a in (pmag, beta, x_over_X0)) else np
    x = xp.asarray(x_over_X0)
    pos = x > 0
    xs = xp.where(pos, x, 1.0)
    bracket = xp.maximum(1.0 + HIGHLAND_B * xp.log(xs / (beta * beta)), 0.0)
    th = HIGHLAND_A_MEV / (beta * pmag) * xp.sqrt(xs) * bracket
    return xp.where(pos, th, 0.0)


# --- helpers ----------------------------------------------------------------------------------
def _element_arrays(params: ScatteringParams, mat: Any) -> tuple[Any, Any, Any, Any, Any]:
    mat = jnp.asarray(mat, jnp.int32)
    return (params.chi_c2_coef[mat], params.screen0[mat], params.screen_z2[mat],
            params.ff_r2[mat], params.X0_mm[mat])


def _form_factor2(params: ScatteringParams, ff_r2: Any, q2: Any) -> Any:
    if not params.nuclear_size:
        return jnp.ones_like(q2)
    return (1.0 + q2 * ff_r2) ** -params.ff_power


_GL_X, _GL_W = np.polynomial.legendre.leggauss(N_CORE_GL)


def moliere_core_theta0(chi_c2: Any, chi_a2: Any, b: Any, ff_power: int = 2, rule: bool = False) -> Any:
    """Projected core width (rad) by Lynch & Dahl's variance method, with the nuclear form factor.

    ``chi_c2``, ``chi_a2``: (..., n_el) Molière chi_ci^2, chi_ai^2 of the elements (padding: chi_c2 = 0);
    ``b``: (..., n_el) = p^2 chi_ai^2 <r^2>/(12 (hbar c)^2), so |F|^2 = (1 + b t/chi_ai^2)^-ff_power at
    theta^2 = t (b = 0: point nuclei).  Lynch & Dahl (NIM B 58 (1991) 6, eqs. 5-7) truncate the
    single-scatter law at theta_t^2 = nu chi_a^2, nu = Omega/(2 (1 - F)), Omega = chi_c^2/(1.167 chi_a^2)
    (chi_a of the compound: ln chi_a^2 = sum chi_ci^2 ln chi_ai^2 / chi_c^2), i.e. theta_t^2 =
    chi_c^2 / (2.334 (1 - F)) independent of chi_a, and set
    theta0^2 = (1 + nu)/(nu (1 + F^2)) * sum_i chi_ci^2 I_i,
    I_i = int_0^{theta_t^2} t dt / (t + chi_ai^2)^2 |F_i|^2
        = int_{-inf}^{ln(theta_t^2/chi_ai^2)} sigmoid(x)^2 |F_i|^2 dx
    (x = ln(t/chi_ai^2)); with |F|^2 = 1, I = ln(1 + nu) - nu/(1 + nu) gives their eq. 7 exactly.
    For ``ff_power`` = 2 (the default, Geant4's form factor) the integral is in closed form (below);
    otherwise (or with ``rule=True``, for the tests) a fixed Gauss-Legendre rule in x (jit-safe,
    O(n_el N_CORE_GL) per muon).
    """
    xc2 = jnp.sum(chi_c2, axis=-1)
    xc2s = jnp.where(xc2 > 0, xc2, 1.0)
    ln_a2 = jnp.sum(chi_c2 * jnp.log(chi_a2), axis=-1) / xc2s
    tt2 = xc2s / (2.0 * LD_OMEGA_DIV * (1.0 - LD_F))
    nu = tt2 / jnp.exp(ln_a2)
    if ff_power == 2 and not rule:
        # |F|² = (1 + b t)^-2 makes I_i rational in t = θ²/χ_ai²: with T = θ_t²/χ_ai², by partial
        # fractions, I = (1 + b)/(1 − b)³ ln((1 + T)/(1 + bT)) − T/((1 − b)²(1 + T)) − bT/((1 − b)²(1 + bT))
        # (b = 0: Lynch & Dahl eq. 7).  b = (p χ_ai)² <r²>/(12 (ħc)²) ~ (R_nucleus/R_atom)² ~ 1e-8
        # whatever the momentum, so 1 − b has no cancellation.  Exact where the 48-node rule below
        # erred by < 1e-4, and ~25× cheaper (the rule was 2/3 of a thick material step on CPU).
        has = chi_c2 > 0
        t_hi = jnp.where(has, tt2[..., None] / jnp.where(has, chi_a2, 1.0), 1.0)
        bs = jnp.where(has, b, 0.0)
        d2 = (1.0 - bs) ** 2
        bt = bs * t_hi
        integ = ((1.0 + bs) / (d2 * (1.0 - bs)) * (jnp.log1p(t_hi) - jnp.log1p(bt))
                 - t_hi / (d2 * (1.0 + t_hi)) - bt / (d2 * (1.0 + bt)))
        th2 = (1.0 + nu) / (nu * (1.0 + LD_F * LD_F)) * jnp.sum(jnp.where(has, chi_c2 * integ, 0.0), axis=-1)
        return jnp.where(xc2 > 0, jnp.sqrt(jnp.maximum(th2, 0.0)), 0.0)
    x_hi = jnp.log(tt2[..., None] / chi_a2)  # (..., n_el)
    x_lo = jnp.minimum(x_hi, 0.0) - 14.0  # sigmoid^2 ~ e^{2x}: the rest is < e^-28
    half = 0.5 * (x_hi - x_lo)
    x = (x_lo + half)[..., None] + half[..., None] * jnp.asarray(_GL_X, x_hi.dtype)
    sig = jax_sigmoid(x)
    f = sig * sig * (1.0 + b[..., None] * jnp.exp(x)) ** -ff_power
    integ = half * jnp.sum(f * jnp.asarray(_GL_W, x_hi.dtype), axis=-1)
    th2 = (1.0 + nu) / (nu * (1.0 + LD_F * LD_F)) * jnp.sum(chi_c2 * integ, axis=-1)
    return jnp.where(xc2 > 0, jnp.sqrt(jnp.maximum(th2, 0.0)), 0.0)


def _poisson_survival(lam: Any, kmax: int) -> list[Any]:
    """[P(N > k) for k = 0..kmax] for N ~ Poisson(lam), accurate in float32 when small."""
    # series: P(N>k) = e^-lam sum_{j>k} lam^j/j!  (12 terms: exact to float64 for lam <= 1);
    # for lam > 1 use 1 - CDF (no cancellation problem there at small k).
    out = []
    emlam = jnp.exp(-lam)
    pk = emlam  # P(N = k)
    cdf = emlam
    for k in range(kmax + 1):
        term = pk * lam / (k + 1)  # P(N = k+1)
        ser = jnp.zeros_like(lam)
        t = term
        for j in range(12):
            ser = ser + t
            t = t * lam / (k + 2 + j)
        direct = jnp.maximum(1.0 - cdf, 0.0)
        s0 = -jnp.expm1(-lam) if k == 0 else None
        sk = jnp.where(lam < 1.0, ser, direct)
        out.append(s0 if k == 0 else sk)
        pk = term
        cdf = cdf + term
    return out


def _setup(params: ScatteringParams, mat: Any, pmag: Any, beta: Any, length_mm: Any) -> dict:
    """Per-muon quantities shared by sampler and overflow probability."""
    pmag = jnp.asarray(pmag)
    dtype = pmag.dtype if jnp.issubdtype(pmag.dtype, jnp.floating) else jnp.float32
    pmag = pmag.astype(dtype)
    beta = jnp.asarray(beta, dtype)
    L = jnp.broadcast_to(jnp.asarray(length_mm, dtype), pmag.shape)
    pos = L > 0
    Ls = jnp.where(pos, L, 1.0)
    cc, s0, sz, ff, x0 = _element_arrays(params, mat)
    cc = jnp.broadcast_to(cc, pmag.shape + cc.shape[-1:]).astype(dtype)
    s0 = jnp.broadcast_to(s0, cc.shape).astype(dtype)
    sz = jnp.broadcast_to(sz, cc.shape).astype(dtype)
    ff = jnp.broadcast_to(ff, cc.shape).astype(dtype)
    x0 = jnp.broadcast_to(x0, pmag.shape).astype(dtype)
    theta0 = highland_theta0(pmag, beta, Ls / x0)
    pb = pmag * beta
    chi_c2 = cc * (Ls / (pb * pb))[..., None]  # (B, n_el)
    chi_a2 = (s0 / pmag[..., None]) ** 2 * (_SCREEN_A + sz / (beta * beta)[..., None])
    if params.core == "moliere":
        bff = (pmag * pmag)[..., None] * chi_a2 * ff if params.nuclear_size else jnp.zeros_like(ff)
        theta_core = moliere_core_theta0(chi_c2, chi_a2, bff, params.ff_power)
    else:
        theta_core = theta0
    th_cut = params.k_cut * theta_core
    th_win = params.k_win * theta_core
    tc2 = (th_cut * th_cut)[..., None]
    lam_el = chi_c2 / (tc2 + chi_a2)  # Rutherford (un-thinned) counts above cut
    lam = jnp.sum(lam_el, axis=-1)
    # projected variance of scatters between theta_cut and theta_win (Wentzel law), weighted by
    # |F|^2 at the geometric mean angle: part of the core, removed from the Gaussian.
    tw2 = (th_win * th_win)[..., None]
    v_el = 0.5 * chi_c2 * (jnp.log((tw2 + chi_a2) / (tc2 + chi_a2))
                           + chi_a2 / (tw2 + chi_a2) - chi_a2 / (tc2 + chi_a2))
    q2mid = (pmag * pmag)[..., None] * (th_cut * th_win)[..., None]
    v_core = jnp.sum(v_el * _form_factor2(params, ff, q2mid), axis=-1)
    sig2 = jnp.maximum(theta_core * theta_core - v_core, 0.25 * theta_core * theta_core)
    return dict(dtype=dtype, pmag=pmag, beta=beta, L=L, Ls=Ls, pos=pos, theta0=theta0,
                theta_core=theta_core,
                chi_c2=chi_c2, chi_a2=chi_a2, ff=ff, tc2=tc2, lam_el=lam_el, lam=lam,
                sigma_g=jnp.sqrt(sig2))


def overflow_probability(params: ScatteringParams, mat: Any, pmag: Any, beta: Any,
                         length_mm: Any, model: str = "highland_single") -> Any:
    """P(number of Rutherford single-scatter candidates > N_SINGLE_MAX) per muon (analytic)."""
    if model == "highland":
        return jnp.zeros_like(jnp.asarray(pmag, jnp.float32))
    s = _setup(params, mat, pmag, beta, length_mm)
    return jnp.where(s["pos"], _poisson_survival(s["lam"], N_SINGLE_MAX)[N_SINGLE_MAX], 0.0)


def _normals(uc: Any) -> tuple[Any, Any, Any, Any]:
    """(z_x_offset, z_x_angle, z_y_offset, z_y_angle): standard normals of the clipped uniform
    columns 0-3 by inverse CDF.  (Box–Muller pairs were measured ~3x dearer on the CPU backend:
    XLA's cos/sin cost more than its rational ndtri.)"""
    z = ndtri(uc[:, :N_GAUSS_UNIFORMS])
    return z[:, 0], z[:, 1], z[:, 2], z[:, 3]


def _single_scatters(params: ScatteringParams, u: Any, uc: Any, n: Any, lam: Any, lam_el: Any, chi_a2: Any,
                     ff: Any, tc2: Any, pmag: Any, Ls: Any, forced: Any, force_sign: Any, tilt_axis: str,
                     dtype: Any) -> tuple[Any, ...]:
    """The N_SINGLE_MAX single-scatter slots of the rows given (step 2 of the module docstring).

    ``u``, ``uc`` (R, N_PER_SINGLE·N_SINGLE_MAX): the slot columns, raw and clipped; ``n`` (R,):
    the Poisson count; per-row quantities of :func:`_setup` (``lam_el``, ``chi_a2``, ``ff``: (R, n_el));
    ``forced`` None (no forcing) or (R,) bool.  Returns the sums over the accepted scatters of
    (θx, θy, θx·L(1 − depth), θy·L(1 − depth)), their number (int32) and log q/p of the forcing."""
    cand_any = lam > 0
    cum = jnp.cumsum(lam_el, axis=-1)  # (R, n_el)
    lam_safe = jnp.where(cand_any, lam, 1.0)
    n_el = lam_el.shape[-1]
    zero = jnp.zeros(n.shape, dtype)
    tx_s, ty_s, dx_s, dy_s, lr_s = zero, zero, zero, zero, zero
    n_acc = jnp.zeros(n.shape, jnp.int32)
    for k in range(N_SINGLE_MAX):
        cols = N_PER_SINGLE * k
        # element choice and polar angle from one uniform (mixture inverse CDF)
        w = uc[:, cols] * lam_safe
        idx = jnp.minimum(jnp.sum((w[:, None] >= cum).astype(jnp.int32), axis=-1), n_el - 1)
        lo = jnp.take_along_axis(cum - lam_el, idx[:, None], axis=-1)[:, 0]
        le = jnp.take_along_axis(lam_el, idx[:, None], axis=-1)[:, 0]
        v = jnp.clip((w - lo) / jnp.where(le > 0, le, 1.0), _TINY_U, 1.0)
        if forced is not None:
            v = jnp.where(forced, jnp.maximum(v**FORCE_ANGLE_POWER, 1e-30), v)
        a2 = jnp.take_along_axis(chi_a2, idx[:, None], axis=-1)[:, 0]
        ffk = jnp.take_along_axis(ff, idx[:, None], axis=-1)[:, 0]
        # N(>theta) ∝ 1/(theta^2 + a^2): theta^2 = (theta_cut^2 + a^2)/v - a^2
        th2 = (tc2 + a2) / v - a2
        th2 = jnp.minimum(th2, 1.0)  # small-angle model: at most 1 rad (never reached with FF)
        th = jnp.sqrt(jnp.maximum(th2, 0.0))
        u_phi = uc[:, cols + 1]
        if forced is not None:
            u_phi, lr_phi = half_circle_azimuth(u_phi, forced, tilt_axis, force_sign)
        phi = 2.0 * math.pi * u_phi
        depth = uc[:, cols + 2]  # fraction of L at which the scatter happens
        cand = (k < n) & cand_any
        keep = cand
        if params.nuclear_size:
            q2 = pmag * pmag * th2
            f2 = _form_factor2(params, ffk, q2)
            f2q = f2 ** (1.0 / 3.0)
            keep = keep & (u[:, cols + 3] < (jnp.where(forced, f2q, f2) if forced is not None else f2))
        if forced is not None:
            # log q/p: angle law (v^A has density (1/A) v^(1/A − 1)), azimuth (2 on the side), FF
            lr = -math.log(FORCE_ANGLE_POWER) + (1.0 / FORCE_ANGLE_POWER - 1.0) * jnp.log(v) + lr_phi
            if params.nuclear_size:
                lr = lr + jnp.where(keep, jnp.log(f2q) - jnp.log(jnp.maximum(f2, 1e-37)),
                                    jnp.log1p(-jnp.minimum(f2q, 1.0 - 1e-7))
                                    - jnp.log1p(-jnp.minimum(f2, 1.0 - 1e-7)))
            lr_s = lr_s + jnp.where(cand, lr, 0.0)
        kf = keep.astype(dtype)
        tx = kf * th * jnp.cos(phi)
        ty = kf * th * jnp.sin(phi)
        tx_s = tx_s + tx
        ty_s = ty_s + ty
        dx_s = dx_s + tx * Ls * (1.0 - depth)
        dy_s = dy_s + ty * Ls * (1.0 - depth)
        n_acc = n_acc + keep.astype(jnp.int32)
    return tx_s, ty_s, dx_s, dy_s, n_acc, lr_s


SPARSE_SINGLE = 16
"""Pieces of the compacted single-scatter slots (``sparse`` of :func:`sample_scattering_info`):
the muons with a candidate (P = 1 − e^{−λ} ≈ 0.1–0.15 in the 2022 setup) are gathered in pieces of
B/16 rows; the cost follows the number of such muons, the law does not depend on it."""


def _sparse_single(pieces: int, row_fn: Any, n: Any, rows: tuple[Any, ...], out_dtypes: tuple[Any, ...]):
    """``row_fn(n, *rows)`` (-> per-row outputs of dtypes ``out_dtypes``) for the rows with n ≥ 1
    only, zero elsewhere: those rows gathered in index order, ``cap`` = B/``pieces`` rows at a
    time, a ``lax.scan`` over the static ⌈B/cap⌉ pieces whose body runs (``lax.cond`` on a scalar)
    only while rows are left; the pieces' results scattered back once.  Exact for any count (each row keeps
    its own uniforms), as fastmc.transport.step._sparse_slots."""
    bsz = n.shape[0]
    cap = max(1, min(bsz, bsz // pieces))
    n_pieces = -(-bsz // cap)
    has = n > 0
    count = jnp.sum(has)
    order = jnp.nonzero(has, size=n_pieces * cap, fill_value=bsz)[0].reshape(n_pieces, cap)

    def piece(_, xs):
        p, idx = xs

        def run(idx):
            n_b = jnp.where(idx < bsz, jnp.take(n, idx, axis=0, mode="clip"), 0)
            return tuple(row_fn(n_b, *(None if a is None else jnp.take(a, idx, axis=0, mode="clip") for a in rows)))

        def skip(idx):
            return tuple(jnp.zeros((cap,), dt) for dt in out_dtypes)

        return None, jax.lax.cond(p * cap < count, run, skip, idx)

    _, ys = jax.lax.scan(piece, None, (jnp.arange(n_pieces), order))
    flat = order.reshape(-1)
    out = tuple(jnp.zeros((bsz,), dt).at[flat].set(y.reshape(-1), mode="drop") for dt, y in zip(out_dtypes, ys))
    return out


def sample_scattering_info(params: ScatteringParams, mat: Any, pmag: Any, beta: Any,
                           length_mm: Any, u: Any, model: str = "highland_single",
                           lever: tuple[Any, Any] | None = None, tilt: Any = None, tilt_axis: str = "x",
                           force: Any = None, force_sign: Any = None, sparse: int | None = None) -> dict:
    """As :func:`sample_scattering`, returning a dict with also ``n_single`` (accepted single
    scatters, int32), ``overflow`` (bool: the Poisson draw exceeded N_SINGLE_MAX and was capped),
    ``theta0`` (Highland), ``theta_core`` (the core-width reference of ``params.core``; Highland
    for ``model="highland"``), ``sigma_core`` (width of the Gaussian part) and ``gauss_angle``
    (the Gaussian part of the angle change in projection ``tilt_axis``).

    ``tilt`` (B,) rad⁻¹ (importance sampling, :mod:`fastmc.response` ``DeflectBias``): the
    Gaussian angle in projection ``tilt_axis`` is drawn from N(tilt·σ², σ²) instead of N(0, σ²)
    (its standard normal shifted by tilt·σ; the displacement follows through the same normal).
    The caller carries the likelihood ratio, which needs only ``gauss_angle`` and σ².

    ``force`` (B,) ∈ {0, 1} with ``force_sign`` (B,) ±1 (same bias): where 1, each single-scatter
    candidate's polar angle is drawn with v → v^FORCE_ANGLE_POWER (v the Rutherford survival
    fraction within the chosen element, so larger angles), kept with probability |F|^(2/3)
    instead of |F|², and its azimuth drawn on the half circle of side ``force_sign`` in
    projection ``tilt_axis``.  ``force_lr`` (B,) returns log q/p of that proposal at the realised
    candidates for every muon (forced or not), for the caller's mixture weight.

    ``sparse`` (static, JAX only; e.g. :data:`SPARSE_SINGLE`): compute the single-scatter slots
    only for the muons with at least one candidate, in that many pieces of the batch
    (:func:`_sparse_single`) — same columns, same law, cost ∝ the number of such muons.  None:
    every slot for every muon (NumPy-compatible)."""
    if model not in ("highland", "highland_single"):
        raise ValueError(f"unknown scattering model {model!r}")
    s = _setup(params, mat, pmag, beta, length_mm)
    dtype, pos, Ls = s["dtype"], s["pos"], s["Ls"]
    u = jnp.asarray(u, dtype)
    uc = jnp.clip(u, _TINY_U, 1.0 - _TINY_U)
    z_xo, z_xa, z_yo, z_ya = _normals(uc)
    sig = s["theta0"] if model == "highland" else s["sigma_g"]
    if tilt is not None:
        shift = jnp.asarray(tilt, dtype) * sig
        if tilt_axis == "x":
            z_xa = z_xa + shift
        else:
            z_ya = z_ya + shift
    dthx = sig * z_xa
    dthy = sig * z_ya
    gauss_angle = dthx if tilt_axis == "x" else dthy
    if lever is None:  # scattering uniform along the step: PDG RPP 2024 eqs. 34.20-21
        c_ind, c_ang = 1.0 / math.sqrt(12.0), 0.5
    else:
        # scattering of density w(z) along the step (``lever`` = (∫w(1 − z), ∫w(1 − z)²), z in
        # units of L, ∫w = 1): Cov(x, θ) = L σ² m1, Var x = L² σ² m2 (uniform w: 1/2, 1/3)
        m1, m2 = lever
        c_ind, c_ang = jnp.sqrt(jnp.maximum(m2 - m1 * m1, 0.0)), m1
    dx = Ls * sig * (z_xo * c_ind + c_ang * z_xa)
    dy = Ls * sig * (z_yo * c_ind + c_ang * z_ya)
    n_acc = jnp.zeros(dthx.shape, jnp.int32)
    overflow = jnp.zeros(dthx.shape, bool)
    force_lr = jnp.zeros(dthx.shape, dtype)
    if model == "highland_single":
        lam = s["lam"]
        surv = _poisson_survival(lam, N_SINGLE_MAX)
        ucount = u[:, N_GAUSS_UNIFORMS]
        n = sum((ucount < surv[k]).astype(jnp.int32) for k in range(N_SINGLE_MAX))
        overflow = ucount < surv[N_SINGLE_MAX]
        forced = None if force is None else jnp.asarray(force, dtype) > 0
        sign = None if force is None else jnp.broadcast_to(jnp.asarray(force_sign), dthx.shape)
        c0 = N_GAUSS_UNIFORMS + 1

        def rows_fn(n_r, u_r, uc_r, lam_r, lam_el_r, a2_r, ff_r, tc2_r, p_r, ls_r, forced_r, sign_r):
            return _single_scatters(params, u_r, uc_r, n_r, lam_r, lam_el_r, a2_r, ff_r, tc2_r, p_r, ls_r,
                                    forced_r, sign_r, tilt_axis, dtype)

        rows = (u[:, c0:], uc[:, c0:], lam, s["lam_el"], s["chi_a2"], s["ff"], s["tc2"][:, 0], s["pmag"], Ls,
                forced, sign)
        if sparse is None:
            tx, ty, sx, sy, n_acc, force_lr = rows_fn(n, *rows)
        else:
            tx, ty, sx, sy, n_acc, force_lr = _sparse_single(sparse, rows_fn, n, rows,
                                                             (dtype,) * 4 + (jnp.int32, dtype))
        dthx, dthy, dx, dy = dthx + tx, dthy + ty, dx + sx, dy + sy
    zero = jnp.zeros_like(dthx)
    return dict(
        dtheta_x=jnp.where(pos, dthx, zero), dtheta_y=jnp.where(pos, dthy, zero),
        dx=jnp.where(pos, dx, zero), dy=jnp.where(pos, dy, zero),
        n_single=jnp.where(pos, n_acc, 0), overflow=pos & overflow,
        theta0=jnp.where(pos, s["theta0"], zero),
        theta_core=jnp.where(pos, s["theta0"] if model == "highland" else s["theta_core"], zero),
        sigma_core=jnp.where(pos, sig, zero),
        gauss_angle=jnp.where(pos, gauss_angle, zero),
        force_lr=jnp.where(pos, force_lr, zero) if model == "highland_single" and force is not None else zero,
    )


def half_circle_azimuth(u: Any, forced: Any, axis: str, sign: Any) -> tuple[Any, Any]:
    """Azimuth uniform ``u`` (turns) of a forced deflection, and log q/p of that proposal.

    Where ``forced``, ``u`` is mapped onto the half circle that turns the muon towards ``sign``
    (±1) in projection ``axis``; the proposal density there is 2 (0 on the other half).  Returns
    (u', log q/p at u') — log 2 or −inf, evaluated for every entry, forced or not.  Shapes
    broadcast (``sign`` per muon, ``u`` per muon or per muon and slot)."""
    centre = (0.0 if axis == "x" else 0.25) + jnp.where(jnp.asarray(sign) > 0, 0.0, 0.5)
    centre = jnp.reshape(centre, jnp.shape(centre) + (1,) * (jnp.ndim(u) - jnp.ndim(centre)))
    u = jnp.where(forced, jnp.mod(centre + 0.5 * (u - 0.5), 1.0), u)
    helpful = jnp.cos(2.0 * math.pi * (u - centre)) > 0.0
    return u, jnp.where(helpful, math.log(2.0), -jnp.inf)


def sample_scattering(params: ScatteringParams, mat: Any, pmag: Any, beta: Any, length_mm: Any,
                      u: Any, model: str = "highland_single") -> tuple[Any, Any, Any, Any]:
    """-> (dtheta_x, dtheta_y, dx, dy) at the exit of a slab of ``length_mm`` of material ``mat``.

    Projected angle changes (rad) and lateral displacements (mm), for muons of momentum ``pmag``
    (MeV/c, shape (B,)) and velocity ``beta``; ``u`` of shape (B, N_UNIFORMS) in (0, 1).
    ``model`` (static): ``"highland"`` — correlated Gaussian angle + displacement (PDG eqs.
    34.15, 34.20-21); ``"highland_single"`` — Gaussian core + single large-angle scatters (module
    docstring).  length_mm = 0 gives exactly zero.  Use :func:`sample_scattering_info` for the
    per-muon cap-overflow flag, or :func:`overflow_probability`.
    """
    r = sample_scattering_info(params, mat, pmag, beta, length_mm, u, model)
    return r["dtheta_x"], r["dtheta_y"], r["dx"], r["dy"]


__all__ = [
    "N_UNIFORMS", "N_SINGLE_MAX", "K_CUT", "K_WIN", "ScatteringParams", "build_scattering_params",
    "highland_theta0", "moliere_core_theta0", "CORES", "sample_scattering", "sample_scattering_info",
    "overflow_probability",
]
