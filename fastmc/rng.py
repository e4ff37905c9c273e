"""Chunk-keyed randomness (DESIGN.md §4).

The unit of randomness is the chunk: ``key_c = fold_in(key(seed), chunk_index)``.  Inside a
chunk, independent *streams* (beam, transport, response, channel) are ``fold_in(key_c, STREAM)``
and, where a stream draws per element, ``fold_in(key_stream, element_index)``.  Every draw is one
batch-major array, so a muon's numbers depend only on (seed, chunk, stream, element, position in
the chunk): results are bitwise independent of how chunks are grouped into jobs or devices.

There is no global RNG anywhere in fastmc.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

# Threefry counter layout.  JAX's "partitionable" layout (its default since 0.5) lets a sharded
# array generate its bits without communication, which fastmc does not need (a chunk never spans
# devices), and on CPU it is half as fast: 58 vs 107 M uniforms/s measured here (jax 0.10, 2 cores),
# and the muon transport spends 40–70 % of its time in the generator (`fastmc bench --numpy`:
# 4.2e4 → 7.9e4 muons/s).  Both layouts are Threefry-2x32 (Salmon et al., SC'11); the choice changes
# which bits a key gives, so it is fixed here, for every fastmc process, and recorded in the
# provenance of every output.  (This sets a process-wide JAX option on import of fastmc.)
THREEFRY_PARTITIONABLE = False
jax.config.update("jax_threefry_partitionable", THREEFRY_PARTITIONABLE)

STREAM_BEAM = 0
STREAM_TRANSPORT = 1
STREAM_RESPONSE = 2
STREAM_CHANNEL = 3


def chunk_key(seed: int, chunk_index: int | jnp.ndarray) -> jax.Array:
    """The key of one chunk: ``fold_in(key(seed), chunk_index)``."""
    return jax.random.fold_in(jax.random.key(seed), chunk_index)


def stream_key(key_c: jax.Array, stream: int, sub: int | None = None) -> jax.Array:
    k = jax.random.fold_in(key_c, stream)
    return k if sub is None else jax.random.fold_in(k, sub)


def uniforms(key: jax.Array, shape: tuple[int, ...], dtype=None) -> jnp.ndarray:
    """U(0,1) strictly inside the open interval (safe for log, erfinv): (k + ½)·2⁻²⁴.

    24 random bits give a grid fine enough for float32 and exactly representable in it.
    """
    dtype = dtype or jnp.result_type(float)
    bits = jax.random.bits(key, shape, dtype=jnp.uint32) >> 8
    return (bits.astype(dtype) + 0.5) * (2.0**-24)


def normal_from_uniform(u: jnp.ndarray) -> jnp.ndarray:
    """Standard normal deviate by inverse CDF: √2·erfinv(2u − 1).

    2u − 1 is clipped to ±(1 − 2⁻²³): in float32 the largest value of :func:`uniforms`,
    (2²⁴ − ½)·2⁻²⁴, rounds to 1.0 (probability 2⁻²⁴ per draw), where erfinv is infinite; the
    clip maps it to 5.3σ and changes no other value."""
    x = jnp.clip(2.0 * u - 1.0, -(1.0 - 2.0**-23), 1.0 - 2.0**-23)
    return jnp.sqrt(2.0) * jax.scipy.special.erfinv(x)
