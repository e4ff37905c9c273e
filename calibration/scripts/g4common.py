"""Offline Geant4 (geant4-pybind) set-up shared by the calibration table scripts.

Never imported by fastmc at run time: this belongs to the optional ``fullsim`` extra.

Importing this module
  1. points every Geant4 data-set variable at an empty folder in a private temporary directory
     (``G4ENSDFSTATEDATA`` holds an empty ``ENSDFSTATE.dat``) and sets ``GEANT4_DATA_DIR``, so the
     import-time data check of geant4-pybind neither prompts nor downloads (works under ``CI=true``);
  2. only then imports ``geant4_pybind``.

It provides a modular physics list (G4EmStandardPhysics + G4DecayPhysics + G4EmExtraPhysics
restricted to muon-nuclear), a slab geometry (layers along z, world of G4_Galactic), a stacking
action that kills (or records, then kills) secondaries, and a tracking action that records the
primary's state where it leaves the last layer.

A Geant4 application can be initialised once per process, so every configuration runs in a fresh
child process: ``python g4common.py worker SPEC.json OUT.npz`` (see :func:`run_worker`); the table
scripts call ``tablelib.run_in_subprocess``, which starts that child and waits for it (one at a
time, so Geant4 only ever uses one core).
"""
from __future__ import annotations

import atexit
import json
import os
import shutil
import sys
import tempfile
import time

DATASET_VARS = (
    "G4LEDATA", "G4LEVELGAMMADATA", "G4NEUTRONHPDATA", "G4RADIOACTIVEDATA", "G4PARTICLEXSDATA",
    "G4PIIDATA", "G4REALSURFACEDATA", "G4SAIDXSDATA", "G4ABLADATA", "G4INCLDATA",
    "G4CHANNELINGDATA", "G4PARTICLEHPDATA", "G4NUDEXLIBDATA", "G4URRPTDATA", "G4ENSDFSTATEDATA",
)


def setup_offline_env() -> str:
    """Point all Geant4 data-set variables at empty folders; return the temporary root folder."""
    root = tempfile.mkdtemp(prefix="fastmc_g4data_")
    for var in DATASET_VARS:
        path = os.path.join(root, var)
        os.makedirs(path, exist_ok=True)
        os.environ[var] = path
    open(os.path.join(root, "G4ENSDFSTATEDATA", "ENSDFSTATE.dat"), "w").close()
    os.environ["GEANT4_DATA_DIR"] = root
    atexit.register(shutil.rmtree, root, ignore_errors=True)
    return root


if "geant4_pybind" in sys.modules:  # pragma: no cover - defensive
    raise RuntimeError("g4common must be imported before geant4_pybind")
G4DATA_ROOT = setup_offline_env()

import geant4_pybind as g4  # noqa: E402
import numpy as np  # noqa: E402

MeV = g4.MeV
GeV = g4.GeV
mm = g4.mm
ns = g4.ns

from tablelib import FASTMC_TO_G4  # noqa: E402  (fastmc material name -> Geant4 NIST name; one map)

G4_PARTICLE_NAMES = {"K+": "kaon+", "K-": "kaon-"}  # fastmc/PDG-style name -> Geant4 name

WORLD_HALF_XY_MM = 20_000.0  # 20 m half width: nothing leaves sideways
FRONT_GAP_MM = 1.0  # vacuum in front of and behind the layer stack


def geant4_version() -> str:
    v = g4.G4Version
    return v.strip().strip("$").replace("Name:", "").strip()


def pybind_version() -> str:
    try:
        from importlib.metadata import version
        return version("geant4-pybind")
    except Exception:  # pragma: no cover
        return "unknown"


# --------------------------------------------------------------------------------------------
# Geometry
# --------------------------------------------------------------------------------------------
class SlabDetector(g4.G4VUserDetectorConstruction):
    """Layers [(fastmc_material, thickness_mm), ...] along +z starting at z0 = -L/2."""

    def __init__(self, layers, world_material="G4_Galactic", vacuum_length_mm=None, max_step_mm=None):
        super().__init__()
        self.layers = [(str(m), float(t)) for m, t in layers]
        self.max_step_mm = max_step_mm  # G4UserLimits max step in every layer (needs G4StepLimiterPhysics)
        self.total_mm = sum(t for _, t in self.layers)
        self.world_material = world_material
        self.vacuum_length_mm = vacuum_length_mm
        self._keep = []  # keep python references alive

    def Construct(self):
        nist = g4.G4NistManager.Instance()
        world_mat = nist.FindOrBuildMaterial(self.world_material)
        if self.layers:
            half_z = 0.5 * self.total_mm + FRONT_GAP_MM
        else:
            half_z = 0.5 * (self.vacuum_length_mm or 1000.0)
        wsol = g4.G4Box("World", WORLD_HALF_XY_MM * mm, WORLD_HALF_XY_MM * mm, half_z * mm)
        wlog = g4.G4LogicalVolume(wsol, world_mat, "World")
        wphys = g4.G4PVPlacement(None, g4.G4ThreeVector(), wlog, "World", None, False, 0, False)
        self._keep += [wsol, wlog, wphys]
        logicals = {}
        z = -0.5 * self.total_mm
        for i, (name, thick) in enumerate(self.layers):
            key = (name, thick)
            if key not in logicals:
                mat = nist.FindOrBuildMaterial(FASTMC_TO_G4[name])
                sol = g4.G4Box(f"L_{name}_{thick}", WORLD_HALF_XY_MM * mm, WORLD_HALF_XY_MM * mm,
                               0.5 * thick * mm)
                lv = g4.G4LogicalVolume(sol, mat, f"L_{name}_{thick}")
                self._keep += [sol, lv]
                if self.max_step_mm:
                    ul = g4.G4UserLimits(float(self.max_step_mm) * mm)
                    lv.SetUserLimits(ul)
                    self._keep.append(ul)
                logicals[key] = lv
            pv = g4.G4PVPlacement(None, g4.G4ThreeVector(0, 0, (z + 0.5 * thick) * mm), logicals[key],
                                  f"P{i}", wlog, False, i, False)
            self._keep.append(pv)
            z += thick
        return wphys


# --------------------------------------------------------------------------------------------
# Physics
# --------------------------------------------------------------------------------------------
class MuonPhysicsList(g4.G4VModularPhysicsList):
    def __init__(self, shower: bool = False, step_limiter: bool = False):
        super().__init__()
        self.RegisterPhysics(g4.G4EmStandardPhysics())
        self.RegisterPhysics(g4.G4DecayPhysics())
        if step_limiter:  # G4StepLimiter process, honours G4UserLimits::MaxAllowedStep
            self.RegisterPhysics(g4.G4StepLimiterPhysics())
        if shower:
            self.RegisterPhysics(g4.G4HadronElasticPhysics())
            self.RegisterPhysics(g4.G4HadronPhysicsFTFP_BERT())
        else:
            self.RegisterPhysics(g4.G4EmExtraPhysics())


def restrict_em_extra(ui):
    for cmd in ("/physics_lists/em/MuonNuclear true",
                "/physics_lists/em/GammaNuclear false",
                "/physics_lists/em/ElectroNuclear false",
                "/physics_lists/em/PositronToMuons false",
                "/physics_lists/em/PositronToHadrons false",
                "/physics_lists/em/GammaToMuons false"):
        ui.ApplyCommand(cmd)


def strip_egamma_processes():
    """Remove every process but Transportation from e-, e+, gamma (call after Initialize)."""
    removed = {}
    table = g4.G4ParticleTable.GetParticleTable()
    for pname in ("e-", "e+", "gamma"):
        pdef = table.FindParticle(pname)
        pm = pdef.GetProcessManager()
        plist = pm.GetProcessList()
        procs = [plist[i] for i in range(plist.size())] if hasattr(plist, "size") else list(plist)
        names = []
        for p in procs:
            if p.GetProcessName() != "Transportation":
                names.append(p.GetProcessName())
                pm.RemoveProcess(p)
        removed[pname] = names
    return removed


def muon_process_names():
    pdef = g4.G4ParticleTable.GetParticleTable().FindParticle("mu+")
    plist = pdef.GetProcessManager().GetProcessList()
    procs = [plist[i] for i in range(plist.size())] if hasattr(plist, "size") else list(plist)
    return [p.GetProcessName() for p in procs]


# --------------------------------------------------------------------------------------------
# User actions
# --------------------------------------------------------------------------------------------
class Gun(g4.G4VUserPrimaryGeneratorAction):
    def __init__(self, particle: str, momentum_GeV: float, z_mm: float):
        super().__init__()
        self.gun = g4.G4ParticleGun(1)
        pdef = g4.G4ParticleTable.GetParticleTable().FindParticle(G4_PARTICLE_NAMES.get(particle, particle))
        if pdef is None:
            raise ValueError(f"unknown particle {particle}")
        self.gun.SetParticleDefinition(pdef)
        self.gun.SetParticleMomentum(momentum_GeV * GeV)
        self.gun.SetParticleMomentumDirection(g4.G4ThreeVector(0, 0, 1))
        self.gun.SetParticlePosition(g4.G4ThreeVector(0, 0, z_mm * mm))
        self.ekin_GeV = self.gun.GetParticleEnergy() / GeV
        self.n = 0

    def GeneratePrimaries(self, event):
        self.n += 1
        self.gun.GeneratePrimaryVertex(event)


class KillSecondaries(g4.G4UserStackingAction):
    def ClassifyNewTrack(self, track):
        if track.GetParentID() == 0:
            return g4.G4ClassificationOfNewTrack.fUrgent
        return g4.G4ClassificationOfNewTrack.fKill


class RecordAndKillSecondaries(g4.G4UserStackingAction):
    """Records (event, pdg, px, py, pz [GeV]) of direct daughters of the primary, then kills all."""

    def __init__(self, gun: Gun):
        super().__init__()
        self.gun = gun
        self.rows = []

    def ClassifyNewTrack(self, track):
        if track.GetParentID() == 0:
            return g4.G4ClassificationOfNewTrack.fUrgent
        if track.GetParentID() == 1:
            p = track.GetMomentum()
            self.rows.append((self.gun.n - 1, track.GetDefinition().GetPDGEncoding(),
                              p.x / GeV, p.y / GeV, p.z / GeV))
        return g4.G4ClassificationOfNewTrack.fKill


class ExitRecorder(g4.G4UserTrackingAction):
    """Final state of track 1. The world ends 1 mm (vacuum) behind the last layer, so a primary that
    crosses the stack ends on the world boundary; the position is extrapolated back (straight line,
    vacuum) to the exit plane of the last layer."""

    def __init__(self, z_exit_mm: float, n_max: int):
        super().__init__()
        self.z_exit = z_exit_mm
        self.ekin = np.full(n_max, np.nan)
        self.dirs = np.zeros((n_max, 3))
        self.pos = np.zeros((n_max, 2))
        self.i = 0
        self.n_stopped = 0
        self.n_decayed = 0
        self.n_other = 0
        self.not_exited = []  # (z_mm, ekin_GeV, process) of the first primaries that did not exit

    def PostUserTrackingAction(self, track):
        if track.GetTrackID() != 1:
            return
        pos = track.GetPosition()
        z = pos.z / mm
        if z >= self.z_exit - 1e-6:
            d = track.GetMomentumDirection()
            dx, dy, dz = d.x, d.y, d.z
            back = (z - self.z_exit) / dz if dz > 0 else 0.0
            i = self.i
            self.ekin[i] = track.GetKineticEnergy() / GeV
            self.dirs[i] = (dx, dy, dz)
            self.pos[i] = (pos.x / mm - back * dx, pos.y / mm - back * dy)
            self.i += 1
            return
        step = track.GetStep()
        proc = step.GetPostStepPoint().GetProcessDefinedStep()
        pname = proc.GetProcessName() if proc is not None else ""
        if len(self.not_exited) < 100:
            self.not_exited.append((z, track.GetKineticEnergy() / GeV, pname,
                                    step.GetPreStepPoint().GetKineticEnergy() / GeV))
        if "Decay" in pname and step.GetPreStepPoint().GetKineticEnergy() > 0:
            self.n_decayed += 1
        elif track.GetKineticEnergy() <= 0 or "Decay" in pname:
            self.n_stopped += 1
        else:
            self.n_other += 1


# --------------------------------------------------------------------------------------------
# One configuration per process
# --------------------------------------------------------------------------------------------
def _init_run_manager(detector, physics, cut_mm, seed, verbose=0):
    rm = g4.G4RunManagerFactory.CreateRunManager(g4.G4RunManagerType.Serial)
    ui = g4.G4UImanager.GetUIpointer()
    for cmd in ("/control/verbose 0", "/run/verbose 0", "/event/verbose 0", "/tracking/verbose 0",
                "/process/verbose 0", "/process/em/verbose 0", "/process/had/verbose 0"):
        ui.ApplyCommand(cmd)
    rm.SetUserInitialization(detector)
    rm.SetUserInitialization(physics)
    return rm, ui


def cut_thresholds(cut_mm, materials):
    """Energy equivalents [MeV] of the range cut for e-, e+, gamma in each G4 material."""
    table = g4.G4ProductionCutsTable.GetProductionCutsTable()
    ptab = g4.G4ParticleTable.GetParticleTable()
    nist = g4.G4NistManager.Instance()
    out = {}
    for m in materials:
        mat = nist.FindOrBuildMaterial(m)
        out[m] = {p: table.ConvertRangeToEnergy(ptab.FindParticle(p), mat, cut_mm * mm) / MeV
                  for p in ("e-", "gamma")}
    return out


def run_worker(spec: dict, out_path: str) -> None:
    """Run one configuration (spec from the table script) and write raw arrays to out_path (.npz)."""
    kind = spec["kind"]  # "slab" or "decay"
    n = int(spec["n_events"])
    seed = int(spec["seed"])
    cut_mm = float(spec.get("cut_mm", 0.7))
    # Optional (only deflection.py sets it): maximum step in every layer (G4UserLimits, enforced by
    # G4StepLimiterPhysics). G4VMultipleScattering::AlongStepDoIt drops the displacement of a step
    # that ends on a volume boundary (post-step safety ~ 0), so a layer crossed in one step is left
    # with x = y = 0 exactly; several steps per layer leave only the last one undisplaced.
    max_step_mm = spec.get("max_step_mm")
    if kind == "slab":
        det = SlabDetector(spec["layers"], max_step_mm=max_step_mm)
        z_gun = -0.5 * det.total_mm - 0.5 * FRONT_GAP_MM
        z_exit = 0.5 * det.total_mm
    elif kind == "decay":
        det = SlabDetector([], vacuum_length_mm=spec.get("vacuum_length_mm", 1000.0))
        z_gun = -0.5 * spec.get("vacuum_length_mm", 1000.0) + 1.0
        z_exit = None
    else:
        raise ValueError(kind)
    phys = MuonPhysicsList(step_limiter=bool(max_step_mm))
    rm, ui = _init_run_manager(det, phys, cut_mm, seed)
    restrict_em_extra(ui)
    ui.ApplyCommand(f"/run/setCut {cut_mm} mm")
    # Optional (only deflection.py sets it): lateral displacement in the msc model of muons and
    # hadrons. Geant4's default is false (G4EmParameters::MuHadLateralDisplacement), so WentzelVI
    # then moves the muon within an msc step only along its direction (plus the explicit single
    # scatters), missing the Fermi-Eyges displacement of every msc step. Left unset (eloss, decay),
    # no command is applied and the set-up is exactly the default one.
    mu_had_lat = spec.get("mu_had_lateral_displacement")
    if mu_had_lat is not None:
        cmd = f"/process/msc/MuHadLateralDisplacement {'true' if mu_had_lat else 'false'}"
        ui.ApplyCommand(cmd)  # returns None in geant4-pybind; the value is checked after Initialize()
    ui.ApplyCommand(f"/random/setSeeds {seed} {seed + 7919}")
    rm.Initialize()
    removed = strip_egamma_processes()
    emp = g4.G4EmParameters.Instance()
    meta = {"geant4_version": geant4_version(), "pybind_version": pybind_version(),
            "removed_processes": removed, "mu_processes": muon_process_names(),
            "msc_mu_had_lateral_displacement": bool(emp.MuHadLateralDisplacement()),
            "msc_lateral_displacement_e": bool(emp.LateralDisplacement())}
    if mu_had_lat is not None and bool(emp.MuHadLateralDisplacement()) != bool(mu_had_lat):
        raise RuntimeError(f"MuHadLateralDisplacement is {emp.MuHadLateralDisplacement()} after "
                           f"Initialize(), asked for {mu_had_lat}")
    gun = Gun(spec["particle"], float(spec["momentum_GeV"]), z_gun)
    rm.SetUserAction(gun)
    if kind == "slab":
        g4mats = sorted({FASTMC_TO_G4[m] for m, _ in spec["layers"]})
        nist = g4.G4NistManager.Instance()
        meta["radlen_mm"] = {m: nist.FindOrBuildMaterial(m).GetRadlen() / mm for m in g4mats}
        rec = ExitRecorder(z_exit, n)
        rm.SetUserAction(rec)
        rm.SetUserAction(KillSecondaries())
    else:
        for pname in spec.get("force_decay", []):
            pdef = g4.G4ParticleTable.GetParticleTable().FindParticle(G4_PARTICLE_NAMES.get(pname, pname))
            meta[f"lifetime_ns_orig_{pname}"] = pdef.GetPDGLifeTime() / ns
            pdef.SetPDGLifeTime(1e-9 * ns)
        stk = RecordAndKillSecondaries(gun)
        rm.SetUserAction(stk)
    t0 = time.process_time()
    w0 = time.time()
    rm.BeamOn(n)
    cpu = time.process_time() - t0
    meta["cpu_seconds"] = cpu
    meta["wall_seconds"] = time.time() - w0
    meta["ekin_GeV"] = gun.ekin_GeV
    meta["n_events"] = gun.n
    if kind == "slab":
        meta["cut_energy_MeV"] = cut_thresholds(cut_mm, g4mats)
        k = rec.i
        meta.update(n_exited=k, n_stopped=rec.n_stopped, n_decayed=rec.n_decayed, n_other=rec.n_other,
                    not_exited=rec.not_exited)
        np.savez(out_path, ekin=rec.ekin[:k], dirs=rec.dirs[:k], pos=rec.pos[:k],
                 meta=json.dumps(meta))
    else:
        rows = np.array(stk.rows, dtype=np.float64).reshape(-1, 5)
        np.savez(out_path, rows=rows, meta=json.dumps(meta))


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "worker":
        with open(sys.argv[2]) as f:
            run_worker(json.load(f), sys.argv[3])
    else:
        print(f"Geant4 {geant4_version()} via geant4-pybind {pybind_version()}; "
              f"data sets pointed at empty folders under {G4DATA_ROOT}")
