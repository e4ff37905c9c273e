"""Calorimeter and counter response: the energy lost in the element (and the energy of decay photons or
absorbed hadrons deposited there) is scaled by ``response_scale`` and smeared with
σ/E = a/√E ⊕ b ⊕ c/E (PDG RPP 2024 "Calorimetry" §35.9, E in GeV).  Full containment of
secondaries unless hard transfers shower (:func:`shower_deposits`, :mod:`fastmc.physics.showers`).  Visible
energies of elements sharing a readout ``group`` are summed; the per-element energies are kept too
(muon identification: :func:`fastmc.reconstruct.energy_variables`).
"""

from __future__ import annotations

import math
from typing import Protocol

import jax
import jax.numpy as jnp

from fastmc import units as u
from fastmc.geometry import Setup
from fastmc.physics.showers import (
    LATERAL_TAUS,
    PROC_PHOTONUCLEAR,
    bock_em_share,
    bock_parameters,
    depth_averaged_containment,
    em_square_containment,
    gamma_cdf,
    gamma_moment,
    gflash_parameters,
    hadron_lateral_radius,
    square_containment,
)
from fastmc.response.trackers import inside_area
from fastmc.rng import normal_from_uniform, uniforms


def calorimeter_sigma(edep, stochastic_term, constant_term, noise):
    """σ (MeV) of a calorimeter signal of ``edep`` MeV: a/√E ⊕ b ⊕ c/E with E in GeV."""
    e_gev = jnp.maximum(edep, 0.0) / u.GeV
    var = (stochastic_term**2) * e_gev * u.GeV**2 + (constant_term * edep) ** 2 + noise**2
    return jnp.sqrt(var)




def visible_energies_by_element(setup: Setup, truth: dict, deposits: dict | None,
                                key_r: jax.Array) -> dict[str, jnp.ndarray]:
    """Visible energy (MeV) per read-out slab (by element name): its deposit (``deposits`` from
    :func:`shower_deposits`, or with None the energy lost in the slab itself) scaled by its
    ``response_scale`` and smeared (:func:`calorimeter_sigma`; key fold_in(key_r, element index))."""
    energies: dict[str, jnp.ndarray] = {}
    for i, el in enumerate(setup.elements):
        if el.kind == "slab" and el.readout != "none":
            rec = truth["slabs"][el.name]
            if deposits is None:
                edep = rec["e_cont"] + jnp.sum(rec["e_proc"], axis=-1) + rec.get("e_other", 0.0)
                # the readout sees the muon's own deposit only if it crossed the slab inside the
                # active area (approx.: judged at the exit face; the transport steps through the
                # slab's material wherever the muon crosses it)
                x, y, _ = truth["at"][el.name]
                edep = jnp.where(inside_area(el, x, y), edep, 0.0)
            else:
                edep = deposits[el.name]
            uu = uniforms(jax.random.fold_in(key_r, i), (edep.shape[0], 1), edep.dtype)
            sigma = calorimeter_sigma(edep, el.stochastic_term, el.constant_term, el.noise)
            energies[el.name] = el.response_scale * edep + sigma * normal_from_uniform(uu[:, 0])
    return energies


def group_energies(setup: Setup, by_element: dict[str, jnp.ndarray]) -> dict[str, jnp.ndarray]:
    """Visible energies of :func:`visible_energies_by_element` summed per readout ``group``."""
    energies: dict[str, jnp.ndarray] = {}
    for el in setup.elements:
        if el.name in by_element:
            energies[el.group] = energies.get(el.group, 0.0) + by_element[el.name]
    return energies


def visible_energies(setup: Setup, truth: dict, deposits: dict | None, key_r: jax.Array) -> dict[str, jnp.ndarray]:
    """Visible energy (MeV) per readout group: :func:`visible_energies_by_element` summed over
    the group (:func:`group_energies`)."""
    return group_energies(setup, visible_energies_by_element(setup, truth, deposits, key_r))


class LeadingHadronProposal(Protocol):
    """A biased law of the leading neutral hadron of the photonuclear transfer in slab ``target``
    (importance sampling of calorimeter non-hermeticity), in three draws that
    :func:`shower_deposits` asks for in turn, over the per-source uniforms ``uu`` (B, n, 11) whose
    columns are: 2 leading-neutral choice, 3 z, 4 free (the proposal's), 5 optical depth, 6 free,
    7–8 p_T, 9 azimuth, 10 free; ``carry`` passes what a later draw needs from an earlier one.

    * ``propose_z(uu, z, z_min) -> (z, carry)``: the energy share z of the neutral hadron;
    * ``propose_pt(uu, p_t, neutral_pt, carry) -> (p_t, carry)``: its transverse momentum;
    * ``propose_fate(uu, tau, tau_rem, leading_neutral, z_min, carry) -> (is_leading, tau, log_w)``:
      whether there is one, the optical depth after which it interacts (≥ ``tau_rem``: it
      escapes), and log P/Q (B, n) of all three draws (only the target slab's is used)."""

    target: str

    def propose_z(self, uu, z, z_min) -> tuple: ...

    def propose_pt(self, uu, p_t, neutral_pt, carry) -> tuple: ...

    def propose_fate(self, uu, tau, tau_rem, leading_neutral, z_min, carry) -> tuple: ...


N_SHOWER_UNIFORMS = 11
N_CHARGED_UNIFORMS = 3  # leading charged hadron: choice, z, optical depth (own stream: key 30_002)
# rows per block of the compacted shower kernel (_compacted_rows): quickstart, chunk 16 384, 2 CPU cores:
# 512 → 2.86, 1024 → 2.82, 2048 → 3.03, 4096 → 3.73, 16 384 → 7.9 µs per muon (one interleaved run)
SHOWER_BLOCK_ROWS = 1024


def _slab_constants(setup: Setup, sh, dtype, proposal) -> dict:
    """Per-slab constants (n,) of :func:`shower_deposits` (boundaries (n+1,)), gathered by a row's slab index."""
    slabs = [el for el in setup.elements if el.kind == "slab"]
    length = jnp.stack([el.thickness * el.density_scale for el in slabs]).astype(dtype)
    mats = jnp.stack([el.material for el in slabs])
    x0, lam = sh.x0[mats], sh.lam[mats]
    sb = jnp.concatenate([jnp.zeros((1,), dtype), jnp.cumsum(length / lam)])
    c = {
        "x0": x0, "lam": lam, "z_eff": sh.z_eff[mats],
        "tb": jnp.concatenate([jnp.zeros((1,), dtype), jnp.cumsum(length / x0)]),  # (n+1,)
        "sb": sb,
        "hw": jnp.stack([el.half_width_x for el in slabs]).astype(dtype),  # rectangular active areas
        "hwy": jnp.stack([el.half_width_y for el in slabs]).astype(dtype),
        "xc": jnp.stack([el.x_centre for el in slabs]).astype(dtype),
        "yc": jnp.stack([el.y_centre for el in slabs]).astype(dtype),
        "zc": jnp.stack([el.z + 0.5 * el.thickness for el in slabs]).astype(dtype),  # slab centres
        "z_front": jnp.stack([jnp.asarray(el.z, dtype) for el in slabs]),
        "thick": jnp.stack([jnp.asarray(el.thickness, dtype) for el in slabs]),
        "ion": sh.dedx_mip[mats] * length,  # a minimum-ionising crossing of the whole slab
    }
    if sh.lateral:
        c["r_moliere"] = sh.r_moliere[mats]
    if proposal is not None:
        c["tgt"] = jnp.asarray([el.name == proposal.target for el in slabs])
    # an extra track in the downstream spectrometer: it got through the slabs between its source and
    # the spectrometer's first plane
    out = [sp for sp in setup.spectrometers if sp.output == "p_out"]
    if out:
        z_sp = jnp.min(jnp.stack([setup.element(nm).z for nm in out[0].upstream]))
        c["before"] = jnp.stack([el.z + el.thickness <= z_sp for el in slabs])  # (n,): a prefix of the slabs
        c["sb_sp"] = jnp.sum(jnp.where(c["before"], sb[1:] - sb[:-1], 0.0))
    return c


def _em_rows(c: dict, sh, i, e_h, t0, x_src, y_src, uu, is_em):
    """(R, n) energies deposited per slab by the EM showers of the rows with ``is_em``
    (:func:`_shower_rows`)."""
    tb, hw, hwy, xc, yc = c["tb"], c["hw"], c["hwy"], c["xc"], c["yc"]
    z_eff_i = c["z_eff"][i]
    split = lambda cdf: cdf[..., 1:] - cdf[..., :-1]  # noqa: E731  (R, n+1) cumulative → (R, n) per slab
    # --- EM: GFLASH profile with per-shower fluctuations
    alpha, beta_ = gflash_parameters(jnp.maximum(e_h, 1.0), z_eff_i, normal_from_uniform(uu[:, 0]),
                                     normal_from_uniform(uu[:, 1]))
    depth = tb - t0[:, None]  # (R, n+1) boundaries' depths from the shower start [X0]
    frac_em = split(gamma_cdf(alpha[:, None], beta_[:, None], depth, sh.gamma_table))
    if sh.lateral:
        t_max = ((alpha - 1.0) / beta_)[:, None]  # (R, 1)
        e_sh = jnp.maximum(e_h, 1.0)[:, None]
        cont = [em_square_containment(tau, e_sh, z_eff_i[:, None], c["r_moliere"][i][:, None], hw,
                                      xc - x_src[:, None], yc - y_src[:, None], hwy) for tau in LATERAL_TAUS]
        moment = split(gamma_moment(alpha[:, None], beta_[:, None], depth, sh.gamma_table))
        frac_em = depth_averaged_containment(cont[0], cont[1], LATERAL_TAUS[0] * t_max, LATERAL_TAUS[1] * t_max,
                                             frac_em, moment)
    return jnp.where(is_em, e_h, 0.0)[:, None] * frac_em


def _shower_rows(c: dict, sh, rows: dict, proposal=None, temperature=None, em: bool = True, had: bool = True):
    """The showers of R source rows, each one (event, source slab) pair: ``rows`` holds ``slab`` (R,)
    int, the slab's hardest transfer ``e_h``, its process ``proc`` and relative depth ``f``, the
    muon's position ``x``, ``y`` at the slab's exit face, and its uniforms ``uu`` (R, 11) and ``uc``
    (R, 3).  Returns the energies deposited per slab (R, n), log P/Q (R,) and the extra-track flag
    (R,) int32 (:func:`shower_deposits`).  A row whose transfer does not shower gives zeros.  ``em``,
    ``had`` (static): the EM and the photonuclear showers are computed (a part left out gives zeros:
    exact for rows whose transfer is not of that kind)."""
    i, e_h, proc, f = rows["slab"], rows["e_h"], rows["proc"], rows["f"]
    x_src, y_src, uu, uc = rows["x"], rows["y"], rows["uu"], rows["uc"]
    tb, sb, hw, hwy, xc, yc = c["tb"], c["sb"], c["hw"], c["hwy"], c["xc"], c["yc"]
    n = hw.shape[0]
    dtb, dsb = tb[1:] - tb[:-1], sb[1:] - sb[:-1]  # (n,)
    x0, lam = c["x0"], c["lam"]
    x0_i, lam_i = x0[i], lam[i]  # (R,): the source slab's
    showered = e_h > sh.threshold
    is_had = showered & (proc == PROC_PHOTONUCLEAR)
    is_em = showered & ~is_had
    t0 = tb[i] + f * dtb[i]  # (R,) start depths
    s0 = sb[i] + f * dsb[i]

    def split(cdf):  # (R, n+1) cumulative → (R, n) per slab
        return cdf[..., 1:] - cdf[..., :-1]

    def hadronic(energy, t_start, s_start, x0_start, lam_start, xa, ya):
        """(R, n) energies deposited per slab by hadronic showers (R,) starting at (t, s), axis at
        (xa, ya) (R,, absolute)."""
        e_par = jnp.maximum(energy, 1.0 * u.GeV)
        a, b, d, _ = bock_parameters(e_par)
        share = bock_em_share(e_par, x0_start, lam_start)
        g_em = split(gamma_cdf(a[:, None], b, tb - t_start[:, None], sh.gamma_table))
        g_h = split(gamma_cdf(a[:, None], d, sb - s_start[:, None], sh.gamma_table))
        frac = share[:, None] * g_em + (1.0 - share[:, None]) * sh.h_over_e * g_h
        if sh.lateral:  # one radial profile for the whole shower (its π⁰ part included)
            radius = hadron_lateral_radius(lam_start, sh.hadron_r95)[:, None]
            frac = frac * square_containment(radius, hw, xc - xa[:, None], yc - ya[:, None], hwy)
        return energy[:, None] * frac

    dep = jnp.zeros(e_h.shape + (n,), e_h.dtype)
    log_w = jnp.zeros(e_h.shape, e_h.dtype)
    extra = jnp.zeros(e_h.shape, jnp.int32)
    if em:
        dep = _em_rows(c, sh, i, e_h, t0, x_src, y_src, uu, is_em)
    if not had:
        return dep, log_w, extra
    # --- photonuclear: a leading neutral hadron or not
    f_ln, z_min = sh.leading_neutral, sh.z_min
    ln = uu[:, 2] < f_ln
    z = z_min + (1.0 - z_min) * uu[:, 3]
    tau = -jnp.log(uu[:, 5])
    if proposal is not None:
        tgt = c["tgt"][i]  # (R,)
        # the neutral hadron's angle (below) uses the proposed z too (angle and energy of one hadron)
        z_b, carry = proposal.propose_z(uu, z, z_min)
        z = jnp.where(tgt, z_b, z)
    # its path: the slabs it meets inside their apertures count, in interaction lengths (sb_eff)
    g2 = -(jnp.log(uu[:, 7]) + jnp.log(uu[:, 8]))  # Gamma(2, 1): p_T = g2·⟨p_T⟩/2 ~ p_T e^{−2p_T/⟨p_T⟩}
    p_t = g2 * 0.5 * sh.neutral_pt
    if proposal is not None:
        p_t_b, carry = proposal.propose_pt(uu, p_t, sh.neutral_pt, carry)
        p_t = jnp.where(tgt, p_t_b, p_t)
    theta = p_t / jnp.maximum(z * e_h, 1.0)
    phi = 2.0 * math.pi * uu[:, 9]
    z_src = c["z_front"][i] + f * c["thick"][i]  # (R,)
    # transverse offset from the shower axis (the beam line through the interaction point, on
    # which the calorimeters are centred up to the beam spot; the model's z axis is not the beam
    # axis after MS1's bend)
    dz = c["zc"] - z_src[:, None]  # (R, n)
    xn = theta[:, None] * jnp.cos(phi)[:, None] * dz
    yn = theta[:, None] * jnp.sin(phi)[:, None] * dz
    # the neutral hadron's position relative to each slab's active-area centre (lateral on), or
    # relative to the muon's line (lateral off: the areas are then taken as centred on it)
    xn_c = xn + x_src[:, None] - xc if sh.lateral else xn
    yn_c = yn + y_src[:, None] - yc if sh.lateral else yn
    src = jnp.arange(n)[None, :] == i[:, None]  # (R, n)
    later = jnp.arange(n)[None, :] > i[:, None]
    if temperature is None:
        met = src | ((jnp.abs(xn_c) <= hw) & (jnp.abs(yn_c) <= hwy) & later)
        width = jnp.where(met, dsb, 0.0)  # (R, n)
    else:  # soft aperture: the fraction of the slab's depth that counts is a logistic of the offset
        edge = temperature * hw
        inside_ap = (jax.nn.sigmoid((hw - jnp.abs(xn_c)) / edge)
                     * jax.nn.sigmoid((hwy - jnp.abs(yn_c)) / (temperature * hwy)))
        width = jnp.where(src, 1.0, jnp.where(later, inside_ap, 0.0)) * dsb
        met = width > 0
    sb_eff = jnp.concatenate([jnp.zeros_like(width[:, :1]), jnp.cumsum(width, axis=-1)], axis=-1)
    s0_eff = jnp.take_along_axis(sb_eff, i[:, None], axis=-1)[:, 0] + f * dsb[i]
    tau_rem = sb_eff[:, -1] - s0_eff
    if proposal is not None:
        ln_b, tau_b, lw = proposal.propose_fate(uu, tau, tau_rem, f_ln, z_min, carry)
        log_w = jnp.where(tgt & is_had, lw, 0.0)
        ln, tau = jnp.where(tgt, ln_b, ln), jnp.where(tgt, tau_b, tau)
    ln = ln & is_had
    # --- or, given no leading neutral, a leading charged hadron (probability leading_charged)
    lc = is_had & ~ln & (uc[:, 0] < sh.leading_charged)
    z_c = z_min + (1.0 - z_min) * uc[:, 1]
    e_soft = jnp.where(is_had, jnp.where(ln, (1.0 - z) * e_h, jnp.where(lc, (1.0 - z_c) * e_h, e_h)), 0.0)
    dep = dep + hadronic(e_soft, t0, s0, x0_i, lam_i, x_src, y_src)
    # leading neutral: interacts after an optical depth τ along its path, or escapes
    s_eff = s0_eff + tau
    inside = met & (s_eff[:, None] >= sb_eff[:, :-1]) & (s_eff[:, None] < sb_eff[:, 1:])  # (R, n)
    frac_in = (s_eff[:, None] - sb_eff[:, :-1]) / jnp.maximum(width, 1e-12)  # position inside that slab
    pick = lambda arr: jnp.sum(jnp.where(inside, arr, 0.0), axis=-1)  # noqa: E731
    s_int = pick(sb[:-1] + frac_in * dsb)
    t_int = pick(tb[:-1] + frac_in * dtb)
    hit = jnp.any(inside, -1)
    x0_int = jnp.where(hit, pick(jnp.broadcast_to(x0, inside.shape)), 1.0)
    lam_int = jnp.where(hit, pick(jnp.broadcast_to(lam, inside.shape)), 1.0)
    e_int = jnp.where(ln & hit, z * e_h, 0.0)  # no slab met before τ ran out: escaped
    # leading charged hadron: along the muon's line through every slab downstream (its angle,
    # p_T/p ≲ 10 mrad, is neglected next to the apertures); interacts after an optical depth τ_c
    s_c = s0 - jnp.log(uc[:, 2])
    through = lc & (s_c >= sb[-1])  # got through every slab downstream
    s_end = jnp.where(through, sb[-1], s_c)
    cross = jnp.clip(jnp.minimum(s_end[:, None], sb[1:]) - jnp.maximum(s0[:, None], sb[:-1]), 0.0, None)
    cross = cross / jnp.maximum(dsb, 1e-12)  # (R, n): share of each slab crossed
    ion = jnp.where(lc[:, None], cross * c["ion"], 0.0)
    ion_tot = jnp.sum(ion, axis=-1)
    dep = dep + ion
    inside_c = (s_c[:, None] >= sb[:-1]) & (s_c[:, None] < sb[1:])
    frac_c = (s_c[:, None] - sb[:-1]) / jnp.maximum(dsb, 1e-12)
    pick_c = lambda arr: jnp.sum(jnp.where(inside_c, arr, 0.0), axis=-1)  # noqa: E731
    stopped = lc & ~through
    e_c = jnp.where(stopped, jnp.maximum(z_c * e_h - ion_tot, 0.0), 0.0)
    # the leading hadron's shower, neutral or charged (never both in one source slab): one profile call
    dep = dep + hadronic(
        e_int + e_c,
        jnp.where(ln, t_int, pick_c(tb[:-1] + frac_c * dtb)),
        jnp.where(ln, s_int, pick_c(sb[:-1] + frac_c * dsb)),
        jnp.where(ln, x0_int, jnp.where(stopped, pick_c(jnp.broadcast_to(x0, inside_c.shape)), 1.0)),
        jnp.where(ln, lam_int, jnp.where(stopped, pick_c(jnp.broadcast_to(lam, inside_c.shape)), 1.0)),
        x_src + jnp.where(ln, pick(xn), 0.0), y_src + jnp.where(ln, pick(yn), 0.0))
    # an extra track in the downstream spectrometer (probability e^{−L/λ_I}, L in interaction lengths)
    if "sb_sp" in c:
        extra = (lc & c["before"][i] & (s_c >= c["sb_sp"])).astype(jnp.int32)
    return dep, log_w, extra


def _compacted_rows(c: dict, sh, rows: dict, flag, bsz: int, n: int, proposal, block: int, init, em: bool, had: bool):
    """The sums per event of :func:`_shower_rows` over the rows with ``flag`` (their transfer
    showers; every other row gives zeros): the flagged rows are put first (stable, from a cumsum of
    the flag), cut into ⌈B·n / block⌉ blocks of ``block`` rows, and a ``lax.scan`` over the blocks
    runs the row kernel only on those holding a flagged row (``lax.cond``); the results are added
    to ``init`` = (dep (B, n), log_w (B,), extra tracks (B,)) by event, which it returns.  ``em``,
    ``had``: the parts of the row kernel run (exact where ``flag`` marks only rows of that kind)."""
    total = flag.shape[0]
    nblk = -(-total // block)
    fi = flag.astype(jnp.int32)
    n_sh = jnp.sum(fi)
    pos = jnp.where(flag, jnp.cumsum(fi) - 1, n_sh + jnp.cumsum(1 - fi) - 1)  # a permutation of the rows
    order = jnp.zeros((nblk * block,), jnp.int32).at[pos].set(jnp.arange(total, dtype=jnp.int32),
                                                              unique_indices=True)
    slot = jnp.arange(block, dtype=jnp.int32)

    def run(b, carry):
        acc, lw_acc, ex_acc = carry
        idx = jax.lax.dynamic_slice(order, (b * block,), (block,))
        valid = b * block + slot < n_sh  # padding and unflagged rows: masked out
        d, lw, ex = _shower_rows(c, sh, {k: v[idx] for k, v in rows.items()}, proposal, None, em, had)
        ev = jnp.where(valid, idx // n, bsz - 1)  # non-decreasing: flagged rows keep the event order
        acc = acc.at[ev].add(jnp.where(valid[:, None], d, 0.0), indices_are_sorted=True)
        if had and proposal is not None:
            lw_acc = lw_acc.at[ev].add(jnp.where(valid, lw, 0.0), indices_are_sorted=True)
        if had and "sb_sp" in c:
            ex_acc = ex_acc.at[ev].add(jnp.where(valid, ex, 0), indices_are_sorted=True)
        return acc, lw_acc, ex_acc

    def body(carry, b):
        return jax.lax.cond(b * block < n_sh, run, lambda _, cy: cy, b, carry), None

    out, _ = jax.lax.scan(body, init, jnp.arange(nblk, dtype=jnp.int32))
    return out


def shower_deposits(setup: Setup, truth: dict, sh, key_r: jax.Array, proposal: LeadingHadronProposal | None = None,
                    temperature=None, block_rows: int | None = None):
    """Energy (MeV, EM-scale equivalent) reaching each slab when hard transfers shower; log_w; and
    ``counts`` (``extra_tracks_p_out``: leading charged hadrons that got through every slab).

    See :mod:`fastmc.physics.showers`.  Depth along the slab sequence is accumulated in radiation
    lengths (boundaries tb) and interaction lengths (sb); a shower starting at (t0, s0) puts
    E·[G(tb_{j+1} − t0) − G(tb_j − t0)] in slab j (G = 0 for negative depth; hadronic showers: the
    Bock EM term in X0 plus the hadronic term, × h/e, in λ_I), times the share of its lateral
    profile inside slab j's rectangular active area (``sh.lateral``; EM: GFLASH radial profile at τ = 1 and
    2.5 shower maxima, linear in depth through them, averaged over the slab's part of the
    longitudinal profile; hadronic: one radius, r95·λ_I/√19).  The shower axis is the beam line
    along z through the muon's true position at the source slab's exit face (the muon's own angle,
    ≲ 1 mrad, is neglected), the areas are centred at (x_centre, y_centre); what falls outside is
    lost.  The muon's own deposit in a slab counts only if it crossed it inside the active area.
    Photonuclear transfers may give a leading neutral hadron that interacts after an exponential
    optical depth, or escapes, or a leading charged hadron that does the same along the muon's line
    through every slab downstream, ionising (minimum-ionising dE/dx) up to where it interacts; if
    it gets through, it is one more charged track in the downstream spectrometer.  With
    ``proposal`` (:class:`LeadingHadronProposal`) the leading neutral hadron of the photonuclear
    transfer in slab ``proposal.target`` is drawn from a biased law (its weight is returned); the
    charged hadron is drawn from its natural law given no leading neutral (no weight).

    Each (event, source slab) pair is one row of :func:`_shower_rows` (its uniforms: (B, n, 11)
    and (B, n, 3) arrays, drawn for every pair).  Only rows whose transfer showers contribute, so
    they are compacted (:func:`_compacted_rows`, blocks of ``block_rows`` rows, default
    :data:`SHOWER_BLOCK_ROWS`) and the
    kernel runs on the blocks that hold one; in soft mode (``temperature``, under jax.grad) the
    kernel runs on every row.  ``block_rows=0``: every row too (no compaction).
    """
    slabs = [el for el in setup.elements if el.kind == "slab"]
    n = len(slabs)
    recs = [truth["slabs"][el.name] for el in slabs]
    dtype = recs[0]["e_cont"].dtype
    c = _slab_constants(setup, sh, dtype, proposal)
    stack = lambda key: jnp.stack([r[key] for r in recs], axis=1)  # noqa: E731  (B, n)
    e_h = stack("hardest")
    local = jnp.stack([r["e_cont"] + jnp.sum(r["e_proc"], axis=-1) + r.get("e_other", 0.0) for r in recs], axis=1)
    showered = e_h > sh.threshold
    bsz = e_h.shape[0]
    # the shower axis: along z through the muon's true position at the source slab's exit face
    x_src = jnp.stack([truth["at"][el.name][0] for el in slabs], axis=1)  # (B, n_src)
    y_src = jnp.stack([truth["at"][el.name][1] for el in slabs], axis=1)
    in_src = (jnp.abs(x_src - c["xc"]) <= c["hw"]) & (jnp.abs(y_src - c["yc"]) <= c["hwy"])
    # the muon's own deposit (all but the showering transfer) is seen only inside the slab's active
    # area (approx.: judged at the exit face; the transport steps through the material wherever
    # the muon crosses); a shower's share is set by its lateral containment (_shower_rows)
    dep = jnp.where(in_src, local - jnp.where(showered, e_h, 0.0), 0.0)
    rows = {"slab": jnp.broadcast_to(jnp.arange(n, dtype=jnp.int32), (bsz, n)), "e_h": e_h,
            "proc": stack("hardest_proc"), "f": stack("hardest_depth"), "x": x_src, "y": y_src,
            "uu": uniforms(jax.random.fold_in(key_r, 30_000), (bsz, n, N_SHOWER_UNIFORMS), dtype),
            "uc": uniforms(jax.random.fold_in(key_r, 30_002), (bsz, n, N_CHARGED_UNIFORMS), dtype)}
    rows = {k: v.reshape((bsz * n,) + v.shape[2:]) for k, v in rows.items()}
    block = min(bsz, SHOWER_BLOCK_ROWS) if block_rows is None else block_rows
    if temperature is not None or block == 0:
        d, lw, ex = _shower_rows(c, sh, rows, proposal, temperature)
        dep = dep + jnp.sum(d.reshape(bsz, n, n), axis=1)
        log_w = jnp.sum(lw.reshape(bsz, n), axis=1)
        n_extra = jnp.sum(ex.reshape(bsz, n), axis=1)
    else:
        # EM and photonuclear showers apart: each row runs only its own kind's part of the kernel
        is_had = (showered & (rows["proc"].reshape(bsz, n) == PROC_PHOTONUCLEAR)).reshape(-1)
        out = (dep, jnp.zeros((bsz,), dtype), jnp.zeros((bsz,), jnp.int32))
        out = _compacted_rows(c, sh, rows, showered.reshape(-1) & ~is_had, bsz, n, proposal, block, out, True, False)
        dep, log_w, n_extra = _compacted_rows(c, sh, rows, is_had, bsz, n, proposal, block, out, False, True)
    counts = {"extra_tracks_p_out": n_extra.astype(jnp.int32)}
    return {el.name: jnp.maximum(dep[:, i], 0.0) for i, el in enumerate(slabs)}, log_w, counts
