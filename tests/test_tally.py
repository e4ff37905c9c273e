"""Log-space tallies: device reduction vs direct float64 sums, ordering, diagnostics."""

from __future__ import annotations

import math

import jax.numpy as jnp
import numpy as np
import pytest

from fastmc.tally import ZERO_EVENT_UL90, Tally, chunk_tally, reduce_chunks


def _direct(mask, log_w):
    w = np.exp(np.asarray(log_w, np.float64))[mask]
    return w.sum(), (w**2).sum(), mask.sum(), w.max() if w.size else 0.0


def test_tally_chunk_matches_direct_sums():
    rng = np.random.default_rng(1)
    log_w = rng.normal(-20.0, 3.0, 4096).astype(np.float32)
    masks = rng.random((3, 4096)) < np.array([[0.5], [0.01], [0.0]])
    rows = np.asarray(chunk_tally(jnp.asarray(masks), jnp.asarray(log_w)), np.float64)
    for s in range(3):
        sw, sw2, n, wmax = _direct(masks[s], log_w)
        assert rows[s, 2] == n
        if n:
            # float32 log-sum-exp: relative precision ~1e-6 per term, accumulated over ≤ 4096 terms
            assert math.exp(rows[s, 0]) == pytest.approx(sw, rel=1e-5)
            assert math.exp(rows[s, 1]) == pytest.approx(sw2, rel=1e-5)
            assert math.exp(rows[s, 3]) == pytest.approx(wmax, rel=1e-6)
        else:
            assert rows[s, 0] == -np.inf and rows[s, 1] == -np.inf


def test_tally_reduce_is_order_independent_and_refuses_overlap():
    rng = np.random.default_rng(2)
    rows = np.log(rng.random((7, 2, 4)) + 0.1)
    rows[..., 2] = rng.integers(1, 50, (7, 2))
    ids = np.arange(10, 17)
    n_gen = np.full(7, 1000)
    a = reduce_chunks(ids, rows, n_gen)
    perm = rng.permutation(7)
    b = reduce_chunks(ids[perm], rows[perm], n_gen[perm])
    for ta, tb in zip(a, b):
        assert (ta.log_sw, ta.log_sw2, ta.n, ta.log_wmax, ta.n_gen) == (tb.log_sw, tb.log_sw2, tb.n, tb.log_wmax, tb.n_gen)
    with pytest.raises(ValueError, match="overlapping"):
        reduce_chunks(np.array([1, 2, 2]), rows[:3], n_gen[:3])


def test_tally_analog_estimate_is_binomial():
    n, n_gen, mot = 37, 10_000, 2e10
    t = Tally(log_sw=math.log(n), log_sw2=math.log(n), n=n, log_wmax=0.0, n_gen=n_gen)
    est = t.estimate(mot)
    p = n / n_gen
    assert est["expected"] == pytest.approx(mot * p)
    # independent reference: binomial standard deviation of the count, scaled
    assert est["stat_err"] == pytest.approx(mot * math.sqrt(n_gen * p * (1 - p)) / n_gen)
    assert est["ess"] == pytest.approx(n)
    assert est["max_weight_share"] == pytest.approx(1 / n)
    assert est["upper_limit_90"] is None


def test_tally_zero_events_gives_upper_limit_not_zero_error():
    t = Tally(n_gen=262144)
    est = t.estimate(1.98e10)
    assert est["n_selected"] == 0
    assert est["upper_limit_90"] == pytest.approx(2.302585 * 1.98e10 / 262144, rel=1e-6)
    assert ZERO_EVENT_UL90 == pytest.approx(-math.log(0.1))
    assert est["rel_err"] is None


def test_tally_heavy_tail_diagnostics():
    # 999 small weights and one that dominates: ESS ≈ 1, max share ≈ 1
    log_w = np.concatenate([np.full(999, -10.0), [0.0]])
    rows = np.asarray(chunk_tally(jnp.ones((1, 1000), bool), jnp.asarray(log_w, jnp.float32)), np.float64)
    t = reduce_chunks(np.array([0]), rows[None], np.array([1000]))[0]
    est = t.estimate(1.0)
    assert est["max_weight_share"] > 0.95
    assert est["ess"] < 1.1


def _tally_of(w: np.ndarray, chunk: int = 4096) -> Tally:
    """Tally a weight set through the device reduction in chunks, as a run would."""
    log_w = np.log(w).astype(np.float32)
    n_c = -(-log_w.size // chunk)
    pad = np.full(n_c * chunk - log_w.size, -np.inf, np.float32)
    lw = np.concatenate([log_w, pad]).reshape(n_c, chunk)
    rows = np.stack([np.asarray(chunk_tally(jnp.asarray(np.isfinite(r))[None], jnp.asarray(np.where(np.isfinite(r), r, 0))), np.float64) for r in lw])
    n_gen = np.array([chunk] * n_c)
    return reduce_chunks(np.arange(n_c), rows, n_gen)[0]


def test_tally_pareto_k_flags_heavy_tails():
    from fastmc.tally import PARETO_K_WARN, diagnose

    rng = np.random.default_rng(4)
    n = 20000
    # Pareto weights with tail index α: ξ = 1/α (independent reference: the generating law)
    heavy = _tally_of(rng.pareto(1.0 / 0.9, n) + 1.0)  # ξ = 0.9: infinite variance
    light = _tally_of(rng.uniform(0.5, 1.5, n))  # bounded: ξ ≤ 0
    mild = _tally_of(rng.pareto(1.0 / 0.3, n) + 1.0)  # ξ = 0.3: finite variance
    k_heavy, k_light, k_mild = heavy.pareto_k(), light.pareto_k(), mild.pareto_k()
    # generalised-Pareto fit to the top 31 of 20000: σ(ξ̂) ≈ 0.31 at ξ = 0.9 and 0.24 at ξ = 0.3 (the
    # spread of 300 replicas of 31 exact GPD draws, measured with fastmc.tally.gpd_shape); 3σ bounds
    assert abs(k_heavy - 0.9) < 3 * 0.31, k_heavy
    assert abs(k_mild - 0.3) < 3 * 0.24, k_mild
    assert k_light < 0.1, k_light
    est = heavy.estimate(1.0)
    assert est["pareto_k"] > PARETO_K_WARN and any("Pareto-k" in w for w in diagnose("x", est))
    assert not any("Pareto-k" in w for w in diagnose("x", light.estimate(1.0)))
    # analog (all weights 1): ξ̂ = 0, ESS = n
    analog = _tally_of(np.ones(1000))
    assert analog.pareto_k() == 0.0 and analog.estimate(1.0)["ess"] == pytest.approx(1000)


def test_tally_pareto_k_of_bounded_weights_with_a_gap_is_not_a_heavy_tail():
    """The trigger's conditional probabilities: most selected events fire it by accident (w ~ 1e-5),
    a few on their own track (w ≈ 1).  The weights are bounded by 1 (ξ ≤ 0); a Hill estimator of
    ln(w_(i)/w_(M+1)) reads the gap of five decades as ξ ≈ 10 and would warn of a heavy tail."""
    from fastmc.tally import diagnose

    rng = np.random.default_rng(11)
    # 25 triggered of 125 selected: the fit's M = 25 largest are the triggered ones, u an accident
    w = np.concatenate([rng.uniform(0.5, 1.0, 25), rng.uniform(1e-6, 2e-5, 100)])
    t = _tally_of(rng.permutation(w))
    assert t.pareto_k() < 0.0, t.pareto_k()
    assert not any("Pareto-k" in m for m in diagnose("x", t.estimate(1.0)))


def test_gpd_shape_recovers_the_generating_shape():
    """Zhang–Stephens fit on exact generalised-Pareto samples (numpy's Lomax draws: ξ = 1/a) of
    2000 points: σ(ξ̂) ≈ (1 + ξ)/√n ≈ 0.03 (the ML asymptotic variance (1 + ξ)²/n); 4σ bounds."""
    from fastmc.tally import gpd_shape

    rng = np.random.default_rng(5)
    for xi in (0.2, 0.5, 0.9):
        x = np.sort(rng.pareto(1.0 / xi, 2000))
        assert abs(gpd_shape(x) - xi) < 4 * (1 + xi) / np.sqrt(2000), (xi, gpd_shape(x))
    x = np.sort(rng.uniform(0.0, 1.0, 2000))  # uniform: ξ = −1
    assert abs(gpd_shape(x) + 1.0) < 4 * 2 / np.sqrt(2000) + 0.05, gpd_shape(x)


def test_tally_top_weights_merge_exactly():
    rng = np.random.default_rng(9)
    w = rng.lognormal(0, 2, 10000)
    t = _tally_of(w, chunk=1000)
    assert np.allclose(np.exp(t.top), np.sort(w)[::-1][:32], rtol=1e-6)


def _result_from_weights(per_chunk: list[dict[str, tuple[np.ndarray, np.ndarray]]]):
    """A RunResult of one region (two slots: generated, selected) from per-chunk, per-channel
    (log_w, selected) arrays."""
    from fastmc.run import RunResult

    channels = tuple(per_chunk[0])
    rows = []
    for chunk in per_chunk:
        rows.append([np.asarray(chunk_tally(jnp.stack([jnp.ones(len(lw), bool), jnp.asarray(sel)]), jnp.asarray(lw)),
                                dtype=np.float64) for lw, sel in chunk.values()])
    n_gen = np.array([len(next(iter(c.values()))[0]) for c in per_chunk])
    return RunResult(channels=channels, slots=[("sig", 0, "generated"), ("sig", 1, "x")],
                     chunk_ids=np.arange(len(per_chunk)), rows=np.array(rows), n_gen=n_gen,
                     overflow=np.zeros((len(per_chunk), len(channels)), np.int64))


def test_tally_zero_event_upper_limit_of_a_biased_channel_uses_its_largest_weight():
    """With nothing selected, a weighted channel's 90 % CL limit is 2.303·MOT·w_max/N with w_max the
    largest weight it generated (if every selected event has w ≤ w_max the proposal selects with
    Q ≥ p/w_max); analog keeps 2.303·MOT/N.  The old analog formula would overstate a kaon
    channel's limit by 1/f_K."""
    from fastmc.projection import projection_from

    rng = np.random.default_rng(5)
    n, mot = 4096, 2e13
    lw_biased = np.log(3e-9) - rng.exponential(1.0, n)  # kaon-like weights: f_K/f_gen times a decay factor
    none = np.zeros(n, bool)
    res = _result_from_weights([{"analog": (np.zeros(n), none), "hadron": (lw_biased, none)}])
    ch = projection_from(mot, "sig", res)["channels"]
    assert ch["analog"]["upper_limit_90"] == pytest.approx(ZERO_EVENT_UL90 * mot / n, rel=1e-12)
    assert ch["hadron"]["upper_limit_90"] == pytest.approx(ZERO_EVENT_UL90 * mot * np.exp(lw_biased.max()) / n, rel=1e-6)  # log w is float32 on device
