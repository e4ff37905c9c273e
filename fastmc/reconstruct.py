"""Reconstruction: selection variables from measured hits and energies (no truth used).

Momenta.  Each spectrometer's momentum comes from one global least-squares fit of all the hits of
its two arms, the magnets as kinks of known ∫B dl, with multiple scattering in the tracker planes
and in the gap medium in the covariance (:func:`fastmc.trackfit.fit_spectrometer`; DESIGN.md §9).
Per spectrometer (``<out>`` = ``p_in`` / ``p_out``):

* ``<out>_GeV``: the fitted p (q/p of the bend-plane fit), −1 when no track: an arm with fewer than two
  hits, a singular fit, or a bend of the wrong sign; ``in_ok`` / ``out_ok`` say which;
* ``<out>_chi2ndf``: χ²/ndf of the whole track in both projections (ndf = 2n − 5), +inf without a track;
* ``<out>_match_mm`` and ``<out>_match_pull``: the residual between the straight lines of the two
  arms at the magnets' kick point (both projections, in quadrature) and the same in units of its
  standard deviation (√(pull_bend² + pull_nonbend²), each pull ~ N(0, 1) for a clean track): a
  faked slope of one arm misses the other arm's segment there by the slope error × the lever arm;
* ``<out>_hits_up``, ``<out>_hits_down`` and (with ``incoming`` trackers) ``<out>_hits_in``.

Kinks.  When the spectrometer names ``incoming`` trackers, ``kink_<out>_mrad`` is the angle
between the incoming track and the upstream arm (straight-line fits of each, both projections, no
field between them) and ``kink_<out>_pt_MeV`` that angle × |p|, the transverse kick at the target.
When the model has a ``p_in`` spectrometer and incoming trackers, ``kink_beam_mrad`` is the angle
between the beam track behind the momentum station (its downstream arm) and the incoming track: a
beam kaon or pion that decays there shows up as a kink of p*/p ≈ mrad (the 2022 analysis matches the
BMS and Micromegas tracks, PRL 132 (2024) 211803).  These straight-line arm fits (:func:`fit_arm`)
weight hits by their resolutions only; the momentum channel's integrated kink cut relies on them
being linear in the hits.
"""

from __future__ import annotations

import dataclasses

import jax.numpy as jnp

from fastmc import units as u
from fastmc.geometry import Setup, Spectrometer
from fastmc.trackfit import fit_spectrometer


def fit_line(z, m, w):
    """Weighted LSQ line m = a + b z along axis 0 of (n_planes, B) arrays; returns (a, b, ok)."""
    s = jnp.sum(w, axis=0)
    sz = jnp.sum(w * z, axis=0)
    sm = jnp.sum(w * m, axis=0)
    szz = jnp.sum(w * z * z, axis=0)
    szm = jnp.sum(w * z * m, axis=0)
    det = s * szz - sz * sz
    ok = det > 0
    det = jnp.where(ok, det, 1.0)
    b = (s * szm - sz * sm) / det
    a = (szz * sm - sz * szm) / det
    return a, b, ok


def fit_arm(setup: Setup, names, hits, plane: str):
    """Slope, ok flag, χ² and hit count of a straight-line fit in one projection."""
    dtype = hits[names[0]][0].dtype
    zc = jnp.stack([(setup.element(n).z + setup.element(n).thickness).astype(dtype) for n in names])
    meas = jnp.stack([hits[n][0] if plane == "x" else hits[n][1] for n in names])
    present = jnp.stack([hits[n][2] for n in names])
    sig = jnp.stack([setup.element(n).resolution for n in names]).astype(dtype)
    dz = zc[:, None] - zc[0]
    w = jnp.where(present, 1.0 / sig[:, None] ** 2, 0.0)
    a, b, ok = fit_line(dz, meas, w)
    chi2 = jnp.sum(w * (meas - a - b * dz) ** 2, axis=0)
    n_hits = jnp.sum(present, axis=0)
    return b, ok & (n_hits >= 2), chi2, n_hits


def kink_parts(setup: Setup, s, hits):
    """Signed kink (rad) between spectrometer ``s``'s incoming track and its upstream arm, in its
    bend plane and in the other projection, and the ok flag of the four fits."""
    other = "y" if s.plane == "x" else "x"
    b_up, ok_up, _, _ = fit_arm(setup, s.upstream, hits, s.plane)
    bi_p, oki_p, _, _ = fit_arm(setup, s.incoming, hits, s.plane)
    bi_o, oki_o, _, _ = fit_arm(setup, s.incoming, hits, other)
    bu_o, oku_o, _, _ = fit_arm(setup, s.upstream, hits, other)
    return b_up - bi_p, bu_o - bi_o, ok_up & oki_p & oki_o & oku_o


def global_fit(setup: Setup, s: Spectrometer, hits: dict) -> dict[str, jnp.ndarray]:
    """:func:`fastmc.trackfit.fit_spectrometer` of ``s`` with the scattering of the model: each
    tracker plane's thickness in radiation lengths and the gap medium (two thin scatterers per gap);
    θ0 at the beam momentum, then once more at the fitted one.  The incoming segment is left out:
    the kink variables come from :func:`fit_arm` (linear in the hits), so fitting it here too would
    be work done twice in the chain's hot path."""
    s = dataclasses.replace(s, incoming=())
    names = tuple(s.upstream) + tuple(s.downstream)
    return fit_spectrometer(setup, s, hits, x_over_X0={n: setup.element(n).x_over_X0 for n in names},
                            gap_X0_mm=setup.gap_X0, p_scatter_GeV=setup.beam.momentum / u.GeV, ms_iterations=1)


def energy_variables(setup: Setup, measured: dict, muon_id=None) -> dict[str, jnp.ndarray]:
    """Calorimeter selection variables: ``e_<group>_GeV``/``_MeV`` per readout group,
    ``e_<element>_GeV`` per slab of a group of several (``measured["element_energies"]``), and with
    ``muon_id`` (:class:`fastmc.config.MuonIdConfig`: group, min, max in MeV)
    ``n_<group>_mip_modules``, the number of the group's slabs whose visible energy lies in the
    window (muon identification: a muon crossing the HCAL deposits a MIP signal in each module)."""
    out: dict[str, jnp.ndarray] = {}
    for group, e in measured["energies"].items():
        out[f"e_{group}_GeV"] = e / u.GeV
        out[f"e_{group}_MeV"] = e / u.MeV
    by_el = measured.get("element_energies", {})
    members: dict[str, list[str]] = {}
    for el in setup.elements:
        if el.name in by_el:
            members.setdefault(el.group, []).append(el.name)
    for names in members.values():
        if len(names) > 1:
            out.update({f"e_{n}_GeV": by_el[n] / u.GeV for n in names})
    if muon_id is not None:
        names = members[muon_id.group]
        inside = [(by_el[n] >= muon_id.min) & (by_el[n] <= muon_id.max) for n in names]
        count = sum(x.astype(jnp.int32) for x in inside)
        out[f"n_{muon_id.group}_mip_modules"] = count.astype(by_el[names[0]].dtype)
    return out


def reconstruct(setup: Setup, measured: dict, muon_id=None) -> dict[str, jnp.ndarray]:
    """Selection variables from measured hits and energies (units in the names; module docstring);
    ``muon_id``: the card's [muon_id] window (:func:`energy_variables`)."""
    out: dict[str, jnp.ndarray] = {}
    hits = measured["hits"]
    for s in setup.spectrometers:
        g = global_fit(setup, s, hits)
        p = g["p_GeV"]
        ok = g["ok"] & g["match_ok"] & (p > 0)  # p > 0: the track bends as the beam's charge does
        out[f"{s.output}_GeV"] = jnp.where(ok, p, -1.0)
        out[f"{s.output}_chi2ndf"] = jnp.where(ok, g["chi2ndf"], jnp.inf).astype(p.dtype)
        match = jnp.sqrt(g["match_bend_mm"] ** 2 + g["match_nonbend_mm"] ** 2)
        pull = jnp.sqrt(g["match_bend_pull"] ** 2 + g["match_nonbend_pull"] ** 2)
        out[f"{s.output}_match_mm"] = jnp.where(ok, match, jnp.inf).astype(p.dtype)
        out[f"{s.output}_match_pull"] = jnp.where(ok, pull, jnp.inf).astype(p.dtype)
        if s.incoming:
            # kink between the incoming track and the spectrometer's upstream arm, both projections
            # (no field between them): large-angle scatters in the target and bad hits show up here
            n_in = jnp.sum(jnp.stack([hits[n][2] for n in s.incoming]), axis=0)
            out[f"{s.output}_hits_in"] = n_in.astype(p.dtype)
            kx, ky, kok = kink_parts(setup, s, hits)
            kink = jnp.sqrt(kx**2 + ky**2) / u.mrad
            out[f"kink_{s.output}_mrad"] = jnp.where(kok, kink, jnp.inf).astype(p.dtype)
            # transverse-momentum kick at the target, p·θ: multiple scattering gives a p-independent
            # width (13.6 MeV·√(x/X0)(1 + 0.038 ln(x/X0)) ≈ 98 MeV per projection for 40 X0 of Pb)
            out[f"kink_{s.output}_pt_MeV"] = jnp.where(kok & ok, kink * jnp.abs(p), jnp.inf).astype(p.dtype)
        out[f"{'in' if s.output == 'p_in' else 'out'}_ok"] = ok.astype(p.dtype)
        out[f"{s.output}_hits_up"] = g["hits_up"].astype(p.dtype)
        out[f"{s.output}_hits_down"] = g["hits_down"].astype(p.dtype)
    beam = [s for s in setup.spectrometers if s.output == "p_in"]
    inc = [s for s in setup.spectrometers if s.incoming]
    if beam and inc:
        slopes = []
        for names in (beam[0].downstream, inc[0].incoming):
            bx, okx, _, _ = fit_arm(setup, names, hits, "x")
            by, oky, _, _ = fit_arm(setup, names, hits, "y")
            slopes.append((bx, by, okx & oky))
        (bx1, by1, ok1), (bx2, by2, ok2) = slopes
        kink = jnp.sqrt((bx2 - bx1) ** 2 + (by2 - by1) ** 2) / u.mrad
        out["kink_beam_mrad"] = jnp.where(ok1 & ok2, kink, jnp.inf).astype(kink.dtype)
    out.update(energy_variables(setup, measured, muon_id))
    if "p_out_GeV" in out:  # charged hadrons that punched through the calorimeters (shower_deposits)
        ref = out["p_out_GeV"]
        n_extra = measured.get("counts", {}).get("extra_tracks_p_out")
        out["extra_tracks_p_out"] = jnp.zeros_like(ref) if n_extra is None else n_extra.astype(ref.dtype)
    return out
