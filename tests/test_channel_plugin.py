"""The channel seam (DESIGN.md §8): a channel defined here, outside the package, plugs in through
the registry and runs end to end through ``fastmc.run`` — and closes against analog.

The toy channel forces one hard energy loss (any process, v = ΔE/E ≥ v_min) at a uniform depth in
a thick lead target, through the :class:`fastmc.transport.ForcedVertex` protocol, with the weight
w = Σ(v ≥ v_min; E_d)·L (Σ the macroscopic cross section at the energy reached at depth d): by
Campbell's formula for a point process with (predictable) intensity Σ(E(x)), E_q[w·1(sel)] =
E_p[N·1(sel)] with N the number of such losses in the target — P(sel) up to the events with two
of them, a relative bias below P(N ≥ 2 | N ≥ 1) ≈ Σ·L ≈ 1e-2 here, far below the 3σ tolerance.
The selection (visible ECAL energy ≥ 60 GeV, i.e. a loss of v ≳ 0.375 at 160 GeV) needs such a loss
except for sums of two or more softer ones (rarer still: ~(Σ·L)²).
"""

from __future__ import annotations

import dataclasses
import functools
import math

import jax
import jax.numpy as jnp
import pytest

from fastmc import units as u
from fastmc._pytree import pytree_dataclass
from fastmc.chain import prepare
from fastmc.channels import CHANNELS, BuildContext, Channel, ChannelParams
from fastmc.physics import sample_v_from_u, stochastic_xs
from fastmc.physics.deflection import N_KICK_UNIFORMS
from fastmc.projection import projection
from fastmc.rng import uniforms
from fastmc.run import run
from fastmc.runcard import load_run
from fastmc.transport import (
    N_PROC,
    combine_split_records,
    kick_angles,
    material_step,
    n_step_uniforms,
    split_reference_lengths,
)

MODEL = """schema_version = 1
name = "toy_target"
gap_material = "air"
gap_density_scale = 0.0
[beam]
momentum_GeV = 160.0
momentum_spread_rel = 0.0
spot_sigma_mm = 1.0
divergence_sigma_mrad = 0.1
z_start_m = -0.5
[[elements]]
name = "ECAL"
kind = "slab"
z_m = 0.0
material = "lead"
thickness_mm = 500.0
[elements.readout]
kind = "calorimeter"
group = "ecal"
stochastic_term = 0.10
constant_term = 0.01
"""

CARD = """schema_version = 1
[run]
model = "model.toml"
n_muons = 131072
chunk_size = 32768
seed = 17
mot = 1.0
channels = ["analog", "toy_forced_hard_loss"]
[physics]
scattering = "highland"
max_interactions = 6
[channels.toy_forced_hard_loss]
v_min = 0.3
[selection.hard]
cuts = [{ var = "e_ecal_GeV", min = 60.0 }]
"""


def forced_hard_loss(physics, state, mat, length, density_scale, k, key, length_ref=None, *, v_min):
    """One loss of v ≥ v_min at a uniform depth: process p with probability Σ_p(v ≥ v_min)/Σ, v from
    p's table restricted to [v_min, v_max] (its CDF at v_min by bisection), weight Σ·L."""
    m = u.muon_mass_c2
    bsz, dtype = state["ekin"].shape[0], state["ekin"].dtype
    ue = uniforms(jax.random.fold_in(key, 27), (bsz, 3 + N_KICK_UNIFORMS), dtype)
    d = ue[:, 0] * length
    ref1, ref2 = split_reference_lengths(length_ref, ue[:, 0])
    st1, r1 = material_step(physics, state, mat, d, density_scale, k,
                            uniforms(jax.random.fold_in(key, 28), (bsz, n_step_uniforms(k)), dtype), ref1)
    ekin = st1["ekin"]
    safe = jnp.maximum(ekin, 1.0)
    procs = jnp.broadcast_to(jnp.arange(N_PROC), (bsz, N_PROC))
    e4 = jnp.broadcast_to(safe[:, None], (bsz, N_PROC))
    lo, hi = jnp.zeros((bsz, N_PROC), dtype), jnp.ones((bsz, N_PROC), dtype)
    for _ in range(24):
        mid = 0.5 * (lo + hi)
        below = sample_v_from_u(physics.tables, mat, procs, e4, mid) < v_min
        lo, hi = jnp.where(below, mid, lo), jnp.where(below, hi, mid)
    part = stochastic_xs(physics.tables, mat, safe) * density_scale * (1.0 - hi)  # Σ_p(v ≥ v_min), (B, 4)
    total = jnp.sum(part, axis=-1)
    cum = jnp.cumsum(part, axis=-1) / jnp.maximum(total, 1e-30)[:, None]
    proc = jnp.sum(ue[:, 1:2] > cum[:, :-1], axis=-1).astype(jnp.int32)
    u_min = jnp.take_along_axis(hi, proc[:, None], axis=-1)[:, 0]
    v = sample_v_from_u(physics.tables, mat, proc, safe, u_min + ue[:, 2] * (1.0 - u_min))
    prob = total * length
    ok = st1["alive"] & (prob > 0.0) & (v >= v_min * 0.999)
    de = jnp.where(ok, jnp.minimum(v * (ekin + m), ekin), 0.0)
    kx, ky = kick_angles(proc, ekin, de, ue[:, 3:])
    st1 = {**st1, "ekin": ekin - de, "tx": st1["tx"] + jnp.where(ok, kx, 0.0), "ty": st1["ty"] + jnp.where(ok, ky, 0.0),
           "log_w": state["log_w"] + jnp.where(ok, jnp.log(jnp.maximum(prob, 1e-37)), -jnp.inf)}
    st2, r2 = material_step(physics, st1, mat, length - d, density_scale, k,
                            uniforms(jax.random.fold_in(key, 29), (bsz, n_step_uniforms(k)), dtype), ref2)
    rec = combine_split_records(r1, r2, ue[:, 0])
    harder = de > rec["hardest"]
    rec["e_proc"] = rec["e_proc"] + jax.nn.one_hot(proc, N_PROC, dtype=dtype) * de[:, None]
    rec["hardest"] = jnp.where(harder, de, rec["hardest"])
    rec["hardest_proc"] = jnp.where(harder, proc, rec["hardest_proc"])
    rec["hardest_depth"] = jnp.where(harder, ue[:, 0], rec["hardest_depth"])
    return st2, rec


@dataclasses.dataclass(frozen=True)
class ToySettings:
    v_min: float
    target: str


@pytree_dataclass
class ToyParams(ChannelParams):
    v_min: jnp.ndarray = 0.3


class ForcedHardLoss(Channel):
    name = "toy_forced_hard_loss"
    table = "channels.toy_forced_hard_loss"
    muon_only = True

    def parse_settings(self, sec, ctx):
        return ToySettings(v_min=sec.number("v_min", 0.3, gt=0.0, lt=1.0), target=sec.string("target", "ECAL"))

    def build(self, ctx: BuildContext) -> ToyParams:
        return ToyParams(admixture=self.admixture(ctx), forced_slot=ctx.setup.index(ctx.settings.target),
                         v_min=jnp.asarray(ctx.settings.v_min, ctx.dtype))

    def forced_vertex(self, params: ToyParams):
        return functools.partial(forced_hard_loss, v_min=params.v_min)


@pytest.mark.slow
def test_channel_plugin_defined_in_a_test_closes_against_analog(tmp_path):
    (tmp_path / "model.toml").write_text(MODEL)
    (tmp_path / "card.toml").write_text(CARD)
    registry = CHANNELS.with_channel(ForcedHardLoss())
    cfg = load_run(tmp_path / "card.toml", registry=registry)
    assert cfg.channel_settings["toy_forced_hard_loss"] == ToySettings(0.3, "ECAL")
    res = run(cfg, prepare(cfg), progress=False)
    est = projection(cfg, res)["channels"]
    a, b = est["analog"], est["toy_forced_hard_loss"]
    assert a["n_selected"] >= 300, a  # analog sees enough to test against
    assert b["n_selected"] > 20 * a["n_selected"] / 2, b  # the forcing puts most muons in the region
    z = (b["expected"] - a["expected"]) / math.hypot(a["stat_err"], b["stat_err"])
    assert abs(z) < 3.0, (a["expected"], a["stat_err"], b["expected"], b["stat_err"], z)
    assert b["stat_err"] < 0.5 * a["stat_err"]  # and it is the better estimate


def test_channel_registry_refuses_unknown_names_and_lists_the_known_ones(tmp_path):
    import pytest

    from fastmc.channels import UnknownChannel
    from fastmc.config import ConfigError

    with pytest.raises(UnknownChannel, match="known: analog, hadron_decay"):
        CHANNELS["toy_forced_hard_loss"]
    (tmp_path / "model.toml").write_text(MODEL)
    (tmp_path / "card.toml").write_text(CARD)
    with pytest.raises(ConfigError) as err:  # the default registry does not know the toy
        load_run(tmp_path / "card.toml")
    msg = str(err.value)
    assert "unknown channel 'toy_forced_hard_loss'" in msg and "\n" not in msg
