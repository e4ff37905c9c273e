"""``fastmc env``: versions, JAX backend and devices."""

from __future__ import annotations

import os
from pathlib import Path

from fastmc import __version__


def add_env(sub) -> None:
    sub.add_parser("env", help="print versions, JAX backend and devices")


def cmd_env(args) -> int:
    import platform

    import h5py
    import jax
    import jaxlib
    import numpy
    import particle

    info = {
        "fastmc": __version__,
        "python": platform.python_version(),
        "jax": jax.__version__,
        "jaxlib": jaxlib.__version__,
        "numpy": numpy.__version__,
        "particle": particle.__version__,
        "h5py": h5py.__version__,
        "backend": jax.default_backend(),
        "devices": [str(d) for d in jax.devices()],
        "x64": bool(jax.config.jax_enable_x64),
        "threefry_partitionable": bool(jax.config.jax_threefry_partitionable),
        "cache": os.environ.get("FASTMC_CACHE", str(Path.home() / ".cache" / "fastmc")),
    }
    for k, v in info.items():
        print(f"{k:<10} {v}")
    print("optional packages:")
    for name, version in optional_packages().items():
        print(f"  {name:<15} {version or 'not installed':<16} (for {OPTIONAL[name]})")
    return 0


# the optional extras' packages (pyproject.toml): distribution name → what fastmc uses it for
OPTIONAL = {"matplotlib": "plot", "dask": "dist", "distributed": "dist", "scipy": "test",
            "geant4-pybind": "fullsim", "pyhf": "export --pyhf", "uproot": "export --root"}


def optional_packages() -> dict[str, str | None]:
    """Installed version of each optional package (None: not installed), from the package metadata
    (nothing is imported)."""
    from importlib import metadata

    out: dict[str, str | None] = {}
    for name in OPTIONAL:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out
