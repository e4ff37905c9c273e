"""Projection: the background table of a run, at any exposure.

``expected = MOT · Σw / N_gen`` per channel and cut-flow slot with its statistical error and
diagnostics (:meth:`fastmc.tally.Tally.estimate`), a zero-event upper limit where nothing was
selected, each channel's own report entries (:meth:`fastmc.channels.base.Channel.report`), and
the figure of merit of every channel against analog simulation.  The schema is that of
``fastmc project --json``.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from fastmc.config import RunConfig
from fastmc.run import RunResult


def projection(cfg: RunConfig, result: RunResult, mot: float | None = None) -> dict[str, Any]:
    """The background table as a JSON-able dict (schema of ``fastmc project --json``)."""
    proj = projection_from(float(cfg.mot if mot is None else mot), cfg.regions[0][0], result)
    for name, est in proj["channels"].items():
        cfg.registry[name].report(cfg, est)
    return proj


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
        if result.overflow_log_w is not None:
            # the share of the estimate's Σw carried by events that reached the interaction cap
            m = result.channel_active()[:, ci]
            lw = np.asarray(result.overflow_log_w)[m, ci][np.argsort(result.chunk_ids[m], kind="stable")]  # chunk order
            w_over = float(np.exp(np.logaddexp.reduce(lw))) if lw.size else 0.0
            est["overflow_w_share"] = w_over / est["sum_w"] if w_over > 0 else 0.0
        channels[ch] = est
        if ch != "analog" or len(result.channels) == 1:
            tot += est["expected"]
            var += est["stat_err"] ** 2
    figures_of_merit(channels, result)
    regions: dict[str, Any] = {}
    for ch in result.channels:
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


def figures_of_merit(channels: dict[str, Any], result: RunResult) -> None:
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
