"""Global least-squares track fit of one spectrometer (DESIGN.md §9; issue #11, item 1).

One fit per spectrometer uses every tracker plane of both arms and the magnets as kinks of known
∫B dl, in both projections, instead of two independent straight lines per arm
(:mod:`fastmc.reconstruct` today).  Batch-major like the rest of fastmc: per-plane arrays are
``(n_planes, B)``; nothing loops over events and nothing iterates a data-dependent number of times.

Track model (bend plane, coordinate ``u``; small angles)::

    u(z) = u0 + t0 (z − z_ref) + λ Σ_m k_m (z − z_m) H(z − z_m),    k_m = 0.299792458 ∫B dl_m [T·m]

with λ = q/p [c/GeV] the signed inverse momentum and H the step function: each magnet is a thin lens
at its centre z_m that turns the slope by κ_m = q·0.2998·∫B dl_m/p[GeV/c], the kick the transport
applies (:func:`fastmc.transport._kick_angle`; PDG RPP 2024 §35: p[GeV/c] = 0.3 B[T] ρ[m]).  The
model is linear in (u0, t0, λ), so the fit is a closed-form weighted least-squares solve of a 3×3
system per event.  The non-bend projection ``v`` is a straight line (v0, s0).  ``z_ref`` is the
kick point z̄ = Σ_m ∫B dl_m z_m / Σ_m ∫B dl_m: (u0, t0) are the upstream line at z̄ and its slope.
With several magnets bending in the same plane the straight lines of the two arms of a noise-free
track meet at z̄ whatever p is (the kicks are proportional to ∫B dl_m), so z̄ is where the arms'
*matching residual* is taken.

Measurement covariance.  ``C = diag(σ²) + C_MS`` with, for thin scatterers s of thickness x_s/X0
at z_s (default: the tracker planes themselves, each one at its measurement plane),

    C_MS[j, k] = Σ_s θ0_s² (z_j − z_s)₊ (z_k − z_s)₊                                  (1)

(each scattering angle displaces every later plane linearly: R. L. Gluckstern, NIM 24 (1963) 381;
the covariance a Kalman filter accumulates plane by plane, R. Frühwirth, NIM A 262 (1987) 444), θ0 the
projected-angle width of the Highland formula, PDG RPP 2024 eq. 34.15 (evaluated by
:func:`fastmc.physics.scattering.highland_theta0`), the same θ0 in both projections (they are
independent Gaussians in the small-angle limit, PDG RPP 2024 §34.3).  The fit is then generalised
least squares (GLS): whiten design and data with the Cholesky factor L of C (w = L⁻¹ r), solve the
normal equations of the whitened design.  θ0 ∝ 1/(βp): it is evaluated at ``p_scatter_GeV`` (a scalar or one per
event; the nominal beam momentum in :func:`fit_spectrometer`), then ``ms_iterations`` times at the
previous fit's |p| (a fixed, static number of refits: no data-dependent loop).

Approximations (all tested in tests/test_trackfit.py against an independent numpy generator):

* thin lenses at the magnet centres, small angles (exact for the transport's kick model);
* multiple scattering as Gaussian kinks (Highland core only: the single-scattering tail of
  :mod:`fastmc.physics.scattering` is not in the covariance, so real tails give χ² tails);
  each scatterer sits at its plane's measurement plane (exit face): the displacement inside the
  1–2 mm plane itself, θ0·t/√3 ≲ 1e-4 mm at 10 GeV/c, is neglected; energy loss in the planes (MeV)
  is neglected; Highland is applied per scatterer, not to the summed thickness (PDG: ±11 % on θ0
  for 1e-3 < x/X0 < 100; a tracker plane is 2.4e-3, half an air gap of 0.25 m only 4e-4);
* θ0 at one momentum per event (the seed or the previous fit's), not at the unknown true one;
* a continuous gap medium (air) enters, in :func:`fit_spectrometer` only, as two thin scatterers
  per gap at the two Gauss–Legendre points, each carrying half of the gap's θ0²: (1) integrated over
  a uniform medium is a quadratic polynomial in the scatterer position for every pair of later
  planes, which two-point Gauss–Legendre integrates exactly (Abramowitz & Stegun 25.4.29).

Missing hits are exact, not approximate: the rows and columns of C of absent hits are replaced by
those of the identity and the absent rows of the design and of the measurements by zeros.  The
Cholesky factor keeps that block structure (L_ij = 0 whenever i or j is absent, L_ii = 1), so the
whitened absent rows are exactly zero and the fit equals the GLS fit of the present hits alone,
with the scatterers of the absent planes still in C (a plane without a hit still scatters).

Numerics (float32 on device): design columns are Jacobi-equilibrated before the explicit 2×2/3×3
cofactor inverse, and the solution gets one step of iterative refinement on the whitened residual
(iterative improvement: Golub & Van Loan, "Matrix Computations", 4th ed., ch. 3 and 5): otherwise
the normal equations lose ~cond² of the float32 precision on hits tens of mm off axis.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, NamedTuple

import jax.numpy as jnp

from fastmc import units as u
from fastmc.geometry import Setup, Spectrometer
from fastmc.physics.scattering import highland_theta0

__all__ = ["Planes", "fit_track", "fit_spectrometer", "kick_point", "scattering_covariance", "planes_of",
           "add_gap_scatterers"]

_DET_MIN = 1e-6  # equilibrated normal matrices (unit diagonal) with det below this are singular
_BIG = jnp.inf


class Planes(NamedTuple):
    """Measurements of one track segment (a pytree: pass it through ``jax.jit``).

    z: (n,) mm, measurement planes; bend, nonbend: (n, B) mm, measured positions in the bend and
    the other projection; present: (n, B) bool; sigma: (n,) or (n, B) mm, resolution (both
    projections); x_over_X0: (n_s,) thickness of the thin scatterers in radiation lengths, or None
    (no multiple scattering); z_scatter: (n_s,) mm, their positions, or None (= z).
    """

    z: Any
    bend: Any
    nonbend: Any
    present: Any
    sigma: Any
    x_over_X0: Any = None
    z_scatter: Any = None


def kick_point(z_kick, field_integral):
    """The ∫B dl-weighted centre z̄ = Σ ∫B dl_m z_m / Σ ∫B dl_m of the thin lenses (mm); falls back
    to the plain mean when the field integrals sum to zero."""
    z_kick = jnp.atleast_1d(jnp.asarray(z_kick))
    bl = jnp.atleast_1d(jnp.asarray(field_integral, z_kick.dtype))
    tot = jnp.sum(bl)
    safe = jnp.where(tot != 0, tot, 1.0)
    return jnp.where(tot != 0, jnp.sum(bl * z_kick) / safe, jnp.mean(z_kick))


def scattering_covariance(z, z_scatter, x_over_X0, p_GeV, mass=u.muon_mass_c2):
    """C_MS (n, n, B) of eq. (1) in the module docstring, mm², for |p| = ``p_GeV`` (scalar or (B,)).

    θ0_s: Highland, PDG RPP 2024 eq. 34.15, for a singly charged particle of ``mass`` (MeV)."""
    z = jnp.asarray(z)
    dtype = z.dtype
    pmag = jnp.atleast_1d(jnp.abs(jnp.asarray(p_GeV, dtype))) * u.GeV  # (B,) MeV/c
    beta = pmag / jnp.sqrt(pmag**2 + mass**2)
    x = jnp.asarray(x_over_X0, dtype)
    theta2 = highland_theta0(pmag[None, :], beta[None, :], x[:, None]) ** 2  # (n_s, B)
    lever = jnp.maximum(z[:, None] - jnp.asarray(z_scatter, dtype)[None, :], 0.0)  # (n, n_s)
    return jnp.einsum("js,sb,ks->jkb", lever, theta2, lever)


# --- small dense linear algebra, batch-last ((n, n, B)) -------------------------------------------
# Written out instead of jnp.linalg.cholesky / lax.linalg.triangular_solve: (i) batch-last, elementwise
# over B, as every kernel of fastmc; (ii) the batched LAPACK calls on CPU hung (threads asleep on a
# futex) for B ≳ 2000 inside one jitted fit with several of them (scipy-openblas 0.3.30, multithreaded;
# OPENBLAS_NUM_THREADS=1 cured it).  Unrolled over the static n (n ≤ ~10 planes: n³/6 multiply-adds of
# (B,) vectors, which XLA fuses into a few loops over B).  Measured on the quickstart reconstruction
# (issue #25): ~3.7x faster than a fori_loop over (n, n, B) arrays (which moved the whole matrix n
# times), for ~1 s more compile; unrolled shrinking slices (A[j:, j:]) were slower and compiled no
# faster.  A triangular factor is a list of rows, L[i][j] (B,) for j ≤ i.
def _cholesky(C):
    """Lower L with L Lᵀ = C for C (n, n, B) symmetric positive definite: outer-product (right-looking)
    Cholesky, column j = A[:, j]/√A[j, j], then A −= col colᵀ (Golub & Van Loan, "Matrix
    Computations", 4th ed., ch. 4), in that order of operations.  Returns rows L[i][j] (B,), j ≤ i.
    Rows and columns that are those of the identity stay so in L."""
    n = C.shape[0]
    tiny = jnp.finfo(C.dtype).tiny
    A = [[C[i, j] for j in range(i + 1)] for i in range(n)]
    L = [[None] * (i + 1) for i in range(n)]
    for j in range(n):
        d = jnp.sqrt(jnp.maximum(A[j][j], tiny))
        for i in range(j, n):
            L[i][j] = A[i][j] / d
        for i in range(j + 1, n):
            for k in range(j + 1, i + 1):
                A[i][k] = A[i][k] - L[i][j] * L[k][j]
    return L


def _solve_lower(L, b):
    """y with L y = b; L rows (n of them), b (n, r, B) (forward substitution, column order)."""
    n = len(L)
    y = []
    for i in range(n):
        bi = b[i]
        for k in range(i):
            bi = bi - L[i][k][None] * y[k]
        y.append(bi / L[i][i][None])
    return jnp.stack(y)


def _solve_upper_t(L, y):
    """x with Lᵀ x = y; L rows (n of them), y (n, r, B) (back substitution, column order)."""
    n = len(L)
    x = [None] * n
    for i in range(n - 1, -1, -1):
        yi = y[i]
        for k in range(n - 1, i, -1):
            yi = yi - L[k][i][None] * x[k]
        x[i] = yi / L[i][i][None]
    return jnp.stack(x)


def _inv_spd(N):
    """Inverse of a batch (k, k, B), k ∈ {2, 3}, of symmetric positive semi-definite matrices by
    cofactors (adjugate / determinant) after Jacobi equilibration S = D⁻¹ N D⁻¹ (D = √diag N);
    returns (N⁻¹, ok) with ok = det S > _DET_MIN (singular systems get a finite placeholder)."""
    k = N.shape[0]
    d = jnp.sqrt(jnp.stack([N[i, i] for i in range(k)]))
    dpos = jnp.all(d > 0, axis=0)
    d = jnp.where(d > 0, d, 1.0)
    S = N / (d[:, None] * d[None, :])
    s = [[S[i, j] for j in range(k)] for i in range(k)]
    if k == 2:
        det = s[0][0] * s[1][1] - s[0][1] * s[1][0]
        adj = [[s[1][1], -s[0][1]], [-s[1][0], s[0][0]]]
    elif k == 3:
        def cof(i, j):
            r = [x for x in range(3) if x != i]
            c = [x for x in range(3) if x != j]
            return (-1) ** (i + j) * (s[r[0]][c[0]] * s[r[1]][c[1]] - s[r[0]][c[1]] * s[r[1]][c[0]])

        adj = [[cof(j, i) for j in range(3)] for i in range(3)]
        det = s[0][0] * adj[0][0] + s[0][1] * adj[1][0] + s[0][2] * adj[2][0]
    else:
        raise ValueError(f"_inv_spd: k = {k} not in (2, 3)")
    ok = dpos & (det > _DET_MIN)
    det = jnp.where(ok, det, 1.0)
    Sinv = jnp.stack([jnp.stack(row) for row in adj]) / det
    return Sinv / (d[:, None] * d[None, :]), ok


class _Whitener(NamedTuple):
    """L of the masked covariance (rows, :func:`_cholesky`), or the resolutions (n, B) when C is diagonal."""

    L: Any
    present: Any  # (n, B) bool

    def white(self, rhs):
        """L⁻¹ P rhs for rhs (n, r, B); absent rows are exactly zero."""
        rhs = jnp.where(self.present[:, None], rhs, 0.0)
        if not isinstance(self.L, list):
            return rhs / self.L[:, None]
        return _solve_lower(self.L, rhs)

    def white_t(self, rhs):
        """P L⁻ᵀ rhs (the transpose map, for the estimator's weights)."""
        out = rhs / self.L[:, None] if not isinstance(self.L, list) else _solve_upper_t(self.L, rhs)
        return jnp.where(self.present[:, None], out, 0.0)


def _whitener(sig2, c_ms, present):
    """Whitening by the covariance diag(σ²) + C_MS masked as in the module docstring ("Missing hits")."""
    if c_ms is None:
        return _Whitener(jnp.sqrt(sig2), present)
    n = sig2.shape[0]
    eye = jnp.eye(n, dtype=bool)[:, :, None]
    C = c_ms + jnp.where(eye, sig2[:, None, :], 0.0)
    both = present[:, None, :] & present[None, :, :]
    Cm = jnp.where(both, C, jnp.where(eye, 1.0, 0.0).astype(C.dtype))
    return _Whitener(_cholesky(Cm), present)


def _lsq(Aw, mw):
    """Least squares of whitened (n, k, B) design and (n, B) data: (θ (k, B), N⁻¹ (k, k, B), χ², ok);
    one step of iterative refinement on the residual (module docstring, "Numerics")."""
    N = jnp.einsum("nkb,nlb->klb", Aw, Aw)
    Ninv, ok = _inv_spd(N)
    theta = jnp.einsum("klb,nlb,nb->kb", Ninv, Aw, mw)
    r = mw - jnp.einsum("nkb,kb->nb", Aw, theta)
    theta = theta + jnp.einsum("klb,nlb,nb->kb", Ninv, Aw, r)
    r = mw - jnp.einsum("nkb,kb->nb", Aw, theta)
    return theta, Ninv, jnp.sum(r * r, axis=0), ok


def _line_at_ref(w, z, z_ref, meas_b, meas_v):
    """Straight lines in both projections through the hits w.present, parametrised at z_ref:
    returns per projection (θ (2, B), N⁻¹ (2, 2, B), χ², ok) and the whitened design (n, 2, B)."""
    one = jnp.ones_like(meas_b)
    dz = jnp.broadcast_to((z - z_ref)[:, None], meas_b.shape)
    W = w.white(jnp.stack([one, dz, meas_b, meas_v], 1))
    Aw = W[:, :2]
    return _lsq(Aw, W[:, 2]), _lsq(Aw, W[:, 3]), Aw


def _value_weights(w, Aw, Ninv):
    """g (n, B): the fitted line's value at z_ref is g·m (θ = N⁻¹ Aᵀ C⁻¹ P m, first component)."""
    v = jnp.einsum("nkb,kb->nb", Aw, Ninv[:, 0])
    return w.white_t(v[:, None])[:, 0]


def _prepare(planes: Planes, dtype):
    """z (n,), bend, nonbend (n, B) with absent hits zeroed (they may be NaN), present, σ² (n, B)."""
    z = jnp.asarray(planes.z).astype(dtype)
    present = jnp.asarray(planes.present).astype(bool)
    mb = jnp.where(present, jnp.asarray(planes.bend, dtype), 0.0)
    mv = jnp.where(present, jnp.asarray(planes.nonbend, dtype), 0.0)
    sig = jnp.asarray(planes.sigma, dtype)
    sig2 = jnp.broadcast_to((sig if sig.ndim == 2 else sig[:, None]) ** 2, mb.shape)
    return z, mb, mv, present, sig2


def fit_track(
    planes: Planes,
    z_kick,
    field_integral,
    *,
    charge: int = 1,
    p_scatter_GeV=None,
    ms_iterations: int = 1,
    p_min_scatter_GeV: float = 1.0,
    mass: float = u.muon_mass_c2,
    incoming: Planes | None = None,
    n_up: int | None = None,
) -> dict[str, jnp.ndarray]:
    """Global fit of one spectrometer (module docstring); every output is a (B,) array.

    ``z_kick`` (n_m,) mm and ``field_integral`` (n_m,) T·m: the thin lenses bending in the bend
    plane.  Planes upstream of all lenses form the upstream arm, planes downstream of all of them
    the downstream arm (planes between lenses enter the global fit only).  ``charge`` is the
    assumed charge: ``p_GeV`` = charge/λ is positive when the track bends as that charge does.
    ``p_scatter_GeV`` (scalar or (B,)) seeds θ0 when ``planes.x_over_X0`` is given, then θ0 is
    re-evaluated ``ms_iterations`` times (static) at the previous fit's max(|p|, p_min_scatter_GeV).
    ``incoming``: an optional separate segment (the track before the target): straight lines in
    both projections, reported against the upstream arm (kink = slope_up − slope_in); its θ0 is
    evaluated at ``p_scatter_GeV`` (the beam momentum before the target), never refitted.
    ``n_up`` (static, optional): the planes are ordered so that only the first ``n_up`` can be upstream
    of the lenses and only the others downstream (a plane outside its range belongs to neither arm);
    then each arm's straight-line fit factorises its own block of C only (the same fit, less work).

    Keys: ok (global fit defined in both projections: ≥ 1 hit on each side, ≥ 3 hits),
    p_GeV, sigma_p_GeV (= σ_λ/λ², first order), qop_per_GeV (λ), sigma_qop_per_GeV, u0_mm, t0,
    v0_mm, s0 (the lines at z̄), chi2_bend, ndf_bend (n − 3), chi2_nonbend, ndf_nonbend (n − 2),
    chi2, ndf, chi2ndf, hits, hits_up, hits_down, match_ok (both arms ≥ 2 hits),
    match_bend_mm / match_nonbend_mm (downstream minus upstream arm line at z̄),
    sigma_match_bend_mm / ..., match_bend_pull / match_nonbend_pull; with ``incoming``: hits_in,
    chi2_in, ndf_in (both projections), kink_ok, kink_bend_rad, kink_nonbend_rad and their
    sigma_… (fit covariances of the two lines; scattering between the segments not included).
    Where a flag is 0 its numbers are placeholders: p 0, σ, χ² and pulls +inf.
    """
    dtype = jnp.asarray(planes.bend).dtype
    z, mb, mv, present, sig2 = _prepare(planes, dtype)
    n, B = mb.shape
    z_kick = jnp.atleast_1d(jnp.asarray(z_kick, dtype))
    bl = jnp.atleast_1d(jnp.asarray(field_integral, dtype))
    z_ref = kick_point(z_kick, bl)
    ms = planes.x_over_X0 is not None
    if (ms or (incoming is not None and incoming.x_over_X0 is not None)) and p_scatter_GeV is None:
        raise ValueError("fit_track: p_scatter_GeV is needed with x_over_X0 (θ0 depends on p)")
    p_seed = jnp.broadcast_to(jnp.asarray(1.0 if p_scatter_GeV is None else p_scatter_GeV, dtype), (B,))

    up = z < jnp.min(z_kick)
    down = z > jnp.max(z_kick)
    n_arm = n_up  # static: planes [0, n_up) can only be upstream, [n_up, n) only downstream
    if n_arm is not None:
        up = up & (jnp.arange(n) < n_arm)
        down = down & (jnp.arange(n) >= n_arm)
    n_hits = jnp.sum(present, axis=0)
    n_up = jnp.sum(present & up[:, None], axis=0)
    n_dn = jnp.sum(present & down[:, None], axis=0)

    # design (n, 3, B): 1, z − z̄, Σ_m 0.2998 ∫B dl_m (z − z_m)₊  [mm per (c/GeV)]; then the data
    a2 = jnp.sum(u.GEV_PER_TESLA_METRE * bl[None, :] * jnp.maximum(z[:, None] - z_kick[None, :], 0.0), axis=1)
    cols = jnp.broadcast_to(jnp.stack([jnp.ones_like(z), z - z_ref, a2], 1)[:, :, None], (n, 3, B))
    rhs = jnp.concatenate([cols, mb[:, None], mv[:, None]], 1)
    z_s = z if planes.z_scatter is None else jnp.asarray(planes.z_scatter, dtype)

    c_ms = None
    p_ms = p_seed
    for it in range(ms_iterations + 1 if ms else 1):  # static count: unrolled, no data-dependent loop
        if ms:
            c_ms = scattering_covariance(z, z_s, planes.x_over_X0, jnp.maximum(jnp.abs(p_ms), p_min_scatter_GeV),
                                         mass)
        W = _whitener(sig2, c_ms, present).white(rhs)
        th_b, Ni_b, chi2_b, okb = _lsq(W[:, :3], W[:, 3])
        th_v, _, chi2_v, okv = _lsq(W[:, :2], W[:, 4])
        if ms and it < ms_iterations:
            good = okb & (th_b[2] != 0)
            p_ms = jnp.where(good, 1.0 / jnp.where(good, th_b[2], 1.0), p_seed)

    ok = okb & okv & (n_up >= 1) & (n_dn >= 1) & (n_hits >= 3)
    lam = th_b[2]
    sig_lam = jnp.sqrt(jnp.maximum(Ni_b[2, 2], 0.0))
    okp = ok & (lam != 0)
    lam_safe = jnp.where(okp, lam, 1.0)
    out: dict[str, jnp.ndarray] = {"ok": ok}
    out["p_GeV"] = jnp.where(okp, charge / lam_safe, 0.0)
    out["sigma_p_GeV"] = jnp.where(okp, sig_lam / lam_safe**2, _BIG)  # |dp/dλ| σ_λ
    out["qop_per_GeV"] = jnp.where(ok, lam, 0.0)
    out["sigma_qop_per_GeV"] = jnp.where(ok, sig_lam, _BIG)
    out["u0_mm"], out["t0"] = th_b[0], th_b[1]
    out["v0_mm"], out["s0"] = th_v[0], th_v[1]
    nf = n_hits.astype(dtype)
    out["chi2_bend"] = jnp.where(ok, chi2_b, _BIG)
    out["ndf_bend"] = nf - 3
    out["chi2_nonbend"] = jnp.where(ok, chi2_v, _BIG)
    out["ndf_nonbend"] = nf - 2
    out["chi2"] = out["chi2_bend"] + out["chi2_nonbend"]
    out["ndf"] = 2 * nf - 5
    out["chi2ndf"] = jnp.where(ok & (out["ndf"] > 0), out["chi2"] / jnp.maximum(out["ndf"], 1.0), _BIG)
    out["hits"] = nf
    out["hits_up"] = n_up.astype(dtype)
    out["hits_down"] = n_dn.astype(dtype)

    # matching: straight lines of each arm (GLS with the same C restricted to the arm), both at z̄;
    # the residual r = (g_dn − g_up)·m is linear in the measurements, so var r = dᵀ C d with the full
    # C (the arms are correlated through the scatterers they share); the same d in both projections
    # (with n_up, each arm's covariance block alone is factorised: the other planes' rows are those of
    # the identity in the masked C, so they only pad the arm's factor and whitened rows with zeros)
    arms = []
    for arm, sl in ((up, slice(0, n_arm)), (down, slice(n_arm, n))):
        if n_arm is None:
            sl = slice(0, n)
        cs = None if c_ms is None else c_ms[sl, sl]
        w = _whitener(sig2[sl], cs, (present & arm[:, None])[sl])
        (tb, Nb, _, okb_a), (tv, Nv, _, okv_a), Aw = _line_at_ref(w, z[sl], z_ref, mb[sl], mv[sl])
        g = jnp.zeros_like(mb).at[sl].set(_value_weights(w, Aw, Nb))
        arms.append((tb, Nb, tv, Nv, okb_a & okv_a, g))
    (tb_u, Nb_u, tv_u, Nv_u, ok_u, g_u), (tb_d, _, tv_d, _, ok_d, g_d) = arms
    match_ok = ok_u & ok_d & (n_up >= 2) & (n_dn >= 2)
    out["match_ok"] = match_ok
    d = g_d - g_u
    var = jnp.sum(d * d * sig2, axis=0)
    if c_ms is not None:
        var = var + jnp.einsum("jb,jkb,kb->b", d, c_ms, d)
    sig_m = jnp.sqrt(jnp.maximum(var, 0.0))
    sig_safe = jnp.where(match_ok & (sig_m > 0), sig_m, 1.0)
    for name, r in (("bend", tb_d[0] - tb_u[0]), ("nonbend", tv_d[0] - tv_u[0])):
        out[f"match_{name}_mm"] = jnp.where(match_ok, r, _BIG)
        out[f"sigma_match_{name}_mm"] = jnp.where(match_ok, sig_m, _BIG)
        out[f"match_{name}_pull"] = jnp.where(match_ok, r / sig_safe, _BIG)

    if incoming is not None:
        zi, mbi, mvi, pri, s2i = _prepare(incoming, dtype)
        c_in = None
        if incoming.x_over_X0 is not None:
            zsi = zi if incoming.z_scatter is None else jnp.asarray(incoming.z_scatter, dtype)
            # θ0 at the seed: the incoming segment is before the target, at the beam momentum
            c_in = scattering_covariance(zi, zsi, incoming.x_over_X0, jnp.maximum(jnp.abs(p_seed), p_min_scatter_GeV),
                                         mass)
        w_i = _whitener(s2i, c_in, pri)
        (tb_i, Nb_i, cb_i, okb_i), (tv_i, Nv_i, cv_i, okv_i), _ = _line_at_ref(w_i, zi, z_ref, mbi, mvi)
        n_in = jnp.sum(pri, axis=0)
        kink_ok = okb_i & okv_i & ok_u & (n_in >= 2) & (n_up >= 2)
        out["kink_ok"] = kink_ok
        out["hits_in"] = n_in.astype(dtype)
        out["chi2_in"] = jnp.where(kink_ok, cb_i + cv_i, _BIG)
        out["ndf_in"] = 2 * n_in.astype(dtype) - 4
        for name, ku, ki, Nu, Ni in (("bend", tb_u, tb_i, Nb_u, Nb_i), ("nonbend", tv_u, tv_i, Nv_u, Nv_i)):
            out[f"kink_{name}_rad"] = jnp.where(kink_ok, ku[1] - ki[1], _BIG)
            sk = jnp.sqrt(jnp.maximum(Nu[1, 1] + Ni[1, 1], 0.0))
            out[f"sigma_kink_{name}_rad"] = jnp.where(kink_ok, sk, _BIG)
    return out


# --- the Setup-level wrapper ------------------------------------------------------------------------
def planes_of(setup: Setup, names, hits, plane: str, x_over_X0: Mapping[str, float] | None = None) -> Planes:
    """:class:`Planes` of the named trackers from reconstruct's ``hits`` ({name: (mx, my, present)});
    z at each tracker's exit face (as :func:`fastmc.reconstruct.fit_arm`)."""
    dtype = hits[names[0]][0].dtype
    z = jnp.stack([(setup.element(n).z + setup.element(n).thickness).astype(dtype) for n in names])
    ib, iv = (0, 1) if plane == "x" else (1, 0)
    xo = None if x_over_X0 is None else jnp.asarray([x_over_X0[n] for n in names], dtype)
    return Planes(
        z=z,
        bend=jnp.stack([hits[n][ib] for n in names]),
        nonbend=jnp.stack([hits[n][iv] for n in names]),
        present=jnp.stack([hits[n][2] for n in names]),
        sigma=jnp.stack([setup.element(n).resolution for n in names]).astype(dtype),
        x_over_X0=xo,
    )


def add_gap_scatterers(p: Planes, gap_X0_mm: float | None) -> Planes:
    """Add the gap medium between consecutive measurement planes as two thin scatterers per gap at
    the Gauss–Legendre points z_a + L (1/2 ∓ 1/(2√3)), each x/X0 = L/(2 X0) (module docstring).

    Highland is then applied to each half gap: Σ θ0² = 2 θ0(L/2X0)², which differs from θ0(L/X0)²
    through the logarithm by (1 + 0.038 ln(x/2))²/(1 + 0.038 ln x)² − 1 ≈ −6 % for x = 5 % X0,
    inside Highland's own ±11 % (PDG RPP 2024 §34.3).  The medium before the first plane does not
    matter (it moves all planes along one line).  ``gap_X0_mm`` is one value for every gap (the gap
    medium inside the magnets included)."""
    if gap_X0_mm is None:
        return p
    z = jnp.asarray(p.z)
    zb = z if p.z_scatter is None else jnp.asarray(p.z_scatter, z.dtype)
    xb = jnp.zeros_like(zb) if p.x_over_X0 is None else jnp.asarray(p.x_over_X0, z.dtype)
    zs = jnp.sort(z)
    a, L = zs[:-1], jnp.diff(zs)
    g = 0.5 / jnp.sqrt(3.0)
    zg = jnp.concatenate([a + L * (0.5 - g), a + L * (0.5 + g)])
    xg = jnp.concatenate([L, L]) / (2.0 * gap_X0_mm)
    return p._replace(x_over_X0=jnp.concatenate([xb, xg]), z_scatter=jnp.concatenate([zb, zg]))


def fit_spectrometer(
    setup: Setup,
    spectrometer: Spectrometer,
    hits: Mapping[str, tuple],
    *,
    x_over_X0: Mapping[str, float] | None = None,
    gap_X0_mm: float | None = None,
    p_scatter_GeV=None,
    ms_iterations: int = 1,
) -> dict[str, jnp.ndarray]:
    """:func:`fit_track` of ``spectrometer`` (its upstream + downstream arms; its ``incoming``
    trackers as the separate incoming segment) from reconstruct's ``hits`` dict.

    ``x_over_X0``: {tracker name: thickness/X0} turns multiple scattering on (None: off);
    ``gap_X0_mm``: radiation length of the medium between the planes (mm, density scale
    included), None for none; ``p_scatter_GeV``: θ0 seed, default the beam momentum.
    The magnets must all bend in the spectrometer's plane (checked on the static structure)."""
    mags = [setup.element(m) for m in spectrometer.magnets]
    bad = [m.name for m in mags if m.bend_plane != spectrometer.plane]
    if bad:
        raise ValueError(f"fit_spectrometer: magnets {bad} do not bend in plane {spectrometer.plane!r}")
    names = tuple(spectrometer.upstream) + tuple(spectrometer.downstream)
    planes = add_gap_scatterers(planes_of(setup, names, hits, spectrometer.plane, x_over_X0), gap_X0_mm)
    dtype = planes.bend.dtype
    z_kick = jnp.stack([(m.z + 0.5 * m.thickness).astype(dtype) for m in mags])
    bl = jnp.stack([m.field_integral.astype(dtype) for m in mags])
    if p_scatter_GeV is None:
        p_scatter_GeV = setup.beam.momentum / u.GeV
    incoming = None
    if spectrometer.incoming:
        inc = planes_of(setup, tuple(spectrometer.incoming), hits, spectrometer.plane, x_over_X0)
        incoming = add_gap_scatterers(inc, gap_X0_mm)
    # the model orders upstream trackers, magnets, downstream trackers in z (fastmc.config.model)
    return fit_track(planes, z_kick, bl, charge=setup.beam.charge, p_scatter_GeV=p_scatter_GeV,
                     ms_iterations=ms_iterations, incoming=incoming, n_up=len(spectrometer.upstream))
