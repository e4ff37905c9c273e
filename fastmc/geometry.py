"""The setup as a pytree: static structure (names, kinds, order), every number an array leaf.

:class:`Setup` is built once from a validated :class:`fastmc.config.ModelConfig`.  Element
names, kinds, bend planes and readout kinds are static (changing them
recompiles); positions, thicknesses, resolutions, efficiencies, field integrals, calorimeter
resolution terms and material indices are leaves (changing them never recompiles — the
optimisation studies rely on that).

Placement: every tracker, slab and counter has a rectangular active area whose centre
(``x_centre``, ``y_centre``) is the model's offset (``x_mm``, ``y_mm``) from the nominal trajectory
(:func:`nominal_trajectory`) at its exit face, computed here once from the model's numbers (an
optimisation that moves an element along z keeps its centre: the nominal trajectory is not
differentiated).  The beam starts on the nominal trajectory (:mod:`fastmc.beam`).

Materials: every distinct material of the model (a named material, or the homogenised mixture
of a sampling calorimeter's cell, named by :func:`fastmc.config.mixture_name`, e.g.
``"lead1.5mm+scintillator1.5mm"``) gets an index into the physics
tables; :func:`setup_materials` returns them in index order.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax.numpy as jnp
import numpy as np

from fastmc import units as u
from fastmc._pytree import pytree_dataclass, static_field
from fastmc.config import ModelConfig, ReconstructionSettings
from fastmc.materials import get_material, homogenise

# radiation length standing in for an evacuated gap (density scale 0): finite, so that Highland's
# log(x/X0) stays finite; its θ0 (≈ 3e-8·13.6 MeV/p per metre) is nil
VACUUM_X0_MM = 1e15

__all__ = ["Element", "Beam", "Trigger", "accidental_probability", "beam_fraction_inside", "build_trigger",
           "nominal_trajectory", "Spectrometer", "Setup", "build_setup", "setup_materials"]


@pytree_dataclass
class Element:
    z: jnp.ndarray  # mm, upstream face
    thickness: jnp.ndarray  # mm
    material: jnp.ndarray  # int32 index into the physics tables (magnets: gap medium)
    density_scale: jnp.ndarray  # multiplies the material's density (magnets: gap density scale)
    resolution: jnp.ndarray  # mm (trackers)
    efficiency: jnp.ndarray  # (trackers)
    tail_fraction: jnp.ndarray  # (trackers) fraction of wide-component hits
    tail_sigma: jnp.ndarray  # mm (trackers)
    pickup: jnp.ndarray  # (trackers) P(a stray pile-up/noise hit in the road)
    road: jnp.ndarray  # mm (trackers)
    time_resolution: jnp.ndarray  # ns (trackers): σ_t of a true hit (0: untimed)
    time_window: jnp.ndarray  # ns (trackers): readout window in which `pickup` counts strays
    time_cut: jnp.ndarray  # ns (trackers): half-width of the reconstruction's accepted hit-time window
    field_integral: jnp.ndarray  # T·m (magnets)
    stochastic_term: jnp.ndarray  # √GeV (readout)
    constant_term: jnp.ndarray
    noise: jnp.ndarray  # MeV
    response_scale: jnp.ndarray
    half_width: jnp.ndarray  # mm (slabs): transverse half-size, square aperture
    x_over_X0: jnp.ndarray  # thickness in radiation lengths (trackers: the track fit's scattering covariance)
    x_centre: jnp.ndarray  # mm: centre of the active area (absolute, nominal trajectory + x_mm)
    y_centre: jnp.ndarray  # mm
    half_width_x: jnp.ndarray  # mm: half-sizes of the rectangular active area
    half_width_y: jnp.ndarray  # mm
    name: str = static_field()
    kind: str = static_field()  # tracker | slab | magnet | counter
    bend_plane: str = static_field(default="x")
    readout: str = static_field(default="none")
    group: str = static_field(default="")


@pytree_dataclass
class Beam:
    momentum: jnp.ndarray  # MeV/c
    momentum_spread_rel: jnp.ndarray
    spot_sigma: jnp.ndarray  # mm
    divergence_sigma: jnp.ndarray  # rad
    z_start: jnp.ndarray  # mm
    x_start: jnp.ndarray  # mm: the nominal trajectory at z_start (nominal_trajectory; ∝ 1/p there)
    y_start: jnp.ndarray  # mm
    tx_start: jnp.ndarray  # rad
    ty_start: jnp.ndarray  # rad
    focus_z: jnp.ndarray  # mm: where the spot has its size spot_sigma
    charge: int = static_field(default=1)
    # non-Gaussian momentum spectrum and halo (fastmc.beam.beam_momentum); zeros: the Gaussian core
    tail_fraction: jnp.ndarray = 0.0
    tail_scale_rel: jnp.ndarray = 0.0
    halo_fraction: jnp.ndarray = 0.0
    halo_spot_sigma: jnp.ndarray = 0.0  # mm
    halo_divergence_sigma: jnp.ndarray = 0.0  # rad
    halo_momentum_spread_rel: jnp.ndarray = 0.0


@pytree_dataclass
class Trigger:
    """The run card's [trigger]: a coincidence of ``counters`` (static names) and the
    probability of an accidental coincidence per event, as ``log1m_p_acc`` = log(1 − P_acc)."""
    log1m_p_acc: jnp.ndarray
    counters: tuple[str, ...] = static_field()


@pytree_dataclass
class Spectrometer:
    """Names only: which trackers and magnets make a momentum measurement (static)."""
    name: str = static_field()
    output: str = static_field()
    plane: str = static_field()
    magnets: tuple[str, ...] = static_field()
    upstream: tuple[str, ...] = static_field()
    downstream: tuple[str, ...] = static_field()
    incoming: tuple[str, ...] = static_field(default=())


@pytree_dataclass
class Setup:
    elements: tuple[Element, ...]
    beam: Beam
    gap_material: jnp.ndarray
    gap_density_scale: jnp.ndarray
    gap_X0: jnp.ndarray  # mm, radiation length of the gap medium (density scale included; VACUUM_X0_MM for vacuum)
    spectrometers: tuple[Spectrometer, ...] = static_field()
    trigger: Trigger | None = None  # the run card's [trigger] (fastmc.chain.prepare), None: no trigger
    # (no model name here: a static field would recompile the chain for a renamed copy of a model)

    def element(self, name: str) -> Element:
        for e in self.elements:
            if e.name == name:
                return e
        raise KeyError(name)

    def index(self, name: str) -> int:
        for i, e in enumerate(self.elements):
            if e.name == name:
                return i
        raise KeyError(name)

    @property
    def readout_groups(self) -> tuple[str, ...]:
        seen: list[str] = []
        for e in self.elements:
            if e.kind == "slab" and e.readout != "none" and e.group not in seen:
                seen.append(e.group)
        return tuple(seen)

    @property
    def trackers(self) -> tuple[str, ...]:
        return tuple(e.name for e in self.elements if e.kind == "tracker")

    @property
    def counters(self) -> tuple[str, ...]:
        return tuple(e.name for e in self.elements if e.kind == "counter")


def pickup_probability(e, beam, rate_per_s: float | None = None) -> float:
    """P(at least one stray hit inside a tracker's search road) from beam pile-up.
    Pile-up muons arrive at ``rate`` (beam.rate_per_s) within the readout window τ:
    μ = rate·τ per event; each crosses the plane at a position drawn from the beam spot
    (Gaussian σ per projection), so the probability to land in the (2·road)² square around the
    track is (2 road)²/(2π σ²) near the beam centre (a small-road approximation).  Poisson:
    P = 1 − exp(−μ (2 road)²/(2π σ²)).  Noise hits are not modelled separately.
    The reconstruction's hit-time cut (:func:`time_cut`) then keeps only the strays inside
    ± cut: :func:`fastmc.response.trackers.hit_times` turns P into the accepted probability
    1 − exp(−μ_road · min(1, 2 cut/τ)).
    """
    import math


    rate = beam.rate_per_s if rate_per_s is None else rate_per_s
    mu = rate * e.time_window / u.s
    sig = max(beam.spot_sigma, 1e-9)
    dens = (2 * e.road) ** 2 / (2 * math.pi * sig**2)
    return 1.0 - math.exp(-mu * min(dens, 1.0))


def time_cut(e, reconstruction: ReconstructionSettings | None = None) -> float:
    """Half-width (ns) of the accepted hit-time window of tracker ``e`` (an ElementConfig):
    the card's ``hit_time_cut_ns``, else ``hit_time_cut_sigma`` × σ_t; an untimed tracker
    (σ_t = 0) accepts its whole readout window (±τ/2)."""
    reco = reconstruction or ReconstructionSettings()
    if not e.time_resolution > 0:
        return 0.5 * e.time_window
    return reco.hit_time_cut if reco.hit_time_cut is not None else reco.hit_time_cut_sigma * e.time_resolution


def _magnet_kicks(model: ModelConfig, momentum: float) -> list[tuple[float, str, float]]:
    """(z of the centre, bend plane, kick angle) of every magnet at ``momentum`` (MeV/c): thin lens
    at the centre, Δθ = q·0.2998·∫B dl[T·m]/p[GeV/c] (the transport's ``_kick_angle``; q = +1 for μ⁺)."""
    q = 1.0 if model.beam.pdg < 0 else -1.0
    return [(e.z + 0.5 * e.thickness, e.bend_plane, q * u.GEV_PER_TESLA_METRE * e.field_integral * u.GeV / momentum)
            for e in model.elements if e.kind == "magnet"]


def nominal_trajectory(model: ModelConfig, z, momentum: float | None = None):
    """(x, y, tx, ty) at ``z`` (mm; scalar or array, numpy float64) of the nominal trajectory.

    The reference muon of ``momentum`` (default: the beam's) crosses the target plane z = 0 at
    x = y = 0 with zero slopes (between the last magnet upstream of z = 0 and the first one after
    it it is the z axis); every magnet kicks it at its centre (thin lens, :func:`_magnet_kicks`).
    Upstream it is back-propagated: a kick k at z_c < 0 means slope −k before it, so for z < 0
    x(z) = Σ_{z < z_c ≤ 0} k (z_c − z), tx = −Σ k; downstream x(z) = Σ_{0 < z_c < z} k (z − z_c),
    tx = Σ k.  Another momentum gives the trajectory of a muon that crosses the target on axis
    (used to place the trigger counters, whose selection concerns the outgoing muon).
    """
    p = model.beam.momentum if momentum is None else momentum
    z = np.asarray(z, dtype=np.float64)
    out = {"x": np.zeros_like(z), "y": np.zeros_like(z), "tx": np.zeros_like(z), "ty": np.zeros_like(z)}
    for zc, plane, k in _magnet_kicks(model, p):
        if zc > 0:
            sel = z > zc
            out[plane] = out[plane] + np.where(sel, k * (z - zc), 0.0)
            out["t" + plane] = out["t" + plane] + np.where(sel, k, 0.0)
        else:
            sel = z < zc
            out[plane] = out[plane] + np.where(sel, k * (zc - z), 0.0)
            out["t" + plane] = out["t" + plane] - np.where(sel, k, 0.0)
    return out["x"], out["y"], out["tx"], out["ty"]


def beam_sigma_at(model: ModelConfig, z) -> np.ndarray:
    """Transverse σ (mm, per projection) at ``z`` of the nominal Gaussian beam: spot σ_s at the
    focus, divergence σ_θ, drifting without scattering: σ(z)² = σ_s² + σ_θ² (z − z_focus)²
    (thin-lens kicks move the beam's centre along the nominal trajectory, not its spread)."""
    b = model.beam
    return np.sqrt(b.spot_sigma**2 + (b.divergence_sigma * (np.asarray(z, np.float64) - b.focus_z)) ** 2)


def beam_fraction_inside(model: ModelConfig, element) -> float:
    """Fraction of the nominal Gaussian beam (centred on the nominal trajectory, σ of
    :func:`beam_sigma_at` at the element's exit face) inside the element's active area: a product
    of erf differences, Π_proj ½[erf((c + a)/√2σ) − erf((c − a)/√2σ)], c = the area's offset."""
    import math

    e = model.element(element) if isinstance(element, str) else element
    sig = max(float(beam_sigma_at(model, e.z_end)), 1e-12)
    frac = 1.0
    for c, a in ((e.x_offset, e.half_width_x), (e.y_offset, e.half_width_y)):
        frac *= 0.5 * (math.erf((c + a) / (math.sqrt(2) * sig)) - math.erf((c - a) / (math.sqrt(2) * sig)))
    return frac


def accidental_probability(model: ModelConfig, counters: Sequence[str], window: float) -> float:
    """P_acc = 1 − exp(−rate·window·f) of an accidental trigger from beam pile-up in ``window``
    (ns, CLHEP): f = min over the coincidence's counters of :func:`beam_fraction_inside` — an upper
    bound on the fraction of beam muons that cross all of them (the beam's correlations between
    counters are not modelled; a pile-up muon crossing one counter of the coincidence and another
    crossing the other within the window are counted once, through the same min)."""
    import math

    f = min(beam_fraction_inside(model, c) for c in counters)
    return -math.expm1(-model.beam.rate_per_s * window / u.s * f)


def build_trigger(model: ModelConfig, counters: Sequence[str], window: float) -> Trigger:
    p_acc = accidental_probability(model, counters, window)
    import math

    return Trigger(log1m_p_acc=jnp.asarray(math.log1p(-p_acc) if p_acc < 1 else -np.inf, dtype=jnp.result_type(float)),
                   counters=tuple(counters))


def setup_materials(model: ModelConfig) -> tuple[list, dict[str, int]]:
    """Materials used by the model, in table order, and the name → index map."""
    mats: list = []
    index: dict[str, int] = {}

    def add(name: str, build) -> int:
        if name not in index:
            index[name] = len(mats)
            mats.append(build())
        return index[name]

    add(model.gap_material, lambda: get_material(model.gap_material))
    for e in model.elements:
        if e.kind == "magnet":
            continue
        if e.layers:
            add(e.material, lambda e=e: homogenise(e.material, list(e.layers)))
        else:
            add(e.material, lambda e=e: get_material(e.material))
    return mats, index


def _x_over_X0(e) -> float:
    """Thickness of an element in radiation lengths (0 for magnets: their gap medium is the gap's)."""
    if e.kind == "magnet":
        return 0.0
    mat = homogenise(e.material, list(e.layers)) if e.layers else get_material(e.material)
    return e.thickness / mat.X0_mm


def build_setup(model: ModelConfig, material_index: dict[str, int],
                reconstruction: ReconstructionSettings | None = None) -> Setup:
    """Arrays (float32 on device unless x64 is enabled) from a validated model (and the run
    card's ``[reconstruction]``: the trackers' hit-time cuts; default: its defaults)."""
    f = lambda v: jnp.asarray(v, dtype=jnp.result_type(float))  # noqa: E731
    gap = material_index[model.gap_material]
    elements = []
    for e in model.elements:
        is_magnet = e.kind == "magnet"
        # active areas are placed relative to the nominal trajectory at the exit face (the truth
        # position the transport records there)
        x_nom, y_nom, _, _ = nominal_trajectory(model, e.z_end)
        elements.append(
            Element(
                z=f(e.z),
                thickness=f(e.thickness),
                material=jnp.asarray(gap if is_magnet else material_index[e.material], dtype=jnp.int32),
                density_scale=f(model.gap_density_scale if is_magnet else 1.0),
                resolution=f(e.resolution),
                efficiency=f(e.efficiency),
                tail_fraction=f(e.tail_fraction),
                tail_sigma=f(e.tail_sigma),
                pickup=f(pickup_probability(e, model.beam)),
                road=f(e.road),
                time_resolution=f(e.time_resolution),
                time_window=f(e.time_window),
                time_cut=f(time_cut(e, reconstruction)),
                field_integral=f(e.field_integral),
                stochastic_term=f(e.stochastic_term),
                constant_term=f(e.constant_term),
                noise=f(e.noise),
                response_scale=f(e.response_scale),
                half_width=f(e.half_width),
                x_over_X0=f(_x_over_X0(e)),
                x_centre=f(float(x_nom) + e.x_offset),
                y_centre=f(float(y_nom) + e.y_offset),
                half_width_x=f(e.half_width_x),
                half_width_y=f(e.half_width_y),
                name=e.name,
                kind=e.kind,
                bend_plane=e.bend_plane,
                readout=e.readout,
                group=e.group,
            )
        )
    b = model.beam
    x0, y0, tx0, ty0 = (float(v) for v in nominal_trajectory(model, b.z_start))
    beam = Beam(
        momentum=f(b.momentum),
        momentum_spread_rel=f(b.momentum_spread_rel),
        spot_sigma=f(b.spot_sigma),
        divergence_sigma=f(b.divergence_sigma),
        z_start=f(b.z_start),
        x_start=f(x0),
        y_start=f(y0),
        tx_start=f(tx0),
        ty_start=f(ty0),
        focus_z=f(b.focus_z),
        charge=1 if b.pdg < 0 else -1,  # PDG: -13 is μ⁺
        tail_fraction=f(b.tail_fraction),
        tail_scale_rel=f(b.tail_scale_rel),
        halo_fraction=f(b.halo_fraction),
        halo_spot_sigma=f(b.halo_spot_sigma),
        halo_divergence_sigma=f(b.halo_divergence_sigma),
        halo_momentum_spread_rel=f(b.halo_momentum_spread_rel),
    )
    spectrometers = tuple(
        Spectrometer(
            name=s.name,
            output=s.output,
            plane=s.plane,
            magnets=s.magnets,
            upstream=s.upstream,
            downstream=s.downstream,
            incoming=s.incoming,
        )
        for s in model.spectrometers
    )
    return Setup(
        elements=tuple(elements),
        beam=beam,
        gap_material=jnp.asarray(gap, dtype=jnp.int32),
        gap_density_scale=f(model.gap_density_scale),
        gap_X0=f(get_material(model.gap_material).X0_mm / model.gap_density_scale
                 if model.gap_density_scale > 0 else VACUUM_X0_MM),
        spectrometers=spectrometers,
    )


def element_z_table(setup: Setup, names: Sequence[str]) -> np.ndarray:
    """Concrete z positions (mm) of the named elements' measurement planes (exit face)."""
    return np.array([float(setup.element(n).z + setup.element(n).thickness) for n in names])
