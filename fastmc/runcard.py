"""Reading a run card whole: the generic tables (:mod:`fastmc.config`) and each channel's own
table, parsed by the channel that owns it (:meth:`fastmc.channels.base.Channel.parse_settings`).

``load_run(path)`` is the one entry point for a card: every command and study goes through it,
so a bad key anywhere is a one-line :class:`~fastmc.config.ConfigError` naming the file, the key
and the value.  ``registry`` lets a study run a channel of its own (:mod:`fastmc.channels.registry`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fastmc.channels.registry import CHANNELS, Registry
from fastmc.config import CardContext, RunConfig, Section, read_run


def parse_channel_tables(root: Section, ctx: CardContext, registry: Registry) -> dict[str, Any]:
    """Every registered channel's settings from its table (defaults where the card has none);
    then each channel the card runs checks them against the rest of the card."""
    out: dict[str, Any] = {}
    groups: dict[str, Section] = {}
    for name, ch in registry.items():
        if ch.table is None:
            out[name] = ch.parse_settings(None, ctx)
            continue
        *parents, leaf = ch.table.split(".")
        parent = root
        for i, part in enumerate(parents):
            key = ".".join(parents[: i + 1])
            if key not in groups:
                groups[key] = parent.table(part, {})
            parent = groups[key]
        sec = parent.table(leaf, {})
        out[name] = ch.parse_settings(sec, ctx)
        sec.finish()
    for sec in groups.values():
        sec.finish()  # an unknown channel table, e.g. [channels.typo]
    for name in ctx.channels:
        registry[name].check_card(ctx)
    return out


def load_run(path: str | Path, overrides: dict[str, Any] | None = None, *, registry: Registry = CHANNELS) -> RunConfig:
    """Read and validate a run card (and the model it names); ``overrides``: fields of the result
    to replace (:meth:`~fastmc.config.RunConfig.with_overrides`)."""
    background = tuple(name for name, ch in registry.items() if ch.background)
    keys = tuple(dict.fromkeys(ch.table.split(".")[0] for ch in registry.values() if ch.table))
    cfg = read_run(path, background, lambda root, ctx: parse_channel_tables(root, ctx, registry), keys, registry)
    return cfg.with_overrides(**overrides) if overrides else cfg
