"""Channel ``analog``: the chain with nothing forced (log w = 0 for every muon).

The reference every biased channel must agree with where analog simulation is feasible (closure
tests), and the source of the analog figure of merit that the biased channels' gains are quoted
against.  With beam hadrons in the card it generates the natural species mix.
"""

from __future__ import annotations

from fastmc.channels.base import Channel


class Analog(Channel):
    """Forces nothing."""

    name = "analog"
