"""Channel ``signal``: one dark-boson emission μN → μN X forced in the active target.

Not a background: ``fastmc sensitivity`` runs it once per boson mass with that mass's emission
tables (:func:`fastmc.physics.darkbrem.build_emission_tables`, set in :attr:`SignalParams.tables`)
to get the signal efficiency and yield per muon on target; ``fastmc optimize`` uses it for the
figure of merit.  Its settings are the card's ``[signal]`` table.  The emission is a
:class:`fastmc.transport.ForcedVertex` (:func:`signal_material_step`) whose weight is its thin-target
probability; the emitted energy fraction is kept as the truth variable ``truth_signal_x``.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp

from fastmc import units as u
from fastmc._pytree import pytree_dataclass
from fastmc.channels.base import BuildContext, CardContext, Channel, ChannelParams
from fastmc.config import SIGNAL_MODELS, check_signal_mass, check_signal_target
from fastmc.geometry import Setup
from fastmc.physics.darkbrem import N_EMIT_UNIFORMS, EmissionTables, emit
from fastmc.rng import uniforms
from fastmc.transport import Physics, combine_split_records, material_step, n_step_uniforms, split_reference_lengths


@dataclasses.dataclass(frozen=True)
class SignalSettings:
    """The ``[signal]`` table of a run card (``fastmc sensitivity``): boson model, the element in
    which the emission is forced (the active target), masses to scan and muons per mass."""

    model: str = "z_prime"
    target: str = "ECAL"
    masses: tuple[float, ...] = (1.0, 10.0, 100.0, 1000.0)  # MeV
    n_muons: int = 65536


def signal_material_step(physics: Physics, state: dict, mat, length, density_scale, k: int, key,
                         length_ref=None, *, signal: EmissionTables):
    """A material step with one forced dark-boson emission (the signal channel's target slot).

    The emission depth d is uniform in [0, L] (proposal density 1/L); the muon is transported
    over d (:func:`material_step`, full physics), emits X (:func:`fastmc.physics.darkbrem.emit`,
    which adds log(Σ_X(E_d)·L) + the angular weight to ``log_w``: the thin-target probability of
    the emission, exact because ε² ≪ 1 makes the muon flux unchanged by it), and is transported
    over L − d.  The truth records of the two halves are summed (hardest = the larger one).
    """
    bsz = state["ekin"].shape[0]
    dtype = state["ekin"].dtype
    ue = uniforms(jax.random.fold_in(key, 7), (bsz, 1 + N_EMIT_UNIFORMS), dtype)
    d = ue[:, 0] * length
    ref1, ref2 = split_reference_lengths(length_ref, ue[:, 0])
    st1, r1 = material_step(physics, state, mat, d, density_scale, k,
                            uniforms(jax.random.fold_in(key, 8), (bsz, n_step_uniforms(k)), dtype), ref1)
    st1 = emit(signal, st1, mat, length * density_scale, ue[:, 1:])
    st2, r2 = material_step(physics, st1, mat, length - d, density_scale, k,
                            uniforms(jax.random.fold_in(key, 9), (bsz, n_step_uniforms(k)), dtype), ref2)
    return st2, combine_split_records(r1, r2, ue[:, 0])


@pytree_dataclass
class SignalParams(ChannelParams):
    """The emission tables of one boson mass (None until :mod:`fastmc.sensitivity` sets them)."""

    tables: EmissionTables | None = None


class Signal(Channel):
    """Forces one dark-boson emission in the target (``fastmc sensitivity``, ``fastmc optimize``)."""

    name = "signal"
    table = "signal"
    background = False

    def parse_settings(self, sec, ctx: CardContext) -> SignalSettings:
        d = SignalSettings()
        target = sec.string("target", d.target)
        # the default target is checked where it is used (fastmc sensitivity): cards without a
        # [signal] table need not have an ECAL
        if "target" in sec.data:
            check_signal_target(ctx.model, target, lambda why: sec.fail("target", target, why))
        masses = sec.raw("masses_MeV", list(d.masses))
        if (not isinstance(masses, list) or not masses
                or not all(isinstance(m, (int, float)) and not isinstance(m, bool) for m in masses)):
            raise sec.fail("masses_MeV", masses, "must be a non-empty list of numbers")
        for m in masses:
            check_signal_mass(m, lambda why, m=m: sec.fail("masses_MeV", m, why))
        return SignalSettings(
            model=sec.string("model", d.model, choices=SIGNAL_MODELS),
            target=target,
            masses=tuple(float(m) * u.MeV for m in masses),
            n_muons=sec.number("n_muons", d.n_muons, integer=True, ge=1, le=10**12),
        )

    def build(self, ctx: BuildContext) -> SignalParams:
        return SignalParams(admixture=self.admixture(ctx), forced_slot=ctx.setup.index(ctx.settings.target))

    def check_ready(self, params: SignalParams) -> None:
        if params.tables is None:
            raise ValueError("the signal channel needs emission tables (fastmc.sensitivity sets them per mass)")

    def forced_vertex(self, params: SignalParams):
        if params.tables is None:
            return None
        return functools.partial(signal_material_step, signal=params.tables)

    def before_transport(self, setup: Setup, params: SignalParams, state: dict, key_c: jax.Array):
        if params.tables is None:
            return state, None
        zero = jnp.zeros(state["ekin"].shape, jnp.result_type(float))
        return {**state, "signal_x": zero, "signal_e_x": zero}, None

    def truth_variables(self, params: SignalParams, final: dict, variables: dict) -> None:
        if params.tables is not None:
            variables["truth_signal_x"] = final["signal_x"]
