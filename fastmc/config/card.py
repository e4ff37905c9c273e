"""The run card (runs/*.toml): what to simulate, with which physics, and the selection.

:func:`read_run` reads and validates a card and the model it names, and returns a frozen
:class:`RunConfig` in CLHEP units.  The channels' own tables (``[channels.<name>]``, ``[signal]``)
are parsed by the channels that own them, through the ``channel_tables`` callback that
:func:`fastmc.runcard.load_run` hands in: this package is a data layer and knows no channel.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from fastmc import units as u
from fastmc.config.model import ModelConfig, load_model
from fastmc.config.sections import ConfigError, Section, check_signal_mass, file_sha256, read_toml

# the top level of a run card (and the top-level parts of the channels' tables)
RUN_CARD_KEYS = ("schema_version", "run", "physics", "admixture", "showers", "reconstruction", "optimise",
                 "selection", "muon_id", "trigger")
SHOWER_MODELS = ("none", "profile")
SCATTERING_MODELS = ("highland", "highland_single")
FORM_FACTORS = ("geant4", "exponential")  # fastmc.physics.scattering.FORM_FACTORS
SCREENINGS = ("geant4", "moliere")  # fastmc.physics.scattering.SCREENINGS
# the energy-loss parametrisations a card may name: the keys of fastmc.physics.PROCESSES, in its
# order (plain data, so that the config imports no physics; tests/test_config.py keeps them equal)
PROCESS_NAMES = ("ionisation.bbk", "ionisation.bb", "brems.kkp", "pair.kp", "photonuclear.bb", "photonuclear.bp")


@dataclasses.dataclass(frozen=True)
class CutConfig:
    var: str
    min: float | None
    max: float | None

    def describe(self) -> str:
        if self.min is not None and self.max is not None:
            return f"{self.min:g} <= {self.var} <= {self.max:g}"
        if self.min is not None:
            return f"{self.var} >= {self.min:g}"
        return f"{self.var} <= {self.max:g}"


@dataclasses.dataclass(frozen=True)
class PhysicsSettings:
    v_cut: float = 1e-3
    e_cut: float = 50.0 * u.MeV
    ionisation: str = "ionisation.bbk"
    brems: str = "brems.kkp"
    pair: str = "pair.kp"
    photonuclear: str = "photonuclear.bb"
    scattering: str = "highland_single"
    form_factor: str = "geant4"  # nuclear form factor of single scattering (fastmc.physics.scattering)
    screening: str = "geant4"  # screening angle of single scattering (fastmc.physics.scattering)
    max_interactions: int = 8
    overflow_tolerance: float = 1e-3


@dataclasses.dataclass(frozen=True)
class AdmixtureConfig:
    """Beam hadrons per muon on target (true fractions): an external input, always also reported
    per unit fraction."""

    kaon_fraction: float = 0.0
    pion_fraction: float = 0.0


@dataclasses.dataclass(frozen=True)
class MuonIdConfig:
    """[muon_id]: a module of readout ``group`` counts as minimum-ionising when its visible energy
    lies in [min, max] (MeV); the selection variable ``n_<group>_mip_modules`` counts them."""

    group: str
    min: float
    max: float
    source: str = ""


@dataclasses.dataclass(frozen=True)
class ShowerSettings:
    """``[showers]``: how the energy of hard interactions reaches the calorimeters
    (:mod:`fastmc.physics.showers`).  ``none``: deposited where it happens (full containment)."""

    model: str = "none"
    threshold: float = 1.0 * u.GeV  # hardest transfers above it shower (below: local deposit)
    # h/e of a non-compensating Fe(Pb)/scintillator calorimeter ≈ 0.7 (e/h ≈ 1.3–1.5: Wigmans,
    # "Calorimetry" (2nd ed., OUP 2017) ch. 3; PDG RPP 2024 "Calorimetry" §35.9.2), approx.
    h_over_e: float = 0.7
    # P(one neutral hadron takes ≥ z_min of a photonuclear transfer): no measurement found, an
    # external input like the kaon fraction (the channel also reports the rate per unit of it)
    leading_neutral: float = 0.01
    z_min: float = 0.8  # "single hard neutral hadron" = ≥ 80 % of ν (ldmx-sw PhotoNuclearDQM convention)
    # mean transverse momentum of the leading neutral hadron: ≈ 0.35 GeV/c, the typical ⟨p_T⟩ of
    # hadrons in soft hadronic and photoproduction collisions (approx.); p_T ~ p_T e^{−2 p_T/⟨p_T⟩}
    neutral_pt: float = 0.35 * u.GeV
    # lateral containment of the showers in the slabs' square apertures (GFLASH radial profile;
    # hadronic: 2 r R²/(r² + R²)² with 95 % inside hadron_r95_lambda·λ_I)
    lateral: bool = True
    # 95 % of a hadronic shower lies within ≈ 1 λ_I of its axis (PDG RPP 2024 "Calorimetry"
    # §35.9.2; Wigmans, "Calorimetry" (2nd ed., OUP 2017) ch. 2), approx.
    hadron_r95_lambda: float = 1.0
    # P(one charged hadron takes ≥ z_min of a photonuclear transfer | no leading neutral): no
    # measurement found, a free parameter like leading_neutral (approx.); it may punch through
    # the calorimeters before MS2 and be seen there as an extra track
    leading_charged: float = 0.02



@dataclasses.dataclass(frozen=True)
class ReconstructionSettings:
    """``[reconstruction]``: the hit-time cut of the track reconstruction.  A tracker hit is
    accepted only if its time lies within ± the cut of the trigger time (fastmc.response.trackers).
    ``hit_time_cut_ns`` (one half-width for every timed tracker) overrides
    ``hit_time_cut_sigma`` × each tracker's ``time_resolution_ns``; trackers without a time
    resolution accept their whole readout window (no timing)."""

    # ±3 σ_t keeps 99.73 % of the true hits of a Gaussian time response (erf(3/√2)); a common
    # choice, approx. (the real per-detector cuts of NA64μ are not public)
    hit_time_cut_sigma: float = 3.0
    hit_time_cut: float | None = None  # ns, half-width for every timed tracker (overrides the above)


@dataclasses.dataclass(frozen=True)
class OptimiseSettings:
    """The ``[optimise]`` table of a run card (``fastmc optimize``; see :mod:`fastmc.optimise`)."""

    steps: int = 40
    learning_rate: float = 0.1  # Adam step in the unconstrained (logit) coordinates
    batch: int = 4096  # muons per channel per step
    resample_every: int = 1  # new random numbers every this many steps (common random numbers within)
    temperature: float = 0.05  # soft cuts: logistic edge width / cut value
    signal_mass_MeV: float = 100.0  # signal benchmark of the figure of merit
    punzi_a: float = 1.28  # Punzi's a (one-sided 90 % CL)
    budget: float | None = None  # cost budget (units of cost_per_unit × parameter)
    cost_weight: float = 1.0
    max_length_m: float | None = None  # upper bound on the setup length (first to last element)
    length_weight: float = 1.0
    channels: tuple[str, ...] = ()  # background channels of the objective (default: the card's, but analog)
    eval_n_muons: int | None = None  # hard-mode evaluation (default: the card's n_muons)


@dataclasses.dataclass(frozen=True)
class TriggerConfig:
    """``[trigger]``: a coincidence of every named counter (model elements of kind ``counter``),
    judged on the true trajectory, plus accidental coincidences from beam pile-up in ``window``."""

    counters: tuple[str, ...]
    window: float  # ns (CLHEP): coincidence window for accidentals
    source: str = ""


@dataclasses.dataclass(frozen=True)
class RunConfig:
    path: Path
    sha256: str
    model: ModelConfig
    n_muons: int
    chunk_size: int
    seed: int
    mot: float
    channels: tuple[str, ...]
    physics: PhysicsSettings
    regions: tuple[tuple[str, tuple[CutConfig, ...]], ...]
    save_events: bool
    admixture: AdmixtureConfig = AdmixtureConfig()
    showers: ShowerSettings = ShowerSettings()
    reconstruction: ReconstructionSettings = ReconstructionSettings()
    max_seconds: float | None = None  # default wall-time budget of a projection (s); --max-seconds overrides
    optimise: OptimiseSettings = OptimiseSettings()
    trigger: TriggerConfig | None = None  # [trigger]; None: no trigger (every event triggers)
    # each registered channel's settings, parsed from its own card table by the channel, and the
    # registry that parsed them (name → fastmc.channels.base.Channel; not part of the provenance)
    channel_settings: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    muon_id: MuonIdConfig | None = None  # [muon_id]: the HCAL's per-module MIP window
    registry: Any = dataclasses.field(default=None, compare=False, repr=False)

    def with_overrides(self, **changes: Any) -> RunConfig:
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        """Resolved configuration (internal units spelled out in the key names) for provenance."""

        def conv(obj: Any) -> Any:
            if dataclasses.is_dataclass(obj):
                return {f.name: conv(getattr(obj, f.name)) for f in dataclasses.fields(obj) if f.name != "registry"}
            if isinstance(obj, Mapping):
                return {str(k): conv(v) for k, v in obj.items()}
            if isinstance(obj, (list, tuple)):
                return [conv(x) for x in obj]
            if isinstance(obj, Path):
                return str(obj)
            return obj

        d = conv(self)
        d["units"] = "CLHEP: lengths mm, energies/momenta MeV, angles rad, field integrals T·m"
        return d


VARIABLE_HELP = {
    "p_in_GeV": "momentum reconstructed by the upstream spectrometer (MS1)",
    "p_out_GeV": "momentum reconstructed by the downstream spectrometer (MS2)",
    "in_ok": "1 if the upstream track was reconstructed (enough hits), else 0",
    "out_ok": "1 if the downstream track was reconstructed, else 0",
    "e_<group>_GeV": "visible energy summed over the readout group (e.g. e_ecal_GeV, e_hcal_GeV)",
    "e_<group>_MeV": "same in MeV (convenient for counters, e.g. e_veto_MeV)",
    "p_<out>_chi2ndf": "χ²/ndf of the spectrometer's global track fit, both projections (+inf without a track)",
    "p_<out>_match_mm": "distance between the two arms' straight lines at the magnets' kick point (both projections)",
    "p_<out>_match_pull": "the same in units of its standard deviation (√(pull_bend² + pull_nonbend²))",
    "kink_<out>_mrad": "angle between the incoming track and the spectrometer's upstream arm (both projections)",
    "kink_<out>_pt_MeV": "the same kink times the reconstructed momentum: the transverse kick at the target",
    "truth_hadron": "TRUTH (closure/validation studies only): 1 if the primary was a beam hadron",
    "trigger_prob": "probability that the event fires the card's [trigger] (1 without one); every region's "
                    "first cut is the trigger, integrated with this probability (conditional Monte Carlo)",
    "extra_tracks_p_out": "extra charged tracks reaching MS2: leading charged hadrons that punched through the "
                          "calorimeters",
    "e_<element>_GeV": "visible energy of one read-out slab of a group of several (e.g. e_HCAL1_GeV)",
    "n_<group>_mip_modules": "with [muon_id]: number of the group's modules whose visible energy lies in the MIP "
                             "window (e.g. n_hcal_mip_modules)",
}


def readout_groups(model: ModelConfig) -> dict[str, tuple[str, ...]]:
    """Read-out group → its slabs' names, in model order."""
    groups: dict[str, tuple[str, ...]] = {}
    for e in model.elements:
        if e.kind == "slab" and e.readout != "none":
            groups[e.group] = groups.get(e.group, ()) + (e.name,)
    return groups


def _parse_muon_id(sec: Section, model: ModelConfig) -> MuonIdConfig:
    groups = readout_groups(model)
    group = sec.string("group")
    if group not in groups:
        raise sec.fail("group", group, f"not a read-out group of the model (known: {', '.join(groups)})")
    lo = sec.number("min_GeV", ge=0.0, le=1e4)
    hi = sec.number("max_GeV", gt=0.0, le=1e4)
    if not lo < hi:
        raise sec.fail("max_GeV", hi, f"must be > min_GeV = {lo:g}")
    source = sec.string("source", "")
    sec.finish()
    return MuonIdConfig(group=group, min=lo * u.GeV, max=hi * u.GeV, source=source)


def selection_variables(model: ModelConfig, muon_id: MuonIdConfig | None = None) -> tuple[str, ...]:
    """The names a cut may use for this model (and the card's [muon_id])."""
    names = ["in_ok", "out_ok", "truth_hadron", "trigger_prob"]
    for s in model.spectrometers:
        names += [f"{s.output}_GeV", f"{s.output}_chi2ndf", f"{s.output}_hits_up", f"{s.output}_hits_down",
                  f"{s.output}_match_mm", f"{s.output}_match_pull"]
        if s.incoming:
            names += [f"kink_{s.output}_mrad", f"kink_{s.output}_pt_MeV", f"{s.output}_hits_in"]
    if any(s.output == "p_out" for s in model.spectrometers):
        names.append("extra_tracks_p_out")
    if any(s.output == "p_in" for s in model.spectrometers) and any(s.incoming for s in model.spectrometers):
        names.append("kink_beam_mrad")
    groups = sorted({e.group for e in model.elements if e.kind == "slab" and e.readout != "none"})
    for g in groups:
        names += [f"e_{g}_GeV", f"e_{g}_MeV"]
    for members in readout_groups(model).values():
        if len(members) > 1:
            names += [f"e_{m}_GeV" for m in members]
    if muon_id is not None:
        names.append(f"n_{muon_id.group}_mip_modules")
    return tuple(names)


def _parse_cut(sec: Section, variables: tuple[str, ...]) -> CutConfig:
    sec.expect(("var", "min", "max"))  # a typo'd min/max is reported as such, not as a cut without bounds
    var = sec.string("var")
    if var not in variables:
        raise sec.fail("var", var, f"unknown selection variable (known: {', '.join(variables)})")
    lo = sec.number("min", None)
    hi = sec.number("max", None)
    if lo is None and hi is None:
        raise sec.fail("var", var, "a cut needs min, max or both")
    if lo is not None and hi is not None and not lo < hi:
        raise sec.fail("max", hi, f"must be > min = {lo:g}")
    sec.finish()
    return CutConfig(var=var, min=lo, max=hi)


@dataclasses.dataclass(frozen=True)
class CardContext:
    """What a channel's card table may be checked against: the rest of the card, parsed."""

    path: Path
    model: ModelConfig
    channels: tuple[str, ...]  # the card's channels
    admixture: AdmixtureConfig
    showers: ShowerSettings
    run: Section  # the [run] table (errors about the channel list name it)
    showers_table: Section  # the [showers] table


ChannelTables = Callable[[Section, CardContext], Mapping[str, Any]]


def read_run(path: str | Path, background_channels: Sequence[str], channel_tables: ChannelTables,
             channel_keys: Sequence[str] = (), registry: Any = None) -> RunConfig:
    """Read and validate a run card (and the model it names), all but the channels' own tables:
    ``channel_tables(root, context)`` parses those (the top-level keys they live under:
    ``channel_keys``) and returns each channel's settings.  ``run.channels`` may name any of
    ``background_channels``.  :func:`fastmc.runcard.load_run` is the entry point."""
    path = Path(path)
    root = read_toml(path, RUN_CARD_KEYS + tuple(k for k in channel_keys if k not in RUN_CARD_KEYS))
    run = root.table("run")
    model_ref = run.string("model")
    model_path = (path.parent / model_ref) if not Path(model_ref).is_absolute() else Path(model_ref)
    if not model_path.is_file():
        raise run.fail("model", model_ref, f"model file not found ({model_path})")
    model = load_model(model_path)
    n_muons = run.number("n_muons", integer=True, ge=1, le=10**15)
    chunk_size = run.number("chunk_size", 65536, integer=True, ge=1, le=2**24)
    seed = run.number("seed", 0, integer=True, ge=0, lt=2**32)
    mot = run.number("mot", gt=0.0)
    channels = run.strings("channels", ["analog"])
    for ch in channels:
        if ch not in background_channels:
            raise run.fail("channels", list(channels),
                           f"unknown channel {ch!r} (known: {', '.join(background_channels)})")
    if not channels or len(set(channels)) != len(channels):
        raise run.fail("channels", list(channels), "must be a non-empty list without repeats")
    save_events = run.boolean("save_events", False)
    max_seconds = run.number("max_seconds", None, gt=0.0, le=1e7)  # wall-time budget (fastmc project)
    run.finish()

    ph = root.table("physics", {})
    defaults = PhysicsSettings()
    physics = PhysicsSettings(
        v_cut=ph.number("v_cut", defaults.v_cut, gt=0.0, lt=0.5),
        e_cut=ph.number("e_cut_MeV", defaults.e_cut / u.MeV, gt=0.0, le=1e5) * u.MeV,
        ionisation=ph.string("ionisation", defaults.ionisation),
        brems=ph.string("brems", defaults.brems),
        pair=ph.string("pair", defaults.pair),
        photonuclear=ph.string("photonuclear", defaults.photonuclear),
        scattering=ph.string("scattering", defaults.scattering, choices=SCATTERING_MODELS),
        form_factor=ph.string("form_factor", defaults.form_factor, choices=FORM_FACTORS),
        screening=ph.string("screening", defaults.screening, choices=SCREENINGS),
        max_interactions=ph.number("max_interactions", defaults.max_interactions, integer=True, ge=0, le=64),
        overflow_tolerance=ph.number("overflow_tolerance", defaults.overflow_tolerance, ge=0.0, le=1.0),
    )
    _check_process_names(ph, physics)
    ph.finish()

    adm = root.table("admixture", {})
    admixture = AdmixtureConfig(
        kaon_fraction=adm.number("kaon_fraction", 0.0, ge=0.0, lt=1.0),
        pion_fraction=adm.number("pion_fraction", 0.0, ge=0.0, lt=1.0),
    )
    adm.string("source", "")
    if admixture.kaon_fraction + admixture.pion_fraction >= 1.0:
        raise adm.fail("pion_fraction", admixture.pion_fraction, "kaon_fraction + pion_fraction must be < 1")
    adm.finish()
    sh = root.table("showers", {})
    dsh = ShowerSettings()
    showers = ShowerSettings(
        model=sh.string("model", dsh.model, choices=SHOWER_MODELS),
        threshold=sh.number("threshold_GeV", dsh.threshold / u.GeV, gt=0.0, le=1e4) * u.GeV,
        h_over_e=sh.number("h_over_e", dsh.h_over_e, gt=0.0, le=2.0),
        leading_neutral=sh.number("leading_neutral", dsh.leading_neutral, ge=0.0, le=1.0),
        z_min=sh.number("z_min", dsh.z_min, ge=0.0, lt=1.0),
        neutral_pt=sh.number("neutral_pt_GeV", dsh.neutral_pt / u.GeV, ge=0.0, le=100.0) * u.GeV,
        lateral=sh.boolean("lateral", dsh.lateral),
        hadron_r95_lambda=sh.number("hadron_r95_lambda", dsh.hadron_r95_lambda, gt=0.0, le=10.0),
        leading_charged=sh.number("leading_charged", dsh.leading_charged, ge=0.0, le=1.0),
    )
    sh.string("source", "")
    channel_settings = dict(channel_tables(root, CardContext(path, model, channels, admixture, showers, run, sh)))
    sh.finish()

    reconstruction = _parse_reconstruction(root.table("reconstruction", {}), model)
    muon_id = _parse_muon_id(root.table("muon_id"), model) if "muon_id" in root.data else None
    variables = selection_variables(model, muon_id)
    optimise = _parse_optimise_settings(root.table("optimise", {}), channels)
    trigger = _parse_trigger(root.table("trigger"), model) if "trigger" in root.data else None
    sel = root.table("selection")
    regions = []
    for region_name in list(sel.data):
        region = sel.table(region_name)
        cuts = tuple(_parse_cut(c, variables) for c in region.tables("cuts"))
        if not cuts:
            raise region.fail("cuts", [], "a region needs at least one cut")
        region.finish()
        regions.append((region_name, cuts))
    if not regions:
        raise ConfigError(f"{path}: selection: needs at least one region (e.g. [selection.signal])")
    sel.finish()
    root.finish()
    cfg = RunConfig(
        path=path,
        sha256=file_sha256(path),
        model=model,
        n_muons=n_muons,
        chunk_size=chunk_size,
        seed=seed,
        mot=float(mot),
        channels=channels,
        physics=physics,
        regions=tuple(regions),
        save_events=save_events,
        admixture=admixture,
        showers=showers,
        reconstruction=reconstruction,
        max_seconds=None if max_seconds is None else float(max_seconds),
        optimise=optimise,
        trigger=trigger,
        channel_settings=channel_settings,
        muon_id=muon_id,
        registry=registry,
    )
    return cfg


def _parse_reconstruction(sec: Section, model: ModelConfig) -> ReconstructionSettings:
    """``[reconstruction]``; a time cut narrower than a tracker's time resolution is an error
    (it would throw away most true hits: the cut is a window around the resolution, not inside it)."""
    d = ReconstructionSettings()
    n_sigma = sec.number("hit_time_cut_sigma", d.hit_time_cut_sigma, ge=1.0, le=100.0)
    cut = sec.number("hit_time_cut_ns", None, gt=0.0, le=1e6)
    if cut is not None:
        if "hit_time_cut_sigma" in sec.data:
            raise sec.fail("hit_time_cut_ns", cut, "give either hit_time_cut_ns or hit_time_cut_sigma")
        for e in model.elements:
            if e.kind == "tracker" and cut * u.ns < e.time_resolution:
                raise sec.fail("hit_time_cut_ns", cut, f"shorter than the time resolution of {e.name} "
                                                       f"({e.time_resolution / u.ns:g} ns)")
    sec.string("source", "")
    sec.finish()
    return ReconstructionSettings(hit_time_cut_sigma=float(n_sigma),
                                  hit_time_cut=None if cut is None else float(cut) * u.ns)


def _parse_trigger(sec: Section, model: ModelConfig) -> TriggerConfig:
    counters = sec.strings("counters")
    known = [e.name for e in model.elements if e.kind == "counter"]
    if not counters or len(set(counters)) != len(counters):
        raise sec.fail("counters", list(counters), "must be a non-empty list without repeats")
    for c in counters:
        if c not in known:
            raise sec.fail("counters", list(counters),
                           f"{c!r} is not a counter of the model (counters: {', '.join(known) or 'none'})")
    window = sec.number("window_ns", gt=0.0, le=1e6) * u.ns
    source = sec.string("source", "")
    sec.finish()
    return TriggerConfig(counters=tuple(counters), window=window, source=source)


def _parse_optimise_settings(sec: Section, channels: tuple[str, ...]) -> OptimiseSettings:
    d = OptimiseSettings()
    bkg = tuple(c for c in channels if c != "analog") or channels
    chans = sec.strings("channels", list(bkg))
    for c in chans:
        if c not in channels:
            raise sec.fail("channels", list(chans), f"{c!r}: must be one of the card's channels (run.channels)")
    if not chans:
        raise sec.fail("channels", [], "needs at least one background channel")
    budget = sec.number("budget", None, gt=0.0)
    max_len = sec.number("max_length_m", None, gt=0.0)
    mass = sec.number("signal_mass_MeV", d.signal_mass_MeV)
    check_signal_mass(mass, lambda why: sec.fail("signal_mass_MeV", mass, why))
    out = OptimiseSettings(
        steps=sec.number("steps", d.steps, integer=True, ge=1, le=100000),
        learning_rate=sec.number("learning_rate", d.learning_rate, gt=0.0, le=10.0),
        batch=sec.number("batch", d.batch, integer=True, ge=16, le=2**22),
        resample_every=sec.number("resample_every", d.resample_every, integer=True, ge=1),
        temperature=sec.number("temperature", d.temperature, gt=0.0, le=1.0),
        signal_mass_MeV=float(mass),
        punzi_a=sec.number("punzi_a", d.punzi_a, gt=0.0, le=10.0),
        budget=budget,
        cost_weight=sec.number("cost_weight", d.cost_weight, ge=0.0),
        max_length_m=max_len,
        length_weight=sec.number("length_weight", d.length_weight, ge=0.0),
        channels=tuple(chans),
        eval_n_muons=sec.number("eval_n_muons", None, integer=True, ge=1, le=10**15),
    )
    sec.finish()
    return out


def _check_process_names(sec: Section, physics: PhysicsSettings) -> None:
    for key in ("ionisation", "brems", "pair", "photonuclear"):
        value = getattr(physics, key)
        known = sorted(k for k in PROCESS_NAMES if k.split(".")[0] == value.split(".")[0])
        if value not in PROCESS_NAMES:
            raise sec.fail(key, value, f"unknown parametrisation (known: {', '.join(known) or 'none'})")
