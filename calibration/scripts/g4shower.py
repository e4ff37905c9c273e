"""Shower attempts (child process): ``python g4shower.py SPEC.json OUT.npz``.

Builds a physics list from prebuilt constructors (geant4-pybind exposes no individual process or
model classes, so a hand-made list of data-free models cannot be assembled from Python), keeps every
e-/e+/gamma process, tracks all secondaries, and records per event the energy leaving the stack
through the back face, through the front face, and carried by neutrinos.
"""
from __future__ import annotations

import json
import sys
import time

import g4common as C
import numpy as np
from g4common import GeV, g4, mm

EM = {
    "standard": lambda: g4.G4EmStandardPhysics(),
    "opt1": lambda: g4.G4EmStandardPhysics_option1(),
    "opt2": lambda: g4.G4EmStandardPhysics_option2(),
    "opt3": lambda: g4.G4EmStandardPhysics_option3(),
    "opt4": lambda: g4.G4EmStandardPhysics_option4(),
}
HAD = {
    "FTFP_BERT": lambda: [g4.G4HadronElasticPhysics(), g4.G4HadronPhysicsFTFP_BERT(),
                          g4.G4StoppingPhysics() if hasattr(g4, "G4StoppingPhysics") else None,
                          g4.G4IonPhysics()],
    "QGSP_BERT": lambda: [g4.G4HadronElasticPhysics(), g4.G4HadronPhysicsQGSP_BERT(), g4.G4IonPhysics()],
}
NEUTRINOS = {12, -12, 14, -14, 16, -16}


def strip(particles):
    """Remove every process but Transportation from the named particles (after Initialize)."""
    table = g4.G4ParticleTable.GetParticleTable()
    for pname in particles:
        pm = table.FindParticle(pname).GetProcessManager()
        plist = pm.GetProcessList()
        for p in [plist[i] for i in range(plist.size())]:
            if p.GetProcessName() != "Transportation":
                pm.RemoveProcess(p)


class ShowerPhysics(g4.G4VModularPhysicsList):
    def __init__(self, em, had):
        super().__init__()
        self._keep = []
        for c in [EM[em]()] + [g4.G4DecayPhysics()] + ([x for x in HAD[had]() if x is not None] if had else []):
            self._keep.append(c)
            self.RegisterPhysics(c)


class LeakRecorder(g4.G4UserTrackingAction):
    def __init__(self, z_front, z_exit):
        super().__init__()
        self.zf, self.ze = z_front, z_exit
        self.back = self.front = self.nu = 0.0
        self.ntracks = 0

    def PostUserTrackingAction(self, track):
        self.ntracks += 1
        code = track.GetDefinition().GetPDGEncoding()
        z = track.GetPosition().z / mm
        ek = track.GetKineticEnergy() / GeV
        if code in NEUTRINOS:
            self.nu += ek
        elif z >= self.ze - 1e-6:
            self.back += ek
        elif z <= self.zf + 1e-6:
            self.front += ek


class Events(g4.G4UserEventAction):
    def __init__(self, rec):
        super().__init__()
        self.rec = rec
        self.rows = []

    def BeginOfEventAction(self, event):
        r = self.rec
        r.back = r.front = r.nu = 0.0
        r.ntracks = 0

    def EndOfEventAction(self, event):
        r = self.rec
        self.rows.append((r.back, r.front, r.nu, r.ntracks))


def main(spec, out):
    det = C.SlabDetector(spec["layers"])
    phys = ShowerPhysics(spec["em"], spec.get("had"))
    rm, ui = C._init_run_manager(det, phys, spec["cut_mm"], spec["seed"])
    ui.ApplyCommand(f"/run/setCut {spec['cut_mm']} mm")
    ui.ApplyCommand(f"/random/setSeeds {spec['seed']} {spec['seed'] + 7919}")
    rm.Initialize()
    if spec.get("strip"):
        strip(spec["strip"])
    gun = C.Gun(spec["particle"], float(spec["momentum_GeV"]), -0.5 * det.total_mm - 0.5 * C.FRONT_GAP_MM)
    rec = LeakRecorder(-0.5 * det.total_mm, 0.5 * det.total_mm)
    evt = Events(rec)
    rm.SetUserAction(gun)
    rm.SetUserAction(rec)
    rm.SetUserAction(evt)
    t0 = time.process_time()
    rm.BeamOn(int(spec["n_events"]))
    meta = {"cpu_seconds": time.process_time() - t0, "n_events": gun.n, "ekin_GeV": gun.ekin_GeV,
            "geant4_version": C.geant4_version(), "pybind_version": C.pybind_version()}
    np.savez(out, rows=np.array(evt.rows, dtype=float).reshape(-1, 4), meta=json.dumps(meta))


if __name__ == "__main__":
    with open(sys.argv[1]) as f:
        main(json.load(f), sys.argv[2])
