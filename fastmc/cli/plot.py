"""``fastmc plot``: the standard figures of a projection, sensitivity or optimisation output."""

from __future__ import annotations

from pathlib import Path

from fastmc.cli.common import UsageError


def add_plot(sub) -> None:
    pl = sub.add_parser("plot", help="standard figures of a fastmc output (projection, sensitivity or optimise)")
    pl.add_argument("file", type=Path, help="fastmc HDF5 output (project, sensitivity or optimize)")
    pl.add_argument("-o", "--output-dir", type=Path, metavar="DIR",
                    help="folder for the PNGs (default: beside the file)")


def cmd_plot(args) -> int:
    import importlib.util

    if importlib.util.find_spec("matplotlib") is None:
        raise UsageError("fastmc plot needs matplotlib: pip install 'fastmc[plot]'")
    path = args.file
    from fastmc.io import open_kind

    try:
        kind = open_kind(path)
    except (FileNotFoundError, ValueError) as err:
        raise UsageError(str(err)) from None
    out_dir = args.output_dir or (path.parent if str(path.parent) else Path("."))
    if out_dir.exists() and not out_dir.is_dir():
        raise UsageError(f"-o = {str(out_dir)!r}: exists and is not a folder")
    try:
        out_dir.mkdir(parents=True, exist_ok=True)  # like 'fastmc validate --report DIR'
    except OSError as err:
        raise UsageError(f"-o = {str(out_dir)!r}: cannot create the folder ({err.strerror})") from None
    from fastmc import plots

    if kind == "sensitivity":
        from fastmc.sensitivity import read_sensitivity

        p = out_dir / f"{path.stem}_exclusion.png"
        plots.plot_exclusion(read_sensitivity(path), p)
        written = [p]
    elif kind == "projection":
        from fastmc.io import read_result

        written = plots.plot_projection(read_result(path), out_dir, path.stem)
    elif kind == "optimise":
        from fastmc.optimise import read_history

        p = out_dir / f"{path.stem}.png"
        plots.plot_optimisation(read_history(path), p)
        written = [p]
    else:
        raise UsageError(f"{path}: not a fastmc projection, sensitivity or optimise output")
    for p in written:
        print(f"wrote {p}")
    return 0
