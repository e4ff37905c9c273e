"""The chain of one chunk: beam → transport → response → reconstruction → selection → tally.

:func:`prepare` builds, once per run, everything a chunk needs (physics tables, the setup, the
selection, and each channel's parameters from its :meth:`~fastmc.channels.base.Channel.build`).
:func:`simulate_events` runs the chain for one chunk of one channel: it knows channels only
through the interface of :mod:`fastmc.channels.base` (its hooks, in chain order) and never by
name.  :func:`simulate_chunk` compiles it with the selection and the tally of the chunk.
"""

from __future__ import annotations

import dataclasses
import functools
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from fastmc import units as u
from fastmc.beam import sample_beam, sample_primaries
from fastmc.channels.base import BuildContext, Channel, ChannelParams
from fastmc.config import RunConfig
from fastmc.geometry import Setup, build_setup, build_trigger, setup_materials
from fastmc.physics import build_tables, tables_config
from fastmc.physics.decay import build_decay_tables
from fastmc.physics.scattering import build_scattering_params
from fastmc.physics.showers import build_shower_params
from fastmc.physics.tables import enable_compilation_cache
from fastmc.reconstruct import reconstruct
from fastmc.response import detector_response
from fastmc.rng import STREAM_BEAM, chunk_key, stream_key
from fastmc.selection import TRIGGER_VAR, Selection, build_selection, final_slots, pass_masks, pass_weights
from fastmc.tally import chunk_tally
from fastmc.transport import BRANCH_FORCED, Physics, kinematics, slot_branches, state_mass, transport


@dataclasses.dataclass(frozen=True)
class ChainOptions:
    """Static (hashable) options of the compiled chain: changing them recompiles."""

    chunk_size: int
    max_interactions: int
    branches: tuple[int, ...]
    hadrons: bool = False  # transport beam hadrons (K⁺, π⁺) with decays in flight
    muon_id: Any = None  # the card's [muon_id] (fastmc.config.MuonIdConfig, hashable) or None


@dataclasses.dataclass(frozen=True)
class SoftMode:
    """Soft mode (:mod:`fastmc.optimise` only): length-dependent discrete draws use ``setup_ref``'s
    lengths and are reweighted (:func:`fastmc.transport.transport`); slab apertures seen by a
    leading neutral hadron get logistic edges of width ``temperature`` × half-width."""

    setup_ref: Setup
    temperature: Any


@dataclasses.dataclass
class Prepared:
    """Everything a chunk needs, built once per run (tables are cached on disk)."""

    cfg: RunConfig
    setup: Setup
    physics: Physics
    selection: Selection
    material_names: tuple[str, ...]
    table_hash: str
    build_seconds: float
    options: ChainOptions
    channels: dict[str, Channel] = dataclasses.field(default_factory=dict)  # the card's, by name
    params: dict[str, ChannelParams] = dataclasses.field(default_factory=dict)  # per channel
    showers: Any = None  # fastmc.physics.showers.ShowerParams of [showers] model = "profile", or None


def prepare(cfg: RunConfig) -> Prepared:
    """Tables, setup, selection and every channel's parameters for ``cfg``."""
    enable_compilation_cache()
    t0 = time.perf_counter()
    mats, index = setup_materials(cfg.model)
    ph = cfg.physics
    dtype = jnp.result_type(float)
    tables = build_tables(mats, tables_config(ph))
    channels = {name: cfg.registry[name] for name in cfg.channels}
    adm = cfg.admixture
    hadrons = adm.kaon_fraction + adm.pion_fraction > 0 or any(c.transports_hadrons for c in channels.values())
    decay = build_decay_tables().device(dtype) if hadrons else None
    lambda_i = jnp.asarray([m.lambda_I_mm for m in mats], dtype)
    scat = build_scattering_params(mats, form_factor=ph.form_factor, screening=ph.screening).device(dtype)
    physics = Physics(tables.device(dtype), scat, ph.scattering, lambda_i, decay)
    setup = build_setup(cfg.model, index, cfg.reconstruction)
    if cfg.trigger is not None:
        setup = dataclasses.replace(setup, trigger=build_trigger(cfg.model, cfg.trigger.counters, cfg.trigger.window))
    e_max = 1.5 * float(setup.beam.momentum)
    options = ChainOptions(cfg.chunk_size, ph.max_interactions, slot_branches(setup, physics, e_max), hadrons,
                           cfg.muon_id)
    showers = build_shower_params(mats, cfg.showers, dtype) if cfg.showers.model == "profile" else None
    params = {name: ch.build(BuildContext(cfg, setup, mats, cfg.channel_settings.get(name), hadrons, dtype))
              for name, ch in channels.items()}
    return Prepared(
        cfg=cfg,
        setup=setup,
        physics=physics,
        selection=build_selection(cfg),
        material_names=tuple(m.name for m in mats),
        table_hash=str(getattr(tables, "hash", "")),
        build_seconds=time.perf_counter() - t0,
        options=options,
        channels=channels,
        params=params,
        showers=showers,
    )


@dataclasses.dataclass(frozen=True)
class ChainOutput:
    """What the chain gives the selection: reconstructed ``variables`` (B,) each, the events'
    ``log_w`` (B,), the interaction-slot overflow count per event, and the cuts the channel
    integrates (``{variable: f(lo, hi) → log P}``; empty for none)."""

    variables: dict[str, jnp.ndarray]
    log_w: jnp.ndarray
    n_overflow: jnp.ndarray
    integrated: dict[str, Any]
    # the transport's state before and after and its truth record: read by :func:`event_truth` only
    # where events are saved (references, no computation: the compiled tally program is unchanged)
    record: dict[str, Any] = dataclasses.field(default_factory=dict)


def simulate_events(setup: Setup, physics: Physics, key_c: jax.Array, opts: ChainOptions, channel: Channel,
                    params: ChannelParams, showers: Any = None, soft: SoftMode | None = None) -> ChainOutput:
    """The chain for one chunk of ``channel``: beam → transport → response → reconstruction.

    The channel's hooks are called in chain order (:mod:`fastmc.channels.base`); the weights of
    every biased choice are summed in ``log_w``.  ``showers`` (:class:`fastmc.physics.showers.ShowerParams`):
    hard transfers shower through the calorimeters.  ``soft``: :class:`SoftMode`.
    """
    dtype = jnp.result_type(float)
    chunk_size = opts.chunk_size
    mix = params.admixture
    if opts.hadrons:
        state = sample_primaries(setup.beam, mix, stream_key(key_c, STREAM_BEAM), chunk_size)
    else:
        state = sample_beam(setup.beam, stream_key(key_c, STREAM_BEAM), chunk_size)
        state = {k: v.astype(dtype) for k, v in state.items()}
        state["log_w"] = jnp.zeros((chunk_size,), dtype)  # every biased choice adds its log p − log q here
    zero = jnp.zeros((chunk_size,), dtype)
    state["alive"] = jnp.ones((chunk_size,), bool)
    forced_decay = bool(mix is not None and mix.forced)
    branches = opts.branches
    vertex = channel.forced_vertex(params)
    if vertex is not None:  # a forced interaction in the channel's slot; its weight goes into log_w
        branches = tuple(BRANCH_FORCED if i == params.forced_slot else b for i, b in enumerate(branches))
    state, hits_pre = channel.before_transport(setup, params, state, key_c)
    final, truth = transport(setup, physics, state, key_c, opts.max_interactions, branches, forced_decay, vertex,
                             None if soft is None else soft.setup_ref, channel.step_forcing(params), opts.hadrons)
    measured = detector_response(setup, truth, key_c, channel.hit_proposal(params), showers,
                                 channel.hadron_proposal(params), None if soft is None else soft.temperature, hits_pre)
    variables = reconstruct(setup, measured, opts.muon_id)
    # weights of the biased choices made in transport (species, forced decays/interactions) and response
    log_w = final["log_w"] + measured["log_w"]
    log_w, integrated = channel.after_response(setup, params, final, measured, variables, log_w)
    log_w, integrated = _apply_trigger(setup, measured["trigger_prob"], variables, log_w, integrated, soft is not None)
    variables["truth_hadron"] = state["hadron"].astype(dtype) if opts.hadrons else zero
    channel.truth_variables(params, final, variables)
    return ChainOutput(variables, log_w, truth["n_overflow"], integrated,
                       {"initial": state, "final": final, "slabs": truth["slabs"], "hits": truth["hits"]})


# codes of ``truth_hardest_proc`` in the saved events (the order of the physics tables' processes,
# :data:`fastmc.physics.registry.INTERACTIONS`); −1: no stochastic transfer in any slab
TRUTH_PROCESS_NAMES = {-1: "none", 0: "ionisation", 1: "bremsstrahlung", 2: "pair", 3: "photonuclear"}


def event_truth(setup: Setup, record: dict[str, Any]) -> dict[str, jnp.ndarray]:
    """Truth variables of the saved events (``fastmc project --save-events``), from the transport.

    * ``truth_p_out_GeV``: true momentum at the ``p_out`` spectrometer's first magnet: the kinetic
      energy leaving the setup plus the losses recorded in the slabs downstream of that magnet
      (continuous and stochastic; the few MeV lost in tracker planes and gaps there are neglected),
      0 where the particle did not reach the spectrometer's first downstream plane (without a
      ``p_out`` spectrometer: the momentum leaving the setup, 0 where it stopped or was absorbed);
      ``truth_p_exit_GeV``: the momentum leaving the setup;
    * ``truth_hardest_GeV``, ``truth_hardest_proc`` (code: :data:`TRUTH_PROCESS_NAMES`),
      ``truth_hardest_z_mm``: the largest single stochastic energy transfer of the event over all
      slabs (calorimeters, absorbers — the material-step records the transport keeps; transfers in
      thin tracker and counter planes are not recorded per process), its process and its z (the
      slab's entrance + depth × thickness; NaN without one).  A forced interaction (the
      calorimeter channel's photonuclear vertex) is one of them;
    * ``truth_decay_z_mm``: where a beam hadron decayed in flight (NaN where none did);
    * ``truth_final_species``: species index of the outgoing particle (``fastmc.species``), where
      hadrons are transported.
    """
    initial, final, slabs, hits = record["initial"], record["final"], record["slabs"], record["hits"]
    dtype = final["ekin"].dtype
    mass = state_mass(final)
    pmag, _ = kinematics(final["ekin"], mass)
    out = {"truth_p_exit_GeV": jnp.where(final["alive"], pmag / u.GeV, 0.0).astype(dtype)}
    spec = [s for s in setup.spectrometers if s.output == "p_out" and s.magnets and s.downstream]
    if spec:
        z_mag = setup.element(spec[0].magnets[0]).z
        ekin = final["ekin"] * final["alive"]
        for name, rec in slabs.items():
            after = setup.element(name).z >= z_mag
            ekin = ekin + jnp.where(after, rec["e_cont"] + jnp.sum(rec["e_proc"], axis=-1), 0.0)
        p_mag, _ = kinematics(ekin, mass)
        out["truth_p_out_GeV"] = jnp.where(hits[spec[0].downstream[0]][2], p_mag / u.GeV, 0.0).astype(dtype)
    else:
        out["truth_p_out_GeV"] = out["truth_p_exit_GeV"]
    nan = jnp.full(final["ekin"].shape, jnp.nan, dtype)
    hardest, proc, z = jnp.zeros_like(nan), jnp.full(nan.shape, -1, jnp.int32), nan
    for name, rec in slabs.items():
        el = setup.element(name)
        harder = rec["hardest"] > hardest
        hardest = jnp.where(harder, rec["hardest"], hardest)
        proc = jnp.where(harder, rec["hardest_proc"], proc)
        z = jnp.where(harder, el.z + rec["hardest_depth"] * el.thickness, z)
    out["truth_hardest_GeV"] = hardest / u.GeV
    out["truth_hardest_proc"] = proc
    out["truth_hardest_z_mm"] = (z / u.mm).astype(dtype)
    if "decayed" in final and "z_decay" in initial:
        out["truth_decay_z_mm"] = jnp.where(final["decayed"], initial["z_decay"] / u.mm, jnp.nan).astype(dtype)
    else:
        out["truth_decay_z_mm"] = nan
    if "species" in final:
        out["truth_final_species"] = final["species"].astype(jnp.int32)
    return out


def trigger_log_prob(p_trig):
    """``f(lo, hi)`` → log P(lo ≤ trigger ≤ hi) per event, for trigger = 1 with probability
    ``p_trig`` and 0 otherwise (the integrated trigger cut, :func:`fastmc.selection.pass_weights`)."""

    def f(lo, hi):
        p = (jnp.where((lo <= 1.0) & (1.0 <= hi), p_trig, 0.0)
             + jnp.where((lo <= 0.0) & (0.0 <= hi), 1.0 - p_trig, 0.0))
        return jnp.where(p > 0, jnp.log(jnp.where(p > 0, p, 1.0)), -jnp.inf)

    return f


def _apply_trigger(setup: Setup, p_trig, variables: dict, log_w, integrated: dict, soft: bool):
    """The trigger for every channel: ``trigger_prob`` for event dumps; with a [trigger], the cut
    ``trigger`` is integrated (conditional Monte Carlo, merged with the channel's integrated cuts),
    or in soft mode (:mod:`fastmc.optimise`) P(trigger) multiplies the weight and the cut passes."""
    variables["trigger_prob"] = p_trig
    if setup.trigger is None:
        return log_w, integrated
    if soft:
        ok = p_trig > 0
        log_w = log_w + jnp.where(ok, jnp.log(jnp.where(ok, p_trig, 1.0)), -jnp.inf)
        variables[TRIGGER_VAR] = jnp.full_like(p_trig, jnp.inf)  # passes trigger >= 0.5 exactly, no gradient
        return log_w, integrated
    variables[TRIGGER_VAR] = p_trig  # never cut on directly: the cut is integrated
    return log_w, {**integrated, TRIGGER_VAR: trigger_log_prob(p_trig)}


@functools.partial(jax.jit, static_argnames=("opts", "channel", "with_events"))
def simulate_chunk(
    setup: Setup,
    physics: Physics,
    selection: Selection,
    key_c: jax.Array,
    n_valid: jnp.ndarray,
    opts: ChainOptions,
    channel: Channel,
    with_events: bool = False,
    params: ChannelParams | None = None,
    showers: Any = None,
):
    """One chunk → (tally rows (n_slots, N_FIELDS), (overflow count, log Σw of the overflowing
    events in the signal region), [events])."""
    out = simulate_events(setup, physics, key_c, opts, channel, params, showers)
    variables, log_w, integrated = out.variables, out.log_w, out.integrated
    valid = jnp.arange(opts.chunk_size) < n_valid
    if integrated:
        masks, log_p = pass_weights(selection, variables, valid, integrated)
        rows = chunk_tally(masks, log_w[None, :] + log_p)
    else:
        masks = pass_masks(selection, variables, valid)
        rows = chunk_tally(masks, log_w)
    n_over = jnp.sum(jnp.where(valid, out.n_overflow, 0))
    # log Σw of the events that reached the interaction cap and pass the signal region (its final
    # slot): the warning says which share of the estimate they carry
    sig = final_slots(selection)[0]
    lw_sig = log_w + log_p[sig] if integrated else log_w
    over_sel = masks[sig] & (out.n_overflow > 0) & valid
    lw_over = jax.nn.logsumexp(jnp.where(over_sel, lw_sig, -jnp.inf))
    n_over = (n_over, lw_over)
    events = None
    if with_events:
        # per region, the event's weight (−inf where the region does not select it): with integrated
        # cuts it includes their probability, which may differ between regions; log_w is that of
        # the first region selecting the event
        final = jnp.asarray(final_slots(selection))
        sel = masks[final]  # (n_regions, B)
        lp_fin = log_p[final] if integrated else jnp.zeros(sel.shape, log_w.dtype)
        variables = {**variables, **event_truth(setup, out.record),
                     "truth_n_overflow": out.n_overflow.astype(log_w.dtype)}  # interactions past the cap
        for r, sr, lr in zip(selection.regions, sel, lp_fin):
            variables[f"log_w_region_{r.name}"] = jnp.where(sr, log_w + lr, -jnp.inf)
        log_w = log_w + jnp.take_along_axis(lp_fin, jnp.argmax(sel, axis=0)[None], axis=0)[0]
        events = {"variables": variables, "log_w": log_w, "selected": masks}
    return rows, n_over, events


def chunk_variables(prep: Prepared, chunk_index: int,
                    channel: str = "analog") -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Event-level reconstructed variables and log-weights of one chunk (numpy), for studies and tests."""
    ch = prep.channels.get(channel) or prep.cfg.registry[channel]
    params = prep.params.get(channel, ChannelParams())
    variables, log_w = _chunk_variables_jit(prep.setup, prep.physics, chunk_key(prep.cfg.seed, int(chunk_index)),
                                            prep.options, ch, params, prep.showers)
    return {k: np.asarray(v) for k, v in variables.items()}, np.asarray(log_w)


@functools.partial(jax.jit, static_argnames=("opts", "channel"))
def _chunk_variables_jit(setup, physics, key_c, opts, channel, params, showers):
    out = simulate_events(setup, physics, key_c, opts, channel, params, showers)
    return out.variables, out.log_w


__all__ = ["TRUTH_PROCESS_NAMES", "ChainOptions", "ChainOutput", "Prepared", "SoftMode", "chunk_variables",
           "event_truth", "prepare", "simulate_chunk", "simulate_events", "trigger_log_prob"]
