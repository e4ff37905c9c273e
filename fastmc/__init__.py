"""fastmc: fast importance-sampled Monte Carlo for the rare backgrounds of NA64μ.

Importing :mod:`fastmc` is cheap: JAX is imported only by the modules that need it.  It sets
:data:`XLA_DEFAULTS` in ``XLA_FLAGS`` (before JAX starts its backend) unless the user's own
``XLA_FLAGS`` names them; ``FASTMC_XLA_DEFAULTS=0`` leaves ``XLA_FLAGS`` alone.
"""

__version__ = "0.1.0"
SCHEMA_VERSION = 1

# XLA options that cut compile time without slowing the compiled programs (issue #25: quickstart's
# programs compile in about half the CPU time, same µs per muon, same bits; measured on the 2-core machine)
XLA_DEFAULTS = ("--xla_backend_optimization_level=0", "--xla_llvm_disable_expensive_passes=true")


def _set_xla_defaults() -> None:
    """Prepend the :data:`XLA_DEFAULTS` the user's ``XLA_FLAGS`` does not name; nothing once JAX's
    backend is up (XLA reads ``XLA_FLAGS`` only then)."""
    import os
    import sys

    if os.environ.get("FASTMC_XLA_DEFAULTS", "1") == "0":
        return
    if "jax" in sys.modules:
        from jax._src import xla_bridge

        if xla_bridge.backends_are_initialized():
            return
    flags = os.environ.get("XLA_FLAGS", "")
    named = {f.split("=")[0] for f in flags.split()}
    add = [f for f in XLA_DEFAULTS if f.split("=")[0] not in named]
    if add:
        os.environ["XLA_FLAGS"] = " ".join(add + ([flags] if flags.strip() else []))


_set_xla_defaults()

__all__ = ["__version__", "SCHEMA_VERSION", "XLA_DEFAULTS"]
