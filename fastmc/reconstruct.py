"""Momentum reconstruction from tracker hits (no truth used).

For each spectrometer, straight lines are fitted in the bend plane to the hits of the upstream
and of the downstream arm (weighted least squares, weights 1/σ² for present hits); the bend
angle Δθ = slope_down − slope_up gives p = q · 0.2998 GeV/(T·m) · Σ∫B dl / Δθ.  An arm with
fewer than two hits gives no track (``ok = 0``, p = −1).  Also: the χ²/ndf of the two fits
(``p_out_chi2ndf``), the number of hits of each arm (``p_out_hits_up``, ``p_out_hits_down`` and,
with ``incoming`` trackers, ``p_out_hits_in``: a track-quality requirement against faked slopes),
and, when the spectrometer names ``incoming`` trackers, the kink angle between the incoming track
and its upstream arm (``kink_p_out_mrad``).  When the model has a ``p_in`` spectrometer and
incoming trackers, ``kink_beam_mrad`` is the angle between the beam track behind the momentum
station (its downstream arm) and the incoming track, both projections, with no field between
them: a beam kaon or pion that decays there shows up as a kink of p*/p ≈ mrad (the 2022 analysis
matches the BMS and Micromegas tracks, PRL 132 (2024) 211803).
"""

from __future__ import annotations

import jax.numpy as jnp

from fastmc import units as u
from fastmc.geometry import Setup


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
    """Selection variables from measured hits and energies (units in the names); ``muon_id``:
    the card's [muon_id] window (:func:`energy_variables`)."""
    out: dict[str, jnp.ndarray] = {}
    hits = measured["hits"]
    for s in setup.spectrometers:
        b_up, ok_up, c_up, n_up = fit_arm(setup, s.upstream, hits, s.plane)
        b_dn, ok_dn, c_dn, n_dn = fit_arm(setup, s.downstream, hits, s.plane)
        ndf = n_up + n_dn - 4
        chi2ndf = jnp.where(ndf > 0, (c_up + c_dn) / jnp.maximum(ndf, 1), 0.0)
        bl = sum(setup.element(m).field_integral for m in s.magnets)
        dtheta = b_dn - b_up
        ok = ok_up & ok_dn & (dtheta * setup.beam.charge * jnp.sign(bl) > 0)
        safe = jnp.where(ok, dtheta, 1.0)
        p = setup.beam.charge * u.GEV_PER_TESLA_METRE * bl / safe  # GeV/c
        out[f"{s.output}_GeV"] = jnp.where(ok, p, -1.0)
        out[f"{s.output}_chi2ndf"] = jnp.where(ok, chi2ndf, jnp.inf).astype(p.dtype)
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
        out[f"{s.output}_hits_up"] = n_up.astype(p.dtype)
        out[f"{s.output}_hits_down"] = n_dn.astype(p.dtype)
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
