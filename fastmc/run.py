"""The chunk loop: fixed-shape chunks streamed through the device, tallies kept per chunk.

``run(cfg)`` simulates chunks ``[chunk_start, chunk_stop)`` of the run card.  Chunk ``c`` holds
muons ``c·chunk_size … (c+1)·chunk_size − 1``; the last chunk is padded to the fixed shape and
the padding masked (``valid``), so a chunk always compiles to the same program.  Its key is
``fold_in(key(seed), c)``.  Per-chunk tally rows come back to the host (float64) and are reduced
in chunk order (:mod:`fastmc.tally`): one job, or any split into disjoint chunk ranges merged,
gives bit-identical tallies.  Memory is flat in the number of muons.
"""

from __future__ import annotations

import dataclasses
import functools
import sys
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from fastmc.config import RunConfig
from fastmc.geometry import Setup, build_setup, setup_materials
from fastmc.rng import STREAM_BEAM, chunk_key, stream_key
from fastmc.selection import Selection, build_selection, pass_masks
from fastmc.tally import N_FIELDS, Tally, chunk_tally, reduce_chunks
from fastmc.transport import Physics, transport


@dataclasses.dataclass(frozen=True)
class ChainOptions:
    """Static (hashable) options of the compiled chain: changing them recompiles."""

    chunk_size: int
    max_interactions: int
    branches: tuple[int, ...]
    hadrons: bool = False  # transport beam hadrons (K⁺, π⁺) with decays in flight


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
    channel_params: dict[str, dict[str, Any]] = dataclasses.field(default_factory=dict)


def prepare(cfg: RunConfig) -> Prepared:
    from fastmc.physics import build_tables
    from fastmc.physics.scattering import build_scattering_params

    t0 = time.perf_counter()
    mats, index = setup_materials(cfg.model)
    ph = cfg.physics
    pcfg = ph.tables_config()
    dtype = jnp.result_type(float)
    tables = build_tables(mats, pcfg)
    hadrons = cfg.admixture.kaon_fraction + cfg.admixture.pion_fraction > 0 or "hadron_decay" in cfg.channels
    decay = None
    if hadrons:
        from fastmc.physics.decay import build_decay_tables

        decay = build_decay_tables().device(dtype)
    lambda_i = jnp.asarray([m.lambda_I_mm for m in mats], dtype)
    physics = Physics(tables.device(dtype), build_scattering_params(mats).device(dtype), ph.scattering, lambda_i, decay)
    setup = build_setup(cfg.model, index)
    from fastmc.beam import build_admixture
    from fastmc.transport import slot_branches

    e_max = 1.5 * float(setup.beam.momentum)
    options = ChainOptions(cfg.chunk_size, ph.max_interactions, slot_branches(setup, physics, e_max), hadrons)
    from fastmc.response import HitBias

    channel_params = {}
    for ch in cfg.channels:
        hits = None
        if ch == "momentum_misreconstruction":
            m = cfg.misreco
            hits = HitBias(beta=jnp.asarray(m.beta, dtype), planes=m.planes, n_forced=m.n_forced)
        channel_params[ch] = {"mix": build_admixture(cfg, ch, float(setup.beam.z_start)) if hadrons else None,
                              "hits": hits}
    return Prepared(
        cfg=cfg,
        setup=setup,
        physics=physics,
        selection=build_selection(cfg),
        material_names=tuple(m.name for m in mats),
        table_hash=str(getattr(tables, "hash", "")),
        build_seconds=time.perf_counter() - t0,
        options=options,
        channel_params=channel_params,
    )


# ----------------------------------------------------------------------------------------
# channels: biasing schemes over the same chain.  analog = no bias (log w = 0).
# ----------------------------------------------------------------------------------------


def simulate_events(
    setup: Setup, physics: Physics, key_c: jax.Array, opts: ChainOptions, params: dict | None = None
) -> tuple[dict, jnp.ndarray, dict]:
    """The chain for one chunk: beam → transport → response → reconstruction.

    A channel is a biasing scheme of this one chain, given by ``params``: ``mix``
    (:class:`fastmc.beam.Admixture`: species generation fractions, natural or forced decays;
    None for a muon-only card) and ``hits`` (:class:`fastmc.response.HitBias`: forced tracker
    pathologies; None = natural).  Returns (variables, log_w, extras).
    """
    params = params or {}
    mix = params.get("mix")
    from fastmc.beam import sample_beam
    from fastmc.reconstruct import reconstruct
    from fastmc.response import detector_response

    dtype = jnp.result_type(float)
    chunk_size = opts.chunk_size
    if opts.hadrons:
        from fastmc.beam import sample_primaries

        state = sample_primaries(setup.beam, mix, stream_key(key_c, STREAM_BEAM), chunk_size)
    else:
        state = sample_beam(setup.beam, stream_key(key_c, STREAM_BEAM), chunk_size)
        state = {k: v.astype(dtype) for k, v in state.items()}
    state["alive"] = jnp.ones((chunk_size,), bool)
    forced = bool(mix is not None and mix.forced)
    final, truth = transport(setup, physics, state, key_c, opts.max_interactions, opts.branches, forced)
    measured = detector_response(setup, truth, key_c, params.get("hits"))
    variables = reconstruct(setup, measured)
    if opts.hadrons:
        log_w = final["log_w"] + measured["log_w"]
        variables["truth_hadron"] = state["hadron"].astype(dtype)
    else:
        log_w = jnp.zeros((chunk_size,), dtype) + measured["log_w"]
        variables["truth_hadron"] = jnp.zeros((chunk_size,), dtype)
    return variables, log_w, {"n_overflow": truth["n_overflow"]}


CHANNEL_FUNCS = {"analog": simulate_events, "hadron_decay": simulate_events, "momentum_misreconstruction": simulate_events}


@functools.partial(jax.jit, static_argnames=("opts", "channel", "with_events"))
def simulate_chunk(
    setup: Setup,
    physics: Physics,
    selection: Selection,
    key_c: jax.Array,
    n_valid: jnp.ndarray,
    opts: ChainOptions,
    channel: str = "analog",
    with_events: bool = False,
    params: Any = None,
):
    """One chunk → (tally rows (n_slots, N_FIELDS), overflow count, [events])."""
    variables, log_w, extras = CHANNEL_FUNCS[channel](setup, physics, key_c, opts, params)
    valid = jnp.arange(opts.chunk_size) < n_valid
    masks = pass_masks(selection, variables, valid)
    rows = chunk_tally(masks, log_w)
    n_over = jnp.sum(jnp.where(valid, extras["n_overflow"], 0))
    events = None
    if with_events:
        events = {"variables": variables, "log_w": log_w, "selected": masks}
    return rows, n_over, events


@dataclasses.dataclass
class RunResult:
    """Per-chunk tallies of a (part of a) run; merge with :meth:`merge`."""

    channels: tuple[str, ...]
    slots: list[tuple[str, int, str]]
    chunk_ids: np.ndarray  # (n_c,)
    rows: np.ndarray  # (n_c, n_channels, n_slots, N_FIELDS) float64
    n_gen: np.ndarray  # (n_c,)
    overflow: np.ndarray  # (n_c, n_channels) interaction-slot overflows
    events: dict[str, Any] | None = None
    seconds: float = 0.0
    stop_reason: str = ""

    def tallies(self) -> dict[str, list[Tally]]:
        out = {}
        for ci, ch in enumerate(self.channels):
            out[ch] = reduce_chunks(self.chunk_ids, self.rows[:, ci], self.n_gen)
        return out

    def merge(self, other: RunResult) -> RunResult:
        if self.channels != other.channels or self.slots != other.slots:
            raise ValueError("cannot merge results of different channels or selections")
        ids = np.concatenate([self.chunk_ids, other.chunk_ids])
        if len(np.unique(ids)) != len(ids):
            raise ValueError("overlapping chunk ranges: refusing to double count")
        return RunResult(
            channels=self.channels,
            slots=self.slots,
            chunk_ids=ids,
            rows=np.concatenate([self.rows, other.rows]),
            n_gen=np.concatenate([self.n_gen, other.n_gen]),
            overflow=np.concatenate([self.overflow, other.overflow]),
            events=None,
            seconds=self.seconds + other.seconds,
        )


def n_chunks(cfg: RunConfig) -> int:
    return -(-cfg.n_muons // cfg.chunk_size)


def run(
    cfg: RunConfig,
    prepared: Prepared | None = None,
    chunk_start: int = 0,
    chunk_stop: int | None = None,
    progress: bool = True,
    target_rel_err: float | None = None,
    max_seconds: float | None = None,
) -> RunResult:
    """Simulate chunks [chunk_start, chunk_stop) of ``cfg`` for every channel of the card.

    With ``target_rel_err`` the loop stops as soon as the signal-region estimate of every
    channel has a relative error at or below it (checked after each chunk; the card's
    ``n_muons`` and ``max_seconds`` are the budget).  The result's ``stop_reason`` says why it
    stopped.  Stopping is a deterministic function of the seed unless ``max_seconds`` is hit.
    """
    from tqdm import tqdm

    prep = prepared or prepare(cfg)
    total = n_chunks(cfg)
    stop = total if chunk_stop is None else min(chunk_stop, total)
    if not 0 <= chunk_start < stop:
        raise ValueError(f"empty chunk range [{chunk_start}, {stop}) of {total} chunks")
    ids = np.arange(chunk_start, stop)
    slots = prep.selection.slots()
    rows = np.zeros((len(ids), len(cfg.channels), len(slots), N_FIELDS))
    overflow = np.zeros((len(ids), len(cfg.channels)), dtype=np.int64)
    n_gen = np.minimum(cfg.chunk_size, cfg.n_muons - ids * cfg.chunk_size)
    events: dict[str, list] = {"chunk": [], "index": [], "channel": [], "log_w": [], "variables": []}
    t0 = time.perf_counter()
    bar = tqdm(
        total=int(n_gen.sum()),
        unit="μ",
        unit_scale=True,
        disable=not progress,
        file=sys.stderr,
        desc="simulating",
        dynamic_ncols=True,
    )
    signal_slot = len(prep.selection.regions[0].cuts)  # final slot of the first region
    running = [Tally() for _ in cfg.channels]
    stop_reason = "all chunks done"
    done = len(ids)
    with bar:
        for i, c in enumerate(ids):
            key_c = chunk_key(cfg.seed, int(c))
            for ci, ch in enumerate(cfg.channels):
                r, nov, ev = simulate_chunk(
                    prep.setup,
                    prep.physics,
                    prep.selection,
                    key_c,
                    jnp.int32(n_gen[i]),
                    prep.options,
                    ch,
                    cfg.save_events,
                    prep.channel_params.get(ch),
                )
                rows[i, ci] = np.asarray(r, dtype=np.float64)
                overflow[i, ci] = int(nov)
                if ev is not None:
                    sel = np.asarray(ev["selected"][signal_slot])
                    idx = np.nonzero(sel)[0]
                    if idx.size:
                        events["chunk"].append(np.full(idx.size, c))
                        events["index"].append(idx)
                        events["channel"].append(np.full(idx.size, ci))
                        events["log_w"].append(np.asarray(ev["log_w"])[idx])
                        events["variables"].append({k: np.asarray(v)[idx] for k, v in ev["variables"].items()})
            bar.update(int(n_gen[i]))
            if target_rel_err is not None:
                errs = []
                for ci in range(len(cfg.channels)):
                    running[ci] = Tally.from_rows(rows[i : i + 1, ci, signal_slot], n_gen[i : i + 1], start=running[ci])
                    errs.append(running[ci].estimate(1.0)["rel_err"])
                bar.set_postfix_str("rel err " + ", ".join("-" if e is None else f"{e:.1%}" for e in errs))
                if all(e is not None and e <= target_rel_err for e in errs):
                    stop_reason, done = f"target relative error {target_rel_err:g} reached", i + 1
                    break
            if max_seconds is not None and time.perf_counter() - t0 > max_seconds:
                stop_reason, done = f"time budget of {max_seconds:g} s spent", i + 1
                break
        else:
            if target_rel_err is not None:
                stop_reason = f"budget of {int(n_gen.sum())} primaries spent before reaching {target_rel_err:g}"
    ids, rows, overflow, n_gen = ids[:done], rows[:done], overflow[:done], n_gen[:done]
    ev_out = None
    if cfg.save_events:
        ev_out = _stack_events(events)
    return RunResult(
        channels=cfg.channels,
        slots=slots,
        chunk_ids=ids,
        rows=rows,
        n_gen=n_gen,
        overflow=overflow,
        events=ev_out,
        seconds=time.perf_counter() - t0,
        stop_reason=stop_reason,
    )


def _stack_events(events: dict[str, list]) -> dict[str, Any]:
    if not events["chunk"]:
        return {"chunk": np.zeros(0, np.int64), "index": np.zeros(0, np.int64), "channel": np.zeros(0, np.int64),
                "log_w": np.zeros(0), "variables": {}}
    names = events["variables"][0].keys()
    return {
        "chunk": np.concatenate(events["chunk"]),
        "index": np.concatenate(events["index"]),
        "channel": np.concatenate(events["channel"]),
        "log_w": np.concatenate(events["log_w"]),
        "variables": {k: np.concatenate([v[k] for v in events["variables"]]) for k in names},
    }


def projection(cfg: RunConfig, result: RunResult, mot: float | None = None) -> dict[str, Any]:
    """The background table as a JSON-able dict (schema of ``fastmc project --json``)."""
    proj = projection_from(float(cfg.mot if mot is None else mot), cfg.regions[0][0], result)
    if "hadron_decay" in proj["channels"]:
        # the hadron fractions are external inputs: also report the rate per unit fraction
        g = cfg.hadron_decay.kaon_generation_fraction
        est = proj["channels"]["hadron_decay"]
        frac = cfg.admixture.kaon_fraction if g == 1.0 else cfg.admixture.pion_fraction if g == 0.0 else None
        label = "K+" if g == 1.0 else "pi+" if g == 0.0 else None
        if frac:
            est["per_unit_fraction"] = {
                "species": label,
                "fraction": frac,
                "expected": est["expected"] / frac,
                "stat_err": est["stat_err"] / frac,
                "upper_limit_90": None if est["upper_limit_90"] is None else est["upper_limit_90"] / frac,
            }
    return proj


def projection_from(mot: float, region0: str, result: RunResult) -> dict[str, Any]:
    """:func:`projection` from the stored numbers alone (used by ``fastmc merge``)."""
    tallies = result.tallies()
    final = [i for i, s in enumerate(result.slots) if s[0] == region0][-1]
    channels: dict[str, Any] = {}
    tot = 0.0
    var = 0.0
    for ci, ch in enumerate(result.channels):
        est = tallies[ch][final].estimate(mot)
        est["overflow_events"] = int(result.overflow[:, ci].sum())
        channels[ch] = est
        if ch != "analog" or len(result.channels) == 1:
            tot += est["expected"]
            var += est["stat_err"] ** 2
    regions: dict[str, Any] = {}
    for ci, ch in enumerate(result.channels):
        for s, (region, step, label) in enumerate(result.slots):
            est = tallies[ch][s].estimate(mot)
            regions.setdefault(ch, {}).setdefault(region, []).append({"step": step, "cut": label, **est})
    return {
        "mot": mot,
        "region": region0,
        "channels": channels,
        "total": {"expected": tot, "stat_err": var**0.5},
        "cutflow": regions,
    }


def chunk_variables(prep: Prepared, chunk_index: int, channel: str = "analog") -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Event-level reconstructed variables and log-weights of one chunk (numpy), for studies and tests."""
    out = _chunk_variables_jit(
        prep.setup, prep.physics, chunk_key(prep.cfg.seed, int(chunk_index)), prep.options, channel,
        prep.channel_params.get(channel),
    )
    variables, log_w = out
    return {k: np.asarray(v) for k, v in variables.items()}, np.asarray(log_w)


@functools.partial(jax.jit, static_argnames=("opts", "channel"))
def _chunk_variables_jit(setup, physics, key_c, opts, channel, params):
    variables, log_w, _ = CHANNEL_FUNCS[channel](setup, physics, key_c, opts, params)
    return variables, log_w
