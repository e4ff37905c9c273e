"""fastmc: fast importance-sampled Monte Carlo for the rare backgrounds of NA64μ.

Importing :mod:`fastmc` is cheap: JAX is imported only by the modules that need it.
"""

__version__ = "0.1.0"
SCHEMA_VERSION = 1

__all__ = ["__version__", "SCHEMA_VERSION"]
