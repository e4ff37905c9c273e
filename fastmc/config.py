"""Strict TOML configuration: run cards (runs/*.toml) and setup models (models/*.toml).

Both are read with :mod:`tomllib`, checked key by key, converted to CLHEP units exactly once and
returned as frozen dataclasses.  Every problem raises :class:`ConfigError` whose message is one
line naming the file, the key path and the offending value, e.g.::

    models/na64mu_2022.toml: elements[3].thickness_mm = -2.0: must be > 0

Conventions
-----------
* ``schema_version`` is required at the top of every file and must equal
  :data:`fastmc.SCHEMA_VERSION`.
* Unknown keys are errors (typos must not silently fall back to defaults).
* Keys carry their unit as a suffix (``_mm``, ``_m``, ``_GeV``, ``_MeV``, ``_mrad``, ``_Tm``);
  dimensionless keys carry none.  Values are converted to internal units here and nowhere else.
* Relative paths inside a run card (``model``) are resolved against the card's folder.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
import tomllib
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from fastmc import SCHEMA_VERSION
from fastmc import units as u

__all__ = [
    "ConfigError",
    "BeamConfig",
    "ElementConfig",
    "SpectrometerConfig",
    "ModelConfig",
    "CutConfig",
    "PhysicsSettings",
    "RunConfig",
    "load_model",
    "read_run",
    "CardContext",
    "Section",
    "file_sha256",
]


class ConfigError(ValueError):
    """A malformed configuration; ``str(err)`` is a single line naming file, key and value."""


_MISSING = object()


class Section:
    """A TOML table being consumed: typed getters that remember which keys were used."""

    def __init__(self, path: Path, prefix: str, data: dict[str, Any]):
        self.path = path
        self.prefix = prefix
        self.data = data
        self.used: set[str] = set()

    def key(self, name: str) -> str:
        return f"{self.prefix}{name}" if not self.prefix else f"{self.prefix}.{name}"

    def fail(self, name: str, value: Any, why: str) -> ConfigError:
        return ConfigError(f"{self.path}: {self.key(name)} = {value!r}: {why}")

    def raw(self, name: str, default: Any) -> Any:
        self.used.add(name)
        if name in self.data:
            return self.data[name]
        if default is _MISSING:
            raise ConfigError(f"{self.path}: {self.key(name)}: required key is missing")
        return default

    def number(
        self,
        name: str,
        default: Any = _MISSING,
        *,
        gt: float | None = None,
        ge: float | None = None,
        lt: float | None = None,
        le: float | None = None,
        integer: bool = False,
    ) -> Any:
        value = self.raw(name, default)
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise self.fail(name, value, "must be a number")
        if integer:
            if isinstance(value, float):
                if not value.is_integer():
                    raise self.fail(name, value, "must be an integer")
                value = int(value)
        elif not math.isfinite(value):
            raise self.fail(name, value, "must be finite")
        if gt is not None and not value > gt:
            raise self.fail(name, value, f"must be > {gt:g}")
        if ge is not None and not value >= ge:
            raise self.fail(name, value, f"must be >= {ge:g}")
        if lt is not None and not value < lt:
            raise self.fail(name, value, f"must be < {lt:g}")
        if le is not None and not value <= le:
            raise self.fail(name, value, f"must be <= {le:g}")
        return value

    def string(self, name: str, default: Any = _MISSING, choices: Sequence[str] | None = None) -> Any:
        value = self.raw(name, default)
        if value is None:
            return None
        if not isinstance(value, str):
            raise self.fail(name, value, "must be a string")
        if choices is not None and value not in choices:
            raise self.fail(name, value, f"must be one of {', '.join(choices)}")
        return value

    def boolean(self, name: str, default: Any = _MISSING) -> bool:
        value = self.raw(name, default)
        if not isinstance(value, bool):
            raise self.fail(name, value, "must be true or false")
        return value

    def strings(self, name: str, default: Any = _MISSING) -> tuple[str, ...]:
        value = self.raw(name, default)
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise self.fail(name, value, "must be a list of strings")
        return tuple(value)

    def numbers(self, name: str, default: Any = _MISSING, *, gt: float | None = None,
                le: float | None = None) -> tuple[float, ...]:
        value = self.raw(name, default)
        if not isinstance(value, (list, tuple)) or not all(
                isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in value):
            raise self.fail(name, value, "must be a list of finite numbers")
        for v in value:
            if (gt is not None and not v > gt) or (le is not None and not v <= le):
                raise self.fail(name, list(value), f"every value must be in ({gt:g}, {le:g}]")
        return tuple(float(v) for v in value)

    def table(self, name: str, default: Any = _MISSING) -> Section:
        value = self.raw(name, default)
        if not isinstance(value, dict):
            raise self.fail(name, value, "must be a table")
        return Section(self.path, self.key(name), value)

    def tables(self, name: str, default: Any = _MISSING) -> list[Section]:
        value = self.raw(name, default)
        if not isinstance(value, list) or not all(isinstance(v, dict) for v in value):
            raise self.fail(name, value, "must be an array of tables")
        return [Section(self.path, f"{self.key(name)}[{i}]", v) for i, v in enumerate(value)]

    def finish(self) -> None:
        unknown = sorted(set(self.data) - self.used)
        if unknown:
            k = unknown[0]
            raise ConfigError(f"{self.path}: {self.key(k)} = {self.data[k]!r}: unknown key")


def file_sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def _read_toml(path: Path) -> Section:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: file not found")
    try:
        with path.open("rb") as fh:
            data = tomllib.load(fh)
    except tomllib.TOMLDecodeError as err:
        raise ConfigError(f"{path}: not valid TOML: {err}") from None
    except OSError as err:
        raise ConfigError(f"{path}: cannot read: {err.strerror}") from None
    root = Section(path, "", data)
    version = root.number("schema_version", integer=True)
    if version != SCHEMA_VERSION:
        raise root.fail("schema_version", version, f"this fastmc reads schema_version {SCHEMA_VERSION}")
    return root


# ----------------------------------------------------------------------------------------
# Setup model
# ----------------------------------------------------------------------------------------

ELEMENT_KINDS = ("tracker", "slab", "magnet")
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
    from fastmc.materials import MATERIAL_NAMES

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
    )
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
            raw = sec.raw("layers", _MISSING)
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
        kw["road"] = sec.number("road_mm", 5.0, gt=0.0, le=1000.0) * u.mm
    if kind == "slab":
        kw["half_width"] = sec.number("half_width_mm", 1e7, gt=0.0, le=1e7) * u.mm
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
        raise sec.fail("magnets", list(lists["magnets"]), "upstream trackers, magnets, downstream trackers must be ordered in z")
    for m in lists["magnets"]:
        if elements[m].bend_plane != plane:
            raise sec.fail("bend_plane", plane, f"magnet {m!r} bends in {elements[m].bend_plane}")
    sec.string("source", "")
    sec.finish()
    return SpectrometerConfig(name=name, output=output, plane=plane, **lists)


def load_model(path: str | Path) -> ModelConfig:
    """Read and validate a setup model; raises :class:`ConfigError` with a one-line message."""
    path = Path(path)
    root = _read_toml(path)
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


def _parse_optimise_params(sec: Section, elements: tuple[ElementConfig, ...]) -> tuple[OptimiseParam, ...]:
    """``[optimise."<element>.<field>"] min, max, cost_per_unit``: bounds in the file's unit; the
    elements must stay ordered along z whatever values within the bounds are taken."""
    by_name = {e.name: e for e in elements}
    out = []
    for name in list(sec.data):
        t = sec.table(name)
        t.prefix = f'optimise."{name}"'
        el_name, _, field = name.rpartition(".")
        if el_name not in by_name:
            raise sec.fail(name, t.data, f"no element {el_name!r} in the model (write [optimise.\"ELEMENT.FIELD\"])")
        e = by_name[el_name]
        if field not in OPTIMISE_FIELDS or e.kind not in OPTIMISE_FIELDS[field][1]:
            ok = [f for f, (_, kinds, _) in OPTIMISE_FIELDS.items() if e.kind in kinds]
            raise sec.fail(name, t.data, f"{field!r} is not optimisable for a {e.kind} (optimisable: {', '.join(ok)})")
        if field == "n_layers" and not e.layers:
            raise sec.fail(name, t.data, "n_layers needs a sampling slab (layers = ...); use thickness_mm")
        if field == "thickness_mm" and e.layers:
            raise sec.fail(name, t.data, "a sampling slab's depth is optimised as n_layers")
        cell = sum(x for _, x in e.layers) * u.mm
        scale = {"z_m": u.m, "thickness_mm": u.mm, "n_layers": cell, "field_integral_Tm": 1.0, "resolution_mm": u.mm}[field]
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
    for a, b in zip(elements, elements[1:]):
        if rng[a.name][1] > rng[b.name][0] + 1e-9 and any(p.element in (a.name, b.name) for p in out):
            p = next(p for p in out if p.element in (a.name, b.name))
            bound, val = ("max", p.hi) if p.element == a.name else ("min", p.lo)
            raise ConfigError(f'{sec.path}: optimise."{p.name}".{bound} = {val!r}: within the bounds {a.name!r} '
                              f"(ends up to z = {rng[a.name][1] / u.m:g} m) may overlap {b.name!r} "
                              f"(starts from z = {rng[b.name][0] / u.m:g} m)")
    return tuple(out)


# ----------------------------------------------------------------------------------------
# Run card
# ----------------------------------------------------------------------------------------

SHOWER_MODELS = ("none", "profile")
SCATTERING_MODELS = ("highland", "highland_single")
FORM_FACTORS = ("geant4", "exponential")  # fastmc.physics.scattering.FORM_FACTORS
SCREENINGS = ("geant4", "moliere")  # fastmc.physics.scattering.SCREENINGS


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

    def tables_config(self):
        """The :class:`fastmc.physics.PhysicsConfig` of the energy-loss tables for these settings."""
        from fastmc.physics import PhysicsConfig

        return PhysicsConfig(
            v_cut=self.v_cut,
            e_cut_MeV=self.e_cut / u.MeV,
            ionisation=self.ionisation,
            brems=self.brems,
            pair=self.pair,
            photonuclear=self.photonuclear,
        )


@dataclasses.dataclass(frozen=True)
class AdmixtureConfig:
    """Beam hadrons per muon on target (true fractions): an external input, always also reported
    per unit fraction."""

    kaon_fraction: float = 0.0
    pion_fraction: float = 0.0


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


SIGNAL_MODELS = ("z_prime", "dark_photon", "scalar")  # fastmc.physics.darkbrem.SIGNAL_MODELS
SIGNAL_MAX_MASS = 3000.0 * u.MeV  # below 2m_τ: the Z′ invisible branching fraction holds (darkbrem)


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
    max_seconds: float | None = None  # default wall-time budget of a projection (s); --max-seconds overrides
    optimise: OptimiseSettings = OptimiseSettings()
    # each registered channel's settings, from its own card table (fastmc.channels), and the
    # registry that parsed them (name → fastmc.channels.base.Channel)
    channel_settings: Mapping[str, Any] = dataclasses.field(default_factory=dict)
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
    "p_<out>_chi2ndf": "χ²/ndf of the two straight-line fits of a spectrometer (0 when ndf = 0)",
    "kink_<out>_mrad": "angle between the incoming track and the spectrometer's upstream arm (both projections)",
    "kink_<out>_pt_MeV": "the same kink times the reconstructed momentum: the transverse kick at the target",
    "truth_hadron": "TRUTH (closure/validation studies only): 1 if the primary was a beam hadron",
    "extra_tracks_p_out": "extra charged tracks reaching MS2: leading charged hadrons that punched through the calorimeters",
}


def selection_variables(model: ModelConfig) -> tuple[str, ...]:
    """The names a cut may use for this model."""
    names = ["in_ok", "out_ok", "truth_hadron"]
    for s in model.spectrometers:
        names += [f"{s.output}_GeV", f"{s.output}_chi2ndf", f"{s.output}_hits_up", f"{s.output}_hits_down"]
        if s.incoming:
            names += [f"kink_{s.output}_mrad", f"kink_{s.output}_pt_MeV", f"{s.output}_hits_in"]
    if any(s.output == "p_out" for s in model.spectrometers):
        names.append("extra_tracks_p_out")
    if any(s.output == "p_in" for s in model.spectrometers) and any(s.incoming for s in model.spectrometers):
        names.append("kink_beam_mrad")
    groups = sorted({e.group for e in model.elements if e.kind == "slab" and e.readout != "none"})
    for g in groups:
        names += [f"e_{g}_GeV", f"e_{g}_MeV"]
    return tuple(names)


def _parse_cut(sec: Section, variables: tuple[str, ...]) -> CutConfig:
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
    run: Any  # the [run] table (errors about the channel list name it)
    showers_table: Any  # the [showers] table


def read_run(path: str | Path, background_channels: Sequence[str],
             channel_tables: Callable[[Section, CardContext], Mapping[str, Any]], registry: Any = None) -> RunConfig:
    """Read and validate a run card (and the model it names), all but the channels' own tables:
    ``channel_tables(root, context)`` parses those and returns each channel's settings
    (:func:`fastmc.runcard.load_run` hands in the channel registry's parsers).  ``run.channels``
    may name any of ``background_channels``."""
    path = Path(path)
    root = _read_toml(path)
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
    channel_settings = channel_tables(root, CardContext(path, model, channels, admixture, showers, run, sh))
    sh.finish()

    variables = selection_variables(model)
    optimise = _parse_optimise_settings(root.table("optimise", {}), channels)
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
        max_seconds=None if max_seconds is None else float(max_seconds),
        optimise=optimise,
        channel_settings=channel_settings,
        registry=registry,
    )
    return cfg


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


def check_signal_target(model: ModelConfig, target: str, fail: Callable[[str], Exception]) -> None:
    """Raise ``fail(why)`` unless ``target`` names a slab of the model."""
    slabs = [e.name for e in model.elements if e.kind == "slab"]
    if target not in slabs:
        raise fail(f"not a slab of the model (slabs: {', '.join(slabs) or 'none'})")


def check_signal_mass(mass_MeV: Any, fail: Callable[[str], Exception]) -> None:
    """Raise ``fail(why)`` unless 0 < mass ≤ SIGNAL_MAX_MASS (MeV)."""
    if not math.isfinite(mass_MeV) or not 0.0 < mass_MeV <= SIGNAL_MAX_MASS / u.MeV:
        raise fail(f"must be a finite mass in (0, {SIGNAL_MAX_MASS / u.MeV:g}] MeV")


def _check_process_names(sec: Section, physics: PhysicsSettings) -> None:
    try:
        from fastmc.physics import PROCESSES
    except ImportError:  # pragma: no cover - physics package always present
        return
    for key in ("ionisation", "brems", "pair", "photonuclear"):
        value = getattr(physics, key)
        known = sorted(k for k in PROCESSES if k.split(".")[0] == value.split(".")[0])
        if value not in PROCESSES:
            raise sec.fail(key, value, f"unknown parametrisation (known: {', '.join(known) or 'none'})")


def validate_override(name: str, value: Any, check: Callable[[Any], bool], why: str, flag: str) -> None:
    """Raise a one-line ConfigError for a bad command-line override."""
    if not check(value):
        raise ConfigError(f"command line: {flag} = {value!r}: {why}")
