"""Background channels as plug-ins: one module per channel (DESIGN.md §8).

:mod:`.base` holds the interface (:class:`~fastmc.channels.base.Channel`), :mod:`.registry` the
name → channel map (:data:`~fastmc.channels.registry.CHANNELS`).  To add a channel: write one
module with a ``Channel`` subclass (its settings, parameters and hooks), add it to the registry,
give it a card table and a closure test against ``analog`` (README, "Adding a channel").
"""

from fastmc.channels.base import BuildContext, CardContext, Channel, ChannelParams
from fastmc.channels.registry import CHANNELS, Registry, UnknownChannel, get_channel

__all__ = ["CHANNELS", "BuildContext", "CardContext", "Channel", "ChannelParams", "Registry", "UnknownChannel",
           "get_channel"]
