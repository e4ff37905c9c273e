"""The channel interface (DESIGN.md §8): what a background channel says, in one place.

A channel is a biasing scheme of the one chain (beam → transport → response → reconstruction →
selection), not a simulator of its own.  A subclass of :class:`Channel` declares

* its settings: the card table it owns (``table``), parsed strictly by :meth:`Channel.parse_settings`
  into a frozen dataclass, and cross-checks against the rest of the card (:meth:`Channel.check_card`);
* its device-side parameters: :meth:`Channel.build` turns the settings into a
  :class:`ChannelParams` pytree once per run (array leaves: changing a number never recompiles);
* what it forces, through hooks the chain driver (:mod:`fastmc.chain`) calls in order — the beam
  species mix (:meth:`Channel.admixture`), state it adds before the transport
  (:meth:`Channel.before_transport`), a forced vertex in one slab (:meth:`Channel.forced_vertex`,
  a :class:`fastmc.transport.ForcedVertex`), step forcing (:meth:`Channel.step_forcing`, a
  :class:`fastmc.transport.StepForcing`), a hit proposal (:meth:`Channel.hit_proposal`, a
  :class:`fastmc.response.trackers.HitProposal`), a calorimeter proposal
  (:meth:`Channel.hadron_proposal`, a :class:`fastmc.response.calorimeters.LeadingHadronProposal`)
  and what it does after the response (:meth:`Channel.after_response`: more weight, cuts it
  integrates);
* what it adds to the report (:meth:`Channel.report`: e.g. rates per unit of an external input).

Every hook defaults to "nothing forced", so :class:`fastmc.channels.analog.Analog` is the base
class with a name.  Each forced choice's log-weight (log p − log q) is added by the code that
makes it; the kernels declare the protocols they accept and never import this package.
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar

import jax
import jax.numpy as jnp

from fastmc._pytree import pytree_dataclass, static_field
from fastmc.beam import Admixture, build_admixture
from fastmc.config import CardContext, RunConfig
from fastmc.geometry import Setup


@dataclasses.dataclass(frozen=True)
class BuildContext:
    """What a channel's device-side parameters are built from, once per run."""

    cfg: RunConfig
    setup: Setup
    materials: list  # fastmc.materials.Material per material index of the setup
    settings: Any  # this channel's parsed settings (None for a channel without a table)
    hadrons: bool  # the run transports beam hadrons (a channel generates its species mix)
    dtype: Any = dataclasses.field(default_factory=lambda: jnp.result_type(float))


@pytree_dataclass
class ChannelParams:
    """Device-side parameters of a channel (a pytree; subclasses add their fields with defaults).

    ``admixture``: the species mix the beam generates (None: muons only, the card has no
    hadrons); ``forced_slot``: the element slot of a forced vertex (static; −1: none)."""

    admixture: Admixture | None = None
    forced_slot: int = static_field(default=-1)


class Channel:
    """A background channel: every hook defaults to forcing nothing (module docstring)."""

    name: ClassVar[str] = ""
    table: ClassVar[str | None] = None  # the card table of its settings ("channels.<name>"; None: none)
    transports_hadrons: ClassVar[bool] = False  # the run must transport beam hadrons when this channel runs
    muon_only: ClassVar[bool] = False  # generate full-energy muons only (species weight log f_true(μ))
    background: ClassVar[bool] = True  # a run card may list it in run.channels (the signal channel may not)

    def __repr__(self) -> str:
        return f"<channel {self.name}>"

    # ------------------------------------------------------------------ card (host, on load)
    def parse_settings(self, sec, ctx: CardContext) -> Any:
        """This channel's settings from its card table ``sec`` (a :class:`fastmc.config.sections.Section`,
        empty when the card has none: defaults); raise ``sec.fail(...)`` on bad input.  Called for
        every registered channel, whether the card runs it or not (a run card may switch channels)."""
        return None

    def check_card(self, ctx: CardContext) -> None:
        """Cross-checks against the rest of the card, only when the card runs this channel."""

    # ------------------------------------------------------------------ per run (host)
    def build(self, ctx: BuildContext) -> ChannelParams:
        """The device-side parameters of a run (default: the species mix only)."""
        return ChannelParams(admixture=self.admixture(ctx))

    def admixture(self, ctx: BuildContext) -> Admixture | None:
        """The generated species mix (None without beam hadrons): the card's true fractions, or
        muons only for a ``muon_only`` channel (weight log f_true(μ) per muon)."""
        if not ctx.hadrons:
            return None
        adm = ctx.cfg.admixture
        z0 = float(ctx.setup.beam.z_start)
        return build_admixture(adm.kaon_fraction, adm.pion_fraction, z0, z0,
                               f_gen=[1.0, 0.0, 0.0] if self.muon_only else None)

    def check_ready(self, params: ChannelParams) -> None:
        """Raise ValueError if the parameters cannot run yet (e.g. per-mass tables not set)."""

    # ------------------------------------------------------------------ in the compiled chain
    def before_transport(self, setup: Setup, params: ChannelParams, state: dict, key_c: jax.Array
                         ) -> tuple[dict, Any]:
        """State entries the channel's forcing needs, and hit draws made before the transport
        (``(offsets, log_w)`` of :func:`fastmc.response.trackers.hit_offsets`, or None)."""
        return state, None

    def forced_vertex(self, params: ChannelParams):
        """A :class:`fastmc.transport.ForcedVertex` run in slot ``params.forced_slot``, or None."""
        return None

    def step_forcing(self, params: ChannelParams):
        """A :class:`fastmc.transport.StepForcing` (state entries from :meth:`before_transport`), or None."""
        return None

    def hit_proposal(self, params: ChannelParams):
        """A :class:`fastmc.response.trackers.HitProposal`, or None (natural hits)."""
        return None

    def hadron_proposal(self, params: ChannelParams):
        """A :class:`fastmc.response.calorimeters.LeadingHadronProposal`, or None (natural showers)."""
        return None

    def after_response(self, setup: Setup, params: ChannelParams, final: dict, measured: dict, variables: dict,
                       log_w) -> tuple[Any, dict]:
        """More log-weight from the final transport state, and the cuts the channel integrates
        (``{variable: f(lo, hi) → log P}``, :func:`fastmc.selection.pass_weights`; {} for none)."""
        return log_w, {}

    def truth_variables(self, params: ChannelParams, final: dict, variables: dict) -> None:
        """Add truth variables of the channel's forced choice to ``variables`` (studies, tests)."""

    # ------------------------------------------------------------------ report (host)
    def report(self, cfg: RunConfig, est: dict) -> None:
        """Add channel-specific entries to the channel's estimate in the projection."""


def add_per_unit(est: dict[str, Any], species: str, frac: float) -> None:
    """Add the estimate per unit of an external input fraction (kaon fraction, leading-neutral
    probability): a channel whose rate is linear in an unmeasured input reports it per unit too."""
    est["per_unit_fraction"] = {
        "species": species,
        "fraction": frac,
        "expected": est["expected"] / frac,
        "stat_err": est["stat_err"] / frac,
        "upper_limit_90": None if est["upper_limit_90"] is None else est["upper_limit_90"] / frac,
    }
