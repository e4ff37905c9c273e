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
    return 0
