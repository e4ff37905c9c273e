"""HDF5 output (DESIGN.md §5) with provenance; readable with plain h5py.

Layout::

    /                      attrs: fastmc_version, schema_version, created, command_line, kind
                           ("projection", "sensitivity" or "optimise"; inferred for older files
                           without it, :func:`file_kind`), complete (False while the file is a
                           checkpoint of an unfinished run)
    /provenance            attrs: jax, jaxlib, numpy, particle, h5py versions, backend, devices,
                           seed, chunk_size, chunk_range, config_sha256, model_sha256,
                           table_hash, git_describe, wall_seconds
    /config                attrs: json (resolved run card + model, internal units)
    /chunks                ids (n_c,), n_gen (n_c,), rows (n_c, n_channels, n_slots, 4),
                           overflow (n_c, n_channels), active (n_c, n_channels) bool where a
                           channel stopped early (the chunks each channel simulated);
                           attrs: channels, slots (JSON)
    /tallies/<channel>/<region>
                           datasets log_sw, log_sw2, n, log_wmax, n_gen (one entry per cut step)
                           and derived expected, stat_err, ess, max_weight_share, upper_limit_90
                           (NaN where undefined); attrs: mot, cuts (JSON)
    /events                (optional) chunk, index, channel, region_mask, log_w, and one dataset per variable

Files are written to a temporary name beside the target and renamed into place, so a failure
never leaves a half-written file over a good one.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import functools
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np

import fastmc
from fastmc.projection import projection_from
from fastmc.run import EVENT_KEYS, RunResult


@functools.lru_cache(maxsize=1)
def _git_describe() -> str:
    try:
        return subprocess.run(
            ["git", "describe", "--always", "--dirty", "--tags"],
            cwd=Path(__file__).resolve().parent,
            capture_output=True,
            text=True,
            timeout=5,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""


def provenance(cfg, result, prepared=None) -> dict[str, Any]:
    import h5py
    import jax
    import jaxlib
    import particle

    git = _git_describe()
    return {
        "fastmc": fastmc.__version__,
        "jax": jax.__version__,
        "jaxlib": jaxlib.__version__,
        "numpy": np.__version__,
        "particle": particle.__version__,
        "h5py": h5py.__version__,
        "python": sys.version.split()[0],
        "backend": jax.default_backend(),
        "devices": ", ".join(str(d) for d in jax.devices()),
        "x64": bool(jax.config.jax_enable_x64),
        "xla_flags": os.environ.get("XLA_FLAGS", ""),  # the user's XLA options (compile, devices, threads)
        "threefry_partitionable": bool(jax.config.jax_threefry_partitionable),  # fastmc.rng: which bits a key gives
        "seed": cfg.seed,
        "chunk_size": cfg.chunk_size,
        "chunk_range": ([int(result.chunk_ids.min()), int(result.chunk_ids.max()) + 1]
                        if len(result.chunk_ids) else [0, 0]),
        "n_chunks": int(len(result.chunk_ids)),
        "config_path": str(cfg.path),
        "config_sha256": cfg.sha256,
        "model_path": str(cfg.model.path),
        "model_sha256": cfg.model.sha256,
        "table_hash": prepared.table_hash if prepared is not None else "",
        "materials": list(prepared.material_names) if prepared is not None else [],
        "git_describe": git,
        "wall_seconds": float(result.seconds),
    }


def write_header(f, kind: str, command_line: str, prov: dict[str, Any] | None) -> None:
    """File attributes (version, schema, creation time, command line, kind) and /provenance."""
    f.attrs["fastmc_version"] = fastmc.__version__
    f.attrs["schema_version"] = fastmc.SCHEMA_VERSION
    f.attrs["created"] = _dt.datetime.now(_dt.UTC).isoformat()
    f.attrs["command_line"] = command_line
    f.attrs["kind"] = kind
    g = f.create_group("provenance")
    for k, v in (prov or {}).items():
        g.attrs[k] = json.dumps(v) if isinstance(v, (list, dict)) else v


@contextlib.contextmanager
def atomic_path(path: str | Path):
    """A temporary path beside ``path`` to write to; renamed onto ``path`` only when the block
    succeeds, removed otherwise: a failure never leaves a partial file over a good one."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


@contextlib.contextmanager
def atomic_h5(path: Path):
    """An HDF5 file opened for writing, atomically (:func:`atomic_path`)."""
    import h5py

    with atomic_path(path) as tmp, h5py.File(tmp, "w") as f:
        yield f


def write_result(
    path: str | Path,
    cfg,
    result,
    projection: dict,
    prepared=None,
    command_line: str = "",
    *,
    complete: bool = True,
    extra_provenance: dict[str, Any] | None = None,
) -> Path:
    """Write a run to HDF5 atomically (temp file + rename).
    ``complete=False`` marks a checkpoint (root attribute ``complete``): the file holds the chunks
    done so far and ``fastmc project --resume`` continues it.  ``extra_provenance`` adds
    attributes to /provenance (e.g. the requested chunk range and the device count).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_h5(path) as f:
        write_header(f, "projection", command_line or " ".join(sys.argv),
                     {**provenance(cfg, result, prepared), **(extra_provenance or {})})
        f.attrs["complete"] = bool(complete)
        g = f.create_group("config")
        g.attrs["json"] = json.dumps(cfg.to_dict())
        g.attrs["run_card"] = Path(cfg.path).read_text() if Path(cfg.path).is_file() else ""
        g.attrs["model"] = Path(cfg.model.path).read_text() if Path(cfg.model.path).is_file() else ""
        _write_run_groups(f, result, projection)
    return path


def _write_run_groups(f, result, projection: dict) -> None:
    """/chunks, /tallies, the projection JSON and /events of a (possibly merged) result."""
    ch = f.create_group("chunks")
    ch.create_dataset("ids", data=result.chunk_ids.astype(np.int64))
    ch.create_dataset("n_gen", data=result.n_gen.astype(np.int64))
    ch.create_dataset("rows", data=result.rows.astype(np.float64), compression="gzip")
    ch.create_dataset("overflow", data=result.overflow.astype(np.int64))
    if result.overflow_log_w is not None:  # log Σw of the overflowing events in the signal region
        ch.create_dataset("overflow_log_w", data=np.asarray(result.overflow_log_w, np.float64))
    if result.active is not None:  # a channel stopped early (--target-rel-err): the chunks it simulated
        ch.create_dataset("active", data=np.asarray(result.active, bool))
    ch.attrs["channels"] = json.dumps(list(result.channels))
    ch.attrs["slots"] = json.dumps([list(s) for s in result.slots])
    top = [f"top_log_w_{i}" for i in range(result.rows.shape[-1] - 4)]
    ch.attrs["fields"] = json.dumps(["log_sw", "log_sw2", "n", "log_wmax"] + top)
    tg = f.create_group("tallies")
    tallies = result.tallies()
    w_ul = result.ul_weights(tallies)
    mot = projection["mot"]
    for chname, tl in tallies.items():
        cg = tg.create_group(chname)
        regions: dict[str, list[int]] = {}
        for s, (region, _step, _label) in enumerate(result.slots):
            regions.setdefault(region, []).append(s)
        for region, idx in regions.items():
            rg = cg.create_group(region)
            ts = [tl[s] for s in idx]
            ests = [tl[s].estimate(mot, w_ul[chname][s]) for s in idx]
            rg.create_dataset("log_sw", data=np.array([t.log_sw for t in ts]))
            rg.create_dataset("log_sw2", data=np.array([t.log_sw2 for t in ts]))
            rg.create_dataset("n", data=np.array([t.n for t in ts], dtype=np.int64))
            rg.create_dataset("log_wmax", data=np.array([t.log_wmax for t in ts]))
            rg.create_dataset("n_gen", data=np.array([t.n_gen for t in ts], dtype=np.int64))
            for key in ("expected", "stat_err", "ess", "max_weight_share", "upper_limit_90"):
                rg.create_dataset(key, data=np.array([np.nan if e[key] is None else e[key] for e in ests]))
            rg.attrs["mot"] = mot
            rg.attrs["cuts"] = json.dumps([result.slots[s][2] for s in idx])
    f.attrs["projection_json"] = json.dumps(projection)
    if result.events is not None:

        eg = f.create_group("events")
        eg.attrs["regions"] = json.dumps(sorted({s[0] for s in result.slots}, key=[s[0] for s in result.slots].index))
        eg.attrs["channels"] = json.dumps(list(result.channels))
        for key in EVENT_KEYS:
            eg.create_dataset(key, data=np.asarray(result.events[key]))
        for key, val in result.events["variables"].items():
            eg.create_dataset(key, data=np.asarray(val))
        from fastmc.chain import TRUTH_PROCESS_NAMES

        eg.attrs["truth_hardest_proc_names"] = json.dumps({str(k): v for k, v in TRUTH_PROCESS_NAMES.items()})


def threefry_layout(provenance: dict[str, Any]) -> bool:
    """The Threefry layout (:data:`fastmc.rng.THREEFRY_PARTITIONABLE`) a file's chunks were drawn
    with: files written before it was recorded used JAX's default then, the partitionable one."""
    return bool(provenance.get("threefry_partitionable", True))


def stored_result(data: dict[str, Any], with_events: bool = False):
    """The :class:`fastmc.run.RunResult` of a file read by :func:`read_result` (per-chunk tallies,
    which chunks each channel simulated, wall seconds; the events if ``with_events``)."""
    c, ca = data["chunks"], data["chunk_attrs"]
    return RunResult(channels=tuple(ca["channels"]), slots=[tuple(s) for s in ca["slots"]], chunk_ids=c["ids"],
                     rows=c["rows"], n_gen=c["n_gen"], overflow=c["overflow"], active=c.get("active"),
                     overflow_log_w=c.get("overflow_log_w"),
                     events=data["events"] if with_events else None,
                     seconds=float(data["provenance"].get("wall_seconds", 0.0)))


KINDS = ("projection", "sensitivity", "optimise")
_WRITTEN_BY = {"projection": "fastmc project/merge", "sensitivity": "fastmc sensitivity",
               "optimise": "fastmc optimize"}


def file_kind(f) -> str | None:
    """What a fastmc HDF5 file (open h5py ``File``) holds: its ``kind`` attribute, or for files
    written before it existed the kind its groups show; None for a file fastmc did not write."""
    if "fastmc_version" not in f.attrs:
        return None
    kind = _py(f.attrs.get("kind", ""))
    if kind in KINDS:
        return kind
    if "sensitivity" in f:
        return "sensitivity"
    if "optimise" in f:
        return "optimise"
    if "projection_json" in f.attrs and "chunks" in f:
        return "projection"
    return None


def open_kind(path: str | Path) -> str:
    """The kind of the fastmc file ``path``; ``FileNotFoundError``/``ValueError`` (one line) for a
    missing file, a folder, a file that is not HDF5, or an HDF5 file fastmc did not write."""
    import h5py

    path = Path(path)
    if path.is_dir():
        raise ValueError(f"{path}: is a folder, not a fastmc output file")
    if not path.is_file():
        raise FileNotFoundError(f"{path}: file not found")
    if not h5py.is_hdf5(path):  # a card, an image, an empty file: no HDF5 signature
        raise ValueError(f"{path}: not an HDF5 file (fastmc's outputs are HDF5: project, sensitivity, optimize -o)")
    try:
        with h5py.File(path, "r") as f:
            kind = file_kind(f)
    except OSError as err:
        raise ValueError(f"{path}: not a readable HDF5 file ({_one_line(err)})") from None
    if kind is None:
        raise ValueError(f"{path}: not a fastmc output file (an HDF5 file without fastmc's attributes)")
    return kind


def file_attrs(path: str | Path) -> dict[str, Any]:
    """The root attributes of a fastmc file (version, schema, creation time, command line, kind)."""
    import h5py

    with h5py.File(path, "r") as f:
        return {k: _py(v) for k, v in f.attrs.items()}


def _one_line(err: BaseException) -> str:
    return " ".join(str(err).split())


def read_result(path: str | Path) -> dict[str, Any]:
    """Read a fastmc projection file (``fastmc project``/``merge``) back into plain Python/numpy
    objects (for inspect/merge).  Another fastmc file (sensitivity, optimise) or a foreign one is a
    ``ValueError`` naming what it is; a missing file a ``FileNotFoundError``."""
    import h5py

    path = Path(path)
    kind = open_kind(path)
    if kind != "projection":
        raise ValueError(f"{path}: a {kind} output ({_WRITTEN_BY[kind]}), not a background projection "
                         "('fastmc project' output)")
    try:
        with h5py.File(path, "r") as f:
            if "events" in f:
                ev = f["events"]

                events = {k: np.asarray(ev[k]) for k in EVENT_KEYS if k in ev}
                events["variables"] = {k: np.asarray(ev[k]) for k in ev if k not in events}
            else:
                events = None
            out = {
                "attrs": {k: _py(v) for k, v in f.attrs.items()},
                "provenance": {k: _py(v) for k, v in f["provenance"].attrs.items()},
                "config": json.loads(f["config"].attrs["json"]),
                "chunks": {k: np.asarray(f["chunks"][k]) for k in f["chunks"]},
                "chunk_attrs": {k: json.loads(v) for k, v in f["chunks"].attrs.items()},
                "projection": json.loads(f.attrs["projection_json"]),
                "has_events": "events" in f,
                "events": events,
                "complete": bool(f.attrs.get("complete", True)),
            }
            if "events" in f:
                out["n_events"] = int(f["events"]["log_w"].shape[0])
    except OSError as err:
        raise ValueError(f"{path}: not a readable HDF5 file ({_one_line(err)})") from None
    except (KeyError, ValueError, TypeError) as err:  # a damaged file, or one edited by hand
        raise ValueError(f"{path}: a damaged fastmc projection file ({_one_line(err)})") from None
    return out


def _py(v: Any) -> Any:
    if isinstance(v, np.generic):
        return v.item()
    if isinstance(v, bytes):
        return v.decode()
    return v


def _short(v: Any, n: int = 60) -> str:
    """A value for a one-line message: repr, cut to ``n`` characters."""
    text = repr(v)
    return text if len(text) <= n else text[: n - 1] + "…"


def merge_files(inputs: list[Path], output: Path, command_line: str = "") -> dict[str, Any]:
    """Merge fastmc outputs of disjoint chunk ranges of the same configuration, exactly.
    Refuses files whose run card, model, seed, chunk size, channels or selection differ, and
    overlapping chunk ranges (double counting).  Per-chunk rows are concatenated and reduced in
    chunk order, so the merge equals the single-job result bit for bit.  Returns the projection.
    """
    import h5py


    if len(inputs) < 2:
        raise ValueError("merge needs at least two input files")
    parts = []
    ref = None
    for p in inputs:
        d = read_result(p)
        if not d["complete"]:
            raise ValueError(f"{p}: an unfinished checkpoint (complete=False): "
                             "finish it with 'fastmc project --resume'")
        key = (d["provenance"]["config_sha256"], d["provenance"]["model_sha256"], d["provenance"]["seed"],
               d["provenance"]["chunk_size"], json.dumps(d["chunk_attrs"]["channels"]),
               json.dumps(d["chunk_attrs"]["slots"]),
               d["projection"]["mot"], threefry_layout(d["provenance"]))
        if ref is None:
            ref = key
        elif key != ref:
            names = ("run card (provenance config_sha256)", "model (provenance model_sha256)", "seed",
                     "chunk size", "channels", "selection", "MOT",
                     "random-bit layout (provenance threefry_partitionable)")
            what, x, y = next((n, x, y) for n, x, y in zip(names, key, ref) if x != y)
            raise ValueError(f"{p}: {what} differs from {inputs[0]} ({_short(x)} here, {_short(y)} there): "
                             "refusing to merge mismatched configurations")
        parts.append(stored_result(d))
    merged = parts[0]
    for i, r in enumerate(parts[1:], start=1):
        try:
            merged = merged.merge(r)
        except ValueError as err:
            raise ValueError(f"{inputs[i]}: {err}") from None
    d0 = read_result(inputs[0])
    proj = projection_from(d0["projection"]["mot"], d0["projection"]["region"], merged)
    output = Path(output)
    with h5py.File(inputs[0], "r") as src, atomic_h5(output) as f:
        for k, v in src.attrs.items():
            f.attrs[k] = v
        f.attrs["created"] = _dt.datetime.now(_dt.UTC).isoformat()
        f.attrs["command_line"] = command_line or " ".join(sys.argv)
        f.attrs["complete"] = True
        f.attrs["kind"] = "projection"
        src.copy("provenance", f)
        src.copy("config", f)
        ids = np.sort(merged.chunk_ids)
        f["provenance"].attrs["chunk_range"] = json.dumps([int(ids.min()), int(ids.max()) + 1])
        f["provenance"].attrs["n_chunks"] = int(len(ids))
        f["provenance"].attrs["merged_from"] = json.dumps([str(p) for p in inputs])
        f["provenance"].attrs["wall_seconds"] = float(merged.seconds)
        _write_run_groups(f, merged, proj)
    return proj
