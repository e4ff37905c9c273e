#!/usr/bin/env python
"""Probe whether Geant4 can simulate EM / hadronic showers offline (no data sets).

    python calibration/scripts/showers.py

Each attempt (5 events at 10 GeV into the ECAL or one HCAL module) runs in a child process
(g4shower.py) with a time limit; its exit status, G4Exception texts and log tail are written to
calibration/showers_attempts.json.  With geant4-pybind 0.1.3 / Geant4 11.4 every attempt aborts
(see README.md), so no containment table is produced.  g4shower.py already records per event the
energy leaving through the back and front faces and in neutrinos; a containment table
(showers.h5) would be built from it once a set-up runs (e.g. with the data sets installed).
"""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tempfile

import numpy as np
import tablelib as T

G4SHOWER = os.path.join(T.HERE, "g4shower.py")

ECAL = [("lead", 1.5), ("scintillator", 1.5)] * 150
HCAL1 = [("iron", 25.0), ("scintillator", 4.0)] * 48

# (label, physics (em, had), particle, layers) used to probe what runs
PROBES = [
    ("em_standard_eminus", "standard", None, "e-", ECAL),
    ("em_opt1_eminus", "opt1", None, "e-", ECAL),
    ("em_opt2_eminus", "opt2", None, "e-", ECAL),
    ("em_opt4_eminus", "opt4", None, "e-", ECAL),
    ("em_standard_gamma", "standard", None, "gamma", ECAL),
    ("had_FTFP_BERT_piplus", "standard", "FTFP_BERT", "pi+", HCAL1),
    ("had_QGSP_BERT_piplus", "standard", "QGSP_BERT", "pi+", HCAL1),
    # diagnostic only: hadronic physics with e-/e+/gamma and neutron processes removed (no EM
    # component, neutrons free-streaming) -- would not give a usable containment table even if it ran
    ("had_FTFP_BERT_piplus_no_egamma_no_neutron", "standard", "FTFP_BERT", "pi+", HCAL1,
     ["e-", "e+", "gamma", "neutron"]),
]


def g4_exceptions(text: str):
    out = []
    for m in re.finditer(r"G4Exception-START -+ [EW]+ -+\s*(.*?)-+ [EW]+ -+ G4Exception-END", text, re.S):
        block = " ".join(l.strip() for l in m.group(1).splitlines() if l.strip() and "G4Exception-START" not in l)
        if block not in out:
            out.append(block)
    return out


def run_child(spec, timeout_s):
    with tempfile.TemporaryDirectory(prefix="fastmc_g4shower_") as tmp:
        sp, op, lp = (os.path.join(tmp, x) for x in ("spec.json", "out.npz", "log.txt"))
        with open(sp, "w") as f:
            json.dump(spec, f)
        with open(lp, "w") as log:
            try:
                r = subprocess.run([sys.executable, G4SHOWER, sp, op], stdout=log, stderr=subprocess.STDOUT,
                                   timeout=timeout_s)
                rc = r.returncode
            except subprocess.TimeoutExpired:
                rc = "timeout"
        text = open(lp, errors="replace").read()
        res = {"rc": rc, "exceptions": g4_exceptions(text)[:12],
               "log_tail": text[-1500:] if rc != 0 else ""}
        if rc == 0 and os.path.exists(op):
            with np.load(op) as d:
                res["rows"] = np.array(d["rows"])
                res["meta"] = json.loads(str(d["meta"]))
        return res


def main():
    ap = T.common_args(__doc__, "showers.h5")
    ap.add_argument("--probe-only", action="store_true")
    ap.add_argument("--timeout", type=int, default=300)
    args = ap.parse_args()
    report = {"command": T.command_line(), "date": T.now_iso(), "attempts": []}
    ok = {}
    for i, (label, em, had, particle, layers, *rest) in enumerate(PROBES):
        spec = {"layers": [list(l) for l in layers], "em": em, "had": had, "particle": particle,
                "momentum_GeV": 10.0, "n_events": 5, "seed": args.seed + 300 + i, "cut_mm": 0.7,
                "strip": rest[0] if rest else []}
        T.log(f"[showers] probe {label} ...")
        res = run_child(spec, args.timeout)
        entry = {"label": label, "em": em, "had": had, "particle": particle, "momentum_GeV": 10.0,
                 "stripped_after_initialize": spec["strip"],
                 "n_events": 5, "rc": res["rc"], "g4_exceptions": res["exceptions"],
                 "log_tail": res["log_tail"]}
        if "rows" in res:
            r = res["rows"]
            entry["mean_leak_back_frac"] = float(np.mean(r[:, 0]) / res["meta"]["ekin_GeV"])
            entry["mean_tracks_per_event"] = float(np.mean(r[:, 3]))
            entry["cpu_seconds"] = res["meta"]["cpu_seconds"]
            ok[label] = spec
        T.log(f"[showers]   rc={res['rc']}; {len(res['exceptions'])} G4Exception(s)"
              + (f": {res['exceptions'][0][:300]}" if res["exceptions"] else ""))
        report["attempts"].append(entry)
    path = os.path.join(os.path.dirname(os.path.abspath(args.out)), "showers_attempts.json")
    with open(path, "w") as f:
        json.dump(report, f, indent=1)
    T.log(f"[showers] wrote {path}; working set-ups: {sorted(ok) or 'none'}")
    if args.probe_only or not ok:
        return
    T.log("[showers] some set-ups ran: the containment table (showers.h5) is not implemented yet; "
          "see showers_attempts.json")


if __name__ == "__main__":
    main()
