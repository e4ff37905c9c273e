"""Chunk-keyed randomness (DESIGN.md §4).

The unit of randomness is the chunk: ``key_c = fold_in(key(seed), chunk_index)``.  Inside a
chunk, independent *streams* (beam, transport, response, channel) are ``fold_in(key_c, STREAM)``
and, where a stream draws per element, ``fold_in(key_stream, element_index)``.  Every draw is one
batch-major array, so a muon's numbers depend only on (seed, chunk, stream, element, position in
the chunk): results are bitwise independent of how chunks are grouped into jobs or devices.  The
compacted kernels (the transport's interaction slots beyond the first, :mod:`fastmc.transport.step`)
draw their side uniforms per position in the compacted buffer: a function of the chunk alone too,
and independent of what decided the compaction (a separate key), so the law is unchanged.

There is no global RNG anywhere in fastmc.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

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


# Threefry-2x32 (Salmon et al., SC'11, "Parallel random numbers: as easy as 1, 2, 3", Table 1: 20
# rounds, these rotation constants and key schedule), as jax.random implements it.
_ROTATIONS = ((13, 15, 26, 6), (17, 29, 16, 24))
_KS_PARITY = 0x1BD11BDA


def _rotl(x: jnp.ndarray, r: int) -> jnp.ndarray:
    return (x << np.uint32(r)) | (x >> np.uint32(32 - r))


def _threefry2x32(k0, k1, x0, x1):
    """The 20 rounds of Threefry-2x32 on counter pairs (x0, x1), unrolled."""
    ks = (k0, k1, k0 ^ k1 ^ np.uint32(_KS_PARITY))
    x0, x1 = x0 + ks[0], x1 + ks[1]
    for r in range(20):
        x0 = x0 + x1
        x1 = _rotl(x1, _ROTATIONS[(r // 4) % 2][r % 4]) ^ x0
        if r % 4 == 3:  # key injection after every four rounds
            s = r // 4 + 1
            x0, x1 = x0 + ks[s % 3], x1 + ks[(s + 1) % 3] + np.uint32(s)
    return x0, x1


def random_bits(key: jax.Array, shape: tuple[int, ...]) -> jnp.ndarray:
    """uint32 bits of ``key`` for ``shape``: bit for bit ``jax.random.bits(key, shape, uint32)``
    with the Threefry layout fixed above, computed with the rounds unrolled.

    jax.random runs Threefry's rounds as a rolled loop on CPU (small programs), which keeps every
    intermediate in memory: 57 ms for 65 536 × 120 uniforms here, against 11 ms for the same bits
    from the unrolled rounds, which XLA fuses into one pass (measured with jax 0.10 on 2 cores).
    Other key types, and the partitionable layout, go to jax.random.bits."""
    n = int(np.prod(shape, dtype=np.int64))
    if (THREEFRY_PARTITIONABLE or n == 0 or n >= 2**32 - 1
            or str(jax.random.key_impl(key)) != "threefry2x32"):
        return jax.random.bits(key, shape, dtype=jnp.uint32)
    k0, k1 = jax.random.key_data(key)
    half = (n + 1) // 2  # the counters 0..n−1 (and a 0 pad if n is odd) split into two halves
    c = jax.lax.iota(jnp.uint32, half)
    hi = c + np.uint32(half)
    if n % 2:
        hi = jnp.where(c == half - 1, np.uint32(0), hi)
    x0, x1 = _threefry2x32(k0, k1, c, hi)
    return jnp.concatenate([x0, x1])[:n].reshape(shape)


def uniforms(key: jax.Array, shape: tuple[int, ...], dtype=None) -> jnp.ndarray:
    """U(0,1) strictly inside the open interval (safe for log, erfinv): (k + ½)·2⁻²⁴.

    24 random bits give a grid fine enough for float32 and exactly representable in it.
    """
    dtype = dtype or jnp.result_type(float)
    bits = random_bits(key, shape) >> 8
    return (bits.astype(dtype) + 0.5) * (2.0**-24)


def normal_from_uniform(u: jnp.ndarray) -> jnp.ndarray:
    """Standard normal deviate by inverse CDF: √2·erfinv(2u − 1).

    2u − 1 is clipped to ±(1 − 2⁻²³): in float32 the largest value of :func:`uniforms`,
    (2²⁴ − ½)·2⁻²⁴, rounds to 1.0 (probability 2⁻²⁴ per draw), where erfinv is infinite; the
    clip maps it to 5.3σ and changes no other value."""
    x = jnp.clip(2.0 * u - 1.0, -(1.0 - 2.0**-23), 1.0 - 2.0**-23)
    return jnp.sqrt(2.0) * jax.scipy.special.erfinv(x)
