"""The setup model (models/*.toml): beam, elements along z, spectrometers, optimisable numbers.

:func:`load_model` reads and validates a model file and returns a frozen :class:`ModelConfig`
in CLHEP units.  Data only: it imports no kernel (physics, transport, response, run).
"""

from __future__ import annotations

import dataclasses
import difflib
import itertools
import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from fastmc import units as u
from fastmc.config.sections import MISSING, ConfigError, Section, file_sha256, read_toml
from fastmc.materials import MATERIAL_NAMES

# the top level of a model file
MODEL_KEYS = ("schema_version", "name", "description", "gap_material", "gap_density_scale", "beam", "elements",
              "spectrometers", "optimise", "source")
ELEMENT_KINDS = ("tracker", "slab", "magnet", "counter")
READOUT_KINDS = ("none", "calorimeter", "counter")
PARTICLES = {"mu+": -13, "mu-": 13}


@dataclasses.dataclass(frozen=True)
class BeamConfig:
    particle: str
    pdg: int
    momentum: float  # MeV/c, nominal
    momentum_spread_rel: float  # Gaussian σ_p / p
    spot_sigma: float  # mm, per projection
    divergence_sigma: float  # rad, per projection
    z_start: float  # mm
    rate_per_s: float  # muons per second on target (pile-up; reporting)
    # non-Gaussian momentum spectrum (fastmc.beam.beam_momentum); all 0: the Gaussian core only
    tail_fraction: float = 0.0  # fraction of muons in the low-momentum tail
    tail_scale_rel: float = 0.0  # tail: p = p0·(1 − ξ), ξ exponential of this mean
    halo_fraction: float = 0.0  # fraction of halo muons (π/K decays along the line, outside the core)
    halo_spot_sigma: float = 0.0  # mm, per projection
    halo_divergence_sigma: float = 0.0  # rad, per projection
    halo_momentum_spread_rel: float = 0.0  # Gaussian σ_p / p of the halo
    focus_z: float = 0.0  # mm: z where spot_sigma is the beam's size (the M2 focus; approx. PHYSICS.md §2)


@dataclasses.dataclass(frozen=True)
class ElementConfig:
    name: str
    kind: str  # tracker | slab | magnet
    z: float  # mm, upstream face
    thickness: float  # mm along z
    material: str  # fastmc material name, or mixture_name(layers); "" for magnets (gap medium)
    layers: tuple[tuple[str, float], ...] = ()  # (material, thickness_mm) of one sampling cell
    n_layers: int = 0
    # tracker
    resolution: float = 0.0  # mm, per projection
    efficiency: float = 1.0
    tail_fraction: float = 0.0  # fraction of hits measured with the wide component
    tail_sigma: float = 0.0  # mm, σ of the wide component
    time_window: float = 0.0  # ns, readout window (pile-up)
    time_resolution: float = 0.0  # ns, σ_t of a true hit's time (0: untimed, every hit in time)
    road: float = 5.0  # mm, half-width of the search road in which a stray hit is picked up
    # magnet
    field_integral: float = 0.0  # T·m
    bend_plane: str = "x"
    # readout (slab)
    readout: str = "none"
    group: str = ""
    stochastic_term: float = 0.0  # √GeV  (σ/E = a/√E ⊕ b ⊕ c/E)
    constant_term: float = 0.0
    noise: float = 0.0  # MeV
    response_scale: float = 1.0
    half_width: float = 1e7  # mm, transverse half-size of a slab (square aperture; default: unbounded)
    # active area (trackers, slabs, counters): rectangle of half-sizes (half_width_x, half_width_y)
    # centred at (x_offset, y_offset) from the nominal 160 GeV trajectory at the element's z
    half_width_x: float = 1e7  # mm (default: unbounded)
    half_width_y: float = 1e7  # mm
    x_offset: float = 0.0  # mm, relative to the nominal trajectory (fastmc.geometry.nominal_trajectory)
    y_offset: float = 0.0  # mm
    source: str = ""

    @property
    def z_end(self) -> float:
        return self.z + self.thickness


@dataclasses.dataclass(frozen=True)
class SpectrometerConfig:
    name: str
    output: str  # name of the reconstructed variable: "p_in" or "p_out"
    plane: str  # bend plane "x" or "y"
    magnets: tuple[str, ...]
    upstream: tuple[str, ...]
    downstream: tuple[str, ...]
    incoming: tuple[str, ...] = ()  # trackers of the track before the target (kink variable)


# [optimise."<element>.<field>"] in a model: field → (ElementConfig attribute, element kinds, unit of the file)
OPTIMISE_FIELDS = {
    "z_m": ("z", ("tracker", "slab", "magnet"), "m"),
    "thickness_mm": ("thickness", ("slab",), "mm"),  # slabs of one material
    "n_layers": ("thickness", ("slab",), "layers"),  # sampling slabs: continuous while optimising
    "field_integral_Tm": ("field_integral", ("magnet",), "T·m"),
    "resolution_mm": ("resolution", ("tracker",), "mm"),
}


@dataclasses.dataclass(frozen=True)
class OptimiseParam:
    """One optimisable number of a model, in the unit of the file (``unit``)."""
    name: str  # "<element>.<field>"
    element: str
    field: str  # key of OPTIMISE_FIELDS
    lo: float
    hi: float
    value: float  # the model's value
    scale: float  # internal value (mm, T·m) per unit of the file
    cost_per_unit: float = 0.0
    unit: str = ""


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    path: Path
    sha256: str
    name: str
    description: str
    gap_material: str
    gap_density_scale: float
    beam: BeamConfig
    elements: tuple[ElementConfig, ...]
    spectrometers: tuple[SpectrometerConfig, ...]
    optimise: tuple[OptimiseParam, ...] = ()  # numbers fastmc optimize may move ([optimise.<name>])

    def element(self, name: str) -> ElementConfig:
        for e in self.elements:
            if e.name == name:
                return e
        raise KeyError(name)


def _known_materials() -> tuple[str, ...]:

    return tuple(MATERIAL_NAMES)


def _parse_beam(sec: Section) -> BeamConfig:
    particle = sec.string("particle", "mu+", choices=tuple(PARTICLES))
    beam = BeamConfig(
        particle=particle,
        pdg=PARTICLES[particle],
        momentum=sec.number("momentum_GeV", gt=0.2, le=1e4) * u.GeV,
        momentum_spread_rel=sec.number("momentum_spread_rel", ge=0.0, lt=0.3),
        spot_sigma=sec.number("spot_sigma_mm", ge=0.0, le=1e3) * u.mm,
        divergence_sigma=sec.number("divergence_sigma_mrad", ge=0.0, le=100.0) * u.mrad,
        z_start=sec.number("z_start_m", le=0.0) * u.m,
        rate_per_s=sec.number("rate_per_s", 1e6, gt=0.0),
        tail_fraction=sec.number("tail_fraction", 0.0, ge=0.0, lt=1.0),
        tail_scale_rel=sec.number("tail_scale_rel", 0.0, ge=0.0, le=1.0),
        halo_fraction=sec.number("halo_fraction", 0.0, ge=0.0, lt=1.0),
        halo_spot_sigma=sec.number("halo_spot_sigma_mm", 0.0, ge=0.0, le=1e4) * u.mm,
        halo_divergence_sigma=sec.number("halo_divergence_mrad", 0.0, ge=0.0, le=100.0) * u.mrad,
        halo_momentum_spread_rel=sec.number("halo_momentum_spread_rel", 0.0, ge=0.0, lt=1.0),
        # the spot size is that at the beam's focus, by default the target (approx., PHYSICS.md §2)
        focus_z=sec.number("focus_z_m", 0.0, ge=-1e3, le=1e3) * u.m,
    )
    if beam.tail_fraction + beam.halo_fraction >= 1.0:
        raise sec.fail("halo_fraction", beam.halo_fraction, "tail_fraction + halo_fraction must be < 1 (the core)")
    if beam.tail_fraction > 0 and beam.tail_scale_rel <= 0:
        raise sec.fail("tail_scale_rel", beam.tail_scale_rel, "must be > 0 when tail_fraction > 0")
    sec.string("source", "")
    sec.finish()
    return beam


def mixture_name(layers: Sequence[tuple[str, float]]) -> str:
    """Canonical name of a sampling cell's homogenised mixture, e.g. 'lead1.5mm+scintillator1.5mm'."""
    return "+".join(f"{m}{t:g}mm" for m, t in layers)


def _parse_element(sec: Section, materials: tuple[str, ...]) -> ElementConfig:
    name = sec.string("name")
    kind = sec.string("kind", choices=ELEMENT_KINDS)
    z = sec.number("z_m") * u.m
    source = sec.string("source", "")
    kw: dict[str, Any] = {}

    def material_name(key: str, value: str) -> str:
        if value not in materials:
            raise sec.fail(key, value, f"unknown material (known: {', '.join(materials)})")
        return value

    if kind == "magnet":
        kw["thickness"] = sec.number("length_m", gt=0.0, le=100.0) * u.m
        kw["material"] = ""
        kw["field_integral"] = sec.number("field_integral_Tm", ge=-100.0, le=100.0)
        kw["bend_plane"] = sec.string("bend_plane", choices=("x", "y"))
    else:
        if "layers" in sec.data:
            raw = sec.raw("layers", MISSING)
            ok = isinstance(raw, list) and raw and all(
                isinstance(x, list) and len(x) == 2 and isinstance(x[0], str)
                and isinstance(x[1], (int, float)) and not isinstance(x[1], bool) and x[1] > 0
                and math.isfinite(x[1])
                for x in raw
            )
            if not ok:
                raise sec.fail("layers", raw, 'must be a list of ["material", thickness_mm > 0] pairs')
            layers = tuple((material_name("layers", m), float(t)) for m, t in raw)
            n_layers = sec.number("n_layers", integer=True, ge=1, le=100000)
            kw["layers"] = layers
            kw["n_layers"] = n_layers
            kw["thickness"] = n_layers * sum(t for _, t in layers) * u.mm
            kw["material"] = mixture_name(layers)
            if "thickness_mm" in sec.data or "material" in sec.data:
                raise sec.fail("layers", raw, "give either layers + n_layers or material + thickness_mm")
        else:
            kw["material"] = material_name("material", sec.string("material"))
            kw["thickness"] = sec.number("thickness_mm", gt=0.0, le=1e5) * u.mm
    if kind == "tracker":
        kw["resolution"] = sec.number("resolution_mm", gt=0.0, le=100.0) * u.mm
        kw["efficiency"] = sec.number("efficiency", 1.0, gt=0.0, le=1.0)
        kw["tail_fraction"] = sec.number("tail_fraction", 0.0, ge=0.0, lt=1.0)
        kw["tail_sigma"] = sec.number("tail_sigma_mm", 0.0, ge=0.0, le=1000.0) * u.mm
        if kw["tail_fraction"] > 0 and not kw["tail_sigma"] > kw["resolution"]:
            raise sec.fail("tail_sigma_mm", kw["tail_sigma"], "must exceed resolution_mm when tail_fraction > 0")
        kw["time_window"] = sec.number("time_window_ns", 0.0, ge=0.0, le=1e6) * u.ns
        kw["time_resolution"] = sec.number("time_resolution_ns", 0.0, ge=0.0, le=1e4) * u.ns
        if 0 < kw["time_window"] < kw["time_resolution"]:
            raise sec.fail("time_window_ns", kw["time_window"] / u.ns,
                           f"readout window shorter than time_resolution_ns = {kw['time_resolution'] / u.ns:g}")
        kw["road"] = sec.number("road_mm", 5.0, gt=0.0, le=1000.0) * u.mm
    if kind == "counter":
        kw["efficiency"] = sec.number("efficiency", 1.0, gt=0.0, le=1.0)
    if kind in ("tracker", "slab", "counter"):
        _parse_aperture(sec, kind, kw)
    if kind == "slab":
        ro = sec.table("readout", {})
        readout = ro.string("kind", "none", choices=READOUT_KINDS)
        kw["readout"] = readout
        if readout != "none":
            kw["group"] = ro.string("group", name.lower())
            kw["stochastic_term"] = ro.number("stochastic_term", 0.0, ge=0.0, le=10.0)
            kw["constant_term"] = ro.number("constant_term", 0.0, ge=0.0, le=1.0)
            kw["noise"] = ro.number("noise_MeV", 0.0, ge=0.0, le=1e5) * u.MeV
            kw["response_scale"] = ro.number("response_scale", 1.0, gt=0.0, le=10.0)
            ro.string("source", "")
        ro.finish()
    sec.finish()
    return ElementConfig(name=name, kind=kind, z=z, source=source, **kw)


def _parse_aperture(sec: Section, kind: str, kw: dict[str, Any]) -> None:
    """Active area: ``half_width_x_mm``, ``half_width_y_mm`` (a slab's ``half_width_mm`` is the
    square shorthand), centre ``x_mm``, ``y_mm`` relative to the nominal trajectory.  A counter
    must have an area (it is a trigger element: an unbounded plane would fire on every muon)."""
    square = None
    if kind == "slab" and "half_width_mm" in sec.data:
        square = sec.number("half_width_mm", gt=0.0, le=1e7) * u.mm
        kw["half_width"] = square
        for key in ("half_width_x_mm", "half_width_y_mm"):
            if key in sec.data:
                raise sec.fail(key, sec.data[key],
                               "give either half_width_mm (square) or half_width_x_mm/half_width_y_mm")
    default = None if kind == "counter" else 1e7
    for key, attr in (("half_width_x_mm", "half_width_x"), ("half_width_y_mm", "half_width_y")):
        if key not in sec.data and default is None:
            raise sec.fail(key, None, "a counter needs an active area (half_width_x_mm and half_width_y_mm > 0)")
        val = sec.number(key, default, le=1e7)
        if not val > 0:
            raise sec.fail(key, val, "an aperture must be > 0 mm")
        kw[attr] = square if square is not None else val * u.mm
    kw["x_offset"] = sec.number("x_mm", 0.0, ge=-1e5, le=1e5) * u.mm
    kw["y_offset"] = sec.number("y_mm", 0.0, ge=-1e5, le=1e5) * u.mm
    if kind == "slab":  # the square shorthand used by the shower containment: the larger half-size
        kw["half_width"] = max(kw["half_width_x"], kw["half_width_y"]) if square is None else square


def _parse_spectrometer(sec: Section, elements: dict[str, ElementConfig]) -> SpectrometerConfig:
    name = sec.string("name")
    output = sec.string("output", choices=("p_in", "p_out"))
    plane = sec.string("bend_plane", choices=("x", "y"))
    lists = {}
    for key, kind, minimum in (("magnets", "magnet", 1), ("upstream", "tracker", 2), ("downstream", "tracker", 2),
                               ("incoming", "tracker", 2)):
        if key == "incoming" and key not in sec.data:
            lists[key] = ()
            sec.used.add(key)
            continue
        names = sec.strings(key)
        if len(names) < minimum:
            raise sec.fail(key, list(names), f"needs at least {minimum} {kind} element(s)")
        for n in names:
            if n not in elements or elements[n].kind != kind:
                raise sec.fail(key, list(names), f"{n!r} is not a {kind} element of this model")
        lists[key] = names
    zs_up = [elements[n].z for n in lists["upstream"]]
    zs_mag = [elements[n].z for n in lists["magnets"]]
    zs_dn = [elements[n].z for n in lists["downstream"]]
    if not (max(zs_up) < min(zs_mag) and max(zs_mag) < min(zs_dn)):
        raise sec.fail("magnets", list(lists["magnets"]),
                       "upstream trackers, magnets, downstream trackers must be ordered in z")
    for m in lists["magnets"]:
        if elements[m].bend_plane != plane:
            raise sec.fail("bend_plane", plane, f"magnet {m!r} bends in {elements[m].bend_plane}")
    sec.string("source", "")
    sec.finish()
    return SpectrometerConfig(name=name, output=output, plane=plane, **lists)


def load_model(path: str | Path) -> ModelConfig:
    """Read and validate a setup model; raises :class:`ConfigError` with a one-line message."""
    path = Path(path)
    root = read_toml(path, MODEL_KEYS)
    materials = _known_materials()
    name = root.string("name")
    description = root.string("description", "")
    gap_material = root.string("gap_material", "air")
    if gap_material not in materials:
        raise root.fail("gap_material", gap_material, f"unknown material (known: {', '.join(materials)})")
    gap_scale = root.number("gap_density_scale", 1.0, ge=0.0, le=1.0)
    beam = _parse_beam(root.table("beam"))
    elements = tuple(_parse_element(s, materials) for s in root.tables("elements"))
    if not elements:
        raise root.fail("elements", [], "needs at least one element")
    seen: dict[str, ElementConfig] = {}
    previous: ElementConfig | None = None
    for i, e in enumerate(elements):
        if e.name in seen:
            raise ConfigError(f"{path}: elements[{i}].name = {e.name!r}: duplicate element name")
        if e.z < beam.z_start:
            raise ConfigError(f"{path}: elements[{i}].z_m = {e.z / u.m!r}: upstream of beam.z_start_m")
        if previous is not None and e.z < previous.z_end - 1e-9:
            raise ConfigError(
                f"{path}: elements[{i}].z_m = {e.z / u.m!r}: overlaps or precedes {previous.name!r} "
                f"(which ends at z = {previous.z_end / u.m:g} m); elements must be ordered along z"
            )
        seen[e.name] = e
        previous = e
    spectrometers = tuple(_parse_spectrometer(s, seen) for s in root.tables("spectrometers", []))
    outputs = [s.output for s in spectrometers]
    if len(set(outputs)) != len(outputs):
        raise root.fail("spectrometers", outputs, "each output (p_in, p_out) may be produced once")
    root.string("source", "")
    optimise = _parse_optimise_params(root.table("optimise", {}), elements)
    root.finish()
    return ModelConfig(
        path=path,
        sha256=file_sha256(path),
        name=name,
        description=description,
        gap_material=gap_material,
        gap_density_scale=gap_scale,
        beam=beam,
        elements=elements,
        spectrometers=spectrometers,
        optimise=optimise,
    )


def check_signal_target(model: ModelConfig, target: str, fail: Callable[[str], Exception]) -> None:
    """Raise ``fail(why)`` unless ``target`` names a slab of the model."""
    slabs = [e.name for e in model.elements if e.kind == "slab"]
    if target not in slabs:
        raise fail(f"not a slab of the model (slabs: {', '.join(slabs) or 'none'})")


def _parse_optimise_params(sec: Section, elements: tuple[ElementConfig, ...]) -> tuple[OptimiseParam, ...]:
    """``[optimise."<element>.<field>"] min, max, cost_per_unit``: bounds in the file's unit; the
    elements must stay ordered along z whatever values within the bounds are taken."""
    by_name = {e.name: e for e in elements}
    out = []
    for name in list(sec.data):
        t = sec.table(name)
        el_name, _, field = name.rpartition(".")
        if el_name not in by_name:
            close = difflib.get_close_matches(el_name, list(by_name), n=1)
            hint = f"did you mean {close[0]!r}?" if close else 'write [optimise."ELEMENT.FIELD"]'
            raise sec.fail(name, t.data, f"no element {el_name!r} in the model ({hint})")
        e = by_name[el_name]
        if field not in OPTIMISE_FIELDS or e.kind not in OPTIMISE_FIELDS[field][1]:
            ok = [f for f, (_, kinds, _) in OPTIMISE_FIELDS.items() if e.kind in kinds]
            raise sec.fail(name, t.data, f"{field!r} is not optimisable for a {e.kind} (optimisable: {', '.join(ok)})")
        if field == "n_layers" and not e.layers:
            raise sec.fail(name, t.data, "n_layers needs a sampling slab (layers = ...); use thickness_mm")
        if field == "thickness_mm" and e.layers:
            raise sec.fail(name, t.data, "a sampling slab's depth is optimised as n_layers")
        cell = sum(x for _, x in e.layers) * u.mm
        scale = {"z_m": u.m, "thickness_mm": u.mm, "n_layers": cell, "field_integral_Tm": 1.0,
                 "resolution_mm": u.mm}[field]
        value = getattr(e, OPTIMISE_FIELDS[field][0]) / scale
        lo = t.number("min")
        hi = t.number("max")
        if not lo < hi:
            raise t.fail("max", hi, f"must be > min = {lo:g}")
        if field in ("thickness_mm", "n_layers", "resolution_mm") and not lo > 0:
            raise t.fail("min", lo, "must be > 0")
        if not lo - 1e-9 * abs(lo) <= value <= hi + 1e-9 * abs(hi):
            raise t.fail("min", lo, f"the model's value {value:g} lies outside [min, max] = [{lo:g}, {hi:g}]")
        cost = t.number("cost_per_unit", 0.0, ge=0.0)
        t.string("source", "")
        t.finish()
        out.append(OptimiseParam(name, el_name, field, float(lo), float(hi), float(value), float(scale), float(cost),
                                 OPTIMISE_FIELDS[field][2]))
    # ordering along z at the extremes of the bounds
    rng = {}
    for e in elements:
        z, t = (e.z, e.z), (e.thickness, e.thickness)
        for p in out:
            if p.element == e.name:
                span = (p.lo * p.scale, p.hi * p.scale)
                if p.field == "z_m":
                    z = span
                elif p.field in ("thickness_mm", "n_layers"):
                    t = span
        rng[e.name] = (z[0], z[1] + t[1])
    for a, b in itertools.pairwise(elements):
        if rng[a.name][1] > rng[b.name][0] + 1e-9 and any(p.element in (a.name, b.name) for p in out):
            p = next(p for p in out if p.element in (a.name, b.name))
            bound, val = ("max", p.hi) if p.element == a.name else ("min", p.lo)
            raise ConfigError(f'{sec.path}: optimise."{p.name}".{bound} = {val!r}: within the bounds {a.name!r} '
                              f"(ends up to z = {rng[a.name][1] / u.m:g} m) may overlap {b.name!r} "
                              f"(starts from z = {rng[b.name][0] / u.m:g} m)")
    return tuple(out)
