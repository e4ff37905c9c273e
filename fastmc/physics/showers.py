"""Parameterised showers of the energy a muon transfers in a hard interaction, and leading neutral hadrons.

Used by the detector response when a run card sets ``[showers] model = "profile"`` (otherwise every
transfer is deposited where it happens, as before).  The hardest transfer of each slab (above
``threshold``) starts a shower at its depth; the shower's energy is shared among that slab and the
slabs after it by a longitudinal profile measured in radiation lengths (EM part) and interaction
lengths (hadronic part), accumulated through the slab sequence (gaps hold air and are skipped; a
leak out of one calorimeter enters the next slab downstream).  What is left after the last slab
escapes.

Lateral containment (``[showers] lateral = true``, the default): each slab keeps the share of the
shower's radial profile inside its rectangular active area (``half_width_x_mm``/``half_width_y_mm``
or the square ``half_width_mm``, centred on the nominal trajectory + (``x_mm``, ``y_mm``)); the
shower axis is the line along z through the muon's true position at the exit face of the slab where
the shower starts (the muon's angle, ≲ 1 mrad, is neglected).  What falls outside is lost — the lateral
non-hermeticity (a lateral leak is not followed into the slabs downstream).  Both profiles have the
form f(r) = 2 r R²/(r² + R²)², whose share inside radius r is r²/(r² + R²) and whose 2D density
R²/(π(r² + R²)²) integrates in closed form over a square (:func:`square_containment`, corners of
[x/A·atan(y/A) + y/B·atan(x/B)]/(2π), A = √(x² + R²), B = √(y² + R²); checked against scipy).
- EM: the GFLASH radial profile for homogeneous media (Grindhammer & Peters, hep-ex/0001020, §3.3
  and App. A; the module constants below), f = p·f_C + (1 − p)·f_T, radii in Molière radii
  R_M = E_s X0/E_c of the slab the shower starts in (PDG RPP 2024 §34.4.4), functions of τ = t/T.
  The containment is evaluated at τ = 1 and 2.5 (``LATERAL_TAUS``), taken linear in depth through
  them, and averaged exactly over each slab's part of the (fluctuated) Gamma profile with its first
  moment (α/β)·P(α + 1, βt) (:func:`depth_averaged_containment`).  Accuracy (tests): the two-node
  line gives 0.95–1.07 of the exact depth-averaged lateral leakage of a whole shower, but only
  ≈ 0.2–0.7 of the (small) leakage of its first 1.5 T — a slab holding only the start of a shower
  is credited slightly too much; the leakage itself is ≈ 0.4 % in a ±100 mm lead aperture.
- Hadronic (and the π⁰ part of a hadronic shower): one radius, R = r95·λ_I/√19 with 95 % of the
  energy within r95 = ``hadron_r95_lambda`` λ_I (≈ 1 λ_I: PDG RPP 2024 "Calorimetry" §35.9.2;
  Wigmans, "Calorimetry" (2nd ed., OUP 2017) ch. 2), λ_I of the slab the shower starts in.

EM showers (bremsstrahlung photons, pairs, knock-ons): the GFLASH parametrisation
(G. Grindhammer & S. Peters, hep-ex/0001020, eqs. 7–12 and App. A.1; Grindhammer, Rudowicz &
Peters, NIM A 290 (1990) 469; the values of Geant4's GFlash ``GVFlashHomoShowerTuning``):
a Gamma profile dE/dt = E β(βt)^(α−1) e^(−βt)/Γ(α) in t = depth/X0 with per-shower correlated
log-normal T (= (α−1)/β, the maximum) and α, y = E/E_c:

    ⟨ln T⟩ = ln(ln y − 0.812),           σ(ln T) = 1/(−1.4 + 1.26 ln y),
    ⟨ln α⟩ = ln(0.81 + (0.458 + 2.26/Z) ln y),  σ(ln α) = 1/(−0.58 + 0.86 ln y),
    ρ(ln T, ln α) = 0.705 − 0.023 ln y,

for the homogenised medium of the slab the shower starts in (Z_eff mass-weighted, as GFLASH's
sampling description does; E_c = 610 MeV/(Z_eff + 1.24), PDG RPP 2024 §34.4.4 for solids).

Hadronic showers (photonuclear): the two-component profile of Bock, Hansl-Kozanecka & Shah,
NIM 186 (1981) 533, with the parameters used by Kulchitsky & Vinogradov, hep-ex/9903019, eq. 1
(E in GeV, depth x from the shower start):

    dE/dx ∝ w (x/X0)^(a−1) e^(−b x/X0) + (1 − w)(x/λ_I)^(a−1) e^(−d x/λ_I),
    a = 0.786 + 0.427 ln E,  b = 0.29,  d = 0.978,  w = 1.032 − 0.159 ln E  (w clipped to [0, 1]).

The first term is the EM (π⁰) part, fully visible; the second the hadronic part, seen with the
card's ``h_over_e`` (the h/e response ratio of a non-compensating sampling calorimeter).  Checked
against PHYSICS.md §6 (tests): ≈ 1 % of a 160 GeV shower behind 7 λ_I of iron, ≈ 2e-4 behind 13 λ_I.

Leading neutral hadron: with probability ``leading_neutral`` (card input, reported per unit like
the kaon fraction: no measurement was found) the hadronic system of a photonuclear interaction is
one neutral hadron (n, K⁰_L) carrying a fraction z ∈ [z_min, 1] of ν (uniform; z_min = 0.8 is the
LDMX photonuclear-DQM definition of "a single hard neutral hadron", ldmx-sw PhotoNuclearDQM) and a
soft remainder (1 − z)ν that showers at once.  The neutral hadron leaves the interaction point at
an angle p_T/(zν) to the muon (p_T ~ p_T e^{−2p_T/⟨p_T⟩}, azimuth uniform) and crosses the slabs
downstream; a slab it misses (outside its square aperture ``half_width_mm``) does not count.
It interacts after an exponential number of interaction lengths (each slab's own λ_I) and
showers there (hadronic profile); if it gets through every slab it meets, or past their sides,
it escapes unseen — the punch-through and lateral non-hermeticity of the calorimeter channel.

Leading charged hadron: given no leading neutral, with probability ``leading_charged`` (card input,
approx. 0.02: no measurement was found, a free parameter like ``leading_neutral``) one charged
hadron (π±, K±, p) takes z ∈ [z_min, 1] of ν (uniform) and the rest showers at once.  It follows
the muon's line (its angle p_T/zν ≲ 10 mrad is neglected next to the apertures) through every slab
downstream, depositing the minimum-ionising dE/dx of each (Bethe–Bloch at βγ = 3.5, PDG RPP 2024
§34.2.3; the relativistic rise, ≲ 1.5×, is neglected), until it interacts after an exponential
number of interaction lengths and showers there with what it has left (hadronic profile).  If it
gets through the slabs before the downstream spectrometer (probability e^{−L/λ_I}, L from the
interaction point) it is an extra charged track there of momentum ≈ zν — the selection variable
``extra_tracks_p_out`` (fastmc.reconstruct).
"""

from __future__ import annotations

from typing import Any

from fastmc import units as u
from fastmc._pytree import pytree_dataclass, static_field
from fastmc.physics.ionisation import bethe_dedx

EC_SOLID_MEV = 610.0  # PDG RPP 2024 §34.4.4: E_c = 610 MeV/(Z + 1.24) for solids
EC_Z_OFFSET = 1.24
ES_MEV = 21.2052  # PDG RPP 2024 §34.4.4, eq. 34.37: E_s = m_e c² √(4π/α), R_M = X0 E_s/E_c
MIP_BETA_GAMMA = 3.5  # PDG RPP 2024 §34.2.3: minimum ionisation at βγ ≈ 3–3.5
# GFLASH radial profile, homogeneous media (Grindhammer & Peters, hep-ex/0001020, §3.3 and App. A;
# coefficient values of Geant4's GFlash GVFlashHomoShowerTuning), E in GeV, τ = t/T:
#   R_C = z1 + z2 τ,  z1 = 0.0251 + 0.00319 ln E,  z2 = 0.1162 − 0.000381 Z
#   R_T = k1 [e^{k3(τ − k2)} + e^{k4(τ − k2)}],  k1 = 0.659 − 0.00309 Z,  k2 = 0.645,  k3 = −2.59,
#         k4 = 0.3585 + 0.0412 ln E
#   p = p1 exp[(p2 − τ)/p3 − e^{(p2 − τ)/p3}],  p1 = 2.632 − 0.00094 Z,  p2 = 0.401 + 0.00187 Z,
#         p3 = 1.313 − 0.0686 ln E
RC_Z1, RC_Z1E, RC_Z2, RC_Z2Z = 0.0251, 0.00319, 0.1162, -0.000381
RT_K1, RT_K1Z, RT_K2, RT_K3, RT_K4, RT_K4E = 0.659, -0.00309, 0.645, -2.59, 0.3585, 0.0412
P_P1, P_P1Z, P_P2, P_P2Z, P_P3, P_P3E = 2.632, -0.00094, 0.401, 0.00187, 1.313, -0.0686
# depths (in units of the shower maximum T) where the EM lateral containment is evaluated: with the
# linear depth model below, (1, 2.5) reproduces the exact depth-averaged leakage of a whole shower
# within 0.95–1.07 for Z = 26–82 and apertures of 1.3–17 R_M at 10–100 GeV; (1, 2): 0.75–0.89
LATERAL_TAUS = (1.0, 2.5)
SQRT19 = 4.358898943540674  # containment r²/(r² + R²) = 95 % at r = √19 R
PROC_BREMS, PROC_PAIR, PROC_PHOTONUCLEAR = 1, 2, 3  # order of fastmc.physics tables.processes


@pytree_dataclass
class ShowerParams:
    """Device arrays for the shower response: per material, and the card's settings."""
    x0: Any  # (n_mat,) radiation length [mm]
    lam: Any  # (n_mat,) nuclear interaction length [mm]
    z_eff: Any  # (n_mat,) mass-weighted Z
    threshold: Any  # MeV: hardest transfers above it shower
    h_over_e: Any
    leading_neutral: Any  # P(one neutral hadron carries z ≥ z_min of a photonuclear transfer)
    z_min: Any
    neutral_pt: Any  # MeV, mean transverse momentum of the leading neutral hadron
    r_moliere: Any  # (n_mat,) Molière radius [mm]
    hadron_r95: Any  # 95 % lateral containment radius of hadronic showers [λ_I]
    leading_charged: Any  # P(one charged hadron carries z ≥ z_min of a photonuclear transfer | no leading neutral)
    dedx_mip: Any  # (n_mat,) minimum-ionising dE/dx [MeV/mm] (a punch-through hadron's deposits)
    # the P(α, x) table of gamma_cdf as a leaf: an argument of the compiled program, not a 0.94 MB
    # constant embedded once per call site (compile time)
    gamma_table: Any = None
    lateral: bool = static_field(default=True)  # lateral containment in the slabs' square apertures


def moliere_radius_mm(material) -> float:
    """R_M = E_s·X0/E_c (PDG RPP 2024 §34.4.4, eq. 34.37; E_s = 21.2052 MeV), with the
    E_c = 610 MeV/(Z_eff + 1.24) of the homogenised material used by the longitudinal profile."""
    z_eff = sum(w * z for z, _, w in material.elements)
    return ES_MEV * material.X0_mm / (EC_SOLID_MEV / (z_eff + EC_Z_OFFSET))


def mip_dedx_mm(material) -> float:
    """Minimum-ionising dE/dx [MeV/mm] at nominal density: Bethe–Bloch at βγ = 3.5 (the minimum
    lies at βγ ≈ 3–3.5, PDG RPP 2024 §34.2.3)."""
    import math


    etot = u.muon_mass_c2 * math.sqrt(1.0 + MIP_BETA_GAMMA**2)  # any singly charged particle at that βγ
    return float(bethe_dedx(material, etot)) * material.density / 10.0  # MeV cm²/g → MeV/mm


def build_shower_params(materials, settings, dtype=None) -> ShowerParams:
    import jax.numpy as jnp

    dt = dtype or jnp.result_type(float)
    z_eff = [sum(w * z for z, _, w in m.elements) for m in materials]
    return ShowerParams(
        x0=jnp.asarray([m.X0_mm for m in materials], dt),
        lam=jnp.asarray([m.lambda_I_mm for m in materials], dt),
        z_eff=jnp.asarray(z_eff, dt),
        threshold=jnp.asarray(settings.threshold, dt),
        h_over_e=jnp.asarray(settings.h_over_e, dt),
        leading_neutral=jnp.asarray(settings.leading_neutral, dt),
        z_min=jnp.asarray(settings.z_min, dt),
        neutral_pt=jnp.asarray(settings.neutral_pt, dt),
        r_moliere=jnp.asarray([moliere_radius_mm(m) for m in materials], dt),
        hadron_r95=jnp.asarray(settings.hadron_r95_lambda, dt),
        leading_charged=jnp.asarray(settings.leading_charged, dt),
        dedx_mip=jnp.asarray([mip_dedx_mm(m) for m in materials], dt),
        gamma_table=jnp.asarray(_gamma_table(), dt),
        lateral=bool(settings.lateral),
    )


def gflash_parameters(e_mev, z_eff, n1, n2):
    """Per-shower (α, β) of the GFLASH EM profile from two standard normals (module docstring)."""
    import jax.numpy as jnp

    ec = EC_SOLID_MEV / (z_eff + EC_Z_OFFSET)
    ln_y = jnp.log(jnp.maximum(e_mev / ec, 20.0))  # the fits start at a few hundred MeV in lead
    mean_ln_t = jnp.log(ln_y - 0.812)
    mean_ln_a = jnp.log(0.81 + (0.458 + 2.26 / z_eff) * ln_y)
    s_t = 1.0 / (-1.4 + 1.26 * ln_y)
    s_a = 1.0 / (-0.58 + 0.86 * ln_y)
    rho = 0.705 - 0.023 * ln_y
    c1, c2 = jnp.sqrt((1.0 + rho) / 2.0), jnp.sqrt((1.0 - rho) / 2.0)
    t = jnp.exp(mean_ln_t + s_t * (c1 * n1 + c2 * n2))
    alpha = jnp.maximum(jnp.exp(mean_ln_a + s_a * (c1 * n1 - c2 * n2)), 1.1)
    return alpha, (alpha - 1.0) / jnp.maximum(t, 0.1)


def bock_parameters(e_mev):
    """(a, b, d, w) of the Bock hadronic profile (module docstring), E in MeV."""
    import jax.numpy as jnp

    ln_e = jnp.log(jnp.maximum(e_mev / u.GeV, 1.0))
    return 0.786 + 0.427 * ln_e, 0.29, 0.978, jnp.clip(1.032 - 0.159 * ln_e, 0.0, 1.0)


def bock_em_share(e_mev, x0, lam):
    """Share of the energy in the EM term of the Bock profile (its integral over the total)."""
    import jax.numpy as jnp

    a, b, d, w = bock_parameters(e_mev)
    em = w * x0 * jnp.exp(-a * jnp.log(b))
    had = (1.0 - w) * lam * jnp.exp(-a * jnp.log(d))
    return em / (em + had)


def bock_cdf(e_mev, t_x0, s_lam, em_share):
    """Fraction of a hadronic shower deposited before depth (t X0, s λ_I) from its start."""
    a, b, d, _ = bock_parameters(e_mev)
    return em_share * gamma_cdf(a, b, t_x0) + (1.0 - em_share) * gamma_cdf(a, d, s_lam)


# Regularised lower incomplete gamma P(α, x) by table: jax's gammainc costs ~1 µs per value on a
# CPU, and the response evaluates it for every (event, source slab, slab boundary).  Bilinear in
# (α, √x) on α ∈ [0.75, 16], x ∈ [0, 144]; P = 1 beyond (for α ≤ 16, P(α, 144) > 1 − 1e-40).
# Max |error| < 1e-3 (tests/test_showers.py), far below the profiles' own accuracy.
_A0, _A1, _NA = 0.75, 16.0, 245
_U1, _NU = 12.0, 961


def _gamma_table():
    import functools

    @functools.lru_cache(maxsize=1)
    def build():
        import jax
        import numpy as np
        from jax.scipy.special import gammainc

        a = np.linspace(_A0, _A1, _NA)
        x = np.linspace(0.0, _U1, _NU) ** 2
        with jax.ensure_compile_time_eval(), jax.default_device(jax.devices("cpu")[0]):  # also under jit
            tab = np.asarray(gammainc(a[:, None].astype(np.float32), x[None, :].astype(np.float32)), dtype=np.float64)
        tab[:, 0] = 0.0
        return tab

    return build()


def gamma_cdf(alpha, beta, t, tab=None):
    """P(α, β·t) for t ≥ 0 (0 for t ≤ 0): the CDF of a Gamma(α, rate β) profile, by table
    (``tab``: :attr:`ShowerParams.gamma_table`, the same table passed as an array; default: the
    module's, a constant of the compiled program)."""
    import jax.numpy as jnp

    tab = jnp.asarray(_gamma_table(), dtype=jnp.result_type(float)) if tab is None else tab
    fa = jnp.clip((alpha - _A0) / (_A1 - _A0) * (_NA - 1), 0.0, _NA - 1.000001)
    ia = jnp.floor(fa).astype(jnp.int32)
    wa = fa - ia
    bt = beta * t
    pos = bt > 0.0  # sqrt only of positive depths: a finite gradient (zero) at and below the start
    fu = jnp.where(pos, jnp.sqrt(jnp.where(pos, bt, 1.0)), 0.0) / _U1 * (_NU - 1)
    beyond = fu >= _NU - 1
    fu = jnp.minimum(fu, _NU - 1.000001)
    iu = jnp.floor(fu).astype(jnp.int32)
    wu = fu - iu
    p = ((1 - wa) * ((1 - wu) * tab[ia, iu] + wu * tab[ia, iu + 1])
         + wa * ((1 - wu) * tab[ia + 1, iu] + wu * tab[ia + 1, iu + 1]))
    return jnp.where(beyond, 1.0, p)


def em_leakage_fraction(e_mev, z_eff, depth_x0) -> Any:
    """Mean fraction of an EM shower beyond ``depth_x0`` (average GFLASH profile, no fluctuation)."""
    import jax.numpy as jnp

    alpha, beta = gflash_parameters(jnp.asarray(e_mev), z_eff, 0.0, 0.0)
    return 1.0 - gamma_cdf(alpha, beta, depth_x0)


def gflash_radial(tau, e_mev, z_eff):
    """(R_C, R_T, p) of the GFLASH radial profile at depth τ = t/T, in Molière radii (module
    constants): f(r) = p·f_C(r) + (1 − p)·f_T(r), f_i(r) = 2 r R_i²/(r² + R_i²)²."""
    import jax.numpy as jnp

    ln_e = jnp.log(jnp.maximum(e_mev / u.GeV, 1e-3))
    r_c = RC_Z1 + RC_Z1E * ln_e + (RC_Z2 + RC_Z2Z * z_eff) * tau
    k4 = RT_K4 + RT_K4E * ln_e
    dt = tau - RT_K2
    r_t = (RT_K1 + RT_K1Z * z_eff) * (jnp.exp(RT_K3 * dt) + jnp.exp(k4 * dt))
    q = (P_P2 + P_P2Z * z_eff - tau) / (P_P3 + P_P3E * ln_e)
    p = jnp.clip((P_P1 + P_P1Z * z_eff) * jnp.exp(q - jnp.exp(q)), 0.0, 1.0)
    return r_c, r_t, p


def disc_containment(radius, r):
    """Share of f(r) = 2 r R²/(r² + R²)² inside radius ``r``: r²/(r² + R²)."""
    return r * r / (r * r + radius * radius)


def _corner(x, y, radius):
    """∫₀ˣ∫₀ʸ R²/(π(u² + v² + R²)²) dv du = [x/A·atan(y/A) + y/B·atan(x/B)]/(2π),
    A = √(x² + R²), B = √(y² + R²) (odd in x and in y)."""
    import jax.numpy as jnp

    a = jnp.sqrt(x * x + radius * radius)
    b = jnp.sqrt(y * y + radius * radius)
    return (x / a * jnp.arctan(y / a) + y / b * jnp.arctan(x / b)) / (2.0 * jnp.pi)


def square_containment(radius, half_width, x0, y0, half_width_y=None):
    """Share of the 2D density R²/(π(r² + R²)²) (radial profile 2 r R²/(r² + R²)², centred at the
    origin) inside the square |x − x0| ≤ a, |y − y0| ≤ a (a rectangle with ``half_width_y`` given):
    closed form, the sum over the corners of ± the antiderivative :func:`_corner`.  Same length
    unit for every argument."""
    hy = half_width if half_width_y is None else half_width_y
    x1, x2 = x0 - half_width, x0 + half_width
    y1, y2 = y0 - hy, y0 + hy
    return (_corner(x2, y2, radius) - _corner(x1, y2, radius) - _corner(x2, y1, radius)
            + _corner(x1, y1, radius))


def em_square_containment(tau, e_mev, z_eff, r_moliere, half_width, x0, y0, half_width_y=None):
    """Share of the GFLASH radial profile at depth τ = t/T inside a square aperture (a rectangle
    with ``half_width_y``; lengths in the unit of ``r_moliere``; (x0, y0): its centre relative to
    the shower axis)."""
    r_c, r_t, p = gflash_radial(tau, e_mev, z_eff)
    return (p * square_containment(r_c * r_moliere, half_width, x0, y0, half_width_y)
            + (1.0 - p) * square_containment(r_t * r_moliere, half_width, x0, y0, half_width_y))


def hadron_lateral_radius(lam_mm, r95_lambda):
    """R of a hadronic radial profile 2 r R²/(r² + R²)² that contains 95 % within r95·λ_I."""
    return r95_lambda * lam_mm / SQRT19


def gamma_moment(alpha, beta, t, tab=None):
    """∫₀ᵗ s·g(s) ds of the Gamma(α, rate β) density g: (α/β)·P(α + 1, βt) (by the same table)."""
    return alpha / beta * gamma_cdf(alpha + 1.0, beta, t, tab)


def depth_averaged_containment(c1, c2, t1, t2, dcdf, dmoment):
    """∫ C(t) g(t) dt over a depth interval for the containment C linear in depth through
    (t1, c1) and (t2, c2): (c1 − s·t1)·ΔG + s·ΔM with s = (c2 − c1)/(t2 − t1), ΔG and ΔM the
    interval's increments of the profile's CDF and first moment (:func:`gamma_moment`); clipped to
    [0, ΔG] (a line extrapolated far from its nodes may leave [0, 1])."""
    import jax.numpy as jnp

    s = (c2 - c1) / (t2 - t1)
    return jnp.clip((c1 - s * t1) * dcdf + s * dmoment, 0.0, dcdf)


def hadronic_leakage_fraction(e_mev, depth_mm, x0_mm, lam_mm) -> Any:
    """Mean fraction of a hadronic shower beyond ``depth_mm`` of one material (Bock profile)."""
    share = bock_em_share(e_mev, x0_mm, lam_mm)
    return 1.0 - bock_cdf(e_mev, depth_mm / x0_mm, depth_mm / lam_mm, share)

