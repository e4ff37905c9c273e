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
import math
import os
import sys
import time
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from tqdm import tqdm

from fastmc.chain import ChainOptions, Prepared, prepare, simulate_chunk
from fastmc.config import ConfigError, RunConfig
from fastmc.rng import chunk_key
from fastmc.selection import final_slots
from fastmc.tally import N_FIELDS, Tally, diagnose, reduce_chunks

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
    # (n_c, n_channels) log Σw of the events that overflowed and pass the signal region (None: not
    # recorded, files written before it existed)
    overflow_log_w: np.ndarray | None = None
    # the loop was stopped by Ctrl-C (KeyboardInterrupt): the result holds the chunks finished before it
    interrupted: bool = False
    # channel → why --target-rel-err stopped it without reaching the target (:func:`cannot_converge`)
    not_converged: dict[str, str] = dataclasses.field(default_factory=dict)

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
            overflow_log_w=(None if self.overflow_log_w is None or other.overflow_log_w is None
                            else np.concatenate([self.overflow_log_w, other.overflow_log_w])),
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


# --target-rel-err: confidence level of the "cannot converge" stop (one-sided): a channel with zero
# selected events is stopped only if, at this CL, it would still have too few events at the end
NONCONV_CL = 0.99
# ... and a channel with events only if its error, extrapolated as 1/√N to the whole budget, stays above
# NONCONV_MARGIN × target after it has used NONCONV_MIN_SHARE of the budget
NONCONV_MARGIN = 3.0
NONCONV_MIN_SHARE = 0.25


def cannot_converge(n_sel: int, rel_err: float | None, n_done: int, n_budget: int, target: float) -> str | None:
    """Why a channel cannot reach ``target`` within ``n_budget`` primaries (None: it still may).

    The rule (``fastmc project --target-rel-err``; README): a relative error ``target`` needs about
    1/target² selected events (Poisson; weighted events need more, never fewer).
    - Zero events in ``n_done`` primaries: at 99 % CL the selection probability is below
      μ/n_done with μ = −ln(0.01) = 4.6, so the whole budget would bring fewer than
      μ·n_budget/n_done events, i.e. a relative error above √(n_done/(μ·n_budget)); if that is
      above ``target`` the channel is stopped.
    - Events selected: after at least a quarter of the budget, the error extrapolated as 1/√N to the
      whole budget, rel_err·√(n_done/n_budget), is above 3 × ``target`` (for a Poisson count the
      expected final number of events is below 1/(9·target²), a ninth of what the target needs).
    Both rules only ever stop a channel for lack of statistics: its estimate is kept, reported as
    "not converged", never as having reached the target.
    """
    if n_done <= 0 or n_budget <= n_done:
        return None
    if n_sel == 0:
        mu = -math.log1p(-NONCONV_CL)
        best = math.sqrt(n_done / (mu * n_budget))
        if best > target:
            return (f"cannot reach {target:.0%} (0 events in {n_done} primaries; at {NONCONV_CL:.0%} CL fewer than "
                    f"{mu * n_budget / n_done:.3g} events in the budget of {n_budget}: rel. err. ≥ {best:.0%})")
        return None
    if rel_err is None or n_done < NONCONV_MIN_SHARE * n_budget:
        return None
    final = rel_err * math.sqrt(n_done / n_budget)
    if final > NONCONV_MARGIN * target:
        return (f"cannot reach {target:.0%} ({n_sel} events, rel. err. {rel_err:.0%} after {n_done} primaries; "
                f"≈ {final:.0%} expected after the budget of {n_budget}, above {NONCONV_MARGIN:g} × the target)")
    return None


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
    float64, (overflow count, log Σw of the overflowing events in the signal region) (n, 2) float64,
    and the events (None unless ``with_events``).
    """
    opts = prep.options if opts is None else opts
    if len(devices) == 1:
        r, nov, ev = simulate_chunk(*_chunk_args(prep, channel, seed, int(chunk_ids[0]), n_valid[0], None, placed,
                                                 with_events, opts))
        r, nov = np.asarray(r, dtype=np.float64)[None], np.asarray(nov, dtype=np.float64)[None]
        ev = None if ev is None else jax.tree_util.tree_map(lambda a: np.asarray(a)[None], ev)
        return r, nov, ev
    outs = []
    for j, c in enumerate(chunk_ids):
        outs.append(simulate_chunk(*_chunk_args(prep, channel, seed, int(c), n_valid[j], devices[j], placed,
                                                with_events, opts)))
    r = np.stack([np.asarray(o[0], dtype=np.float64) for o in outs])
    nov = np.stack([np.asarray(o[1], dtype=np.float64) for o in outs])
    ev = None
    if with_events:
        ev = jax.tree_util.tree_map(lambda *a: np.stack([np.asarray(x) for x in a]), *[o[2] for o in outs])
    return r, nov, ev


def _chunk_args(prep: Prepared, channel: str, seed: int, chunk: int, n_valid, device, placed: dict,
                with_events: bool, opts: ChainOptions) -> tuple:
    """The arguments of :func:`fastmc.chain.simulate_chunk` for one chunk, as :func:`simulate_group`
    passes them: uncommitted (``device`` None: one device) or placed on ``device`` (inputs kept in
    ``placed`` per (device, channel))."""
    ch, params = prep.channels[channel], prep.params[channel]
    if device is None:
        return (prep.setup, prep.physics, prep.selection, chunk_key(seed, chunk), jnp.int32(n_valid), opts, ch,
                with_events, params, prep.showers)
    if (device, channel) not in placed:
        placed[(device, channel)] = jax.device_put((prep.setup, prep.physics, prep.selection, params, prep.showers),
                                                   device)
    st, ph, sl, pa, sh = placed[(device, channel)]
    key = jax.device_put(chunk_key(seed, chunk), device)
    nv = jax.device_put(jnp.int32(n_valid), device)
    return st, ph, sl, key, nv, opts, ch, with_events, pa, sh


def compile_jobs() -> int:
    """How many channel programs :func:`run` compiles at once: ``$FASTMC_COMPILE_JOBS`` (default 1,
    each channel compiled with its first chunk).  On the 2-core reference machine 2 gained nothing
    (quickstart cold: 64.6 s against 65.0 s one by one) and peaked at 3.8 GB of memory instead of
    2.2 GB (two XLA compilations in memory at once), so it is an opt-in for machines with more
    cores and memory."""
    raw = os.environ.get("FASTMC_COMPILE_JOBS", "1")
    try:
        jobs = int(raw)
    except ValueError:
        jobs = 0
    if jobs < 1:
        raise ConfigError(f"FASTMC_COMPILE_JOBS = {raw!r}: expected a whole number >= 1")
    return jobs


def compile_programs(prep: Prepared, channels, devices: list, placed: dict, with_events: bool = False,
                     opts: ChainOptions | None = None, workers: int | None = None) -> dict[str, float]:
    """Compile the program of every channel in ``channels`` (for each of ``devices``, as
    :func:`simulate_group` will call it) concurrently, in ``workers`` threads (default: one per CPU
    core): XLA compiles one program on one core and releases the GIL meanwhile, so a card's channels
    compile in about the time of the slowest rather than of the sum.  The compiled programs land
    in JAX's cache (later calls do not compile again; same programs, same bits).  Returns each
    channel's wall seconds from the start to its last program compiled."""
    from concurrent.futures import ThreadPoolExecutor

    opts = prep.options if opts is None else opts
    devs = [None] if len(devices) == 1 else list(devices)
    # placing the inputs (and building the arguments) first, here: ``placed`` is not shared across threads
    jobs = [(ch, _chunk_args(prep, ch, 0, 0, opts.chunk_size, d, placed, with_events, opts)) for ch in channels
            for d in devs]
    t0 = time.perf_counter()

    def one(job):
        simulate_chunk.lower(*job[1]).compile()
        return job[0], time.perf_counter() - t0

    out: dict[str, float] = {}
    with ThreadPoolExecutor(max_workers=min(len(jobs), workers or os.cpu_count() or 1)) as ex:
        for ch, dt in ex.map(one, jobs):
            out[ch] = max(out.get(ch, 0.0), dt)
    return out


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
    log: Callable[[str], None] | None = None,
    keep_on_interrupt: bool = False,
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
    deterministic function of the seed unless ``max_seconds`` is hit.  A channel that cannot reach
    the target within the budget (:func:`cannot_converge`) is stopped too, and named in
    ``not_converged`` of the result and in ``stop_reason``: its estimate is kept but has not converged.

    ``log`` receives status lines (each channel's compilation, non-convergence stops), written above
    the progress bar; the bar (``progress``) starts after the first group of chunks, so its rate and ETA
    come from finished chunks.  With ``keep_on_interrupt``, Ctrl-C (KeyboardInterrupt) ends the loop and
    the result holds the groups of chunks finished before it, with ``interrupted`` set (``fastmc
    project`` saves them); otherwise the interrupt propagates.
    """
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
        prep.channels[ch].check_ready(prep.params[ch])
    devs = select_devices(devices)
    n_dev = min(len(devs), len(ids))
    slots = prep.selection.slots()
    rows = np.zeros((len(ids), len(cfg.channels), len(slots), N_FIELDS))
    overflow = np.zeros((len(ids), len(cfg.channels)), dtype=np.int64)
    overflow_lw = np.full((len(ids), len(cfg.channels)), -np.inf)
    n_gen = np.minimum(cfg.chunk_size, cfg.n_muons - ids * cfg.chunk_size)
    events: dict[str, list] = {k: [] for k in (*EVENT_KEYS, "variables")}
    t0 = time.perf_counter()
    say = log if log is not None else (lambda m: None)
    n_budget = int(n_gen.sum())
    desc = "simulating " + ", ".join(cfg.channels)
    # the bar starts once the first group of chunks (every channel's compilation) is done, so its rate
    # and ETA come from finished chunks; messages go through tqdm.write, above the bar
    bar: tqdm | None = None
    signal_slot = len(prep.selection.regions[0].cuts)  # final slot of the first region
    region_slots = final_slots(prep.selection)
    running = [Tally() for _ in cfg.channels]
    ch_seconds = np.zeros(len(cfg.channels))
    timed = np.zeros(len(cfg.channels), dtype=np.int64)
    active = np.zeros((len(ids), len(cfg.channels)), bool)
    on = np.ones(len(cfg.channels), bool)  # channels still simulating
    reached_at: dict[str, int] = {}  # channel → primaries it took to reach the target
    not_converged: dict[str, str] = {}  # channel → why it cannot reach the target (cannot_converge)
    stop_reason = "all chunks done"
    done = 0
    last_ckpt = 0
    placed: dict = {}
    interrupted = False
    try:
        jobs = compile_jobs()
        precompiled = jobs > 1 and (len(cfg.channels) > 1 or n_dev > 1)
        if precompiled:
            say(f"compiling {len(cfg.channels)} channel program(s) on {n_dev} device(s), {jobs} at a time …")
            secs = compile_programs(prep, cfg.channels, devs[:n_dev], placed, cfg.save_events, workers=jobs)
            say("compiled: " + ", ".join(f"{ch} {s:.1f} s" for ch, s in secs.items()))
        for group in chunk_groups(ids, n_dev):
            n_grp = len(group)
            # what the group adds is kept only once every channel has run it (Ctrl-C in between drops it)
            grp_events: dict[str, list] = {k: [] for k in events}
            grp_seconds, grp_timed = np.zeros_like(ch_seconds), np.zeros_like(timed)
            for ci, ch in enumerate(cfg.channels):
                if not on[ci]:
                    continue
                active[done : done + n_grp, ci] = True
                tc = time.perf_counter()
                if done == 0 and not precompiled:
                    say(f"compiling channel {ch} (its first chunk includes the compilation) …")
                r, nov, ev = simulate_group(prep, ch, cfg.seed, group, n_gen[done : done + n_grp], devs[:n_dev], placed,
                                            cfg.save_events)
                if done == 0:
                    what = "first chunk" if precompiled else "compiled and first chunk"
                    say(f"channel {ch}: {what} done in {time.perf_counter() - tc:.1f} s")
                if n_dev == 1 and done > 0:
                    grp_seconds[ci] += time.perf_counter() - tc
                    grp_timed[ci] += int(n_gen[done])
                for j, c in enumerate(group):
                    i = done + j
                    rows[i, ci] = r[j]
                    overflow[i, ci] = int(nov[j, 0])
                    overflow_lw[i, ci] = nov[j, 1]
                    if ev is not None:
                        # events selected in any region; bit r of region_mask: selected in region r
                        fin = np.asarray(ev["selected"][j])[region_slots]  # (n_regions, B)
                        mask = (fin.astype(np.int64) << np.arange(len(region_slots))[:, None]).sum(axis=0)
                        idx = np.nonzero(mask)[0]
                        if idx.size:
                            grp_events["chunk"].append(np.full(idx.size, c))
                            grp_events["index"].append(idx)
                            grp_events["channel"].append(np.full(idx.size, ci))
                            grp_events["region_mask"].append(mask[idx])
                            grp_events["log_w"].append(np.asarray(ev["log_w"][j])[idx])
                            grp_events["variables"].append({k: np.asarray(v[j])[idx]
                                                            for k, v in ev["variables"].items()})
            for k, v in grp_events.items():
                events[k] += v
            ch_seconds += grp_seconds
            timed += grp_timed
            n_done_grp = int(n_gen[done : done + n_grp].sum())
            done += n_grp
            if bar is None:
                bar = tqdm(total=n_budget, initial=n_done_grp, unit="μ", unit_scale=True, disable=not progress,
                           file=sys.stderr, desc=desc, dynamic_ncols=True)
            else:
                bar.update(n_done_grp)
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
                    elif on[ci] and done < len(ids):
                        why = cannot_converge(est["n_selected"], e, running[ci].n_gen, n_budget, target_rel_err)
                        if why is not None:
                            on[ci] = False
                            not_converged[ch] = why
                            say(f"channel {ch}: stopped, {why}")
                    mark = " ✓" if ch in reached_at else " ✗" if ch in not_converged else ""
                    errs.append(("-" if e is None else f"{e:.1%}") + mark)
                bar.set_postfix_str("rel err " + ", ".join(errs))
                if not on.any():
                    stop_reason = (f"target relative error {target_rel_err:g} reached" if not not_converged else
                                   f"every channel stopped (target relative error {target_rel_err:g})")
                    break
            if max_seconds is not None and time.perf_counter() - t0 > max_seconds:
                stop_reason = f"time budget of {max_seconds:g} s spent"
                break
            due = checkpoint_every > 0 and done - last_ckpt >= checkpoint_every and done < len(ids)
            if due and on_checkpoint is not None:
                last_ckpt = done
                on_checkpoint(RunResult(
                    channels=cfg.channels, slots=slots, chunk_ids=ids[:done].copy(), rows=rows[:done].copy(),
                    n_gen=n_gen[:done].copy(), overflow=overflow[:done].copy(),
                    overflow_log_w=overflow_lw[:done].copy(),
                    events=_stack_events(events) if cfg.save_events else None,
                    seconds=time.perf_counter() - t0, active=active[:done].copy(),
                ))
        else:
            if target_rel_err is not None and on.any():
                stop_reason = f"budget of {n_budget} primaries spent before reaching {target_rel_err:g}"
    except KeyboardInterrupt:
        if not keep_on_interrupt:
            raise
        # Ctrl-C: keep the chunks finished before it (a group is kept only when every channel ran it)
        interrupted = True
        stop_reason = f"interrupted (Ctrl-C) after {done} of {len(ids)} chunks"
    finally:
        if bar is not None:
            bar.close()
    if reached_at and (on.any() or not_converged):  # (all reached: the reason says so already)
        stop_reason += "; reached by " + ", ".join(f"{ch} (after {n} primaries)" for ch, n in reached_at.items())
    if not_converged:
        stop_reason += "; not converged: " + ", ".join(f"{ch} ({why})" for ch, why in not_converged.items())
    ids, rows, overflow, n_gen, active = ids[:done], rows[:done], overflow[:done], n_gen[:done], active[:done]
    overflow_lw = overflow_lw[:done]
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
        overflow_log_w=overflow_lw,
        events=ev_out,
        seconds=time.perf_counter() - t0,
        stop_reason=stop_reason,
        channel_seconds=ch_seconds if n_dev == 1 and timed.any() else None,
        timed_primaries=timed if n_dev == 1 else 0,
        active=None if active.all() else active,
        interrupted=interrupted,
        not_converged=not_converged,
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


__all__ = ["EVENT_KEYS", "Prepared", "RunResult", "cannot_converge", "chunk_groups", "merge_events", "n_chunks",
           "compile_programs", "prepare", "run", "select_devices", "simulate_group"]
