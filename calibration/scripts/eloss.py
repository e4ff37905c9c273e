#!/usr/bin/env python
"""Geant4 reference table: energy-loss spectra dE = E_in - E_out of mu+ through slabs.

    python calibration/scripts/eloss.py [--events-scale 0.01] [--only lead_40X0_160GeV ...]

writes calibration/eloss.h5 (see tablelib.py for the layout and README.md for the contents).
"""
from __future__ import annotations

import json

import numpy as np
import tablelib as T

# config name -> (slab name, momentum GeV/c)
CONFIGS = {
    "lead_1X0_160GeV": ("lead_1X0", 160.0),
    "lead_10X0_160GeV": ("lead_10X0", 160.0),
    "lead_40X0_160GeV": ("lead_40X0", 160.0),
    "lead_40X0_100GeV": ("lead_40X0", 100.0),
    "lead_40X0_50GeV": ("lead_40X0", 50.0),
    "iron_0p5m_160GeV": ("iron_0p5m", 160.0),
    "iron_1p5m_160GeV": ("iron_1p5m", 160.0),
    "iron_3m_160GeV": ("iron_3m", 160.0),
    "setup2022_160GeV": ("setup2022", 160.0),
}


def main():
    ap = T.common_args(__doc__, "eloss.h5")
    args = ap.parse_args()
    if args.list:
        print("\n".join(CONFIGS))
        return
    names = [n for n in CONFIGS if args.only is None or n in args.only]
    w = T.H5Writer(args.out, "eloss",
                   "Energy-loss spectra dE = E_in - E_out (kinetic) of mu+ crossing slabs of matter, "
                   "Geant4 full simulation of the muon (secondaries killed). counts: muons that "
                   "crossed the stack, binned in dE [GeV]; log bins (~20/decade) from 1 MeV to the "
                   "incident kinetic energy; underflow = dE < 1 MeV. Muons that stopped or decayed "
                   "inside are counted in the group attrs n_stopped / n_decayed, not in the histogram.")
    for i, name in enumerate(CONFIGS):
        if name not in names:
            continue
        slab, p = CONFIGS[name]
        seed = args.seed + i
        spec = T.slab_spec(slab, p, args.events_scale, seed)
        T.log(f"[eloss] {name}: {spec['n_events']} mu+ ...")
        arr, meta = T.run_in_subprocess(spec)
        ekin = T.ekin_from_p(p, T.MU_MASS_GEV)
        de = meta["ekin_GeV"] - arr["ekin"]
        edges = T.log_edges(1e-3, ekin, 20)
        counts, under, over = T.histogram(de, edges)
        attrs = T.base_attrs(particle="mu+", momentum_GeV=p, layers=[tuple(l) for l in spec["layers"]],
                             observable="eloss", units="GeV", meta=meta, seed=seed,
                             command=T.command_line(), cut_mm=spec["cut_mm"],
                             physics_list=T.PHYSICS_LIST_MUON)
        attrs.update({
            "config_slab": slab,
            "production_cut_reason": T.CUT_REASON,
            "cut_energy_MeV_json": json.dumps(meta["cut_energy_MeV"]),
            "n_exited": int(meta["n_exited"]),
            "n_other": int(meta["n_other"]),
            "total_thickness_mm": float(sum(t for _, t in spec["layers"])),
            "x_over_X0": T.x_over_X0(spec["layers"], meta["radlen_mm"]),
            "mean_eloss_GeV": float(np.mean(de)),
            "median_eloss_GeV": float(np.median(de)),
            "mu_processes_json": json.dumps(meta["mu_processes"]),
        })
        w.generator = f"Geant4 {meta['geant4_version']} via geant4-pybind {meta['pybind_version']}"
        w.add_group(name, attrs, {"eloss": (edges, counts, under, over, "GeV", {
            "variable": "E_in - E_out (kinetic energy) of the primary mu+ at the exit of the last layer"})})
        T.log(f"[eloss] {name}: cpu {meta['cpu_seconds']:.1f} s = "
              f"{attrs['cpu_us_per_event']:.1f} us/mu, mean dE {attrs['mean_eloss_GeV']:.4f} GeV, "
              f"stopped {attrs['n_stopped']} decayed {attrs['n_decayed']} other {attrs['n_other']}")
        w.write()  # after every configuration, so a partial run keeps what it made
        w.groups.clear()


if __name__ == "__main__":
    main()
