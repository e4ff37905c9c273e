"""Biased channels ≡ analog (closure), on a card where analog simulation is feasible."""

from __future__ import annotations

import math

import numpy as np
import pytest

from fastmc.config import load_run
from fastmc.run import chunk_variables, prepare, projection, projection_from, run

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


@pytest.mark.parametrize("card", ["na64mu_2022.toml", "ls3_2e13.toml"])
def test_channels_hit_bias_weights_are_exact(card):
    """E_q[w · 1{c_i = c, offset in a window}] = p_i(c, window) for every plane: the scenario
    mixture's weights undo the forcing of categories and of the pushed offsets, w ≤ 1/β."""
    import jax
    import jax.numpy as jnp

    from fastmc.response import ROLE_LOST, category_probabilities, tracker_hits

    cfg = load_run(ROOT / "runs" / card)
    prep = prepare(cfg)
    setup = prep.setup
    bias = prep.channel_params["momentum_misreconstruction"]["hits"]
    # no subset that leaves an arm below the card's hit cuts; LS3: MS2's upstream arm only (3 left)
    assert len(bias.roles) >= 3 and {"MM3", "MM5"} <= set(bias.planes)
    ms2 = next(s for s in setup.spectrometers if s.output == "p_out")
    for roles in bias.roles:  # no scenario loses more hits than the card's p_out_hits_* cuts allow
        lost = {nm for nm, r in zip(bias.planes, roles) if r == ROLE_LOST}
        assert len(set(ms2.upstream) - lost) >= 3 and len(set(ms2.downstream) - lost) >= 3, roles
    n = 200_000
    zeros = jnp.zeros((n,), jnp.float32)
    truth = {"hits": {nm: (zeros, zeros, jnp.ones((n,), bool)) for nm in setup.trackers}}
    # setup as an argument: closed over, XLA would constant-fold the (P, n, 4) category tables
    hits, log_w = jax.jit(lambda k, s, t, b: tracker_hits(s, t, k, b))(jax.random.key(3), setup, truth, bias)
    w = np.exp(np.asarray(log_w, np.float64))
    beta = float(bias.beta)
    assert w.max() <= (1 / beta) * (1 + 1e-5)  # defensive mixture bound
    assert abs(w.mean() - 1.0) < 4 * w.std() / np.sqrt(n)
    assert np.mean(w < 0.5) > 0.1  # the forcing is active (not every event natural)

    def check(name, mask, expected):
        est = (w * mask).mean()
        err = (w * mask).std() / np.sqrt(n)
        assert abs(est - expected) < 4 * err + 1e-6, (card, name, est, expected, err)

    for nm in bias.planes:
        el = setup.element(nm)
        p = np.asarray(category_probabilities(el.efficiency, el.tail_fraction, el.pickup), np.float64)
        sig, sig_t, road = float(el.resolution), float(el.tail_sigma), float(el.road)
        mx = np.asarray(hits[nm][0])
        present = np.asarray(hits[nm][2])
        check(f"{nm} lost", ~present, p[2])
        # far offsets on each side: stray (flat in ±road), wide (Gaussian σ_tail), core (σ)
        for lo in (2 * sig + 0.5 * road) / 2, 0.5 * road, 0.8 * road:
            expected = p[3] * (road - lo) / (2 * road) + p[1] * _norm_sf(lo / sig_t) + p[0] * _norm_sf(lo / sig)
            check(f"{nm} offset > {lo:.2f}", present & (mx > lo), expected)
            check(f"{nm} offset < -{lo:.2f}", present & (mx < -lo), expected)


def _norm_sf(z):
    return 0.5 * math.erfc(z / math.sqrt(2))


def test_channels_misreconstruction_closure_with_analog():
    cfg = load_run(ROOT / "tests" / "data" / "closure_misreco.toml")
    prep = prepare(cfg)
    result = run(cfg, prep, progress=False)
    proj = projection(cfg, result)
    a, b = proj["channels"]["analog"], proj["channels"]["momentum_misreconstruction"]
    assert a["n_selected"] >= 50
    pull = (a["expected"] - b["expected"]) / math.hypot(a["stat_err"], b["stat_err"])
    assert abs(pull) < 3.0, (a, b)
    assert b["n_selected"] > 2 * a["n_selected"]  # the forcing populates the region
    assert b["max_weight_share"] < 0.05
    # same primaries and the same cost per primary (one chain; the hit draws are a small part):
    # the mixtures must also give the smaller error (measured 1.33e-4 vs 1.35e-4 here, where
    # single natural tail hits dominate and the deflection forcing only adds weight spread; the
    # gain is orders of magnitude on the LS3 card)
    assert b["stat_err"] < a["stat_err"], (a["stat_err"], b["stat_err"])
    # with the target-kink cut (second region): measured 1.896e-3 ± 0.113e-3 (23 528 selected) vs
    # analog 1.907e-3 ± 0.121e-3 (250)
    k = projection_from(1.0, "misreco_kink", result)["channels"]
    a, b = k["analog"], k["momentum_misreconstruction"]
    assert a["n_selected"] >= 50
    assert abs(a["expected"] - b["expected"]) < 3.0 * math.hypot(a["stat_err"], b["stat_err"]), (a, b)
    assert b["stat_err"] < a["stat_err"], (a["stat_err"], b["stat_err"])


def test_channels_figure_of_merit_gain_is_one_for_analog_bernoulli():
    """The gain over analog is FOM / FOM_analog with FOM_analog = p/((1 − p) t_analog): an estimate
    with exactly the Bernoulli relative variance (1 − p)/(pN) at the analog's cost has gain 1, and
    one with 10× smaller variance at twice the cost has gain 5."""
    from types import SimpleNamespace

    from fastmc.run import _figures_of_merit

    n, p = 1_000_000, 3e-4
    rel_analog = math.sqrt((1 - p) / (p * n))
    chans = {
        "analog": {"n_generated": n, "sum_w": p * n, "rel_err": rel_analog},
        "biased": {"n_generated": n, "sum_w": p * n, "rel_err": rel_analog / math.sqrt(10)},
        "empty": {"n_generated": n, "sum_w": 0.0, "rel_err": None},
    }
    result = SimpleNamespace(channels=tuple(chans), channel_seconds=np.array([2.0, 4.0, 1.0]), timed_primaries=n // 2)
    _figures_of_merit(chans, result)
    assert chans["analog"]["fom_gain_vs_analog"] == pytest.approx(1.0, rel=1e-12)
    assert chans["biased"]["fom_gain_vs_analog"] == pytest.approx(5.0, rel=1e-12)
    assert chans["biased"]["fom"] == pytest.approx(1 / (rel_analog**2 / 10 * 4.0 / (n // 2) * n), rel=1e-12)
    assert "fom" not in chans["empty"] and chans["empty"]["seconds_per_primary"] == pytest.approx(2e-6)
    # per-channel timing (--target-rel-err stops channels separately): a channel without a timed
    # chunk gets no figure of merit, the others are unaffected
    for c in chans.values():
        for key in ("fom", "fom_gain_vs_analog", "seconds_per_primary", "fom_analog_time_from"):
            c.pop(key, None)
    result.timed_primaries = np.array([n // 2, 0, n // 4])
    _figures_of_merit(chans, result)
    assert chans["analog"]["fom_gain_vs_analog"] == pytest.approx(1.0, rel=1e-12)
    assert "fom" not in chans["biased"] and "seconds_per_primary" not in chans["biased"]
    assert chans["empty"]["seconds_per_primary"] == pytest.approx(4e-6)


def test_channels_deflection_forcing_weights_are_exact():
    """The misreconstruction channel's deflection forcing (fastmc.response.DeflectBias: tilted
    scattering core, or photonuclear interactions with pushed kicks): through ten steps of the LS3
    ECAL cell (kicks and single scatters included), the weighted distribution of the exit angle in
    the forced projection equals an analog run's at every threshold on both sides, E[w] = 1,
    w ≤ 1/β, the tilt moves the tilted muons by the requested shift, and the forcing populates the
    far tail."""
    import jax
    import jax.numpy as jnp

    from fastmc.config import PhysicsSettings
    from fastmc.response import DeflectBias, deflect_components, deflect_log_weight
    from fastmc.rng import uniforms
    from fastmc.transport import _layers_physics, material_step, n_step_uniforms

    physics = _layers_physics(("lead1.5mm+scintillator1.5mm",), PhysicsSettings())
    n, k, n_steps = 131072, 4, 10
    c = 2.5e-3 / (0.62e-3) ** 2  # a 2.5 mrad shift of the summed core (σ ≈ 0.6 mrad here)
    bias = DeflectBias(beta=jnp.asarray(0.5), follow=jnp.asarray([1.0]), inv_v=jnp.asarray(1.0),
                       kick_share=jnp.asarray(0.5), slots=(True,), axis="x")

    @jax.jit
    def chain(key, forced, physics):  # physics as an argument: closed over, XLA constant-folds its tables
        zero = jnp.zeros((n,), jnp.float32)
        st = dict(x=zero, y=zero, tx=zero, ty=zero, ekin=jnp.full((n,), 160e3, jnp.float32),
                  alive=jnp.ones((n,), bool),
                  **deflect_components(bias, uniforms(jax.random.fold_in(key, 99), (n,)), jnp.full((n,), c, jnp.float32)))
        for i in range(n_steps):
            uu = uniforms(jax.random.fold_in(key, i), (n, n_step_uniforms(k)))
            st, _ = material_step(physics, st, jnp.asarray(0), jnp.asarray(45.0), jnp.asarray(1.0), k, uu,
                                  tilt_on=forced)
        return st["tx"], deflect_log_weight(bias, st), st["tilt_c"], st["kick_force"]

    tx_b, lw, tilt_c, kick = (np.asarray(a, np.float64) for a in chain(jax.random.key(5), jnp.asarray(1.0), physics))
    tx_a = np.asarray(chain(jax.random.key(6), jnp.asarray(0.0), physics)[0], np.float64)
    w = np.exp(lw)
    assert w.max() <= 2.0 * (1 + 1e-5)
    assert abs(w.mean() - 1.0) < 4 * w.std() / np.sqrt(n)
    natural = (tilt_c == 0) & (kick == 0)
    shifted = np.median(tx_b[tilt_c != 0]) - np.median(tx_b[natural])
    assert 2.0e-3 < shifted < 3.0e-3, shifted  # σ_core² is a little below the 0.62 mrad used for c
    for t in (0.5e-3, 1e-3, 1.5e-3, 2e-3, 2.5e-3, 3e-3, 4e-3, 6e-3):
        for side in (1, -1):
            mb, ma = w * (side * tx_b > t), (side * tx_a > t).astype(float)
            err = np.hypot(mb.std(), ma.std()) / np.sqrt(n)
            assert abs(mb.mean() - ma.mean()) < 4 * err, (t, side, mb.mean(), ma.mean(), err)
    # the forcing populates the far side: the tilt beyond 2 mrad, the photonuclear kicks beyond 4
    assert np.sum(tx_b > 2e-3) > 5 * np.sum(tx_a > 2e-3)
    assert np.sum((tx_b > 4e-3) & (kick == 1)) > 10 * np.sum(tx_a > 4e-3)
