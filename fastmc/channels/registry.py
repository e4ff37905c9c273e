"""The channel registry: name → channel, explicit (no import side effects).

:data:`CHANNELS` holds fastmc's channels.  A study or a test adds one of its own without touching
the package, the way pyhf's ``Model(spec, modifier_set=...)`` takes custom modifiers::

    registry = CHANNELS.with_channel(MyChannel())
    cfg = load_run("card.toml", registry=registry)   # [channels.my_channel] is parsed by MyChannel

An unknown name is an error that lists the known ones.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping

from fastmc.channels.analog import Analog
from fastmc.channels.base import Channel
from fastmc.channels.calorimeter_nonhermeticity import CalorimeterNonhermeticity
from fastmc.channels.hadron_decay import HadronDecay
from fastmc.channels.momentum_misreconstruction import MomentumMisreconstruction
from fastmc.channels.signal import Signal


class UnknownChannel(KeyError):
    """A channel name that the registry does not know (the message lists the known ones)."""

    def __str__(self) -> str:
        return str(self.args[0])


class Registry(Mapping[str, Channel]):
    """An immutable name → :class:`~fastmc.channels.base.Channel` map."""

    def __init__(self, channels: tuple[Channel, ...]):
        names = [c.name for c in channels]
        if len(set(names)) != len(names) or not all(names):
            raise ValueError(f"channel names must be unique and non-empty: {names}")
        self._by_name = {c.name: c for c in channels}

    def __getitem__(self, name: str) -> Channel:
        try:
            return self._by_name[name]
        except KeyError:
            raise UnknownChannel(f"unknown channel {name!r} (known: {', '.join(self._by_name)})") from None

    def __iter__(self) -> Iterator[str]:
        return iter(self._by_name)

    def __len__(self) -> int:
        return len(self._by_name)

    def __hash__(self) -> int:
        return hash(tuple(self._by_name.items()))

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Registry) and self._by_name == other._by_name

    def __repr__(self) -> str:
        return f"Registry({', '.join(self._by_name)})"

    def with_channel(self, channel: Channel) -> Registry:
        """A new registry with ``channel`` added (replacing one of the same name)."""
        return Registry(tuple(c for n, c in self._by_name.items() if n != channel.name) + (channel,))


# The order is the report's order for cards that list channels in another order: kept as the card says.
CHANNELS = Registry((Analog(), HadronDecay(), MomentumMisreconstruction(), CalorimeterNonhermeticity(), Signal()))


def get_channel(name: str) -> Channel:
    """fastmc's channel ``name`` (:class:`UnknownChannel` listing the known ones otherwise)."""
    return CHANNELS[name]
