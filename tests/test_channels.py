"""Biased channels ≡ analog (closure), on a card where analog simulation is feasible."""

from __future__ import annotations

import math

import numpy as np
import pytest

from fastmc.config import load_run
from fastmc.run import chunk_variables, prepare, projection, run

from .conftest import ROOT


@pytest.fixture(scope="module")
def closure():
    cfg = load_run(ROOT / "tests" / "data" / "closure_hadron.toml")
    prep = prepare(cfg)
    result = run(cfg, prep, progress=False)
    return cfg, prep, projection(cfg, result)


def test_channels_hadron_decay_closure_with_analog(closure):
    cfg, _, proj = closure
    a, b = proj["channels"]["analog"], proj["channels"]["hadron_decay"]
    assert a["n_selected"] >= 30  # analog must see enough events for the comparison to mean something
    pull = (a["expected"] - b["expected"]) / math.hypot(a["stat_err"], b["stat_err"])
    assert abs(pull) < 3.0, (a["expected"], a["stat_err"], b["expected"], b["stat_err"])
    # equal numbers of generated primaries (≈ equal cost): the biased estimate is far more precise
    assert a["n_generated"] == b["n_generated"]
    assert b["rel_err"] < a["rel_err"] / 5
    # diagnostics: forced decays give bounded weights
    assert b["ess"] > 0.5 * b["n_selected"] and b["max_weight_share"] < 1e-3
    assert b["pareto_k"] is not None and b["pareto_k"] < 0.5
    pu = b["per_unit_fraction"]
    assert pu["species"] == "K+" and pu["expected"] == pytest.approx(b["expected"] / 0.2)


def test_channels_hadron_decay_kinematics(closure):
    """Selected decay muons have p_out in the K→μν/Kμ3 range and weights equal to the forced probabilities."""
    cfg, prep, _ = closure
    v, log_w = chunk_variables(prep, 0, "hadron_decay")
    ok = (v["out_ok"] > 0.5) & (v["p_in_GeV"] > 145) & (v["p_in_GeV"] < 175)
    p = v["p_out_GeV"][ok]
    # K→μν at 160 GeV/c: p_μ ≥ 7.33 GeV/c (resolution a few %); only the 3-body Kμ3, 5 % of the
    # forced decays (0.0335 / 0.669), can give softer muons
    # (tracker tails and stray hits mis-measure a few tracks: test the 99th percentile, not the maximum)
    assert (p < 7.33 * 0.9).mean() < 0.05 and np.median(p) < 160 and np.percentile(p, 99) < 160 * 1.15
    # weight = f_K / f_gen · P(decay in the region) · (BR_μν + BR_π0μν): the same for all events
    # up to the momentum dependence of P(decay) (λ = βγcτ ∝ p, spread 3.5 %)
    from fastmc.physics.decay import ctau_mm
    from particle import Particle

    m_k = Particle.from_pdgid(321).mass
    lam = 160e3 / m_k * ctau_mm("K+")  # mm
    length = 450.0 + 55000.0
    expected = math.log(0.2) + math.log(-math.expm1(-length / lam)) + math.log(0.63566 + 0.0335)
    assert np.median(log_w) == pytest.approx(expected, abs=0.05)


@pytest.mark.parametrize("n_forced", [1, 2])
def test_channels_hit_bias_weights_are_exact(n_forced):
    """E_q[w · 1{c_i = c}] = p_i(c) for every plane and category: the weights undo the forcing."""
    import jax
    import jax.numpy as jnp

    from fastmc.response import HitBias, category_probabilities, tracker_hits

    cfg = load_run(ROOT / "runs" / "quickstart.toml")
    prep = prepare(cfg)
    setup = prep.setup
    names = setup.trackers
    n = 200_000
    zeros = jnp.zeros((n,), jnp.float32)
    truth = {"hits": {nm: (zeros, zeros, jnp.ones((n,), bool)) for nm in names}}
    planes = ("MM1", "MM2", "MM3", "MM4", "MM5", "GEM1", "GEM2", "ST1", "ST2")
    bias = HitBias(beta=jnp.asarray(0.5, jnp.float32), planes=planes, n_forced=n_forced)
    hits, log_w = jax.jit(lambda k: tracker_hits(setup, truth, k, bias))(jax.random.key(3))
    w = np.exp(np.asarray(log_w, np.float64))
    assert w.max() <= 0.5 ** -n_forced * (1 + 1e-5)  # defensive mixture bound β^−m
    assert abs(w.mean() - 1.0) < 4 * w.std() / np.sqrt(n)
    for nm in planes:
        el = setup.element(nm)
        p = np.asarray(category_probabilities(el.efficiency, el.tail_fraction, el.pickup), np.float64)
        mx = np.asarray(hits[nm][0])
        present = np.asarray(hits[nm][2])
        # recover categories: no hit (2); stray hit (3: |offset| up to the road, flat); core/tail by width
        lost = ~present
        est = (w * lost).mean()
        err = (w * lost).std() / np.sqrt(n)
        assert abs(est - p[2]) < 4 * err + 1e-6, (nm, est, p[2], err)
        wide = present & (np.abs(mx) > 5 * float(el.resolution))
        p_wide = p[1] * 2 * _norm_sf(5 * float(el.resolution) / float(el.tail_sigma)) + p[3] * (
            1 - 5 * float(el.resolution) / float(el.road)) + p[0] * 2 * _norm_sf(5.0)
        est = (w * wide).mean()
        err = (w * wide).std() / np.sqrt(n)
        assert abs(est - p_wide) < 4 * err + 1e-6, (nm, est, p_wide, err)


def _norm_sf(z):
    return 0.5 * math.erfc(z / math.sqrt(2))


def test_channels_misreconstruction_closure_with_analog():
    cfg = load_run(ROOT / "tests" / "data" / "closure_misreco.toml")
    prep = prepare(cfg)
    proj = projection(cfg, run(cfg, prep, progress=False))
    a, b = proj["channels"]["analog"], proj["channels"]["momentum_misreconstruction"]
    assert a["n_selected"] >= 50
    pull = (a["expected"] - b["expected"]) / math.hypot(a["stat_err"], b["stat_err"])
    assert abs(pull) < 3.0, (a, b)
    assert b["n_selected"] > 2 * a["n_selected"]  # the forcing populates the region
    assert b["max_weight_share"] < 0.05
