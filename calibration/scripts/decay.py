#!/usr/bin/env python
"""Geant4 reference table: K+ and pi+ (160 GeV/c) decays in flight in vacuum.

    python calibration/scripts/decay.py [--events-scale 0.01] [--only Kplus_160GeV ...]

writes calibration/decay.h5 (layout: tablelib.py; contents: README.md).  The K+/pi+ PDG lifetime is
set to 1e-9 ns after Initialize(), so every parent decays at its first step; decay tables, branching
fractions and decay kinematics (phase space; K_l3 via G4KL3DecayChannel) are Geant4's own.  The
direct daughters are recorded in the stacking action and killed; the decay mode is read from the set
of daughters.  Groups per parent and mode: p and angle (w.r.t. the parent direction) of the mu+
(p_mu, theta_mu) and of the pi+ (p_pi, theta_pi; every pi+ counted) produced in the decay.
"""
from __future__ import annotations

import json
from collections import Counter

import numpy as np
import tablelib as T

PARENTS = {  # config prefix -> (particle, momentum, default decays)
    "Kplus_160GeV": ("K+", 160.0, 1_000_000),
    "piplus_160GeV": ("pi+", 160.0, 1_000_000),
}

MODES = {  # sorted daughter PDG codes -> mode label
    (-13, 14): "mu_nu",
    (-13, 14, 111): "pi0_mu_nu",
    (111, 211): "pi_pi0",
    (-211, 211, 211): "pi_pi_pi",
    (111, 111, 211): "pi_pi0_pi0",
    (-11, 12, 111): "pi0_e_nu",
    (-11, 12): "e_nu",
}
MODE_TEXT = {
    "mu_nu": "mu+ nu_mu", "pi0_mu_nu": "pi0 mu+ nu_mu", "pi_pi0": "pi+ pi0", "pi_pi_pi": "pi+ pi+ pi-",
    "pi_pi0_pi0": "pi+ pi0 pi0", "pi0_e_nu": "pi0 e+ nu_e", "e_nu": "e+ nu_e",
}


def main():
    ap = T.common_args(__doc__, "decay.h5")
    args = ap.parse_args()
    if args.list:
        print("\n".join(PARENTS))
        return
    w = T.H5Writer(args.out, "decay",
                   "Decays in flight of 160 GeV/c K+ and pi+ in vacuum (Geant4 decay tables and "
                   "kinematics, lifetime forced tiny). Per group: spectra of the mu+ (p_mu [GeV/c], "
                   "theta_mu [mrad] = angle to the parent direction) and pi+ (p_pi, theta_pi) produced "
                   "directly in the decay, for all modes (<parent>_all) and per decay mode "
                   "(<parent>_<mode>). n_events = number of parent decays generated; attrs "
                   "n_mode and fraction_mode give the mode's count and observed branching fraction.")
    p_edges = np.linspace(0.0, 160.0, 321)
    th_edges = T.log_edges(1e-3, 1e4, 20)
    for i, cname in enumerate(PARENTS):
        if args.only is not None and cname not in args.only:
            continue
        particle, p, n = PARENTS[cname]
        seed = args.seed + 200 + i
        spec = {"kind": "decay", "particle": particle, "momentum_GeV": p,
                "n_events": max(1000, int(round(n * args.events_scale))), "seed": seed, "cut_mm": 0.7,
                "force_decay": [particle], "vacuum_length_mm": 1000.0}
        T.log(f"[decay] {cname}: {spec['n_events']} {particle} decays ...")
        arr, meta = T.run_in_subprocess(spec)
        rows = arr["rows"]
        ev = rows[:, 0].astype(np.int64)
        pdg = rows[:, 1].astype(np.int64)
        pvec = rows[:, 2:5]
        pmag = np.linalg.norm(pvec, axis=1)
        theta = np.arctan2(np.hypot(pvec[:, 0], pvec[:, 1]), pvec[:, 2]) * 1e3
        n_ev = int(meta["n_events"])
        # decay mode of every event
        order = np.lexsort((pdg, ev))
        ev_s, pdg_s = ev[order], pdg[order]
        keys = {}
        starts = np.flatnonzero(np.r_[True, ev_s[1:] != ev_s[:-1]])
        ends = np.r_[starts[1:], len(ev_s)]
        for s, e in zip(starts, ends):
            keys[int(ev_s[s])] = MODES.get(tuple(int(x) for x in pdg_s[s:e]), "other:" + ",".join(
                str(int(x)) for x in pdg_s[s:e]))
        mode_of_row = np.array([keys[int(e)] for e in ev]) if len(ev) else np.array([], dtype=str)
        counts_mode = Counter(keys.values())
        n_no_decay = n_ev - len(keys)
        T.log(f"[decay] {cname}: cpu {meta['cpu_seconds']:.1f} s; modes {dict(counts_mode)}; "
              f"without decay {n_no_decay}")
        w.generator = f"Geant4 {meta['geant4_version']} via geant4-pybind {meta['pybind_version']}"
        groups = [("all", None)] + [(m, m) for m, _ in sorted(counts_mode.items(), key=lambda kv: -kv[1])
                                    if not m.startswith("other")]
        for label, mode in groups:
            sel_mode = np.ones(len(ev), bool) if mode is None else (mode_of_row == mode)
            obs = {}
            for tag, code, pname in (("mu", -13, "mu+"), ("pi", 211, "pi+")):
                sel = sel_mode & (pdg == code)
                if not np.any(sel):
                    continue
                cp, up, op = T.histogram(pmag[sel], p_edges)
                ct, ut, ot = T.histogram(theta[sel], th_edges)
                obs[f"p_{tag}"] = (p_edges, cp, up, op, "GeV", {
                    "variable": f"momentum of the {pname} produced in the decay [GeV/c]",
                    "n_entries": int(np.count_nonzero(sel)),
                    "min": float(pmag[sel].min()), "max": float(pmag[sel].max())})
                obs[f"theta_{tag}"] = (th_edges, ct, ut, ot, "mrad", {
                    "variable": f"angle between the {pname} and the parent direction [mrad]",
                    "n_entries": int(np.count_nonzero(sel)),
                    "max": float(theta[sel].max())})
            if not obs:
                continue
            attrs = T.base_attrs(particle=particle, momentum_GeV=p, layers=[], observable=",".join(obs),
                                 units="GeV/c (p_*), mrad (theta_*)", meta=meta, seed=seed,
                                 command=T.command_line(), cut_mm=spec["cut_mm"],
                                 physics_list=T.PHYSICS_LIST_MUON)
            n_mode = n_ev - n_no_decay if mode is None else counts_mode[mode]
            attrs.update({
                "n_decayed": int(n_ev - n_no_decay),
                "decay_mode": "all" if mode is None else f"{particle} -> {MODE_TEXT.get(mode, mode)}",
                "n_mode": int(n_mode),
                "fraction_mode": float(n_mode / n_ev),
                "mode_counts_json": json.dumps(dict(counts_mode)),
                "medium": "G4_Galactic (vacuum)",
                "forced_lifetime_ns": 1e-9,
                "pdg_lifetime_ns_geant4": float(meta.get(f"lifetime_ns_orig_{particle}", float("nan"))),
            })
            w.add_group(f"{cname}_{label}", attrs, obs)
        w.write()
        w.groups.clear()


if __name__ == "__main__":
    main()
