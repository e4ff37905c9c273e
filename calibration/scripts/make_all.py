#!/usr/bin/env python
"""Regenerate every Geant4 reference table in calibration/ (one Geant4 process at a time).

    python calibration/scripts/make_all.py                     # full statistics (~35 min of CPU on one core)
    python calibration/scripts/make_all.py --events-scale 0.002 --out-dir /tmp/tables  # quick check (~25 s)

Runs eloss.py, deflection.py, decay.py and showers.py in that order (showers.py only probes which
shower physics runs offline and writes calibration/showers_attempts.json).
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
CALIB = os.path.dirname(HERE)
SUITES = ["eloss", "deflection", "decay", "showers"]


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--events-scale", type=float, default=1.0)
    ap.add_argument("--out-dir", default=CALIB, help="folder for the .h5 files (default calibration/)")
    ap.add_argument("--suites", nargs="*", default=SUITES, choices=SUITES)
    ap.add_argument("--seed", type=int, default=None)
    args = ap.parse_args()
    os.makedirs(args.out_dir, exist_ok=True)
    for s in args.suites:
        cmd = [sys.executable, os.path.join(HERE, f"{s}.py"), "--events-scale", str(args.events_scale)]
        if os.path.abspath(args.out_dir) != os.path.abspath(CALIB):
            cmd += ["--out", os.path.join(args.out_dir, f"{s}.h5")]
        if args.seed is not None:
            cmd += ["--seed", str(args.seed)]
        print(f"[make_all] {' '.join(cmd)}", file=sys.stderr, flush=True)
        t0 = time.time()
        subprocess.run(cmd, check=True)
        print(f"[make_all] {s} done in {time.time() - t0:.0f} s", file=sys.stderr, flush=True)


if __name__ == "__main__":
    main()
