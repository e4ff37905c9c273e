"""Parameterised detector response: tracker hits, calorimeter and counter signals.

One job per module: :mod:`.trackers` (hit categories, resolution, efficiency, tails, pile-up),
:mod:`.calorimeters` (sampling resolution, showers, leakage, punch-through); this module puts
them together for one chunk (:func:`detector_response`).  The response holds no biasing: a
channel hands in proposals that satisfy the protocols declared next to the kernels
(:class:`~fastmc.response.trackers.HitProposal`,
:class:`~fastmc.response.calorimeters.LeadingHadronProposal`) and gets their log-weights back.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from fastmc.geometry import Setup
from fastmc.response.calorimeters import (
    LeadingHadronProposal,
    calorimeter_sigma,
    group_energies,
    shower_deposits,
    visible_energies,
    visible_energies_by_element,
)
from fastmc.response.trackers import (
    N_CATEGORIES,
    HitProposal,
    category_probabilities,
    draw_category,
    hit_offsets,
    inside_area,
    tracker_hits,
)
from fastmc.rng import STREAM_RESPONSE, stream_key

__all__ = [
    "N_CATEGORIES",
    "HitProposal",
    "LeadingHadronProposal",
    "calorimeter_sigma",
    "category_probabilities",
    "detector_response",
    "draw_category",
    "hit_offsets",
    "inside_area",
    "trigger_probability",
    "shower_deposits",
    "tracker_hits",
    "visible_energies",
    "visible_energies_by_element",
    "group_energies",
]


def detector_response(setup: Setup, truth: dict, key_chunk: jax.Array, hit_proposal: HitProposal | None = None,
                      showers=None, hadron_proposal: LeadingHadronProposal | None = None, temperature=None,
                      hits_pre=None) -> dict:
    """Measured hits ``hits[name] = (mx, my, present)``, ``energies[group]`` and
    ``element_energies[name]`` (MeV, visible, per read-out slab), ``log_w`` and
    ``counts`` (``extra_tracks_p_out``, with ``showers``: punch-through charged hadrons).

    ``showers`` (:class:`fastmc.physics.showers.ShowerParams`): the hardest transfer of each slab
    showers through the slab sequence (:func:`shower_deposits`); without it every transfer is
    deposited where it happened.  ``hit_proposal``, ``hadron_proposal``: a channel's biased
    laws of the hits (:class:`~fastmc.response.trackers.HitProposal`) and of the leading hadron of
    a photonuclear transfer (:class:`~fastmc.response.calorimeters.LeadingHadronProposal`); their
    log-weights are summed in ``log_w``.  ``temperature`` (soft mode, :mod:`fastmc.optimise`):
    the slab apertures seen by a leading neutral hadron become logistic edges of width
    temperature × half-width.
    """
    key_r = stream_key(key_chunk, STREAM_RESPONSE)
    if hits_pre is not None:  # offsets drawn before the transport (hit_offsets): add the truth
        off, log_w = hits_pre
        hits = {n: (truth["hits"][n][0] + off[n][0], truth["hits"][n][1] + off[n][1],
                    truth["hits"][n][2] & off[n][2]
                    & inside_area(setup.element(n), truth["hits"][n][0], truth["hits"][n][1]))
                for n in setup.trackers}
    else:
        hits, log_w = tracker_hits(setup, truth, key_r, hit_proposal) if setup.trackers else ({}, 0.0)
    deposits, counts = None, {}
    if showers is not None:
        deposits, lw, counts = shower_deposits(setup, truth, showers, key_r, hadron_proposal, temperature)
        log_w = log_w + lw
    element_energies = visible_energies_by_element(setup, truth, deposits, key_r)
    energies = group_energies(setup, element_energies)
    return {"hits": hits, "energies": energies, "element_energies": element_energies, "log_w": log_w,
            "counts": counts, "trigger_prob": trigger_probability(setup, truth)}


def trigger_probability(setup: Setup, truth: dict):
    """P(trigger) per event (B,) from the true trajectory at the trigger counters (``setup.trigger``):
    P = 1 − (1 − ε·1[inside every counter])·(1 − P_acc), ε = Π counter efficiencies, P_acc the
    accidental coincidence probability (:func:`fastmc.geometry.accidental_probability`).  Without a
    trigger: 1."""
    trig = setup.trigger
    x0 = next(iter(truth["at"].values()))[0]
    if trig is None:
        return jnp.ones_like(x0)
    inside = jnp.ones(x0.shape, bool)
    eff = jnp.ones((), x0.dtype)
    for name in trig.counters:
        el = setup.element(name)
        x, y, alive = truth["at"][name]
        inside = inside & alive & inside_area(el, x, y)
        eff = eff * el.efficiency.astype(x0.dtype)
    p_true = jnp.where(inside, eff, 0.0)
    # 1 − (1 − p_true)(1 − P_acc) = 1 − exp(log1p(−p_true) + log(1 − P_acc))
    return -jnp.expm1(jnp.log1p(-p_true) + trig.log1m_p_acc.astype(x0.dtype))
