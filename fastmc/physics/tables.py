"""Energy-loss tables: built once in float64 numpy, cached on disk, interpolated on device.

Splitting of the loss (PROPOSAL / Groom et al. 2001 convention)
----------------------------------------------------------------
With v = ΔE/E_total, every process is split at the effective relative cut::

    v_c(E) = max(v_cut, e_cut / E_total)

Losses with v > v_c are *stochastic* (sampled one by one from :func:`stochastic_xs` and
:func:`sample_v_from_u`); the rest is *continuous* (mean loss from a CSDA range table, plus an
optional Gaussian straggling term of variance ∫_0^{v_c}(vE)² dσ/dv dv per unit length).
Note the **max**: PROPOSAL uses ``min(e_cut, v_cut·E)`` as the absolute cut; fastmc takes the
larger of the two relative cuts, so that the mean number of sampled interactions per element
stays bounded at low energy (at E < e_cut/v_cut = 50 GeV the cut is the absolute 50 MeV).  The
price is a coarser continuous part at low energy, which is irrelevant for 160 GeV muons whose
background topologies need v ≳ 0.5.

Grids
-----
* energy: kinetic energy, log-uniform from ``ekin_min_MeV`` to ``ekin_max_MeV`` with
  ``n_per_decade`` points per decade; device look-ups are arithmetic (index = (ln T − ln T0)/Δ),
  linear interpolation in ln T.
* inverse CDFs (built in two passes, the second with integration knots placed at the first
  pass's logit nodes): for each (material, process, energy node) the table holds
  x = ln(v/v_lo)/ln(v_hi/v_lo) ∈ [0, 1] at ``n_u`` nodes uniform in the **logit** of the CDF,
  s = ln F − ln(1 − F) ∈ [−``logit_max``, +``logit_max``].  The logit resolves both ends:
  the small-v end (F → 0) and the large-v tail (1 − F → 0, where the background physics lives)
  get the same relative resolution as the bulk; F and 1 − F are accumulated separately from the
  bottom and from the top of the spectrum in float64, so 1 − F is accurate down to ~1e-15.
  Beyond the outermost finite nodes the tables use the asymptotic forms F ∝ (v − v_lo) and
  1 − F ∝ (v_hi − v).  ``logit_max`` = 17 covers every float32 u in (0, 1) except the ~1e-8
  closest to 0 or 1, which are clamped.
* continuous loss: S(T) = dE/dx of the sub-cut part [MeV/mm], linear in ln T; the CSDA range
  R(T) = ∫_0^T dT'/S(T') [mm] is tabulated at the nodes (Simpson on a 2× finer grid) and
  evaluated by cubic Hermite interpolation in ln T (dR/d ln T = T/S is known exactly).
  :func:`continuous_ekin_after` uses RK4 in T for steps shorter than 5 % of the range (float32
  cannot resolve R(T) − L when L ≪ R) and otherwise inverts R by an initial guess from an
  inverse table uniform in ln R followed by two Newton steps.  Below the first node R is
  continued as R(T) = R(T0)·T/T0 (ranges below 1 MeV are ≪ 1 mm).

Integrals over v use Gauss–Legendre (4 points) on segments uniform in ln v, plus segments
refined geometrically towards v_hi (so that the tail 1 − F is resolved) and towards v_lo (so
that steep spectra are resolved in F); ionisation above the
cut is integrated the same way and its continuous part is a(E) − E∫_{v_c} v dσ/dv, so the
split is exactly consistent.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

from fastmc import units
from fastmc._pytree import pytree_dataclass, static_field
from fastmc.materials import Material, get_material
from fastmc.physics.common import gauss_legendre01
from fastmc.physics.registry import INTERACTIONS, get_process

if TYPE_CHECKING:
    from fastmc.config import PhysicsSettings

TABLES_VERSION = "2"  # 2: leaf xi_per_mm (Landau straggling)
_MMU = units.muon_mass_c2


@dataclasses.dataclass(frozen=True)
class PhysicsConfig:
    """Physics choices and table grids.

    ``v_cut``/``e_cut_MeV``: effective cut v_c(E) = max(v_cut, e_cut/E_total) — the larger of the
    two (PROPOSAL takes the smaller), so the number of sampled interactions per element stays
    bounded at low energy.  Process names are registry keys ``<interaction>.<parametrisation>``.
    """

    v_cut: float = 1e-3
    e_cut_MeV: float = 50.0
    ionisation: str = "ionisation.bbk"
    brems: str = "brems.kkp"
    pair: str = "pair.kp"
    photonuclear: str = "photonuclear.bb"
    ekin_min_MeV: float = 1.0
    ekin_max_MeV: float = 1e7
    n_per_decade: int = 20
    n_u: int = 256
    logit_max: float = 17.0
    n_range_inverse: int = 256
    n_knots: int = 96  # ln v segments above the cut
    n_tail: int = 32  # geometric segments towards v_hi
    n_knots_below: int = 48  # ln v segments below the cut
    n_gl: int = 4

    @property
    def process_names(self) -> tuple[str, str, str, str]:
        return (self.ionisation, self.brems, self.pair, self.photonuclear)

    @property
    def n_energy(self) -> int:
        decades = math.log10(self.ekin_max_MeV / self.ekin_min_MeV)
        return int(round(decades * self.n_per_decade)) + 1

    def validate(self) -> None:
        if not 0.0 < self.v_cut < 1.0:
            raise ValueError(f"v_cut must be in (0, 1), got {self.v_cut}")
        if self.e_cut_MeV <= 0.0:
            raise ValueError(f"e_cut_MeV must be positive, got {self.e_cut_MeV}")
        for want, name in zip(INTERACTIONS, self.process_names):
            proc = get_process(name)
            if proc.interaction != want:
                raise ValueError(f"process {name!r} is not a {want} parametrisation")
        if not 0.0 < self.ekin_min_MeV < self.ekin_max_MeV:
            raise ValueError("need 0 < ekin_min_MeV < ekin_max_MeV")


def tables_config(settings: PhysicsSettings) -> PhysicsConfig:
    """The :class:`PhysicsConfig` of the energy-loss tables for a run card's physics settings
    (:class:`fastmc.config.PhysicsSettings`; lives here so that the config imports no physics)."""
    return PhysicsConfig(
        v_cut=settings.v_cut,
        e_cut_MeV=settings.e_cut / units.MeV,
        ionisation=settings.ionisation,
        brems=settings.brems,
        pair=settings.pair,
        photonuclear=settings.photonuclear,
    )


@pytree_dataclass
class PhysicsTables:
    """Energy-loss tables for a tuple of materials (indices = positions in ``materials``).

    Leaves (numpy float64 from :func:`build_tables`; ``device()`` gives jnp arrays):
    ``density`` (M,) g/cm³; ``xi_per_mm`` (M,) Landau's ξ per mm at β = 1 [MeV/mm]; ``dedx_cont`` (M, N)
    continuous dE/dx [MeV/mm]; ``range_mm`` (M, N)
    CSDA range of the continuous loss [mm]; ``inv_ln_ekin`` (M, NR) ln T on a grid uniform in
    ln R from ``inv_ln_r0`` (M,) with step ``inv_dln_r`` (M,); ``xs`` (M, N, 4) macroscopic
    cross sections above the cut [1/mm]; ``straggle`` (M, N) sub-cut variance rate [MeV²/mm];
    ``ln_v_lo``/``ln_v_hi`` (M, 4, N) support of the sampled v; ``icdf`` (M, 4, N, n_u) x ∈ [0, 1].
    """

    density: object
    xi_per_mm: object
    dedx_cont: object
    range_mm: object
    inv_ln_ekin: object
    inv_ln_r0: object
    inv_dln_r: object
    xs: object
    straggle: object
    ln_v_lo: object
    ln_v_hi: object
    icdf: object
    materials: tuple = static_field()
    processes: tuple = static_field()
    v_cut: float = static_field()
    e_cut: float = static_field()  # MeV
    ln_ekin0: float = static_field()
    dln_ekin: float = static_field()
    n_energy: int = static_field()
    logit_max: float = static_field()
    n_u: int = static_field()
    hash: str = static_field()

    def device(self, dtype=None) -> PhysicsTables:
        """The same tables as jnp arrays of ``dtype`` (default float32)."""
        import jax
        import jax.numpy as jnp

        dt = jnp.float32 if dtype is None else dtype
        return jax.tree_util.tree_map(lambda a: jnp.asarray(a, dtype=dt), self)

    def material_index(self, name: str) -> int:
        try:
            return self.materials.index(name)
        except ValueError:
            raise ValueError(f"material {name!r} not in tables (have {self.materials})") from None

    @property
    def ekin_grid(self) -> np.ndarray:
        return np.exp(self.ln_ekin0 + self.dln_ekin * np.arange(self.n_energy))


# ----------------------------------------------------------------------------- host build


def effective_v_cut(config: PhysicsConfig, etot):
    return np.maximum(config.v_cut, config.e_cut_MeV / np.asarray(etot, dtype=float))


def spectrum_integrals(
    proc, material: Material, etot, lo, hi, n_knots, n_tail, n_gl, cdf=False, extra=None
):
    """∫_lo^hi v^k dσ/dv dv for k = 0, 1, 2 per energy (rows), optionally the CDF at the knots.

    ``etot``, ``lo``, ``hi``: (N,).  Rows with hi ≤ lo give zeros.  Returns a dict with
    ``m0, m1, m2`` (N,) and, with ``cdf=True``, ``ln_v`` (N, K), ``below`` (N, K) = ∫_lo^{v_k},
    ``above`` (N, K) = ∫_{v_k}^hi.  ``extra`` (N, J): additional knots in ln v.
    """
    etot = np.asarray(etot, dtype=float)
    lo = np.asarray(lo, dtype=float)
    hi = np.maximum(np.asarray(hi, dtype=float), lo)
    ln_lo, ln_hi = np.log(lo), np.log(hi)
    t = np.linspace(0.0, 1.0, n_knots + 1)
    knots = ln_lo[:, None] + (ln_hi - ln_lo)[:, None] * t
    if n_tail > 0:
        # refine geometrically towards both ends: v_hi (tail 1 − F) and v_lo (steep spectra
        # such as knock-ons, F ≈ 1 − v_lo/v, put half of the probability within a factor 2)
        g = np.geomspace(1e-12, 0.5, n_tail)
        tail = np.log(np.maximum(hi[:, None] - (hi - lo)[:, None] * g, lo[:, None]))
        head = np.log(np.minimum(lo[:, None] + (hi - lo)[:, None] * g, hi[:, None]))
        knots = np.concatenate([knots, tail, head], axis=1)
    if extra is not None:
        knots = np.concatenate([knots, np.clip(extra, ln_lo[:, None], ln_hi[:, None])], axis=1)
    knots = np.sort(knots, axis=1)
    x, w = gauss_legendre01(n_gl)
    a, b = knots[:, :-1], knots[:, 1:]
    lnv = a[..., None] + (b - a)[..., None] * x
    v = np.exp(lnv)
    f = proc.dsigma_dv(material, etot[:, None, None], v) * v * (b - a)[..., None]  # dσ per node
    seg0 = np.sum(w * f, axis=-1)
    seg1 = np.sum(w * f * v, axis=-1)
    seg2 = np.sum(w * f * v * v, axis=-1)
    out = {"m0": seg0.sum(axis=1), "m1": seg1.sum(axis=1), "m2": seg2.sum(axis=1)}
    if cdf:
        zeros = np.zeros((len(etot), 1))
        below = np.concatenate([zeros, np.cumsum(seg0, axis=1)], axis=1)
        above = np.concatenate([np.cumsum(seg0[:, ::-1], axis=1)[:, ::-1], zeros], axis=1)
        out.update(ln_v=knots, below=below, above=above)
    return out


def _icdf_rows(ln_v, below, above, ln_lo, ln_hi, s_grid):
    """x(s) at the logit nodes ``s_grid`` for each row (see module docstring)."""
    n_rows = ln_v.shape[0]
    out = np.zeros((n_rows, len(s_grid)))
    span = ln_hi - ln_lo
    with np.errstate(divide="ignore", invalid="ignore"):
        logit = np.log(below) - np.log(above)
    for r in range(n_rows):
        total = below[r, -1]
        if not (total > 0.0 and span[r] > 0.0):
            out[r] = np.linspace(0.0, 1.0, len(s_grid))
            continue
        xk = (ln_v[r] - ln_lo[r]) / span[r]
        sk = logit[r]
        keep = np.isfinite(sk)
        xk, sk = xk[keep], sk[keep]
        inc = np.concatenate([[True], np.diff(sk) > 0])
        # keep a strictly increasing subsequence (flat parts of F are where dσ/dv = 0)
        xk, sk = xk[inc], sk[inc]
        mono = sk >= np.maximum.accumulate(sk)
        xk, sk = xk[mono], sk[mono]
        x = np.interp(s_grid, sk, xk)
        low = s_grid < sk[0]
        x[low] = xk[0] * np.exp(s_grid[low] - sk[0])  # F ∝ (v − v_lo) ⇒ logit ≈ ln F
        high = s_grid > sk[-1]
        x[high] = 1.0 - (1.0 - xk[-1]) * np.exp(sk[-1] - s_grid[high])
        out[r] = np.clip(x, 0.0, 1.0)
    return out


def _support(proc, material: Material, etot, v_c):
    """(v_lo, v_hi) of the sampled part: max(v_c, v_min) … v_max."""
    lo = np.maximum(v_c, proc.v_min(material, etot))
    hi = np.maximum(proc.v_max(material, etot), lo)
    return lo, hi


def _build_material(material: Material, config: PhysicsConfig) -> dict:
    n = config.n_energy
    ln_t0 = math.log(config.ekin_min_MeV)
    ln_t1 = math.log(config.ekin_max_MeV)
    # 2x refined grid for the range integral; the even points are the table nodes
    ekin_f = np.exp(np.linspace(ln_t0, ln_t1, 2 * n - 1))
    etot_f = ekin_f + _MMU
    v_c = effective_v_cut(config, etot_f)
    rho_per_mm = material.density / units.cm  # g/cm³ · cm²/g → 1/cm → 1/mm: × density / 10
    s_grid = np.linspace(-config.logit_max, config.logit_max, config.n_u)

    cont = np.zeros_like(ekin_f)  # MeV cm²/g
    var = np.zeros_like(ekin_f)  # MeV² cm²/g
    xs = np.zeros((n, 4))
    lnlo = np.zeros((4, n))
    lnhi = np.zeros((4, n))
    icdf = np.zeros((4, n, config.n_u))
    nodes = slice(0, None, 2)
    for p_i, name in enumerate(config.process_names):
        proc = get_process(name)
        lo, hi = _support(proc, material, etot_f, v_c)
        args = (proc, material, etot_f[nodes], lo[nodes], hi[nodes])
        kw = dict(n_knots=config.n_knots, n_tail=config.n_tail, n_gl=config.n_gl, cdf=True)
        lnlo[p_i] = np.log(lo[nodes])
        lnhi[p_i] = np.log(hi[nodes])
        # two passes: the second adds knots where the first put the logit nodes, so that the
        # final inversion interpolates between knots that are ~one logit step apart
        above = spectrum_integrals(*args, **kw)
        x1 = _icdf_rows(above["ln_v"], above["below"], above["above"], lnlo[p_i], lnhi[p_i], s_grid)
        extra = lnlo[p_i][:, None] + x1 * (lnhi[p_i] - lnlo[p_i])[:, None]
        above = spectrum_integrals(*args, **kw, extra=extra)
        above_f = spectrum_integrals(
            proc, material, etot_f, lo, hi, config.n_knots // 2, 0, config.n_gl
        )
        if proc.interaction == "ionisation":
            cont += proc.dedx(material, etot_f) - etot_f * above_f["m1"]
            var += proc.restricted_var(material, etot_f, lo)
        else:
            floor = np.maximum(proc.v_min(material, etot_f), 1e-12)
            top = np.maximum(np.minimum(lo, proc.v_max(material, etot_f)), 1e-12)
            below = spectrum_integrals(
                proc, material, etot_f, np.minimum(floor, top), top,
                config.n_knots_below, 0, config.n_gl,
            )
            cont += etot_f * below["m1"]
            var += etot_f**2 * below["m2"]
        xs[:, p_i] = above["m0"] * rho_per_mm
        icdf[p_i] = _icdf_rows(
            above["ln_v"], above["below"], above["above"], lnlo[p_i], lnhi[p_i], s_grid
        )

    s_f = cont * rho_per_mm  # MeV/mm on the fine grid
    # CSDA range: R(T0) ≈ T0 / (1.8 S(T0)) (S ∝ T^-0.8 below T0), then Simpson in ln T
    integrand = ekin_f / s_f  # dR/d ln T
    h = (ln_t1 - ln_t0) / (2 * n - 2)
    simpson = h / 3.0 * (integrand[0:-1:2] + 4.0 * integrand[1::2] + integrand[2::2])
    r0 = ekin_f[0] / (1.8 * s_f[0])
    rng = np.concatenate([[r0], r0 + np.cumsum(simpson)])
    ln_r = np.log(rng)
    inv_r = np.linspace(ln_r[0], ln_r[-1], config.n_range_inverse)
    inv_e = np.interp(inv_r, ln_r, np.log(ekin_f[nodes]))
    return {
        "density": material.density,
        # Landau ξ per mm at β = 1: (K/2)(Z/A)ρ [MeV/mm] (PDG RPP 2024 eq. 34.11)
        "xi_per_mm": 0.5 * units.K_bethe * material.Z_over_A * material.density / units.cm,
        "dedx_cont": s_f[nodes],
        "range_mm": rng,
        "inv_ln_ekin": inv_e,
        "inv_ln_r0": inv_r[0],
        "inv_dln_r": inv_r[1] - inv_r[0],
        "xs": xs,
        "straggle": var[nodes] * rho_per_mm,
        "ln_v_lo": lnlo,
        "ln_v_hi": lnhi,
        "icdf": icdf,
    }


_LEAVES = (
    "density", "xi_per_mm", "dedx_cont", "range_mm", "inv_ln_ekin", "inv_ln_r0", "inv_dln_r",
    "xs", "straggle", "ln_v_lo", "ln_v_hi", "icdf",
)


def tables_hash(materials: Sequence[Material], config: PhysicsConfig) -> str:
    """SHA-256 of everything the tables depend on (materials, config, TABLES_VERSION)."""
    payload = {
        "version": TABLES_VERSION,
        "config": dataclasses.asdict(config),
        "materials": [dataclasses.asdict(m) for m in materials],
        "muon_mass": _MMU,
    }
    blob = json.dumps(payload, sort_keys=True, default=repr).encode()
    return hashlib.sha256(blob).hexdigest()


def default_cache_dir() -> str:
    return os.environ.get("FASTMC_CACHE") or os.path.join(
        os.path.expanduser("~"), ".cache", "fastmc"
    )


def enable_compilation_cache() -> str | None:
    """Keep XLA's compiled programs on disk under ``<cache>/xla`` (``$FASTMC_CACHE`` or
    ``~/.cache/fastmc``), so that a second run of the same chain skips compilation (minutes for
    the four channels of the LS3 card on two cores).  Programs that compile in under 2 s are not
    kept.  Left alone when JAX already has a cache directory (``JAX_COMPILATION_CACHE_DIR``) or
    ``FASTMC_XLA_CACHE=0``; returns the directory in use (None: off).  A cached program is the
    same program: results are bit-identical."""
    import jax

    if os.environ.get("FASTMC_XLA_CACHE", "1") == "0":
        return None
    if jax.config.jax_compilation_cache_dir is None:
        jax.config.update("jax_compilation_cache_dir", os.path.join(default_cache_dir(), "xla"))
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 2.0)
    return jax.config.jax_compilation_cache_dir


def build_tables(
    materials: Sequence[Material | str],
    config: PhysicsConfig = PhysicsConfig(),
    cache_dir: str | None = None,
) -> PhysicsTables:
    """Build (or load from the on-disk cache) the tables for ``materials`` (float64 numpy).

    The cache file is ``<cache_dir>/physics_tables_<sha256>.npz`` (``cache_dir`` defaults to
    ``$FASTMC_CACHE`` or ``~/.cache/fastmc``); pass ``cache_dir=""`` to disable caching.
    """
    mats = tuple(get_material(m) if isinstance(m, str) else m for m in materials)
    if not mats:
        raise ValueError("build_tables needs at least one material")
    config.validate()
    digest = tables_hash(mats, config)
    cache = default_cache_dir() if cache_dir is None else cache_dir
    path = os.path.join(cache, f"physics_tables_{digest}.npz") if cache else None
    arrays = None
    if path and os.path.exists(path):
        try:
            with np.load(path) as z:
                arrays = {k: z[k] for k in _LEAVES}
        except (OSError, KeyError, ValueError):
            arrays = None  # corrupt cache entry: rebuild
    if arrays is None:
        per = [_build_material(m, config) for m in mats]
        arrays = {k: np.stack([np.asarray(p[k], dtype=float) for p in per]) for k in _LEAVES}
        if path:
            os.makedirs(cache, exist_ok=True)
            tmp = f"{path}.{os.getpid()}.{time.time_ns()}.tmp.npz"
            np.savez(tmp, **arrays)
            os.replace(tmp, path)
    n = config.n_energy
    ln_t0 = math.log(config.ekin_min_MeV)
    return PhysicsTables(
        **arrays,
        materials=tuple(m.name for m in mats),
        processes=config.process_names,
        v_cut=float(config.v_cut),
        e_cut=float(config.e_cut_MeV),
        ln_ekin0=ln_t0,
        dln_ekin=(math.log(config.ekin_max_MeV) - ln_t0) / (n - 1),
        n_energy=n,
        logit_max=float(config.logit_max),
        n_u=int(config.n_u),
        hash=digest,
    )


# ------------------------------------------------------------------------- device functions


def _energy_index(tables: PhysicsTables, ekin):
    import jax.numpy as jnp

    f = (jnp.log(jnp.maximum(ekin, 1e-30)) - tables.ln_ekin0) / tables.dln_ekin
    f = jnp.clip(f, 0.0, tables.n_energy - 1.0)
    i0 = jnp.clip(jnp.floor(f).astype(jnp.int32), 0, tables.n_energy - 2)
    return i0, f - i0


def _lerp_e(table, mat, i0, w):
    """Linear interpolation along the energy axis of a (M, N) table."""
    return table[mat, i0] * (1.0 - w) + table[mat, i0 + 1] * w


def _broadcast_mat(mat, ekin):
    import jax.numpy as jnp

    return jnp.broadcast_to(jnp.asarray(mat, dtype=jnp.int32), jnp.shape(ekin))


def continuous_dedx(tables: PhysicsTables, mat, ekin):
    """Continuous (sub-cut) stopping power S(T) [MeV/mm]."""
    import jax.numpy as jnp

    ekin = jnp.asarray(ekin)
    mat = _broadcast_mat(mat, ekin)
    i0, w = _energy_index(tables, ekin)
    return _lerp_e(tables.dedx_cont, mat, i0, w)


def csda_range(tables: PhysicsTables, mat, ekin):
    """CSDA range of the continuous loss R(T) [mm] (cubic Hermite in ln T)."""
    import jax.numpy as jnp

    ekin = jnp.asarray(ekin)
    mat = _broadcast_mat(mat, ekin)
    i0, t = _energy_index(tables, ekin)
    h = tables.dln_ekin
    e0 = jnp.exp(tables.ln_ekin0 + h * i0)
    e1 = e0 * math.exp(h)
    r0, r1 = tables.range_mm[mat, i0], tables.range_mm[mat, i0 + 1]
    m0 = e0 / tables.dedx_cont[mat, i0]
    m1 = e1 / tables.dedx_cont[mat, i0 + 1]
    t2, t3 = t * t, t * t * t
    r = (
        (2 * t3 - 3 * t2 + 1) * r0
        + (t3 - 2 * t2 + t) * h * m0
        + (-2 * t3 + 3 * t2) * r1
        + (t3 - t2) * h * m1
    )
    ekin0 = math.exp(tables.ln_ekin0)
    below = tables.range_mm[mat, 0] * jnp.maximum(ekin, 0.0) / ekin0
    return jnp.where(ekin < ekin0, below, r)


def continuous_ekin_after(tables: PhysicsTables, mat, ekin, length_mm):
    """Kinetic energy [MeV] after ``length_mm`` of continuous (sub-cut) loss; 0 if ranged out.

    E_out = R⁻¹(R(E) − L).  Short steps (L < 5 % of R) use RK4 in T instead, because R(E) − L is
    not resolved in float32 when L ≪ R; long steps use the inverse-range table and two Newton
    steps on the Hermite R(T).
    """
    import jax.numpy as jnp

    ekin = jnp.asarray(ekin)
    length = jnp.broadcast_to(jnp.asarray(length_mm, dtype=ekin.dtype), ekin.shape)
    mat = _broadcast_mat(mat, ekin)
    ekin0 = math.exp(tables.ln_ekin0)

    def s_of(e):
        return continuous_dedx(tables, mat, jnp.maximum(e, ekin0))

    # short branch: RK4 on dT/dx = −S(T)
    k1 = s_of(ekin)
    k2 = s_of(ekin - 0.5 * length * k1)
    k3 = s_of(ekin - 0.5 * length * k2)
    k4 = s_of(ekin - length * k3)
    e_short = ekin - length * (k1 + 2.0 * k2 + 2.0 * k3 + k4) / 6.0

    # long branch: invert the range
    r = csda_range(tables, mat, ekin)
    short = length < 0.05 * r

    def long_branch(tables):  # the tables as an operand: host (NumPy) tables become arrays here
        r_out = r - length
        r_pos = jnp.maximum(r_out, 1e-30)
        f = (jnp.log(r_pos) - tables.inv_ln_r0[mat]) / tables.inv_dln_r[mat]
        nr = tables.inv_ln_ekin.shape[-1]
        f = jnp.clip(f, 0.0, nr - 1.0)
        j0 = jnp.clip(jnp.floor(f).astype(jnp.int32), 0, nr - 2)
        wj = f - j0
        e_guess = jnp.exp(tables.inv_ln_ekin[mat, j0] * (1.0 - wj) + tables.inv_ln_ekin[mat, j0 + 1] * wj)
        r_first = tables.range_mm[mat, 0]
        e_guess = jnp.where(r_pos < r_first, ekin0 * r_pos / r_first, e_guess)
        e_long = e_guess
        for _ in range(2):
            e_long = e_long - (csda_range(tables, mat, e_long) - r_pos) * continuous_dedx(
                tables, mat, jnp.maximum(e_long, ekin0))
            e_long = jnp.maximum(e_long, 0.0)
        e_long = jnp.where(r_out > 0.0, e_long, 0.0)
        return jnp.where(short, e_short, e_long)

    # Most batches have no muon near the end of its range: then the range inversion is skipped
    # (same values; a cond on the whole batch, not a loop: one branch or the other runs)
    import jax

    out = jax.lax.cond(jnp.all(short), lambda _: e_short, long_branch, tables)
    return jnp.clip(out, 0.0, ekin)


def continuous_straggling_var(tables: PhysicsTables, mat, ekin, length_mm):
    """Variance [MeV²] of the sub-cut loss over ``length_mm``: L·Σ∫_0^{v_c}(vE)² dσ/dv dv at E."""
    import jax.numpy as jnp

    ekin = jnp.asarray(ekin)
    mat = _broadcast_mat(mat, ekin)
    i0, w = _energy_index(tables, ekin)
    return _lerp_e(tables.straggle, mat, i0, w) * length_mm


def stochastic_xs(tables: PhysicsTables, mat, ekin):
    """Macroscopic cross sections above the cut [1/mm], shape ekin.shape + (4,)."""
    import jax.numpy as jnp

    ekin = jnp.asarray(ekin)
    mat = _broadcast_mat(mat, ekin)
    i0, w = _energy_index(tables, ekin)
    x0 = tables.xs[mat, i0]
    x1 = tables.xs[mat, i0 + 1]
    return jnp.maximum(x0 * (1.0 - w)[..., None] + x1 * w[..., None], 0.0)


def sample_v_from_u(tables: PhysicsTables, mat, proc, ekin, u):
    """v ∈ [v_lo(E), v_hi(E)] (fraction of the total energy) from a uniform u ∈ (0, 1).

    Inverse CDF of dσ/dv above the cut of process index ``proc`` (order ``tables.processes``);
    bilinear in (ln T, logit u), then v = v_lo (v_hi/v_lo)^x.  The result is clipped to
    [v_c(E), v_hi(E)].
    """
    import jax.numpy as jnp

    ekin = jnp.asarray(ekin)
    u = jnp.asarray(u, dtype=ekin.dtype)
    shape = jnp.broadcast_shapes(jnp.shape(ekin), jnp.shape(u))
    ekin = jnp.broadcast_to(ekin, shape)
    u = jnp.broadcast_to(u, shape)
    mat = _broadcast_mat(mat, ekin)
    proc = jnp.broadcast_to(jnp.asarray(proc, dtype=jnp.int32), shape)
    i0, w = _energy_index(tables, ekin)
    lm = tables.logit_max
    s = jnp.log(u) - jnp.log1p(-u)
    s = jnp.clip(jnp.nan_to_num(s, nan=0.0, posinf=lm, neginf=-lm), -lm, lm)
    ds = 2.0 * lm / (tables.n_u - 1)
    g = (s + lm) / ds
    j0 = jnp.clip(jnp.floor(g).astype(jnp.int32), 0, tables.n_u - 2)
    wu = g - j0
    t = tables.icdf
    x0 = t[mat, proc, i0, j0] * (1.0 - wu) + t[mat, proc, i0, j0 + 1] * wu
    x1 = t[mat, proc, i0 + 1, j0] * (1.0 - wu) + t[mat, proc, i0 + 1, j0 + 1] * wu
    x = x0 * (1.0 - w) + x1 * w
    lnlo = tables.ln_v_lo[mat, proc, i0] * (1.0 - w) + tables.ln_v_lo[mat, proc, i0 + 1] * w
    lnhi = tables.ln_v_hi[mat, proc, i0] * (1.0 - w) + tables.ln_v_hi[mat, proc, i0 + 1] * w
    v = jnp.exp(lnlo + x * (lnhi - lnlo))
    v_c = jnp.maximum(tables.v_cut, tables.e_cut / (ekin + _MMU))
    return jnp.clip(v, v_c, jnp.exp(lnhi))


# ---------------------------------------------------------------------------- host helpers


def energy_loss_coefficients(
    material: str | Material, ekin_GeV: float, config: PhysicsConfig = PhysicsConfig()
) -> dict:
    """a, b_brems, b_pair, b_photonuclear, b_total [cm²/g], dedx [MeV cm²/g] at ``ekin_GeV``.

    −dE/dx = a + b·E with E the total energy, each b = (N_A/A)∫ v dσ/dv dv over the whole
    spectrum (no cut), a the full ionisation loss (all δ rays).  Host float64, by direct
    integration (independent of the tables).
    """
    mat = get_material(material) if isinstance(material, str) else material
    etot = np.atleast_1d(float(ekin_GeV) * units.GeV + _MMU)
    out: dict = {}
    names = dict(zip(INTERACTIONS, config.process_names))
    out["a"] = float(get_process(names["ionisation"]).dedx(mat, etot)[0])
    total = 0.0
    for key in ("brems", "pair", "photonuclear"):
        proc = get_process(names[key])
        lo = np.maximum(proc.v_min(mat, etot), 1e-12)
        hi = np.maximum(proc.v_max(mat, etot), lo)
        m = spectrum_integrals(proc, mat, etot, lo, hi, 400, 32, 4)
        out[f"b_{key}"] = float(m["m1"][0])
        total += out[f"b_{key}"]
    out["b_total"] = total
    out["dedx"] = out["a"] + total * float(etot[0])
    return out


def dsigma_dv(process: str, material: str | Material, etot_MeV, v):
    """dσ/dv [cm²/g] of registry process ``process`` (host numpy, broadcasting)."""
    mat = get_material(material) if isinstance(material, str) else material
    return get_process(process).dsigma_dv(mat, etot_MeV, v)
