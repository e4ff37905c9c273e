"""The chunk loop: fixed-shape chunks streamed through the device, tallies kept per chunk.

``run(cfg)`` simulates chunks ``[chunk_start, chunk_stop)`` of the run card.  Chunk ``c`` holds
muons ``c·chunk_size … (c+1)·chunk_size − 1``; the last chunk is padded to the fixed shape and
the padding masked (``valid``), so a chunk always compiles to the same program.  Its key is
``fold_in(key(seed), c)``.  Per-chunk tally rows come back to the host (float64) and are reduced
in chunk order (:mod:`fastmc.tally`): one job, or any split into disjoint chunk ranges merged,
gives bit-identical tallies.  Memory is flat in the number of muons.

Several local devices (``devices=N``): groups of N consecutive chunks run at once, one chunk per
device: the one-device program is dispatched asynchronously to each device with its inputs placed
there (a ``shard_map`` program compiles differently and was seen not to be bitwise reproducible
against one device), and the rows are reduced on the host in chunk order, so the
tallies are bitwise those of one device (DESIGN.md §7).  ``on_checkpoint`` receives the partial
:class:`RunResult` every ``checkpoint_every`` chunks (``fastmc project --checkpoint-every``).
"""

from __future__ import annotations

import dataclasses
import functools
import math
import sys
import time
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from fastmc.config import ConfigError, RunConfig
from fastmc.geometry import Setup, build_setup, setup_materials
from fastmc.rng import STREAM_BEAM, STREAM_CHANNEL, chunk_key, stream_key, uniforms
from fastmc.selection import Selection, build_selection, final_slots, pass_masks, pass_weights
from fastmc.tally import N_FIELDS, Tally, chunk_tally, reduce_chunks
from fastmc.transport import Physics, transport


@dataclasses.dataclass(frozen=True)
class ChainOptions:
    """Static (hashable) options of the compiled chain: changing them recompiles."""

    chunk_size: int
    max_interactions: int
    branches: tuple[int, ...]
    hadrons: bool = False  # transport beam hadrons (K⁺, π⁺) with decays in flight
    forced_slot: int = -1  # element slot of a forced interaction (signal emission / calorimeter channel), -1: none


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
    from fastmc.physics.tables import enable_compilation_cache

    enable_compilation_cache()
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
    physics = Physics(tables.device(dtype), build_scattering_params(mats, form_factor=ph.form_factor, screening=ph.screening).device(dtype), ph.scattering, lambda_i, decay)
    setup = build_setup(cfg.model, index)
    from fastmc.beam import build_admixture
    from fastmc.transport import slot_branches

    e_max = 1.5 * float(setup.beam.momentum)
    forced_slot = -1  # the slot of a forced interaction: the signal's emission or the calorimeter channel's
    if "signal" in cfg.channels:
        forced_slot = setup.index(cfg.signal.target)
    elif "calorimeter_nonhermeticity" in cfg.channels:
        forced_slot = setup.index(cfg.calo.target)
    options = ChainOptions(cfg.chunk_size, ph.max_interactions, slot_branches(setup, physics, e_max), hadrons,
                           forced_slot)
    from fastmc.response import CaloBias, HitBias, deflect_bias, misreco_scenarios

    showers = None
    if cfg.showers.model == "profile":
        from fastmc.physics.showers import build_shower_params

        showers = build_shower_params(mats, cfg.showers, dtype)
    channel_params = {}
    for ch in cfg.channels:
        hits = None
        if ch == "momentum_misreconstruction":
            m = cfg.misreco
            # hits per arm that every region of the selection asks for (scenarios below it are useless)
            need = {v: min(max((c.min for c in cuts if c.var == v and c.min is not None), default=0.0)
                           for _, cuts in cfg.regions)
                    for v in {c.var for _, cuts in cfg.regions for c in cuts if c.var.endswith(("_hits_up", "_hits_down"))}}
            planes, axis, roles, spec = misreco_scenarios(setup, m.planes, min_hits=need)
            if not roles:
                raise ConfigError(f"{cfg.path}: [channels.momentum_misreconstruction] planes = {list(m.planes)}: "
                                 "no arm of a spectrometer can fake a slope of a quarter of its bend with these planes")
            hits = HitBias(beta=jnp.asarray(m.beta, dtype), push_power=jnp.asarray(m.push_power, dtype),
                           planes=planes, axis=axis, roles=roles, spectrometer=spec,
                           window_lo=jnp.asarray(m.push_window, dtype), window_share=jnp.asarray(m.push_window_share, dtype))
        channel_params[ch] = {"mix": build_admixture(cfg, ch, float(setup.beam.z_start)) if hadrons else None,
                              "hits": hits}
        if ch == "momentum_misreconstruction":
            channel_params[ch]["deflect"] = deflect_bias(setup, [mat.X0_mm for mat in mats], m.deflect_follow,
                                                         m.deflect_beta, m.deflect_kicks, dtype, m.integrate_kink)
        if ch == "signal":  # emission tables of one boson mass: set by fastmc.sensitivity per mass
            channel_params[ch]["signal"] = None
        if showers is not None:
            channel_params[ch]["showers"] = showers
        if ch == "calorimeter_nonhermeticity":
            c = cfg.calo
            channel_params[ch]["calo"] = CaloBias(q_neutral=jnp.asarray(c.q_neutral, dtype), beta=jnp.asarray(c.beta, dtype),
                                                  z_focus=jnp.asarray(c.z_focus, dtype),
                                                  v_min=jnp.asarray(c.v_min, dtype),
                                                  pt_widen=jnp.asarray(c.pt_widen, dtype), target=c.target)
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
    pathologies; None = natural).  Returns (variables, log_w, extras); ``extras["integrated"]``,
    when present, holds the cuts a channel integrates (:func:`fastmc.selection.pass_weights`):
    the misreconstruction channel's target-kink cuts with the scattering core integrated out.

    Soft mode (``params["soft"] = {"setup_ref", "temperature"}``, :mod:`fastmc.optimise` only):
    length-dependent discrete draws use ``setup_ref``'s lengths and are reweighted
    (:func:`fastmc.transport.transport`), slab apertures get logistic edges.
    """
    params = params or {}
    soft = params.get("soft")
    mix = params.get("mix")
    signal = params.get("signal")
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
    branches = opts.branches
    calo = params.get("calo")
    if signal is not None or calo is not None:
        # a forced interaction in the target slot: the signal's dark-boson emission, or the
        # calorimeter channel's hard photonuclear interaction
        from fastmc.transport import BRANCH_SIGNAL

        branches = tuple(BRANCH_SIGNAL if i == opts.forced_slot else b for i, b in enumerate(branches))
        zero = jnp.zeros((chunk_size,), dtype)
        state.setdefault("log_w", zero)
        if signal is not None:
            state.update(signal_x=zero, signal_e_x=zero)
    if soft is not None:
        state.setdefault("log_w", jnp.zeros((chunk_size,), dtype))
    deflect = params.get("deflect")
    hits_pre = None
    if deflect is not None:
        # the misreconstruction channel's deflection forcing (fastmc.response.DeflectBias): the hit
        # offsets come first (they do not depend on the muon), then each muon is turned to hide a
        # share of the kink they fake
        from fastmc.response import deflect_components, faked_kink, hit_offsets

        hits_pre = hit_offsets(setup, key_c, params.get("hits"), chunk_size, dtype)
        base = -faked_kink(setup, hits_pre[0]) * deflect.inv_v
        state.update(deflect_components(deflect, uniforms(stream_key(key_c, STREAM_CHANNEL, 1), (chunk_size,), dtype), base))
    final, truth = transport(setup, physics, state, key_c, opts.max_interactions, branches, forced, signal,
                             None if calo is None else calo.v_min, None if soft is None else soft["setup_ref"],
                             deflect)
    measured = detector_response(setup, truth, key_c, params.get("hits"), params.get("showers"), calo,
                                 None if soft is None else soft["temperature"], hits_pre)
    variables = reconstruct(setup, measured)
    extras = {"n_overflow": truth["n_overflow"]}
    # weights of the biased choices made in transport (species, forced decays/interactions) and response
    log_w = (final["log_w"] if "log_w" in final else jnp.zeros((chunk_size,), dtype)) + measured["log_w"]
    if deflect is not None:
        from fastmc.response import deflect_log_weight, integrated_kink_cuts

        log_w = log_w + deflect_log_weight(deflect, final)
        if deflect.integrate:  # the target-kink cuts with the Gaussian core integrated out
            extras["integrated"] = integrated_kink_cuts(setup, measured["hits"], variables["p_out_GeV"],
                                                        final["tilt_x"], final["tilt_v"])
    variables["truth_hadron"] = state["hadron"].astype(dtype) if opts.hadrons else jnp.zeros((chunk_size,), dtype)
    if signal is not None:
        variables["truth_signal_x"] = final["signal_x"]
    return variables, log_w, extras


CHANNEL_FUNCS = {"analog": simulate_events, "hadron_decay": simulate_events, "momentum_misreconstruction": simulate_events,
                 "calorimeter_nonhermeticity": simulate_events, "signal": simulate_events}


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
    integrated = extras.get("integrated")
    if integrated:
        masks, log_p = pass_weights(selection, variables, valid, integrated)
        rows = chunk_tally(masks, log_w[None, :] + log_p)
    else:
        masks = pass_masks(selection, variables, valid)
        rows = chunk_tally(masks, log_w)
    n_over = jnp.sum(jnp.where(valid, extras["n_overflow"], 0))
    events = None
    if with_events:
        # per region, the event's weight (−inf where the region does not select it): with integrated
        # cuts it includes their probability, which may differ between regions; log_w is that of
        # the first region selecting the event
        final = jnp.asarray(final_slots(selection))
        sel = masks[final]  # (n_regions, B)
        lp_fin = log_p[final] if integrated else jnp.zeros(sel.shape, log_w.dtype)
        variables = dict(variables)
        for r, sr, lr in zip(selection.regions, sel, lp_fin):
            variables[f"log_w_region_{r.name}"] = jnp.where(sr, log_w + lr, -jnp.inf)
        log_w = log_w + jnp.take_along_axis(lp_fin, jnp.argmax(sel, axis=0)[None], axis=0)[0]
        events = {"variables": variables, "log_w": log_w, "selected": masks}
    return rows, n_over, events


# per stored event: chunk and index in the chunk (replayable), channel index, bit mask of the
# regions that selected it (bit r = region r of the card), log-weight
EVENT_KEYS = ("chunk", "index", "channel", "region_mask", "log_w")


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
    # wall seconds spent in each channel's chunks after its first (compilation excluded), and the
    # primaries simulated in them, per channel (or one number for all): the cost side of the figure
    # of merit (None when not measured, e.g. several devices or a Dask run)
    channel_seconds: np.ndarray | None = None
    timed_primaries: np.ndarray | int = 0
    # (n_c, n_channels) bool: which channel simulated which chunk (None: every channel every chunk).
    # With --target-rel-err a channel that has reached the target stops; the others go on.
    active: np.ndarray | None = None

    def channel_active(self) -> np.ndarray:
        """``active`` with None spelled out."""
        if self.active is None:
            return np.ones((len(self.chunk_ids), len(self.channels)), bool)
        return np.asarray(self.active, bool)

    def ul_weights(self, tallies: dict[str, list[Tally]] | None = None) -> dict[str, list[float]]:
        """Per channel and slot, the weight one more selected event would carry, for the
        zero-event upper limit (:meth:`fastmc.tally.Tally.estimate`'s ``w_scale``): the largest
        weight among all events generated in that channel (step 0 of the slot's region; 1 for
        analog simulation).  If every selected event has w ≤ w_max, the proposal selects with
        probability Q ≥ p/w_max, and seeing none in N bounds Q < 2.303/N at 90 % CL, so
        p < 2.303·w_max/N; the largest generated weight stands in for the supremum of w."""
        tallies = self.tallies() if tallies is None else tallies
        first = {}
        for s, (region, step, _) in enumerate(self.slots):
            if step == 0:
                first[region] = s
        out = {}
        for ch, ts in tallies.items():
            out[ch] = [math.exp(ts[first[r]].log_wmax) if math.isfinite(ts[first[r]].log_wmax) else 1.0
                       for r, _, _ in self.slots]
        return out

    def tallies(self) -> dict[str, list[Tally]]:
        out = {}
        act = self.channel_active()
        for ci, ch in enumerate(self.channels):
            m = act[:, ci]
            out[ch] = reduce_chunks(self.chunk_ids[m], self.rows[m, ci], self.n_gen[m])
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
            events=merge_events(self.events, other.events),
            seconds=self.seconds + other.seconds,
            channel_seconds=(None if self.channel_seconds is None or other.channel_seconds is None
                             else self.channel_seconds + other.channel_seconds),
            timed_primaries=np.asarray(self.timed_primaries) + np.asarray(other.timed_primaries),
            active=(None if self.active is None and other.active is None
                    else np.concatenate([self.channel_active(), other.channel_active()])),
        )


def merge_events(a: dict[str, Any] | None, b: dict[str, Any] | None) -> dict[str, Any] | None:
    """Union of two event records of disjoint chunks, in (chunk, channel, index) order; None if either is."""
    if a is None or b is None:
        return None
    out = {k: np.concatenate([np.asarray(a[k]), np.asarray(b[k])]) for k in EVENT_KEYS}
    order = np.lexsort((out["index"], out["channel"], out["chunk"]))
    out = {k: v[order] for k, v in out.items()}
    names = list(a["variables"] or b["variables"])
    out["variables"] = {}
    for k in names:
        parts = [np.asarray(e["variables"][k]) for e in (a, b) if len(e["chunk"])]
        out["variables"][k] = np.concatenate(parts)[order] if parts else np.zeros(0)
    return out


def n_chunks(cfg: RunConfig) -> int:
    return -(-cfg.n_muons // cfg.chunk_size)


def select_devices(n: int | None = None) -> list:
    """The first ``n`` local devices (all of them by default)."""
    devs = jax.local_devices()
    if n is None:
        return devs
    if not 1 <= n <= len(devs):
        raise ValueError(f"asked for {n} devices, {len(devs)} local device(s) available")
    return devs[:n]


def chunk_groups(ids: np.ndarray, n_dev: int) -> list[np.ndarray]:
    """Consecutive groups of ``n_dev`` chunk ids (the last one may be shorter)."""
    return [ids[i : i + n_dev] for i in range(0, len(ids), n_dev)]


def simulate_group(
    prep: Prepared,
    channel: str,
    seed: int,
    chunk_ids: np.ndarray,
    n_valid: np.ndarray,
    devices: list,
    placed: dict,
    with_events: bool = False,
    opts: ChainOptions | None = None,
) -> tuple[np.ndarray, np.ndarray, dict | None]:
    """Chunks ``chunk_ids`` of ``channel``, chunk ``j`` (``n_valid[j]`` valid muons) on ``devices[j]``.

    One device: the chunk runs where JAX puts it.  Several: the same compiled program on each device
    (inputs placed there and kept in ``placed`` per (device, channel), dispatched asynchronously):
    identical bits whatever the device count — a shard_map program is compiled differently and is
    not bitwise reproducible.  ``opts`` replaces ``prep.options`` (``fastmc bench``: other chunk
    sizes).  Returns, on the host and stacked over the chunks: tally rows (n, n_slots, N_FIELDS)
    float64, overflow counts (n,), and the events (None unless ``with_events``).
    """
    opts = prep.options if opts is None else opts
    mix = prep.channel_params.get(channel)
    if len(devices) == 1:
        r, nov, ev = simulate_chunk(
            prep.setup, prep.physics, prep.selection, chunk_key(seed, int(chunk_ids[0])),
            jnp.int32(n_valid[0]), opts, channel, with_events, mix,
        )
        r, nov = np.asarray(r, dtype=np.float64)[None], np.asarray(nov)[None]
        ev = None if ev is None else jax.tree_util.tree_map(lambda a: np.asarray(a)[None], ev)
        return r, nov, ev
    outs = []
    for j, c in enumerate(chunk_ids):
        d = devices[j]
        if (d, channel) not in placed:
            placed[(d, channel)] = jax.device_put((prep.setup, prep.physics, prep.selection, mix), d)
        st, ph, sl, mx = placed[(d, channel)]
        key = jax.device_put(chunk_key(seed, int(c)), d)
        nv = jax.device_put(jnp.int32(n_valid[j]), d)
        outs.append(simulate_chunk(st, ph, sl, key, nv, opts, channel, with_events, mx))
    r = np.stack([np.asarray(o[0], dtype=np.float64) for o in outs])
    nov = np.stack([np.asarray(o[1]) for o in outs])
    ev = None
    if with_events:
        ev = jax.tree_util.tree_map(lambda *a: np.stack([np.asarray(x) for x in a]), *[o[2] for o in outs])
    return r, nov, ev


def run(
    cfg: RunConfig,
    prepared: Prepared | None = None,
    chunk_start: int = 0,
    chunk_stop: int | None = None,
    progress: bool = True,
    target_rel_err: float | None = None,
    max_seconds: float | None = None,
    *,
    chunk_ids: np.ndarray | None = None,
    devices: int | None = 1,
    checkpoint_every: int = 0,
    on_checkpoint: Callable[[RunResult], None] | None = None,
) -> RunResult:
    """Simulate chunks [chunk_start, chunk_stop) of ``cfg`` for every channel of the card.

    ``chunk_ids`` (sorted, unique) replaces the range (resume of the missing chunks).  ``devices``:
    number of local devices (None = all); the tallies do not depend on it.  With
    ``checkpoint_every = N > 0``, ``on_checkpoint(partial)`` is called after every N completed
    chunks (rounded up to whole device groups) with the result so far.

    With ``target_rel_err`` a channel stops as soon as its signal-region estimate has a relative
    error at or below it and none of its diagnostics flags it (:func:`fastmc.tally.diagnose`:
    dominant event, low ESS, heavy Pareto tail); the remaining budget goes to the channels still
    running, and the loop ends when every channel has stopped (checked after each group of chunks;
    the card's ``n_muons`` and ``max_seconds`` are the budget).  ``active`` of the result records
    which channel simulated which chunk, and ``stop_reason`` says why the run ended.  Stopping is a
    deterministic function of the seed unless ``max_seconds`` is hit.
    """
    from tqdm import tqdm

    from fastmc.tally import diagnose

    prep = prepared or prepare(cfg)
    total = n_chunks(cfg)
    if chunk_ids is not None:
        ids = np.asarray(chunk_ids, dtype=np.int64)
        if ids.size == 0 or ids.min() < 0 or ids.max() >= total or np.any(np.diff(ids) <= 0):
            raise ValueError(f"chunk ids must be sorted, unique and in [0, {total})")
    else:
        stop = total if chunk_stop is None else min(chunk_stop, total)
        if not 0 <= chunk_start < stop:
            raise ValueError(f"empty chunk range [{chunk_start}, {stop}) of {total} chunks")
        ids = np.arange(chunk_start, stop)
    for ch in cfg.channels:
        if ch == "signal" and prep.channel_params[ch].get("signal") is None:
            raise ValueError("the signal channel needs emission tables (fastmc.sensitivity sets them per mass)")
    devs = select_devices(devices)
    n_dev = min(len(devs), len(ids))
    slots = prep.selection.slots()
    rows = np.zeros((len(ids), len(cfg.channels), len(slots), N_FIELDS))
    overflow = np.zeros((len(ids), len(cfg.channels)), dtype=np.int64)
    n_gen = np.minimum(cfg.chunk_size, cfg.n_muons - ids * cfg.chunk_size)
    events: dict[str, list] = {k: [] for k in (*EVENT_KEYS, "variables")}
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
    region_slots = final_slots(prep.selection)
    running = [Tally() for _ in cfg.channels]
    ch_seconds = np.zeros(len(cfg.channels))
    timed = np.zeros(len(cfg.channels), dtype=np.int64)
    active = np.zeros((len(ids), len(cfg.channels)), bool)
    on = np.ones(len(cfg.channels), bool)  # channels still simulating
    reached_at: dict[str, int] = {}  # channel → primaries it took to reach the target
    stop_reason = "all chunks done"
    done = 0
    last_ckpt = 0
    placed: dict = {}
    with bar:
        for group in chunk_groups(ids, n_dev):
            n_grp = len(group)
            for ci, ch in enumerate(cfg.channels):
                if not on[ci]:
                    continue
                active[done : done + n_grp, ci] = True
                tc = time.perf_counter()
                r, nov, ev = simulate_group(prep, ch, cfg.seed, group, n_gen[done : done + n_grp], devs[:n_dev], placed,
                                            cfg.save_events)
                if n_dev == 1 and done > 0:
                    ch_seconds[ci] += time.perf_counter() - tc
                    timed[ci] += int(n_gen[done])
                for j, c in enumerate(group):
                    i = done + j
                    rows[i, ci] = r[j]
                    overflow[i, ci] = int(nov[j])
                    if ev is not None:
                        # events selected in any region; bit r of region_mask: selected in region r
                        fin = np.asarray(ev["selected"][j])[region_slots]  # (n_regions, B)
                        mask = (fin.astype(np.int64) << np.arange(len(region_slots))[:, None]).sum(axis=0)
                        idx = np.nonzero(mask)[0]
                        if idx.size:
                            events["chunk"].append(np.full(idx.size, c))
                            events["index"].append(idx)
                            events["channel"].append(np.full(idx.size, ci))
                            events["region_mask"].append(mask[idx])
                            events["log_w"].append(np.asarray(ev["log_w"][j])[idx])
                            events["variables"].append({k: np.asarray(v[j])[idx] for k, v in ev["variables"].items()})
            bar.update(int(n_gen[done : done + n_grp].sum()))
            done += n_grp
            if target_rel_err is not None:
                errs = []
                for ci, ch in enumerate(cfg.channels):
                    if on[ci]:
                        running[ci] = Tally.from_rows(rows[done - n_grp : done, ci, signal_slot],
                                                      n_gen[done - n_grp : done], start=running[ci])
                    est = running[ci].estimate(1.0)
                    e = est["rel_err"]
                    if on[ci] and e is not None and e <= target_rel_err and not diagnose(ch, est):
                        on[ci] = False
                        reached_at[ch] = running[ci].n_gen
                    errs.append(("-" if e is None else f"{e:.1%}") + ("" if on[ci] else " ✓"))
                bar.set_postfix_str("rel err " + ", ".join(errs))
                if not on.any():
                    stop_reason = f"target relative error {target_rel_err:g} reached"
                    break
            if max_seconds is not None and time.perf_counter() - t0 > max_seconds:
                stop_reason = f"time budget of {max_seconds:g} s spent"
                break
            if checkpoint_every > 0 and on_checkpoint is not None and done - last_ckpt >= checkpoint_every and done < len(ids):
                last_ckpt = done
                on_checkpoint(RunResult(
                    channels=cfg.channels, slots=slots, chunk_ids=ids[:done].copy(), rows=rows[:done].copy(),
                    n_gen=n_gen[:done].copy(), overflow=overflow[:done].copy(),
                    events=_stack_events(events) if cfg.save_events else None,
                    seconds=time.perf_counter() - t0, active=active[:done].copy(),
                ))
        else:
            if target_rel_err is not None:
                stop_reason = f"budget of {int(n_gen.sum())} primaries spent before reaching {target_rel_err:g}"
    if target_rel_err is not None and on.any() and reached_at:
        stop_reason += "; reached by " + ", ".join(f"{ch} (after {n} primaries)" for ch, n in reached_at.items())
    ids, rows, overflow, n_gen, active = ids[:done], rows[:done], overflow[:done], n_gen[:done], active[:done]
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
        channel_seconds=ch_seconds if n_dev == 1 and timed.any() else None,
        timed_primaries=timed if n_dev == 1 else 0,
        active=None if active.all() else active,
    )


def _stack_events(events: dict[str, list]) -> dict[str, Any]:
    if not events["chunk"]:
        out: dict[str, Any] = {k: np.zeros(0, np.int64) for k in EVENT_KEYS}
        out["log_w"] = np.zeros(0)
        out["variables"] = {}
        return out
    names = events["variables"][0].keys()
    out = {k: np.concatenate(events[k]) for k in EVENT_KEYS}
    out["variables"] = {k: np.concatenate([v[k] for v in events["variables"]]) for k in names}
    return out


def projection(cfg: RunConfig, result: RunResult, mot: float | None = None) -> dict[str, Any]:
    """The background table as a JSON-able dict (schema of ``fastmc project --json``)."""
    proj = projection_from(float(cfg.mot if mot is None else mot), cfg.regions[0][0], result)
    if "hadron_decay" in proj["channels"]:
        # the hadron fractions are external inputs: also report the rate per unit fraction
        g = cfg.hadron_decay.kaon_generation_fraction
        frac = cfg.admixture.kaon_fraction if g == 1.0 else cfg.admixture.pion_fraction if g == 0.0 else None
        if frac:
            _per_unit(proj["channels"]["hadron_decay"], "K+" if g == 1.0 else "pi+", frac)
    if "calorimeter_nonhermeticity" in proj["channels"]:
        # the leading-neutral probability is an external input too (the channel's rate is ∝ it:
        # events without a leading neutral deposit their energy)
        _per_unit(proj["channels"]["calorimeter_nonhermeticity"], "leading neutral hadron", cfg.showers.leading_neutral)
    return proj


def _per_unit(est: dict[str, Any], species: str, frac: float) -> None:
    """Add the estimate per unit of an external input fraction (kaon fraction, leading-neutral probability)."""
    est["per_unit_fraction"] = {
        "species": species,
        "fraction": frac,
        "expected": est["expected"] / frac,
        "stat_err": est["stat_err"] / frac,
        "upper_limit_90": None if est["upper_limit_90"] is None else est["upper_limit_90"] / frac,
    }


def projection_from(mot: float, region0: str, result: RunResult) -> dict[str, Any]:
    """:func:`projection` from the stored numbers alone (used by ``fastmc merge``)."""
    tallies = result.tallies()
    w_ul = result.ul_weights(tallies)
    final = [i for i, s in enumerate(result.slots) if s[0] == region0][-1]
    channels: dict[str, Any] = {}
    tot = 0.0
    var = 0.0
    for ci, ch in enumerate(result.channels):
        est = tallies[ch][final].estimate(mot, w_ul[ch][final])
        est["overflow_events"] = int(result.overflow[:, ci].sum())
        channels[ch] = est
        if ch != "analog" or len(result.channels) == 1:
            tot += est["expected"]
            var += est["stat_err"] ** 2
    _figures_of_merit(channels, result)
    regions: dict[str, Any] = {}
    for ci, ch in enumerate(result.channels):
        for s, (region, step, label) in enumerate(result.slots):
            est = tallies[ch][s].estimate(mot, w_ul[ch][s])
            regions.setdefault(ch, {}).setdefault(region, []).append({"step": step, "cut": label, **est})
    return {
        "mot": mot,
        "region": region0,
        "channels": channels,
        "total": {"expected": tot, "stat_err": var**0.5},
        "cutflow": regions,
    }


# per-channel entries of a projection that come from wall-clock time (not reproducible bit for bit)
TIMING_KEYS = ("seconds_per_primary", "fom", "fom_gain_vs_analog", "fom_analog_time_from")


def _figures_of_merit(channels: dict[str, Any], result: RunResult) -> None:
    """Add the figure of merit of each channel's estimate and its gain over analog simulation.

    FOM = 1/(R²·T) (R relative error, T the channel's wall seconds for all its primaries, from the
    per-primary time measured after compilation; MCNP's convention, X-5 Monte Carlo Team, LA-UR-03-1987
    vol. I §2.VI).  Analog simulation estimating the same per-muon probability p has the Bernoulli
    relative variance (1 − p)/(p N), so FOM_analog = p/((1 − p)·t_analog) with t_analog the analog
    channel's time per primary when the card runs it (else this channel's own); the gain is
    FOM/FOM_analog.  p is this channel's estimate; nothing is reported without a selected event,
    nor for a channel without a timed chunk (one that reached ``--target-rel-err`` in its first chunk,
    whose only time includes the compilation).
    """
    timed = np.broadcast_to(np.asarray(result.timed_primaries), (len(result.channels),))
    if result.channel_seconds is None:
        return
    per = {ch: float(result.channel_seconds[ci]) / timed[ci] for ci, ch in enumerate(result.channels) if timed[ci] > 0}
    t_analog = per.get("analog")
    for ch, est in channels.items():
        if ch not in per:
            continue
        n = est["n_generated"]
        est["seconds_per_primary"] = per[ch]
        rel, p = est["rel_err"], est["sum_w"] / n
        if rel is None or not rel > 0 or not p or per[ch] <= 0:
            continue
        fom = 1.0 / (rel**2 * per[ch] * n)
        t_a = t_analog if t_analog else per[ch]
        est["fom"] = fom
        est["fom_gain_vs_analog"] = fom * (1.0 - p) * t_a / p if p < 1 else None
        est["fom_analog_time_from"] = "analog" if t_analog else ch


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
