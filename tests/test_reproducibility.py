"""Same seed → same bits; tallies independent of how chunks are split into jobs."""

from __future__ import annotations

import numpy as np
import pytest

from fastmc.chain import prepare
from fastmc.projection import TIMING_KEYS, projection
from fastmc.run import run
from fastmc.runcard import load_run

from .conftest import ANALOG_CARD


def _cfg(**kw):
    cfg = load_run(ANALOG_CARD)
    return cfg.with_overrides(n_muons=kw.get("n_muons", 4096 * 3 + 100), chunk_size=4096, seed=kw.get("seed", 5))


def test_reproducibility_same_seed_bitwise():
    cfg = _cfg()
    prep = prepare(cfg)
    a = run(cfg, prep, progress=False)
    b = run(cfg, prep, progress=False)
    assert np.array_equal(a.rows, b.rows) and np.array_equal(a.n_gen, b.n_gen)
    c = run(_cfg(seed=6), prepare(_cfg(seed=6)), progress=False)
    assert not np.array_equal(a.rows, c.rows)


def test_reproducibility_split_jobs_merge_identically():
    cfg = _cfg()
    prep = prepare(cfg)
    whole = run(cfg, prep, progress=False)
    part1 = run(cfg, prep, 0, 1, progress=False)
    part2 = run(cfg, prep, 1, 4, progress=False)  # includes the padded last chunk (100 muons)
    merged = part2.merge(part1)  # order of merging does not matter
    tw, tm = whole.tallies(), merged.tallies()
    for a, b in zip(tw["analog"], tm["analog"]):
        assert (a.log_sw, a.log_sw2, a.n, a.log_wmax, a.n_gen) == (b.log_sw, b.log_sw2, b.n, b.log_wmax, b.n_gen)
    # every estimate and diagnostic bit for bit; the wall-clock figures of merit cannot be
    pw, pm = projection(cfg, whole), projection(cfg, merged)
    for p in (pw, pm):
        for est in p["channels"].values():
            for k in TIMING_KEYS:
                est.pop(k, None)
    assert pw == pm
    assert int(whole.n_gen.sum()) == cfg.n_muons
    try:
        part1.merge(part1)
    except ValueError as err:
        assert "overlapping" in str(err)
    else:  # pragma: no cover
        raise AssertionError("overlapping merge accepted")


@pytest.mark.slow
def test_random_bits_are_jax_random_bits():
    """fastmc.rng.random_bits (Threefry's rounds unrolled, for speed) gives exactly the bits of
    jax.random.bits — eager, jitted and vmapped over keys, for odd and even sizes — so that every
    draw of fastmc is JAX's own."""
    import jax
    import jax.numpy as jnp

    from fastmc.rng import chunk_key, random_bits

    for shape in [(1,), (3,), (7, 5), (1001, 3), (2, 3, 5), (4096, 50)]:
        for seed in (0, 12345):
            k = jax.random.fold_in(chunk_key(seed, 3), 7)
            want = np.asarray(jax.random.bits(k, shape, dtype=jnp.uint32))
            assert np.array_equal(np.asarray(random_bits(k, shape)), want), shape
            assert np.array_equal(np.asarray(jax.jit(random_bits, static_argnums=1)(k, shape)), want), shape
    keys = jax.vmap(lambda i: chunk_key(5, i))(jnp.arange(3))
    got = jax.vmap(lambda kk: random_bits(kk, (9,)))(keys)
    want = jax.vmap(lambda kk: jax.random.bits(kk, (9,), dtype=jnp.uint32))(keys)
    assert np.array_equal(np.asarray(got), np.asarray(want))
