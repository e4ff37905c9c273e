"""Deflection of the muon in its discrete (stochastic) interactions.

Multiple scattering (:mod:`fastmc.physics.scattering`) covers elastic Coulomb scattering.  A
muon also turns in every *inelastic* interaction that transfers a sizeable energy: the
transverse momentum carried away by the knock-on electron, the photon, the e⁺e⁻ pair or the
virtual photon is taken from the muon.  Beyond a few θ0 these kicks, above all the
photonuclear ones, make the angular tail behind thick absorbers (Geant4 11.4 with
``G4EmStandardPhysics`` + muon-nuclear: P(|θx| > 10 θ0) ≈ 1e-4 behind 40 X0 of lead and 3 m of
iron at 160 GeV/c, ``calibration/deflection.h5``, where a Gaussian+single-scattering model has
< 1e-5).  The laws below are the ones Geant4 samples for the muon (so that the comparison with
the calibration tables tests the transport, not a choice of model), each with its physics source:

* **Knock-on electron** (``ionisation``, energy transfer T): two-body kinematics on an electron
  at rest, exact: cos θ_e = T(E + mₑ)/(p p_e) (Geant4 ``G4MuBetheBlochModel``; PDG RPP 2024
  §34.2.2), which gives the transverse momentum, without cancellation,

      p_T² = p_e² − p_∥² = 2 mₑ T (1 − T/T_max),   T_max = 2 mₑ p² / (M² + mₑ² + 2 mₑ E).

* **Bremsstrahlung** (photon energy k): photon polar angle θ_γ = r/γ (γ = E/M) with
  r² = x/(1 − x), x uniform on [0, r_max²/(1 + r_max²)], r_max = γ(π/2)·min(1, E/k − 1), i.e. the
  density ∝ r/(1 + r²)² of the small-angle bremsstrahlung law (Tsai, Rev. Mod. Phys. 46 (1974)
  815, eq. 3.83 at leading order) cut at a kinematic limit; this is Geant4's ``G4ModifiedMephi``
  (used by ``G4MuBremsstrahlungModel``).  The muon keeps momentum balance: p_T = k sin θ_γ.

* **e⁺e⁻ pair** (pair energy ε): asymmetry r = (E₊ − E₋)/ε uniform on [−r_m, r_m],
  r_m = (1 − 6M²/(E(E − ε)))·√(1 − 4mₑ/ε) (Geant4 ``G4MuPairProductionModel``); each lepton at
  θ = r/γ from the law above with k → ε, electron and positron at opposite azimuths
  (``G4ModifiedMephi::SamplePairDirections``); the muon takes the opposite of the pair's p_T.

* **Photonuclear** (virtual-photon energy ν, y = ν/E): four-momentum transfer t = Q² drawn from
  the equivalent-photon (vector-dominance) law of Geant4's ``G4MuonVDNuclearModel`` (after
  Borog & Petrukhin, Proc. 14th ICRC 6 (1975) 1949):

      f(t) ∝ (1 − t/t_max)·[(1 − y)(1 − t_min/t) + y²/2] / [(1 − y + y²/2)(1 − t/t₂)] · 1/(t (t + t₁)),

  t_min = M² y²/(1 − y), t_max = 2 M_p ν, (t₁, t₂) = (m₀², ν²) if ν > m₀ else (ν², m₀²),
  m₀ = 0.2 GeV.  Geant4 samples t from the proposal 1/(t(t + t₁)) (exact inverse CDF) and accepts
  with probability min(1, bracket); here the same proposal is drawn ``N_PN_TRIES`` times from
  fixed uniforms and the first accepted draw kept (no data-dependent loop; if every try is
  rejected the last draw is used — the acceptance is > 0.8 over the whole range, so this
  happens with probability < 1e-2 and only near t_min, i.e. at angles ≪ θ0; tested against the
  exact inverse CDF of f).  The muon angle follows from t: sin²(θ/2) = ½(t − t_min)/(2(E E′ − M²)
  − t_min), E′ = E − ν.

The kick is returned as the change of the muon's direction (projected angles, rad) for a muon of
momentum ``p_after`` after the interaction: Δθ = p_T/p_after (small-angle; p_T ≤ a few GeV at
p_after ≳ 10 GeV/c).  Uniforms per interaction: ``N_KICK_UNIFORMS`` columns (azimuth, then the
process's own draws; unused columns are ignored).
"""

from __future__ import annotations

import math
from typing import Any

import jax.numpy as jnp

from fastmc import units

__all__ = ["M0_VD", "N_KICK_UNIFORMS", "N_PN_TRIES", "muon_kick_pt", "photonuclear_t"]

PROC_IONISATION, PROC_BREMS, PROC_PAIR, PROC_PHOTONUCLEAR = 0, 1, 2, 3
N_PN_TRIES = 3  # proposal draws of the photonuclear t (module docstring)
N_KICK_UNIFORMS = 1 + 2 * N_PN_TRIES  # azimuth + the largest per-process need (photonuclear)
M0_VD = 0.2 * units.GeV  # Geant4 G4MuonVDNuclearModel: m0 (= CutFixed = 0.2 GeV)
_ME = units.electron_mass_c2
_MP = units.proton_mass_c2


def _sqrt(x: Any) -> Any:
    """√max(x, 1e-30): finite value and derivative at 0 (forward-mode tangents stay finite)."""
    return jnp.sqrt(jnp.maximum(x, 1e-30))


def _mephi_angle(gam: Any, e_over_k: Any, u: Any) -> Any:
    """Polar angle of the radiated photon (or pair lepton) of a muon of Lorentz factor ``gam``:
    θ = r/γ, r² = x/(1 − x), x = u·r_max²/(1 + r_max²), r_max = γ(π/2)·min(1, E/k − 1)."""
    rmax = gam * (0.5 * math.pi) * jnp.clip(e_over_k - 1.0, 0.0, 1.0)
    rmax2 = rmax * rmax
    x = u * rmax2 / (1.0 + rmax2)
    r = _sqrt(x / jnp.maximum(1.0 - x, 1e-30))
    return jnp.minimum(r / gam, 0.5 * math.pi)


def photonuclear_t(etot: Any, nu: Any, u: Any, mass: float = units.muon_mass_c2) -> tuple[Any, Any]:
    """(t, t_min) [MeV²] of a photonuclear interaction of energy transfer ``nu`` of a muon of total
    energy ``etot``; ``u`` (..., 2·N_PN_TRIES) uniforms (pairs: proposal, acceptance)."""
    y = jnp.clip(nu / etot, 1e-12, 1.0 - 1e-7)
    tmin = mass * mass * y * y / (1.0 - y)
    tmax = jnp.maximum(2.0 * _MP * nu, tmin * (1.0 + 1e-6))
    above = nu > M0_VD
    t1 = jnp.where(above, M0_VD * M0_VD, nu * nu)
    t2 = jnp.where(above, nu * nu, M0_VD * M0_VD)
    y1, y2 = 1.0 - y, 0.5 * y * y
    y3 = y1 + y2
    # proposal ∝ 1/(t(t + t1)) on [tmin, tmax]: s = ln(t/(t + t1)) is uniform
    s_lo = jnp.log(tmin / (tmin + t1))
    s_hi = jnp.log(tmax / (tmax + t1))
    t_pick = None
    done = jnp.zeros(jnp.shape(nu), bool)
    for i in range(N_PN_TRIES):
        s = s_lo + u[..., 2 * i] * (s_hi - s_lo)
        es = jnp.exp(s)
        t = t1 * es / jnp.maximum(1.0 - es, 1e-30)
        t = jnp.clip(t, tmin, tmax)
        rej = (1.0 - t / tmax) * (y1 * (1.0 - tmin / t) + y2) / (y3 * (1.0 - t / t2))
        ok = u[..., 2 * i + 1] <= rej  # rej < 0 (t > t2) never accepts, as in Geant4
        take = ~done & (ok | (i == N_PN_TRIES - 1))
        t_pick = t if t_pick is None else jnp.where(take, t, t_pick)
        done = done | take
    return t_pick, tmin


def muon_kick_pt(proc: Any, etot: Any, de: Any, u: Any, mass: float = units.muon_mass_c2) -> Any:
    """Magnitude of the transverse momentum [MeV/c] the muon loses in an interaction of process
    ``proc`` (0 ionisation, 1 brems, 2 pair, 3 photonuclear) with energy transfer ``de`` [MeV] at
    total energy ``etot`` [MeV]; ``u`` (..., N_KICK_UNIFORMS - 1) uniforms (the azimuth is the
    caller's).  Shapes broadcast; ``de = 0`` gives exactly 0."""
    etot = jnp.maximum(etot, mass * (1.0 + 1e-6))
    de = jnp.clip(de, 0.0, etot - mass)
    p2 = etot * etot - mass * mass
    gam = etot / mass
    pos = de > 0.0
    des = jnp.where(pos, de, 1.0)
    # knock-on electron
    tmax = 2.0 * _ME * p2 / (mass * mass + _ME * _ME + 2.0 * _ME * etot)
    pt_ion = _sqrt(2.0 * _ME * des * (1.0 - des / tmax))
    # bremsstrahlung photon
    th_g = _mephi_angle(gam, etot / des, u[..., 0])
    pt_brems = des * jnp.sin(th_g)
    # pair: asymmetry, two angles at opposite azimuths
    rm = jnp.clip((1.0 - 6.0 * mass * mass / (etot * jnp.maximum(etot - des, mass)))
                  * _sqrt(jnp.clip(1.0 - 4.0 * _ME / des, 0.0, 1.0)), 0.0, 1.0)
    r = rm * (2.0 * u[..., 1] - 1.0)
    e_minus = 0.5 * (1.0 - r) * des
    e_plus = des - e_minus
    th1 = _mephi_angle(gam, etot / des, u[..., 2])
    th2 = _mephi_angle(gam, etot / des, u[..., 3])
    pe_m = _sqrt(e_minus * e_minus - _ME * _ME)
    pe_p = _sqrt(e_plus * e_plus - _ME * _ME)
    pt_pair = jnp.abs(pe_m * jnp.sin(th1) - pe_p * jnp.sin(th2))
    # photonuclear: t -> muon angle -> p_T of the scattered muon
    t, tmin = photonuclear_t(etot, des, u[..., : 2 * N_PN_TRIES], mass)
    e_out = jnp.maximum(etot - des, mass)
    denom = 2.0 * (etot * e_out - mass * mass) - tmin
    sin2h = jnp.clip(0.5 * (t - tmin) / jnp.maximum(denom, 1e-30), 0.0, 1.0)
    sin_th = 2.0 * _sqrt(sin2h * (1.0 - sin2h))
    pt_pn = _sqrt(e_out * e_out - mass * mass) * sin_th
    pt = jnp.where(proc == PROC_IONISATION, pt_ion,
                   jnp.where(proc == PROC_BREMS, pt_brems,
                             jnp.where(proc == PROC_PAIR, pt_pair, pt_pn)))
    return jnp.where(pos, pt, 0.0)
