"""Parameterised showers of the energy a muon transfers in a hard interaction, and leading neutral hadrons.

Used by the detector response when a run card sets ``[showers] model = "profile"`` (otherwise every
transfer is deposited where it happens, as before).  The hardest transfer of each slab (above
``threshold``) starts a shower at its depth; the shower's energy is shared among that slab and the
slabs after it by a longitudinal profile measured in radiation lengths (EM part) and interaction
lengths (hadronic part), accumulated through the slab sequence (gaps hold air and are skipped; a
leak out of one calorimeter enters the next slab downstream).  What is left after the last slab
escapes.  The lateral spread of the showers themselves is not modelled (the muon beam is centred
on the calorimeters: the EM Molière radius of lead, 1.6 cm, and the hadronic lateral spread,
≈ 1 λ_I, are well inside the NA64μ calorimeters' cross sections) — a stated limitation; the
leading neutral hadron's direction is (below).

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
"""

from __future__ import annotations

from typing import Any

from fastmc import units as u
from fastmc._pytree import pytree_dataclass

EC_SOLID_MEV = 610.0  # PDG RPP 2024 §34.4.4: E_c = 610 MeV/(Z + 1.24) for solids
EC_Z_OFFSET = 1.24
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


def gamma_cdf(alpha, beta, t):
    """P(α, β·t) for t ≥ 0 (0 for t ≤ 0): the CDF of a Gamma(α, rate β) profile, by table."""
    import jax.numpy as jnp

    tab = jnp.asarray(_gamma_table(), dtype=jnp.result_type(float))
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


def hadronic_leakage_fraction(e_mev, depth_mm, x0_mm, lam_mm) -> Any:
    """Mean fraction of a hadronic shower beyond ``depth_mm`` of one material (Bock profile)."""
    share = bock_em_share(e_mev, x0_mm, lam_mm)
    return 1.0 - bock_cdf(e_mev, depth_mm / x0_mm, depth_mm / lam_mm, share)

