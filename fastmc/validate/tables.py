"""The inputs of ``fastmc validate``: Geant4 reference tables and tolerances of calibration/.

:func:`load_tables` reads ``<suite>.h5`` into :class:`Group` objects (one per configuration, one
:class:`~fastmc.validate.statistics.Hist` per observable); :func:`load_tolerances` reads and checks
``tolerances.toml`` against the known suites and check kinds.  Bad input raises :class:`TableError`
with a one-line message.
"""

from __future__ import annotations

import dataclasses
import json
import tomllib
from pathlib import Path
from typing import Any

import numpy as np

from fastmc.validate.statistics import Hist

SUITES = ("eloss", "deflection", "decay")
CHECK_KINDS = ("tail_fraction", "median", "core_width", "chi2")
_CHECK_KEYS = {
    "tail_fraction": {"thresholds_GeV", "thresholds_theta0", "two_sided", "rel_tol", "n_sigma", "reason"},
    "median": {"rel_tol", "n_sigma", "reason"},
    "core_width": {"rel_tol", "n_sigma", "reason"},
    "chi2": {"p_min", "min_count", "modes", "reason"},
}


class TableError(ValueError):
    """An unreadable or inconsistent reference table or tolerance file (one line)."""


@dataclasses.dataclass
class Group:
    suite: str
    name: str
    attrs: dict[str, Any]
    hists: dict[str, Hist]

    @property
    def n_events(self) -> int:
        return int(self.attrs["n_events"])


def group_mode(group: Group) -> str:
    """The decay mode of a table group: the name after '<parent>_<p>GeV_' ('all' for all modes)."""
    mode = str(group.attrs.get("decay_mode", "all"))
    if mode == "all":
        return "all"
    parts = group.name.split("GeV_", 1)
    return parts[1] if len(parts) == 2 else mode


def default_tables_dir() -> Path:
    """calibration/ of the source tree (this file is fastmc/validate/tables.py)."""
    return Path(__file__).resolve().parents[2] / "calibration"


def _attr(v: Any) -> Any:
    if isinstance(v, bytes):
        return v.decode()
    if isinstance(v, np.generic):
        return v.item()
    return v


def load_tables(tables_dir: Path, suites: tuple[str, ...]) -> dict[str, list[Group]]:
    """Read ``<tables_dir>/<suite>.h5`` for every suite; raises :class:`TableError` (one line)."""
    import h5py

    tables_dir = Path(tables_dir)
    if not tables_dir.is_dir():
        raise TableError(f"--tables = {str(tables_dir)!r}: not a folder")
    out: dict[str, list[Group]] = {}
    for suite in suites:
        path = tables_dir / f"{suite}.h5"
        if not path.is_file():
            raise TableError(f"{path}: missing reference table for suite '{suite}'")
        try:
            with h5py.File(path, "r") as fh:
                groups = []
                for gname in fh:
                    g = fh[gname]
                    attrs = {k: _attr(v) for k, v in g.attrs.items()}
                    for key in ("particle", "ekin_GeV", "momentum_GeV", "layers_json", "observable", "n_events"):
                        if key not in attrs:
                            raise TableError(f"{path}: group /{gname} lacks attribute '{key}'")
                    if int(attrs["n_events"]) <= 0:
                        raise TableError(f"{path}: group /{gname}: n_events = {attrs['n_events']} must be > 0")
                    attrs["layers"] = [(str(m), float(t)) for m, t in json.loads(attrs["layers_json"])]
                    hists = {}
                    for obs in str(attrs["observable"]).split(","):
                        obs = obs.strip()
                        if obs not in g or "edges" not in g[obs] or "counts" not in g[obs]:
                            raise TableError(f"{path}: group /{gname} lacks {obs}/edges or {obs}/counts")
                        d = g[obs]
                        edges = np.asarray(d["edges"][()], float)
                        counts = np.asarray(d["counts"][()], np.int64)
                        if edges.ndim != 1 or counts.shape != (len(edges) - 1,) or not np.all(np.diff(edges) > 0):
                            raise TableError(f"{path}: /{gname}/{obs}: edges must increase and have "
                                             "len(counts)+1 entries")
                        if np.any(counts < 0):
                            raise TableError(f"{path}: /{gname}/{obs}: negative counts")
                        da = {k: _attr(v) for k, v in d.attrs.items()}
                        total = int(counts.sum()) + float(da.get("underflow", 0)) + float(da.get("overflow", 0))
                        n_norm = int(attrs.get("n_mode", attrs["n_events"]))
                        if total > n_norm * (2 if obs == "p_pi" or obs == "theta_pi" else 1):
                            raise TableError(f"{path}: /{gname}/{obs}: {total:.0f} entries exceed the "
                                             f"{n_norm} generated events")
                        hists[obs] = Hist(edges, counts, float(da.get("underflow", 0)), float(da.get("overflow", 0)),
                                          float(attrs["n_events"]), str(da.get("unit", "")),
                                          float(da["scale"]) if "scale" in da else None)
                    groups.append(Group(suite, gname, attrs, hists))
        except TableError:
            raise
        except (OSError, KeyError, ValueError, TypeError) as err:
            first = str(err).splitlines()[0] if str(err) else ""
            raise TableError(f"{path}: unreadable table ({type(err).__name__}: {first})") from None
        if not groups:
            raise TableError(f"{path}: no configuration groups")
        out[suite] = groups
    return out


def load_tolerances(path: Path) -> dict[str, dict[str, dict[str, dict[str, Any]]]]:
    """suite → observable → check → parameters (each with a non-empty ``reason``)."""
    path = Path(path)
    try:
        with open(path, "rb") as fh:
            data = tomllib.load(fh)
    except FileNotFoundError:
        raise TableError(f"{path}: tolerance file not found") from None
    except tomllib.TOMLDecodeError as err:
        raise TableError(f"{path}: invalid TOML ({err})") from None
    if data.get("schema_version") != 1:
        raise TableError(f"{path}: schema_version = {data.get('schema_version')!r}: must be 1")
    out: dict[str, Any] = {}
    known = data.get("known_difference", [])
    if not isinstance(known, list):
        raise TableError(f"{path}: known_difference must be an array of tables ([[known_difference]])")
    for i, kd in enumerate(known):
        where = f"{path}: known_difference[{i}]"
        extra = set(kd) - {"suite", "group", "observable", "note", "source"}
        if extra:
            raise TableError(f"{where}: unknown key {min(extra)!r}")
        for key in ("suite", "group", "observable", "note", "source"):
            if not str(kd.get(key, "")).strip():
                raise TableError(f"{where}: needs a non-empty '{key}' (a known difference must name its source)")
    out["known_difference"] = known
    for suite, obs_map in data.items():
        if suite in ("schema_version", "known_difference"):
            continue
        if suite not in SUITES or not isinstance(obs_map, dict):
            raise TableError(f"{path}: [{suite}]: unknown suite (known: {', '.join(SUITES)})")
        for obs, checks in obs_map.items():
            for kind, par in checks.items():
                where = f"{path}: [{suite}.{obs}.{kind}]"
                if kind not in CHECK_KINDS:
                    raise TableError(f"{where}: unknown check (known: {', '.join(CHECK_KINDS)})")
                extra = set(par) - _CHECK_KEYS[kind]
                if extra:
                    raise TableError(f"{where}: unknown key {min(extra)!r}")
                if not str(par.get("reason", "")).strip():
                    raise TableError(f"{where}: every tolerance needs a non-empty 'reason'")
                for key in ("rel_tol", "n_sigma", "p_min"):
                    if key in par and not (isinstance(par[key], (int, float)) and par[key] > 0):
                        raise TableError(f"{where}: {key} = {par[key]!r}: must be a number > 0")
                if "modes" in par and par["modes"] not in ("all", "common"):
                    raise TableError(f"{where}: modes = {par['modes']!r}: must be \"all\" or \"common\"")
                if kind == "tail_fraction" and not (par.get("thresholds_GeV") or par.get("thresholds_theta0")):
                    raise TableError(f"{where}: needs thresholds_GeV or thresholds_theta0")
        out[suite] = obs_map
    return out
