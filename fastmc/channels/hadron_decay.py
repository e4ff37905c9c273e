"""Channel ``hadron_decay``: a beam K⁺ (or π⁺), measured upstream as a 160 GeV particle, decays in
flight before or inside the target and its soft decay muon leaves with p < 80 GeV.

Forced, with exact weights (:class:`fastmc.beam.Admixture`): only beam hadrons are generated (a
K⁺ with probability ``kaon_generation_fraction``, else a π⁺; weight f_true/f_gen), their decay is
forced inside [decay_z_min, decay_z_max] (weight P(decay inside)), and K⁺ decays are forced to the
muonic modes μν and π⁰μν (weight BR_μν + BR_π⁰μν; :func:`fastmc.transport.decay_in_flight`).
The rate is linear in the card's hadron fraction, an external input: the report adds the rate
per unit fraction.
"""

from __future__ import annotations

import dataclasses

from fastmc import units as u
from fastmc.beam import Admixture, build_admixture
from fastmc.channels.base import BuildContext, CardContext, Channel, add_per_unit


@dataclasses.dataclass(frozen=True)
class HadronDecaySettings:
    """``[channels.hadron_decay]``: only beam hadrons are generated (a K⁺ with probability
    ``kaon_generation_fraction``, else a π⁺), their decay is forced inside
    [decay_z_min, decay_z_max] and K⁺ decays are forced to the muonic modes."""

    kaon_generation_fraction: float = 1.0
    decay_z_min: float | None = None  # mm; default: the beam start
    decay_z_max: float = 450.0  # mm; default: the end of the 2022 ECAL


class HadronDecay(Channel):
    """Generates beam hadrons only and forces their decay to a muon in the decay region."""

    name = "hadron_decay"
    table = "channels.hadron_decay"
    transports_hadrons = True

    def parse_settings(self, sec, ctx: CardContext) -> HadronDecaySettings:
        zmin = sec.number("decay_z_min_m", None, le=0.0 + 1e3)
        out = HadronDecaySettings(
            kaon_generation_fraction=sec.number("kaon_generation_fraction", 1.0, ge=0.0, le=1.0),
            decay_z_min=None if zmin is None else zmin * u.m,
            decay_z_max=sec.number("decay_z_max_m", 0.45, le=1e3) * u.m,
        )
        if out.decay_z_min is not None and not out.decay_z_min < out.decay_z_max:
            raise sec.fail("decay_z_max_m", out.decay_z_max / u.m, "must be > decay_z_min_m")
        if out.decay_z_min is not None and out.decay_z_min < ctx.model.beam.z_start:
            raise sec.fail("decay_z_min_m", zmin, "must not be upstream of the beam start")
        adm = ctx.admixture
        if self.name in ctx.channels:
            if adm.kaon_fraction + adm.pion_fraction == 0.0:
                raise ctx.run.fail("channels", list(ctx.channels),
                                   "hadron_decay needs [admixture] kaon_fraction or pion_fraction > 0")
            g = out.kaon_generation_fraction
            if (g > 0 and adm.kaon_fraction == 0) or (g < 1 and adm.pion_fraction == 0):
                raise sec.fail("kaon_generation_fraction", g, "generates a species whose [admixture] fraction is 0")
        return out

    def admixture(self, ctx: BuildContext) -> Admixture:
        hd, adm = ctx.settings, ctx.cfg.admixture
        g = hd.kaon_generation_fraction
        z_min = float(ctx.setup.beam.z_start) if hd.decay_z_min is None else hd.decay_z_min
        return build_admixture(adm.kaon_fraction, adm.pion_fraction, z_min, hd.decay_z_max,
                               f_gen=[0.0, g, 1.0 - g], forced=True)

    def report(self, cfg, est: dict) -> None:
        # the hadron fractions are external inputs: also report the rate per unit fraction
        g = cfg.channel_settings[self.name].kaon_generation_fraction
        frac = cfg.admixture.kaon_fraction if g == 1.0 else cfg.admixture.pion_fraction if g == 0.0 else None
        if frac:
            add_per_unit(est, "K+" if g == 1.0 else "pi+", frac)
