"""Sampled energy losses through a slab against the cross sections (independent numerical references).

The references here use only the host cross sections ``dsigma_dv`` (numpy, float64) and the
tables' continuous loss, never the transport's sampling code.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from fastmc import units as u
from fastmc.api import propagate_slab
from fastmc.materials import get_material
from fastmc.physics import PROCESSES, build_tables, continuous_ekin_after, continuous_straggling_var, dsigma_dv

E_KIN = 160e3  # MeV
ETOT = E_KIN + u.muon_mass_c2
PROCS = ("ionisation.bbk", "brems.kkp", "pair.kp", "photonuclear.bb")
V_CUT = 1e-3  # run-card default; e_cut (50 MeV) is below v_cut·E at 160 GeV


def _v_grid(proc, mat, n=4000):
    p = PROCESSES[proc]
    lo = max(V_CUT, p.v_min(mat, ETOT))
    hi = p.v_max(mat, ETOT)
    # log grid, refined near the upper kinematic limit
    return np.unique(np.concatenate([np.geomspace(lo, hi, n), hi - np.geomspace(1e-9, hi - lo, n // 4)[::-1]]))


def _trapz(y, x):
    return float(np.sum(0.5 * (y[1:] + y[:-1]) * np.diff(x)))


def test_sampling_mean_loss_per_process_equals_cross_section_integral():
    """⟨ΔE_p⟩ over 1 X0 of lead = ρL·E·∫_{v_c} v dσ_p/dv dv (E constant to 0.3 % over 1 X0)."""
    mat = get_material("lead")
    thickness = mat.X0_mm
    n = 1_000_000
    _, rec = propagate_slab("lead", thickness, E_KIN / 1e3, n, seed=21, return_record=True)
    e_proc = rec["rec_e_proc"].astype(np.float64)  # (n, 4) MeV
    rho_l = mat.density * thickness / 10.0  # g/cm²
    for j, proc in enumerate(PROCS):
        v = _v_grid(proc, mat)
        ref = rho_l * ETOT * _trapz(v * dsigma_dv(proc, mat, ETOT, v), v)
        mean = e_proc[:, j].mean()
        err = e_proc[:, j].std() / math.sqrt(n)
        # MC error plus 1 % for the energy change over the slab and table interpolation
        assert abs(mean - ref) < 3 * err + 0.01 * ref, f"{proc}: {mean:.4g} ± {err:.2g} MeV vs {ref:.4g} MeV"


def _compound_poisson_tail(material: str, thickness_mm: float, fractions):
    """P(ΔE > f·T) from the cross sections: continuous Gaussian ⊗ compound Poisson (FFT), E fixed."""
    mat = get_material(material)
    rho_l = mat.density * thickness_mm / 10.0
    n_bins = 2**17
    h = 2.0 * E_KIN / n_bins  # grid to 2T to avoid wrap-around
    edges = np.arange(n_bins + 1) * h
    mu = np.zeros(n_bins)
    for proc in PROCS:
        v = _v_grid(proc, mat, 20000)
        dens = rho_l * dsigma_dv(proc, mat, ETOT, v)  # per unit v
        # expected number of interactions in each ΔE bin: integrate dens dv over the bin
        cum = np.concatenate([[0.0], np.cumsum(0.5 * (dens[1:] + dens[:-1]) * np.diff(v))])
        mu += np.diff(np.interp(edges / ETOT, v, cum, left=0.0, right=cum[-1]))
    lam = mu.sum()
    pmf = np.real(np.fft.ifft(np.exp(np.fft.fft(mu) - lam)))
    pmf = np.clip(pmf, 0.0, None)
    # continuous part: mean and straggling from the tables (sub-cut loss only)
    t = build_tables([mat])
    d_cont = E_KIN - float(continuous_ekin_after(t, 0, np.array([E_KIN]), thickness_mm)[0])
    sig = math.sqrt(float(continuous_straggling_var(t, 0, np.array([E_KIN]), thickness_mm)[0]))
    centres = (edges[:-1] + edges[1:]) / 2
    out = []
    from scipy.stats import norm

    for f in fractions:
        x = f * E_KIN
        out.append(float(np.sum(pmf * norm.sf(x, loc=centres + d_cont, scale=sig))))
    return out, lam


@pytest.mark.slow
def test_sampling_loss_fractions_in_40X0_lead_match_cross_sections():
    fractions = (0.05, 0.20, 0.50)
    thickness = 40 * get_material("lead").X0_mm
    ref, lam = _compound_poisson_tail("lead", thickness, fractions)
    n = 2_000_000
    out = propagate_slab("lead", thickness, E_KIN / 1e3, n, seed=33)
    loss = E_KIN / 1e3 - out
    for f, p_ref in zip(fractions, ref):
        k = int(np.sum(loss > f * E_KIN / 1e3))
        p = k / n
        err = math.sqrt(p_ref * (1 - p_ref) / n)
        # MC error, plus 3 % for what the reference neglects: energy degradation between
        # successive interactions (v is relative to the current energy in the MC)
        assert abs(p - p_ref) < 3 * err + 0.03 * p_ref, f"P(ΔE > {f:.0%}): MC {p:.4g} ({k} events) vs {p_ref:.4g}"
    assert lam > 0.1  # the reference is non-trivial: several interactions per muon are possible
