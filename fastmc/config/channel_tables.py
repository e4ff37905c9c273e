"""Per-channel tables of a run card: ``[channels.hadron_decay]``,
``[channels.momentum_misreconstruction]``, ``[channels.calorimeter_nonhermeticity]`` and
``[signal]``.

These tables belong to their channels: each (dataclass + ``parse_*`` function) will move into its
channel module under :mod:`fastmc.channels`, and :func:`fastmc.config.load_run` will stop naming
them.  Until then they live here, one ``parse_*(sec, ...)`` per table so that each moves in one
piece; this module imports only the config layer (:mod:`.sections`, :mod:`.model`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

from fastmc import units as u
from fastmc.config.model import ModelConfig, check_signal_target
from fastmc.config.sections import _Section, check_signal_mass


@dataclasses.dataclass(frozen=True)
class HadronDecayConfig:
    """Biasing of the ``hadron_decay`` channel: only beam hadrons are generated (a K⁺ with
    probability ``kaon_generation_fraction``, else a π⁺), their decay is forced inside
    [decay_z_min, decay_z_max] and K⁺ decays are forced to the muonic modes."""

    kaon_generation_fraction: float = 1.0
    decay_z_min: float | None = None  # mm; default: the beam start
    decay_z_max: float = 450.0  # mm; default: the end of the 2022 ECAL



@dataclasses.dataclass(frozen=True)
class CaloBiasConfig:
    """Biasing of ``calorimeter_nonhermeticity``: a photonuclear interaction with v ≥ v_min is forced
    in ``target``; its hadronic system is a leading neutral hadron with probability q_neutral
    (instead of the natural one), whose z is drawn half from the natural law and half from
    [1 − z_focus, 1], and which escapes with probability ≥ 1 − beta (defensive mixture)."""

    target: str = "ECAL"
    v_min: float = 0.4
    q_neutral: float = 0.5
    beta: float = 0.5
    z_focus: float = 0.02
    pt_widen: float = 5.0  # half of the leading neutral's p_T drawn from a law this many times wider


@dataclasses.dataclass(frozen=True)
class MisrecoConfig:
    """Biasing of the ``momentum_misreconstruction`` channel: a defensive mixture of the natural
    hits (probability ``beta``) and scenarios in which the hits of one spectrometer arm among
    ``planes`` fake a slope (:mod:`fastmc.response`); pushed stray-hit offsets follow a ramp
    density of power ``push_power`` on the pushed side (0: uniform), or, a share
    ``push_window_share`` of them, uniformly in the outer part [``push_window``, 1] of the road.
    With ``integrate_kink`` (default) the cuts on the target kink integrate out the Gaussian scattering core between the
    incoming track and MS2 (:func:`fastmc.response.integrated_kink_cuts`), and with probability
    1 − ``deflect_beta`` a muon's hard deflections there are forced towards the side that hides
    the kink its hits fake.  Without it, the muon is turned to hide one of the shares
    ``deflect_follow`` of that kink: its Gaussian scattering core is shifted, or (a share
    ``deflect_kicks`` of those) its hard deflections are forced (:class:`fastmc.response.DeflectBias`;
    ``deflect_follow = []`` then switches the deflection forcing off)."""

    planes: tuple[str, ...] = ()  # default: every tracker of the p_out spectrometer and its incoming track
    beta: float = 0.5
    push_power: float = 3.0
    push_window: float = 0.5
    push_window_share: float = 0.0
    deflect_follow: tuple[float, ...] = ()
    deflect_beta: float = 0.9  # LS3 card, integrated kink cut: ESS 205, 218, 207 at 0.8, 0.9, 0.97 (524 288 muons)
    deflect_kicks: float = 0.2
    integrate_kink: bool = True


SIGNAL_MODELS = ("z_prime", "dark_photon", "scalar")  # fastmc.physics.darkbrem.SIGNAL_MODELS


@dataclasses.dataclass(frozen=True)
class SignalConfig:
    """The ``[signal]`` table of a run card (``fastmc sensitivity``): boson model, the element in
    which the emission is forced (the active target), masses to scan and muons per mass."""

    model: str = "z_prime"
    target: str = "ECAL"
    masses: tuple[float, ...] = (1.0, 10.0, 100.0, 1000.0)  # MeV
    n_muons: int = 65536


def parse_hadron_decay(sec: _Section, model: ModelConfig, channels: Sequence[str], run: _Section, *,
                       kaon_fraction: float, pion_fraction: float) -> HadronDecayConfig:
    """``[channels.hadron_decay]``; ``run`` is the card's ``[run]`` table (errors on run.channels),
    ``kaon_fraction``/``pion_fraction`` the card's ``[admixture]``."""
    zmin = sec.number("decay_z_min_m", None, le=0.0 + 1e3)
    hadron_decay = HadronDecayConfig(
        kaon_generation_fraction=sec.number("kaon_generation_fraction", 1.0, ge=0.0, le=1.0),
        decay_z_min=None if zmin is None else zmin * u.m,
        decay_z_max=sec.number("decay_z_max_m", 0.45, le=1e3) * u.m,
    )
    if hadron_decay.decay_z_min is not None and not hadron_decay.decay_z_min < hadron_decay.decay_z_max:
        raise sec.fail("decay_z_max_m", hadron_decay.decay_z_max / u.m, "must be > decay_z_min_m")
    if hadron_decay.decay_z_min is not None and hadron_decay.decay_z_min < model.beam.z_start:
        raise sec.fail("decay_z_min_m", zmin, "must not be upstream of the beam start")
    if "hadron_decay" in channels and kaon_fraction + pion_fraction == 0.0:
        raise run.fail("channels", list(channels), "hadron_decay needs [admixture] kaon_fraction or pion_fraction > 0")
    if "hadron_decay" in channels:
        g = hadron_decay.kaon_generation_fraction
        if (g > 0 and kaon_fraction == 0) or (g < 1 and pion_fraction == 0):
            raise sec.fail("kaon_generation_fraction", g, "generates a species whose [admixture] fraction is 0")
    sec.finish()
    return hadron_decay


def parse_misreco(sec: _Section, model: ModelConfig) -> MisrecoConfig:
    """``[channels.momentum_misreconstruction]``."""
    trackers = [e.name for e in model.elements if e.kind == "tracker"]
    default_planes = tuple(dict.fromkeys(
        n for s in model.spectrometers for n in (*s.incoming, *s.upstream, *s.downstream) if s.output == "p_out"))
    planes = sec.strings("planes", list(default_planes))
    for n in planes:
        if n not in trackers:
            raise sec.fail("planes", list(planes), f"{n!r} is not a tracker of the model")
    if len(planes) < 2:
        raise sec.fail("planes", list(planes), "needs at least 2 planes (a faked slope needs two displaced hits)")
    misreco = MisrecoConfig(
        planes=tuple(planes),
        beta=sec.number("beta", 0.5, gt=0.0, lt=1.0),
        push_power=sec.number("push_power", 3.0, ge=0.0, le=20.0),
        push_window=sec.number("push_window", MisrecoConfig.push_window, ge=0.0, lt=1.0),
        push_window_share=sec.number("push_window_share", MisrecoConfig.push_window_share, ge=0.0, lt=1.0),
        deflect_follow=sec.numbers("deflect_follow", [], gt=0.0, le=2.0),
        deflect_beta=sec.number("deflect_beta", MisrecoConfig.deflect_beta, gt=0.0, lt=1.0),
        deflect_kicks=sec.number("deflect_kicks", 0.2, gt=0.0, lt=1.0),
        integrate_kink=sec.boolean("integrate_kink", True),
    )
    if misreco.integrate_kink and misreco.deflect_follow:
        raise sec.fail("deflect_follow", list(misreco.deflect_follow),
                       "a tilted scattering core has no effect with integrate_kink = true (set it to false to tilt)")
    sec.finish()
    return misreco


def parse_calo_bias(sec: _Section, model: ModelConfig, channels: Sequence[str]) -> CaloBiasConfig:
    """``[channels.calorimeter_nonhermeticity]``."""
    dcb = CaloBiasConfig()
    calo = CaloBiasConfig(
        target=sec.string("target", dcb.target),
        v_min=sec.number("v_min", dcb.v_min, gt=0.0, lt=1.0),
        q_neutral=sec.number("q_neutral", dcb.q_neutral, gt=0.0, lt=1.0),
        beta=sec.number("beta", dcb.beta, gt=0.0, lt=1.0),
        z_focus=sec.number("z_focus", dcb.z_focus, gt=0.0, le=1.0),
        pt_widen=sec.number("pt_widen", dcb.pt_widen, ge=1.0, le=100.0),
    )
    if "calorimeter_nonhermeticity" in channels:
        check_signal_target(model, calo.target, lambda why: sec.fail("target", calo.target, why))
    sec.finish()
    return calo


def parse_signal(sec: _Section, model: ModelConfig) -> SignalConfig:
    """``[signal]`` (fastmc sensitivity)."""
    d = SignalConfig()
    target = sec.string("target", d.target)
    # the default target is checked where it is used (fastmc sensitivity): cards without a
    # [signal] table need not have an ECAL
    if "target" in sec.data:
        check_signal_target(model, target, lambda why: sec.fail("target", target, why))
    masses = sec._raw("masses_MeV", list(d.masses))
    if (not isinstance(masses, list) or not masses
            or not all(isinstance(m, (int, float)) and not isinstance(m, bool) for m in masses)):
        raise sec.fail("masses_MeV", masses, "must be a non-empty list of numbers")
    for m in masses:
        check_signal_mass(m, lambda why, m=m: sec.fail("masses_MeV", m, why))
    out = SignalConfig(
        model=sec.string("model", d.model, choices=SIGNAL_MODELS),
        target=target,
        masses=tuple(float(m) * u.MeV for m in masses),
        n_muons=sec.number("n_muons", d.n_muons, integer=True, ge=1, le=10**12),
    )
    sec.finish()
    return out
