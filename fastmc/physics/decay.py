"""K⁺ and π⁺ decays in flight, sampled from uniforms (pure jnp, batch-major, O(1) per decay).

Data
----
Branching fractions, Kℓ3 form-factor parameters and their sources are in
``fastmc/data/decays.toml`` (PDG RPP 2024).  Masses and lifetimes come from the ``particle``
package at run time.  The listed BRs of each parent are renormalised to unit sum (as Geant4's
``G4DecayTable`` does); ``log_br`` is the log of the *normalised* BR, so that a forced-mode run
weighted by ``exp(log_br)`` and summed over modes closes on the analog run.

Kinematics
----------
Every mode is treated as a decay to three daughters d1, d2, d3 (2-body modes: d3 has zero
four-momentum).  d1 is the *reference* daughter: its rest-frame direction is isotropic
(u₃ → cos θ* = 2u₃ − 1, u₄ → φ); d2 lies at the opening angle α₁₂ fixed by the Dalitz variables,
at azimuth χ = 2πu₅ around d1; d3 = −d1 − d2.

* 2-body: E₁* = (M² + m₁² − m₂²)/2M (so the lab energy is uniform in γ(E* ∓ βp*)).
* 3-body: the Dalitz variables (E₁*, E₂*) are sampled **exactly, without rejection**: E₁* from a
  tabulated inverse marginal CDF (u₁), E₂* from the tabulated inverse conditional CDF at that E₁*
  (u₂), E₂* measured as the fraction y ∈ [0, 1] of its allowed range at fixed E₁*.  Tables are
  built in float64 numpy (Gauss–Legendre in E₂* for the marginal, trapezoid on 2049 nodes for the
  conditional) on nodes uniform in t = (2/π)·atan2(√u, √(1−u)) (u = sin²(πt/2)), which resolves
  the square-root ends of the marginal; linear interpolation in t, bilinear in (x, t) for the
  conditional.  ``log_w_dalitz`` is therefore identically 0 (kept in the output for API stability).
* Kℓ3 (π⁰ℓ⁺ν): d1 = ℓ⁺, d2 = π⁰, d3 = ν; density of Chounet, Gaillard & Gaillard, Phys. Rep. 4
  (1972) 199, with the form factors of the ``kl3_model`` chosen in the data file ("geant4" =
  ``G4KL3DecayChannel::DalitzDensity`` of Geant4 11.x, the default; "pdg" = PDG 2024 quadratic f₊,
  linear f₀).  K → 3π: flat phase space, as Geant4's ``G4PhaseSpaceDecayChannel``.

Lorentz boost (parent along +z, float32-careful): with E − p = M²/(E + p) and the light-cone
component s* = E* + p*_z ≥ 0,  E_lab = [(E − p)E* + p s*]/M,  p_z,lab = [(E − p)p*_z + p s*]/M.
For d1, s* = m₁²/(E₁* + p₁*) + p₁*(1 + cos θ*) with 1 + cos θ* = 2u₃, so backward-emitted muons at
160 GeV keep full relative precision; θ = atan2(p_T, p_z) (never 1 − cos).

The charged track reported downstream ("charged_pdg", "p", "theta", "phi"): the μ⁺ in μν and
π⁰μν, the e⁺ in eν and π⁰eν, the π⁺ in ππ⁰ and ππ⁰π⁰, and in π⁺π⁺π⁻ the π⁺ of higher **lab**
momentum (the other π⁺ and the π⁻ go to ``e_other_charged``).

Uniform columns (``N_DECAY_UNIFORMS`` = 6): 0 mode, 1 Dalitz E₁*, 2 Dalitz E₂*, 3 cos θ*, 4 φ,
5 χ.  Columns 1, 2, 5 are unused by 2-body modes (and column 0 when the mode is forced).
"""

from __future__ import annotations

import math
import tomllib
from pathlib import Path

import numpy as np

from fastmc._pytree import pytree_dataclass, static_field

N_DECAY_UNIFORMS: int = 6
PARENTS: tuple[str, ...] = ("K+", "pi+")
MODES: dict[str, tuple[str, ...]] = {
    "K+": ("mu_nu", "pi_pi0", "pi_pi_pi", "pi0_e_nu", "pi0_mu_nu", "pi_pi0_pi0"),
    "pi+": ("mu_nu", "e_nu"),
}
KL3_MODELS = ("geant4", "pdg")
DATA_FILE = Path(__file__).resolve().parent.parent / "data" / "decays.toml"

_N_MODE_MAX = max(len(m) for m in MODES.values())
_N_T = 257  # inverse-CDF nodes (uniform in t)
_N_X = 65  # conditional tables: nodes uniform in x = (E1 - E1_lo)/(E1_hi - E1_lo)

# daughter roles
ROLE_NONE, ROLE_TRACK, ROLE_NEUTRAL, ROLE_INVISIBLE, ROLE_OTHER, ROLE_CANDIDATE = 0, 1, 2, 3, 4, 5

_PARENT_KEYS = {"K+": "K_plus", "pi+": "pi_plus"}
_PARENT_PDGID = {"K+": 321, "pi+": 211}
# daughter name → (pdg id, role if not the first daughter)
_DAUGHTERS = {
    "mu+": (-13, ROLE_OTHER),
    "e+": (-11, ROLE_OTHER),
    "pi+": (211, ROLE_CANDIDATE),
    "pi-": (-211, ROLE_OTHER),
    "pi0": (111, ROLE_NEUTRAL),
    "nu_mu": (14, ROLE_INVISIBLE),
    "nu_e": (12, ROLE_INVISIBLE),
}


def _mass(pdgid: int) -> float:
    from particle import Particle

    if pdgid in (12, 14):
        return 0.0
    return float(Particle.from_pdgid(pdgid).mass)  # MeV


def ctau_mm(parent: str) -> float:
    """cτ [mm] of ``parent`` from the ``particle`` package (K⁺ 3711.25 mm, π⁺ 7804.42 mm)."""
    from particle import Particle

    if parent not in _PARENT_PDGID:
        raise ValueError(f"unknown parent {parent!r} (have {PARENTS})")
    return float(Particle.from_pdgid(_PARENT_PDGID[parent]).ctau)


def decay_length_mm(parent: str, pmag_MeV):
    """Mean decay length βγcτ = (p/M)·cτ [mm]; numpy or jnp in, same out."""
    return pmag_MeV * (ctau_mm(parent) / _mass(_PARENT_PDGID[parent]))


@pytree_dataclass
class DecayTables:
    """Decay tables of all parents (leaves padded to the largest mode count; names static).

    Leaves (``P`` parents, ``K`` = max modes): ``br``/``log_br``/``cum_br`` (P, K) normalised BRs,
    their logs (computed in float64: log 0.999877 is not resolved from a float32 BR) and cumulative
    sums; ``parent_mass`` (P,); ``m1``/``m2``/``m3`` (P, K) daughter masses;
    ``t1_lo``/``de1`` (P, K): kinetic energy of d1 at the lower end of its range and the width of
    the range (2-body: T₁* and 0); ``is3`` (P, K) 1.0 for 3-body modes; ``x_inv`` (P, K, N_T)
    inverse marginal CDF of x; ``y_inv`` (P, K, N_X, N_T) inverse conditional CDF of y;
    ``kl3_params`` (P, K, 3) the form-factor parameters the tables were built with (record only).
    """

    br: object
    log_br: object
    cum_br: object
    parent_mass: object
    m1: object
    m2: object
    m3: object
    t1_lo: object
    de1: object
    is3: object
    x_inv: object
    y_inv: object
    kl3_params: object
    parents: tuple = static_field(default=PARENTS)
    modes: tuple = static_field(default=tuple(MODES[p] for p in PARENTS))
    pdg: tuple = static_field(default=())  # (P, K, 3) nested tuples of daughter PDG ids
    roles: tuple = static_field(default=())  # (P, K, 3) nested tuples of daughter roles
    kl3_model: str = static_field(default="geant4")

    def device(self, dtype=None) -> DecayTables:
        """The same tables as jnp arrays of ``dtype`` (default float32)."""
        import jax
        import jax.numpy as jnp

        dt = jnp.float32 if dtype is None else dtype
        return jax.tree_util.tree_map(lambda a: jnp.asarray(a, dtype=dt), self)

    def parent_index(self, parent: str) -> int:
        if parent not in self.parents:
            raise ValueError(f"unknown parent {parent!r} (have {self.parents})")
        return self.parents.index(parent)


# ----------------------------------------------------------------------------- host build


def load_decay_data(path: str | Path | None = None) -> dict:
    """The parsed data file (default ``fastmc/data/decays.toml``), validated."""
    path = Path(path) if path is not None else DATA_FILE
    with open(path, "rb") as f:
        data = tomllib.load(f)
    for parent in PARENTS:
        names = tuple(m["name"] for m in data[_PARENT_KEYS[parent]]["modes"])
        if names != MODES[parent]:
            raise ValueError(f"{path}: {parent} modes {names} != {MODES[parent]}")
        for m in data[_PARENT_KEYS[parent]]["modes"]:
            if not (0.0 < m["br"] <= 1.0) or not m.get("pdg_id") or not m.get("source"):
                raise ValueError(f"{path}: {parent} {m['name']}: need 0 < br <= 1, pdg_id, source")
    if data["kl3"]["default_model"] not in KL3_MODELS:
        raise ValueError(f"{path}: kl3.default_model must be one of {KL3_MODELS}")
    return data


def kl3_form_factors(model: str, params: dict, lepton: str):
    """(f₊(t), ξ(t)) as numpy functions for the Kℓ3 Dalitz density of ``model``."""
    key = "ke3" if lepton == "e+" else "kmu3"
    if model == "geant4":
        lam, xi0 = params[f"{key}_lambda"], params[f"{key}_xi0"]
        mpi2 = _mass(111) ** 2  # Geant4 uses the daughter pion mass (π⁰ for K⁺)

        def fp(t):
            return 1.0 + lam * t / mpi2

        def xi(t):
            return xi0 * (1.0 + lam * t / mpi2)  # as G4KL3DecayChannel::DalitzDensity

        return fp, xi, (lam, xi0, 0.0)
    if model == "pdg":
        lp, lpp, l0 = params[f"{key}_lambda_p"], params[f"{key}_lambda_pp"], params[f"{key}_lambda_0"]
        mpc2 = _mass(211) ** 2
        mk2, mpi2 = _mass(321) ** 2, _mass(111) ** 2

        def fp(t):
            z = t / mpc2
            return 1.0 + lp * z + 0.5 * lpp * z * z

        def xi(t):
            return ((1.0 + l0 * t / mpc2) / fp(t) - 1.0) * (mk2 - mpi2) / t

        return fp, xi, (lp, lpp, l0)
    raise ValueError(f"unknown kl3 model {model!r} (have {KL3_MODELS})")


def kl3_density(e_lep, e_pi, mk, mpi, ml, fp, xi):
    """Chounet–Gaillard–Gaillard Kℓ3 Dalitz density ρ(E_π, E_ℓ) (total energies, rest frame)."""
    e_nu = mk - e_pi - e_lep
    epi_max = (mk * mk + mpi * mpi - ml * ml) / (2.0 * mk)
    ep = epi_max - e_pi
    t = mk * mk + mpi * mpi - 2.0 * mk * e_pi
    a = mk * (2.0 * e_lep * e_nu - mk * ep) + ml * ml * (ep / 4.0 - e_nu)
    b = ml * ml * (e_nu - ep / 2.0)
    c = ml * ml * ep / 4.0
    x = xi(t)
    return np.maximum(fp(t) ** 2 * (a + b * x + c * x * x), 0.0)


def e2_range(m, m1, m2, m3, e1):
    """Allowed (E₂*_min, E₂*_max) at fixed E₁* for a 3-body decay (numpy, float64)."""
    p1 = np.sqrt(np.maximum(e1 * e1 - m1 * m1, 0.0))
    m23 = np.sqrt(np.maximum((m - e1) ** 2 - p1 * p1, (m2 + m3) ** 2))
    e2p = (m23 * m23 + m2 * m2 - m3 * m3) / (2.0 * m23)
    p2p = np.sqrt(np.maximum(e2p * e2p - m2 * m2, 0.0))
    g, gb = (m - e1) / m23, p1 / m23
    return g * e2p - gb * p2p, g * e2p + gb * p2p


def _t_to_u(t):
    return np.sin(0.5 * np.pi * t) ** 2


def _inverse_cdf(grid, density_values):
    """Inverse CDF of a density given on an increasing grid, at u = sin²(πt/2), t on _N_T nodes."""
    cdf = np.concatenate([[0.0], np.cumsum(0.5 * (density_values[1:] + density_values[:-1]) * np.diff(grid))])
    cdf /= cdf[-1]
    u = _t_to_u(np.linspace(0.0, 1.0, _N_T))
    # np.interp needs strictly increasing xp: drop flat pieces
    keep = np.concatenate([[True], np.diff(cdf) > 0])
    return np.interp(u, cdf[keep], grid[keep])


def _dalitz_tables(m, m1, m2, m3, density):
    """(x_inv (N_T,), y_inv (N_X, N_T)) for density(E1, E2) on the Dalitz plot (float64)."""
    e1_lo, e1_hi = m1, (m * m + m1 * m1 - (m2 + m3) ** 2) / (2.0 * m)
    # marginal of x: ∫ ρ dE2 by 16-point Gauss-Legendre on nodes clustered at both ends
    xg = _t_to_u(np.linspace(0.0, 1.0, 4097))
    e1 = e1_lo + xg * (e1_hi - e1_lo)
    lo, hi = e2_range(m, m1, m2, m3, e1)
    gl_x, gl_w = np.polynomial.legendre.leggauss(16)
    e2 = lo[:, None] + (hi - lo)[:, None] * 0.5 * (gl_x[None, :] + 1.0)
    marg = (hi - lo) * 0.5 * np.sum(gl_w[None, :] * density(e1[:, None], e2), axis=1)
    x_inv = _inverse_cdf(xg, marg)
    # conditionals of y at fixed x (the range collapses at the ends: evaluate just inside)
    xs = np.clip(np.linspace(0.0, 1.0, _N_X), 1e-7, 1.0 - 1e-7)
    yg = _t_to_u(np.linspace(0.0, 1.0, 2049))
    y_inv = np.empty((_N_X, _N_T))
    for j, xj in enumerate(xs):
        e1j = e1_lo + xj * (e1_hi - e1_lo)
        loj, hij = e2_range(m, m1, m2, m3, np.float64(e1j))
        vals = density(np.full_like(yg, e1j), loj + yg * (hij - loj))
        y_inv[j] = _inverse_cdf(yg, vals) if np.any(vals > 0) else _t_to_u(np.linspace(0.0, 1.0, _N_T))
    return x_inv, y_inv


def build_decay_tables(path: str | Path | None = None, kl3_model: str | None = None) -> DecayTables:
    """Read the data file and build the sampling tables (host numpy, float64; < 1 s)."""
    data = load_decay_data(path)
    model = kl3_model if kl3_model is not None else data["kl3"]["default_model"]
    if model not in KL3_MODELS:
        raise ValueError(f"unknown kl3 model {model!r} (have {KL3_MODELS})")
    P, K = len(PARENTS), _N_MODE_MAX
    br = np.zeros((P, K))
    cum = np.ones((P, K))
    m1 = np.zeros((P, K))
    m2 = np.zeros((P, K))
    m3 = np.zeros((P, K))
    t1_lo = np.zeros((P, K))
    de1 = np.zeros((P, K))
    is3 = np.zeros((P, K))
    x_inv = np.zeros((P, K, _N_T))
    y_inv = np.zeros((P, K, _N_X, _N_T))
    kl3p = np.zeros((P, K, 3))
    pmass = np.zeros(P)
    pdg, roles = [], []
    for ip, parent in enumerate(PARENTS):
        mm = _mass(_PARENT_PDGID[parent])
        pmass[ip] = mm
        modes = data[_PARENT_KEYS[parent]]["modes"]
        raw = np.array([md["br"] for md in modes], dtype=np.float64)
        br[ip, : len(modes)] = raw / raw.sum()
        cum[ip, : len(modes)] = np.cumsum(br[ip, : len(modes)])
        cum[ip, len(modes) - 1 :] = 1.0
        pdg_p, roles_p = [], []
        for k, md in enumerate(modes):
            names = list(md["daughters"])
            ids = [_DAUGHTERS[n][0] for n in names]
            rl = [ROLE_TRACK] + [_DAUGHTERS[n][1] for n in names[1:]]
            ms = [_mass(abs(i)) for i in ids]
            if len(names) == 2:
                ids.append(0)
                rl.append(ROLE_NONE)
                ms.append(0.0)
            pdg_p.append(tuple(ids))
            roles_p.append(tuple(rl))
            m1[ip, k], m2[ip, k], m3[ip, k] = ms
            if len(names) == 2:
                e1 = (mm * mm + ms[0] ** 2 - ms[1] ** 2) / (2.0 * mm)
                p1 = math.sqrt((mm * mm - (ms[0] + ms[1]) ** 2) * (mm * mm - (ms[0] - ms[1]) ** 2)) / (2.0 * mm)
                t1_lo[ip, k] = p1 * p1 / (e1 + ms[0])  # E1* - m1, without cancellation
                continue
            is3[ip, k] = 1.0
            de1[ip, k] = (mm * mm + ms[0] ** 2 - (ms[1] + ms[2]) ** 2) / (2.0 * mm) - ms[0]
            me = md.get("matrix_element", "phase_space")
            if me == "kl3":
                fp, xi, kl3p[ip, k] = kl3_form_factors(model, data["kl3"][model], names[0])

                def density(e1, e2, mm=mm, ms=ms, fp=fp, xi=xi):
                    return kl3_density(e1, e2, mm, ms[1], ms[0], fp, xi)

            elif me == "phase_space":

                def density(e1, e2):
                    return np.ones(np.broadcast(e1, e2).shape)

            else:
                raise ValueError(f"unknown matrix_element {me!r} for {parent} {md['name']}")
            x_inv[ip, k], y_inv[ip, k] = _dalitz_tables(mm, ms[0], ms[1], ms[2], density)
        while len(pdg_p) < K:
            pdg_p.append((0, 0, 0))
            roles_p.append((ROLE_NONE, ROLE_NONE, ROLE_NONE))
        pdg.append(tuple(pdg_p))
        roles.append(tuple(roles_p))
    return DecayTables(
        br=br,
        log_br=np.log(np.where(br > 0, br, 1.0)) + np.where(br > 0, 0.0, -np.inf),
        cum_br=cum, parent_mass=pmass, m1=m1, m2=m2, m3=m3, t1_lo=t1_lo, de1=de1, is3=is3,
        x_inv=x_inv, y_inv=y_inv, kl3_params=kl3p,
        parents=PARENTS, modes=tuple(MODES[p] for p in PARENTS), pdg=tuple(pdg), roles=tuple(roles),
        kl3_model=model,
    )


# ----------------------------------------------------------------------------- device sampling


def _safe_sqrt(x):
    import jax.numpy as jnp

    pos = x > 0
    return jnp.where(pos, jnp.sqrt(jnp.where(pos, x, 1.0)), 0.0)


def _t_of_u(u):
    import jax.numpy as jnp

    return (2.0 / math.pi) * jnp.arctan2(jnp.sqrt(u), jnp.sqrt(1.0 - u))


def sample_decay_from_u(tables: DecayTables, parent: str, pmag, u, mode: int | None = None) -> dict:
    """Decay ``parent`` (static) of momentum ``pmag`` (B,) [MeV/c] along +z, from ``u`` (B, 6).

    ``mode=None`` samples the mode from the branching fractions (column 0 of ``u``); an int forces
    it (static; the caller adds ``log_br`` as a weight).  Returns a dict of (B,) arrays: ``mode``,
    ``charged_pdg`` (int32), ``p``, ``theta``, ``phi`` of the charged track, ``e_visible_neutral``,
    ``e_invisible``, ``e_other_charged`` (lab energies, MeV), ``log_br``, ``log_w_dalitz`` (≡ 0).
    """
    import jax.numpy as jnp

    ip = tables.parent_index(parent)
    n_modes = len(tables.modes[ip])
    dt = jnp.result_type(tables.parent_mass)
    pmag = jnp.asarray(pmag, dt)
    u = jnp.asarray(u, dt)
    b = pmag.shape[0]
    m_par = tables.parent_mass[ip]

    if mode is None:
        edges = tables.cum_br[ip, : n_modes - 1]
        k = jnp.sum(u[:, 0:1] >= edges[None, :], axis=1).astype(jnp.int32)
    else:
        mode = int(mode)
        if not 0 <= mode < n_modes:
            raise ValueError(f"mode {mode} out of range for {parent} ({n_modes} modes)")
        k = jnp.full((b,), mode, jnp.int32)
    log_br = tables.log_br[ip][k]

    m1, m2, m3 = tables.m1[ip][k], tables.m2[ip][k], tables.m3[ip][k]
    is3 = tables.is3[ip][k] > 0.5

    # --- Dalitz variables (exact inverse-CDF tables; 2-body: de1 = 0) ---
    tpos = _t_of_u(u[:, 1]) * (_N_T - 1)
    i0 = jnp.clip(jnp.floor(tpos), 0, _N_T - 2).astype(jnp.int32)
    f = tpos - i0
    xt = tables.x_inv[ip]
    x = xt[k, i0] * (1.0 - f) + xt[k, i0 + 1] * f
    t1 = tables.t1_lo[ip][k] + x * tables.de1[ip][k]  # kinetic energy of d1
    e1 = m1 + t1
    p1 = _safe_sqrt(t1 * (t1 + 2.0 * m1))

    tpos2 = _t_of_u(u[:, 2]) * (_N_T - 1)
    i2 = jnp.clip(jnp.floor(tpos2), 0, _N_T - 2).astype(jnp.int32)
    f2 = tpos2 - i2
    xpos = jnp.clip(x, 0.0, 1.0) * (_N_X - 1)
    j0 = jnp.clip(jnp.floor(xpos), 0, _N_X - 2).astype(jnp.int32)
    g = xpos - j0
    yt = tables.y_inv[ip]
    y = (yt[k, j0, i2] * (1.0 - f2) + yt[k, j0, i2 + 1] * f2) * (1.0 - g) + (
        yt[k, j0 + 1, i2] * (1.0 - f2) + yt[k, j0 + 1, i2 + 1] * f2
    ) * g
    m23sq = jnp.maximum((m_par - e1) ** 2 - p1 * p1, (m2 + m3) ** 2)
    m23 = jnp.sqrt(jnp.where(is3, m23sq, 1.0))
    e2p = (m23sq + m2 * m2 - m3 * m3) / (2.0 * m23)
    p2p = _safe_sqrt(e2p * e2p - m2 * m2)
    e2_3 = ((m_par - e1) * e2p + (2.0 * y - 1.0) * p1 * p2p) / m23
    e2 = jnp.where(is3, e2_3, m_par - e1)
    e3 = jnp.where(is3, m_par - e1 - e2, 0.0)
    p2 = jnp.where(is3, _safe_sqrt(e2 * e2 - m2 * m2), p1)
    p3 = jnp.where(is3, _safe_sqrt(e3 * e3 - m3 * m3), 0.0)
    den = jnp.where(is3 & (p1 * p2 > 0), 2.0 * p1 * p2, 1.0)
    cos_a = jnp.where(is3 & (p1 * p2 > 0), jnp.clip((p3 * p3 - p1 * p1 - p2 * p2) / den, -1.0, 1.0), -1.0)
    sin_a = _safe_sqrt((1.0 - cos_a) * (1.0 + cos_a))

    # --- rest-frame directions ---
    u3 = u[:, 3]
    c = 2.0 * u3 - 1.0
    onepc = 2.0 * u3
    s = 2.0 * _safe_sqrt(u3 * (1.0 - u3))
    phi1 = (2.0 * math.pi) * u[:, 4]
    chi = (2.0 * math.pi) * u[:, 5]
    cphi, sphi, cchi, schi = jnp.cos(phi1), jnp.sin(phi1), jnp.cos(chi), jnp.sin(chi)
    n1 = (s * cphi, s * sphi, c)
    ea = (c * cphi, c * sphi, -s)
    eb = (-sphi, cphi, jnp.zeros_like(c))
    v2 = tuple(p2 * (cos_a * n1[i] + sin_a * (cchi * ea[i] + schi * eb[i])) for i in range(3))
    v3 = tuple(-p1 * n1[i] - v2[i] for i in range(3))

    # --- boost along +z: E_lab = [(E-p)E* + p s*]/M, pz_lab = [(E-p)pz* + p s*]/M ---
    e_par = jnp.sqrt(pmag * pmag + m_par * m_par)
    emp = m_par * m_par / (e_par + pmag)

    def boost(e_star, pz_star, splus):
        return (emp * e_star + pmag * splus) / m_par, (emp * pz_star + pmag * splus) / m_par

    s1 = m1 * m1 / jnp.where(e1 + p1 > 0, e1 + p1, 1.0) + p1 * onepc
    e1l, pz1l = boost(e1, p1 * c, s1)
    pt1 = p1 * s
    e2l, pz2l = boost(e2, v2[2], jnp.maximum(e2 + v2[2], 0.0))
    pt2 = _safe_sqrt(v2[0] * v2[0] + v2[1] * v2[1])
    e3l, _ = boost(e3, v3[2], jnp.maximum(e3 + v3[2], 0.0))
    pl1 = jnp.sqrt(pz1l * pz1l + pt1 * pt1)
    pl2 = jnp.sqrt(pz2l * pz2l + pt2 * pt2)

    roles = jnp.asarray(np.asarray(tables.roles[ip], np.int32))[k]  # (B, 3)
    pdgs = jnp.asarray(np.asarray(tables.pdg[ip], np.int32))[k]
    take2 = (roles[:, 1] == ROLE_CANDIDATE) & (pl2 > pl1)
    r2 = jnp.where(roles[:, 1] == ROLE_CANDIDATE, ROLE_OTHER, roles[:, 1])
    r3 = roles[:, 2]
    zero = jnp.zeros_like(e1l)
    e_track_other = jnp.where(take2, e1l, e2l)  # the candidate π⁺ not taken
    is_cand2 = roles[:, 1] == ROLE_CANDIDATE

    def energy_of(role):
        tot = jnp.where(r2 == role, e2l, zero) + jnp.where(r3 == role, e3l, zero)
        return tot

    e_other = jnp.where(is_cand2, e_track_other, zero) + jnp.where(r3 == ROLE_OTHER, e3l, zero)
    e_other = e_other + jnp.where((~is_cand2) & (r2 == ROLE_OTHER), e2l, zero)
    phi2 = jnp.mod(jnp.arctan2(v2[1], v2[0]), 2.0 * math.pi)
    return {
        "mode": k,
        "charged_pdg": jnp.where(take2, pdgs[:, 1], pdgs[:, 0]).astype(jnp.int32),
        "p": jnp.where(take2, pl2, pl1),
        "theta": jnp.where(take2, jnp.arctan2(pt2, pz2l), jnp.arctan2(pt1, pz1l)),
        "phi": jnp.where(take2, phi2, phi1),
        "e_visible_neutral": energy_of(ROLE_NEUTRAL),
        "e_invisible": energy_of(ROLE_INVISIBLE),
        "e_other_charged": e_other,
        "log_br": log_br,
        "log_w_dalitz": zero,
    }


def sample_decay(key, tables: DecayTables, parent: str, pmag, mode: int | None = None) -> dict:
    """Key-taking wrapper of :func:`sample_decay_from_u`."""
    import jax

    pmag = jax.numpy.asarray(pmag)
    u = jax.random.uniform(key, (pmag.shape[0], N_DECAY_UNIFORMS), dtype=jax.numpy.result_type(tables.parent_mass))
    return sample_decay_from_u(tables, parent, pmag, u, mode)


__all__ = [
    "DATA_FILE",
    "KL3_MODELS",
    "MODES",
    "N_DECAY_UNIFORMS",
    "PARENTS",
    "DecayTables",
    "build_decay_tables",
    "ctau_mm",
    "decay_length_mm",
    "e2_range",
    "kl3_density",
    "kl3_form_factors",
    "load_decay_data",
    "sample_decay",
    "sample_decay_from_u",
]
