"""Energy radiated in thin planes (trackers) lands in the next slab (fastmc.transport.transport).

Issue #22: a muon that radiated half its energy in a Micromegas plane before the target left the
setup with p_out < 80 GeV and empty calorimeters (the photon vanished): 4.6e3 events at 1.98e10 MOT
from one such event in 4.2e6 analog muons.  The reference here is energy conservation: with no gap
medium, what the muon loses between the start and the end is the sub-cut continuous loss in the
planes (bounded: no single transfer above v_cut·E = 160 MeV) plus everything the slab records.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from fastmc.beam import sample_beam
from fastmc.chain import prepare
from fastmc.rng import STREAM_BEAM, chunk_key, stream_key
from fastmc.runcard import load_run
from fastmc.transport import transport

MODEL = """
schema_version = 1
name = "planes_then_slab"
gap_material = "air"
gap_density_scale = 0.0
[beam]
momentum_GeV = 160.0
momentum_spread_rel = 0.0
spot_sigma_mm = 1.0
divergence_sigma_mrad = 0.01
z_start_m = -1.0
""" + "".join(f"""
[[elements]]
name = "T{i}"
kind = "tracker"
z_m = {-0.5 + 0.1 * i}
material = "lead"
thickness_mm = 5.0
resolution_mm = 0.1
""" for i in range(3)) + """
[[elements]]
name = "S"
kind = "slab"
z_m = 0.0
material = "iron"
thickness_mm = 1.0
[elements.readout]
kind = "calorimeter"
group = "s"
"""

CARD = """
schema_version = 1
[run]
model = "model.toml"
n_muons = 32768
chunk_size = 32768
seed = 5
mot = 1.0
[selection.all]
cuts = [{ var = "e_s_GeV", min = 0.0 }]
"""


def test_energy_radiated_in_tracker_planes_lands_in_the_next_slab(tmp_path):
    (tmp_path / "model.toml").write_text(MODEL)
    (tmp_path / "card.toml").write_text(CARD)
    prep = prepare(load_run(tmp_path / "card.toml"))
    n = prep.options.chunk_size
    key = chunk_key(5, 0)

    @jax.jit
    def go(key):
        st = sample_beam(prep.setup.beam, stream_key(key, STREAM_BEAM), n)
        st["alive"] = jnp.ones((n,), bool)
        final, truth = transport(prep.setup, prep.physics, st, key, prep.options.max_interactions,
                                 prep.options.branches)
        return st["ekin"], final["ekin"], truth["slabs"]["S"]

    e0, e1, rec = (jax.tree_util.tree_map(np.asarray, x) for x in go(key))
    in_slab = rec["e_cont"] + rec["e_proc"].sum(-1) + rec["e_other"]
    residual = (e0.astype(np.float64) - e1) - in_slab  # MeV: the planes' sub-cut continuous loss
    # 3 × 5 mm of lead hold ≈ 2.7 X0: transfers above 1 GeV happen in ~1e-3 of the muons; they must
    # be found in the slab (e_other), and nothing radiated may be missing from the balance
    radiated = rec["e_other"] > 1000.0
    assert radiated.sum() >= 10, radiated.sum()
    # sub-cut loss: ≈ 3 × 5 mm × 12.7 MeV/mm ionisation-like restricted loss (≈ 60–200 MeV), never a
    # radiated transfer of > 1 GeV (float32 energies of 160 GeV: ~0.01 MeV rounding)
    assert residual.max() < 1000.0, residual.max()
    assert residual.min() > -1.0, residual.min()
