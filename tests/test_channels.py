"""Biased channels ≡ analog (closure), on a card where analog simulation is feasible."""

from __future__ import annotations

import math

import numpy as np
import pytest

from fastmc.chain import chunk_variables, prepare
from fastmc.projection import projection, projection_from
from fastmc.run import run
from fastmc.runcard import load_run

from .conftest import ROOT


@pytest.fixture(scope="module")
def closure():
    cfg = load_run(ROOT / "tests" / "data" / "closure_hadron.toml")
    prep = prepare(cfg)
    result = run(cfg, prep, progress=False)
    return cfg, prep, projection(cfg, result)


@pytest.mark.slow
def test_channels_hadron_decay_closure_with_analog(closure):
    cfg, _, proj = closure
    a, b = proj["channels"]["analog"], proj["channels"]["hadron_decay"]
    # analog must see enough events for the comparison to mean something: ≥ 20 (relative error ≤ 22 %;
    # measured 26 since the apertures of issue #22, with 131 072 primaries)
    assert a["n_selected"] >= 20
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


@pytest.mark.slow
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
    from particle import Particle

    from fastmc.physics.decay import ctau_mm

    m_k = Particle.from_pdgid(321).mass
    lam = 160e3 / m_k * ctau_mm("K+")  # mm
    length = 450.0 + 55000.0
    expected = math.log(0.2) + math.log(-math.expm1(-length / lam)) + math.log(0.63566 + 0.0335)
    assert np.median(log_w) == pytest.approx(expected, abs=0.05)


@pytest.mark.slow
@pytest.mark.parametrize("card", ["na64mu_2022.toml", "ls3_2e13.toml"])
def test_channels_hit_bias_weights_are_exact(card):
    """E_q[w · 1{c_i = c, offset in a window}] = p_i(c, window) for every plane: the scenario
    mixture's weights undo the forcing of categories and of the pushed offsets, w ≤ 1/β."""
    import jax
    import jax.numpy as jnp

    from fastmc.channels.momentum_misreconstruction import ROLE_LOST
    from fastmc.response import tracker_hits

    cfg = load_run(ROOT / "runs" / card)
    prep = prepare(cfg)
    setup = prep.setup
    bias = prep.params["momentum_misreconstruction"].hits
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
        if mask.sum() < 20:  # the sample's own spread misses the events it did not draw: use the
            err = max(err, math.sqrt(expected / (beta * n)))  # bound Var(w·1) ≤ w_max·p, w ≤ 1/β
        assert abs(est - expected) < 4 * err + 1e-6, (card, name, est, expected, err)

    for nm in bias.planes:
        el = setup.element(nm)
        p = _accepted_probabilities(el)
        sig, sig_t, road = float(el.resolution), float(el.tail_sigma), float(el.road)
        mx = np.asarray(hits[nm][0])
        present = np.asarray(hits[nm][2])
        check(f"{nm} lost", ~present, p[2])
        # far offsets on each side: stray (flat in ±road), wide (Gaussian σ_tail), core (σ)
        for lo in (2 * sig + 0.5 * road) / 2, 0.5 * road, 0.8 * road:
            expected = p[3] * (road - lo) / (2 * road) + p[1] * _norm_sf(lo / sig_t) + p[0] * _norm_sf(lo / sig)
            check(f"{nm} offset > {lo:.2f}", present & (mx > lo), expected)
            check(f"{nm} offset < -{lo:.2f}", present & (mx < -lo), expected)
    # jointly: the two ends of MS2's upstream arm displaced to opposite sides (the fakes that matter),
    # natural planes being independent
    far = {}
    for nm in ("MM3", "MM5"):
        el = setup.element(nm)
        p = _accepted_probabilities(el)
        sig, sig_t, road = float(el.resolution), float(el.tail_sigma), float(el.road)
        lo = 0.7 * road
        far[nm] = (np.asarray(hits[nm][0]), np.asarray(hits[nm][2]),
                   p[3] * (road - lo) / (2 * road) + p[1] * _norm_sf(lo / sig_t) + p[0] * _norm_sf(lo / sig), lo)
    (m3, p3_, e3, lo3), (m5, p5_, e5, lo5) = far["MM3"], far["MM5"]
    corners = [p3_ & p5_ & (s3 * m3 > lo3) & (-s3 * m5 > lo5) for s3 in (1, -1)]
    pushed = max(corners, key=np.sum)  # the corner the scenarios push to (the sign of q·∫B dl)
    est, err = (w * pushed).mean(), (w * pushed).std() / np.sqrt(n)
    assert abs(est - e3 * e5) < 4 * err and err < 0.25 * e3 * e5, (card, est, e3 * e5, err)


def _accepted_probabilities(el):
    """Natural category probabilities after the hit-time cut (hits outside it are absent):
    true hits kept with erf(cut/(√2 σ_t)), strays with (1 − e^{−λ·min(1, 2cut/τ)})/(1 − e^{−λ}),
    pickup = 1 − e^{−λ} (closed forms of fastmc.response.trackers.hit_times)."""
    from fastmc.response import category_probabilities

    p = np.asarray(category_probabilities(el.efficiency, el.tail_fraction, el.pickup), np.float64)
    s_t, tau, cut = float(el.time_resolution), float(el.time_window), float(el.time_cut)
    a_true = math.erf(cut / (math.sqrt(2) * s_t)) if s_t > 0 else 1.0
    lam = -math.log1p(-float(el.pickup))
    frac = min(1.0, 2 * cut / tau) if tau > 0 else 1.0
    a_stray = -math.expm1(-lam * frac) / -math.expm1(-lam) if lam > 0 else frac
    kept = np.array([p[0] * a_true, p[1] * a_true, 0.0, p[3] * a_stray])
    kept[2] = 1.0 - kept.sum()  # absent: lost, or outside the time cut
    return kept


def _norm_sf(z):
    return 0.5 * math.erfc(z / math.sqrt(2))


@pytest.mark.slow
def test_channels_misreconstruction_closure_with_analog():
    cfg = load_run(ROOT / "tests" / "data" / "closure_misreco.toml").with_overrides(save_events=True)
    prep = prepare(cfg)
    result = run(cfg, prep, progress=False)
    proj = projection(cfg, result)
    # the stored events carry the integrated kink-cut probability: per region their weights add up
    # to the region's tally (summed in another order: float32 weights, 1e-4)
    ev = result.events
    mine = ev["channel"] == cfg.channels.index("momentum_misreconstruction")
    sums = result.tallies()["momentum_misreconstruction"]
    for ri, region in enumerate(("misreco", "misreco_kink")):
        final = max(i for i, (r, _, _) in enumerate(result.slots) if r == region)
        in_r = mine & ((ev["region_mask"] >> ri) & 1 == 1)
        lw = ev["variables"][f"log_w_region_{region}"][in_r]
        assert np.sum(np.exp(lw.astype(np.float64))) == pytest.approx(sums[final].sum_w, rel=1e-4)
    assert np.all(ev["log_w"][mine] == ev["variables"]["log_w_region_misreco"][mine])  # first region
    a, b = proj["channels"]["analog"], proj["channels"]["momentum_misreconstruction"]
    assert a["n_selected"] >= 50
    pull = (a["expected"] - b["expected"]) / math.hypot(a["stat_err"], b["stat_err"])
    assert abs(pull) < 3.0, (a, b)
    assert b["n_selected"] > 2 * a["n_selected"]  # the forcing populates the region
    assert b["max_weight_share"] < 0.05
    print("closure misreco:", a, b)
    # (with the global track fit, issue #22, most faked slopes fail the fit: the natural events of
    # this region, a real momentum change inside MS2, dominate and the mixture's error is no longer
    # below analog's here: measured 1.15e-4 vs 0.76e-4; the test is of unbiasedness)
    # with the target-kink cut (second region), integrated over the scattering core (the default):
    # measured 1.915e-3 ± 0.091e-3 (29 824 selected) vs analog 1.907e-3 ± 0.121e-3 (250); sampled
    # with the tilted core (session 7): 1.896e-3 ± 0.113e-3
    k = projection_from(1.0, "misreco_kink", result)["channels"]
    a, b = k["analog"], k["momentum_misreconstruction"]
    assert a["n_selected"] >= 50
    assert abs(a["expected"] - b["expected"]) < 3.0 * math.hypot(a["stat_err"], b["stat_err"]), (a, b)
    print("closure misreco_kink:", a, b)


@pytest.mark.slow
def test_channels_misreconstruction_ms1_closure_with_analog():
    """The channel's MS1 scenarios (BMS hits faking a HIGH p_in: pushes shrink the bend) are
    unbiased: the same region, biased ≡ analog within 3σ.  Measured (seed 23, 131 072 muons):
    analog 1.23e-3 ± 0.10e-3 (161 events), biased 1.32e-3 ± 0.11e-3 (21 816 events)."""
    cfg = load_run(ROOT / "tests" / "data" / "closure_misreco_ms1.toml")
    prep = prepare(cfg)
    hb = prep.params["momentum_misreconstruction"].hits
    assert set(hb.planes) <= {"BMS1", "BMS2", "BMS3", "BMS4"} and hb.roles  # MS1 scenarios only
    assert all(prep.setup.spectrometers[i].output == "p_in" for i in hb.spectrometer)
    proj = projection(cfg, run(cfg, prep, progress=False))
    a, b = proj["channels"]["analog"], proj["channels"]["momentum_misreconstruction"]
    assert a["n_selected"] >= 50
    assert b["n_selected"] > 10 * a["n_selected"]  # the scenarios populate the region
    pull = (a["expected"] - b["expected"]) / math.hypot(a["stat_err"], b["stat_err"])
    assert abs(pull) < 3.0, (a, b)


def test_channels_figure_of_merit_gain_is_one_for_analog_bernoulli():
    """The gain over analog is FOM / FOM_analog with FOM_analog = p/((1 − p) t_analog): an estimate
    with exactly the Bernoulli relative variance (1 − p)/(pN) at the analog's cost has gain 1, and
    one with 10× smaller variance at twice the cost has gain 5."""
    from types import SimpleNamespace

    from fastmc.projection import figures_of_merit

    n, p = 1_000_000, 3e-4
    rel_analog = math.sqrt((1 - p) / (p * n))
    chans = {
        "analog": {"n_generated": n, "sum_w": p * n, "rel_err": rel_analog},
        "biased": {"n_generated": n, "sum_w": p * n, "rel_err": rel_analog / math.sqrt(10)},
        "empty": {"n_generated": n, "sum_w": 0.0, "rel_err": None},
    }
    result = SimpleNamespace(channels=tuple(chans), channel_seconds=np.array([2.0, 4.0, 1.0]), timed_primaries=n // 2)
    figures_of_merit(chans, result)
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
    figures_of_merit(chans, result)
    assert chans["analog"]["fom_gain_vs_analog"] == pytest.approx(1.0, rel=1e-12)
    assert "fom" not in chans["biased"] and "seconds_per_primary" not in chans["biased"]
    assert chans["empty"]["seconds_per_primary"] == pytest.approx(4e-6)


@pytest.mark.slow
@pytest.mark.parametrize("tilt", [True, False], ids=["tilt_and_kicks", "kicks_only"])
def test_channels_deflection_forcing_weights_are_exact(tilt):
    """The misreconstruction channel's deflection forcing (fastmc.channels.momentum_misreconstruction.DeflectBias: tilted
    scattering core, or photonuclear interactions with pushed kicks; kicks only, as with the
    integrated kink cut): through ten steps of the LS3 ECAL cell (kicks and single scatters
    included), the weighted distribution of the exit angle in the forced projection equals an
    analog run's at every threshold on both sides, E[w] = 1, w ≤ 1/β, the tilt moves the tilted
    muons by the requested shift, and the forcing populates the far tail."""
    import jax
    import jax.numpy as jnp

    from fastmc.api import layers_physics
    from fastmc.channels.momentum_misreconstruction import DeflectBias, deflect_components, deflect_log_weight
    from fastmc.config import PhysicsSettings
    from fastmc.rng import uniforms
    from fastmc.transport import material_step, n_step_uniforms

    physics = layers_physics(("lead1.5mm+scintillator1.5mm",), PhysicsSettings())
    n, k, n_steps = 131072, 4, 10
    c = 2.5e-3 / (0.62e-3) ** 2  # a 2.5 mrad shift of the summed core (σ ≈ 0.6 mrad here)
    bias = DeflectBias(beta=jnp.asarray(0.5), follow=jnp.asarray([1.0] if tilt else [], jnp.float32),
                       inv_v=jnp.asarray(1.0), kick_share=jnp.asarray(0.5 if tilt else 1.0), slots=(True,), axis="x",
                       integrate=not tilt)

    @jax.jit
    def chain(key, forced, physics):  # physics as an argument: closed over, XLA constant-folds its tables
        zero = jnp.zeros((n,), jnp.float32)
        st = dict(x=zero, y=zero, tx=zero, ty=zero, ekin=jnp.full((n,), 160e3, jnp.float32),
                  alive=jnp.ones((n,), bool),
                  **deflect_components(bias, uniforms(jax.random.fold_in(key, 99), (n,)), jnp.full((n,), c, jnp.float32)))
        def step(st, i):  # a fixed-length scan: one compiled step instead of ten unrolled
            uu = uniforms(jax.random.fold_in(key, i), (n, n_step_uniforms(k)))
            return material_step(physics, st, jnp.asarray(0), jnp.asarray(45.0), jnp.asarray(1.0), k, uu,
                                 forcing=bias, tilt_on=forced)[0], None

        st, _ = jax.lax.scan(step, st, jnp.arange(n_steps))
        return st["tx"], deflect_log_weight(bias, st), st["tilt_c"], st["kick_force"]

    tx_b, lw, tilt_c, kick = (np.asarray(a, np.float64) for a in chain(jax.random.key(5), jnp.asarray(1.0), physics))
    tx_a = np.asarray(chain(jax.random.key(6), jnp.asarray(0.0), physics)[0], np.float64)
    w = np.exp(lw)
    assert w.max() <= 2.0 * (1 + 1e-5)
    assert abs(w.mean() - 1.0) < 4 * w.std() / np.sqrt(n)
    natural = (tilt_c == 0) & (kick == 0)
    if tilt:
        shifted = np.median(tx_b[tilt_c != 0]) - np.median(tx_b[natural])
        assert 2.0e-3 < shifted < 3.0e-3, shifted  # σ_core² is a little below the 0.62 mrad used for c
    else:
        assert np.all(tilt_c == 0) and abs(kick.mean() - 0.5) < 0.01  # every forced muon is kicked
    for t in (0.5e-3, 1e-3, 1.5e-3, 2e-3, 2.5e-3, 3e-3, 4e-3, 6e-3):
        for side in (1, -1):
            mb, ma = w * (side * tx_b > t), (side * tx_a > t).astype(float)
            err = np.hypot(mb.std(), ma.std()) / np.sqrt(n)
            assert abs(mb.mean() - ma.mean()) < 4 * err, (t, side, mb.mean(), ma.mean(), err)
    # the forcing populates the far side: the tilt beyond 2 mrad, the photonuclear kicks beyond 4
    if tilt:
        assert np.sum(tx_b > 2e-3) > 5 * np.sum(tx_a > 2e-3)
    assert np.sum((tx_b > 4e-3) & (kick == 1)) > 10 * np.sum(tx_a > 4e-3)


@pytest.mark.slow
def test_channels_integrated_kink_cut_equals_resampled_core():
    """The misreconstruction channel's target-kink cuts with the Gaussian core integrated out
    (fastmc.channels.momentum_misreconstruction.integrated_kink_cuts) against the cut applied to the kink recomputed with the
    core angle redrawn: for constructed MS2/incoming hits with known signed kinks, P(cut | rest)
    must equal the fraction of 20 000 redraws X' ~ N(0, V) that pass (binomial tolerance, 5σ), and
    in the far tail, where redraws cannot reach, the float64 normal CDFs of scipy (rtol 1e-3 on
    log P: the tail is computed with log_ndtr in float32 arithmetic)."""
    import jax.numpy as jnp
    from scipy.stats import norm

    from fastmc.channels.momentum_misreconstruction import integrated_kink_cuts
    from fastmc.geometry import build_setup, setup_materials
    from fastmc.runcard import load_run as _load

    cfg = _load(ROOT / "runs" / "ls3_2e13.toml")
    _, index = setup_materials(cfg.model)
    setup = build_setup(cfg.model, index)
    s = next(s for s in setup.spectrometers if s.output == "p_out" and s.incoming)
    rng = np.random.default_rng(7)
    n = 400
    kx = rng.uniform(-9e-3, 9e-3, n)  # signed bend-plane kink (rad), the other projection's below
    ky = rng.uniform(-4e-3, 4e-3, n)
    x_obs = rng.normal(0.0, 0.9e-3, n)  # the realised core sum; m = kx − x_obs is what stays fixed
    sig = rng.uniform(0.5e-3, 1.2e-3, n)
    p_out = rng.uniform(40.0, 80.0, n)
    zero = np.zeros(n)
    hits = {}
    for name in setup.trackers:
        el = setup.element(name)
        dz = float(el.z + el.thickness) - float(setup.element(s.upstream[0]).z + setup.element(s.upstream[0]).thickness)
        if name in s.upstream:  # a straight track of slopes (kx, ky) behind an incoming track of slope 0
            bx, by = (kx, ky) if s.plane == "x" else (ky, kx)
            hits[name] = (jnp.asarray(bx * dz, jnp.float32), jnp.asarray(by * dz, jnp.float32), jnp.ones(n, bool))
        else:
            hits[name] = (jnp.asarray(zero, jnp.float32), jnp.asarray(zero, jnp.float32), jnp.ones(n, bool))
    f = integrated_kink_cuts(setup, hits, jnp.asarray(p_out, jnp.float32), jnp.asarray(x_obs, jnp.float32),
                             jnp.asarray(sig**2, jnp.float32))
    m = kx - x_obs
    xs = rng.normal(size=(20_000, 1)) * sig
    kink_mrad = np.sqrt((m + xs) ** 2 + ky**2) / 1e-3
    cases = [("kink_p_out_pt_MeV", -np.inf, 400.0, kink_mrad * p_out), ("kink_p_out_mrad", 3.0, 6.0, kink_mrad)]
    for var, lo, hi, value in cases:
        p = np.exp(np.asarray(f[var](jnp.float32(lo), jnp.float32(hi)), np.float64))
        frac = np.mean((value >= lo) & (value <= hi), axis=0)
        tol = 5.0 * np.sqrt(np.maximum(p * (1 - p), 1e-4) / 20_000)
        assert np.all(np.abs(p - frac) <= tol), (var, np.max(np.abs(p - frac) / tol))
        assert 0.05 < np.mean(frac) < 0.95  # the constructed kinks straddle the cut
    # far tail (float64 reference): |m + X'| ≤ a with a from the p_T cut
    a = np.sqrt(np.maximum((400.0 / p_out * 1e-3) ** 2 - ky**2, 0.0))
    ref = norm.cdf((a - np.abs(m)) / sig) - norm.cdf((-a - np.abs(m)) / sig)
    lp = np.asarray(f["kink_p_out_pt_MeV"](jnp.float32(-np.inf), jnp.float32(400.0)), np.float64)
    tail = (ref > 1e-30) & (ref < 1e-4)
    assert tail.sum() > 20
    np.testing.assert_allclose(lp[tail], np.log(ref[tail]), rtol=1e-3)
    assert np.all(np.isneginf(lp[a == 0.0]))  # |k_y| alone fails the cut


@pytest.mark.slow
def test_calo_forced_photonuclear_soft_mode_is_unbiased_and_its_gradient_matches_finite_differences():
    """Soft mode (fastmc.optimise): the forced photonuclear step of calorimeter_nonhermeticity draws
    the interaction counts of its two half-steps with a reference length and reweights them.  The
    reweighted estimate at L ≠ L_ref must equal the direct one at L (both halves reweighted — the
    forced vertex once rebuilt log w from the pre-step state and dropped the first half's count
    weight), and its pathwise + likelihood-ratio derivative at L = L_ref must equal central finite
    differences of direct estimates (each drawn at its own length), within 4σ.

    Observable: w × the natural stochastic loss of the step (brems, pair, knock-ons; v > v_cut), whose
    mean grows with L through the interaction counts — what the dropped weight biased."""
    import jax
    import jax.numpy as jnp

    from fastmc.api import layers_physics
    from fastmc.channels.calorimeter_nonhermeticity import forced_photonuclear_step
    from fastmc.config import PhysicsSettings

    physics = layers_physics(("lead",), PhysicsSettings())
    n, k = 131_072, 8
    v_min = jnp.asarray(0.3)

    def estimate(length, length_ref, key):
        zero = jnp.zeros((n,), jnp.float32)
        st = dict(x=zero, y=zero, tx=zero, ty=zero, ekin=jnp.full((n,), 160e3, jnp.float32),
                  alive=jnp.ones((n,), bool), log_w=zero)
        st, rec = forced_photonuclear_step(physics, st, jnp.asarray(0), length, jnp.asarray(1.0), k, key,
                                           length_ref=jax.lax.stop_gradient(length_ref), v_min=v_min)
        f = jnp.sum(rec["e_proc"][:, :3], axis=-1) / 1e3  # GeV: the natural losses (the forced one is process 3)
        w = jnp.exp(st["log_w"] - jnp.log(length))  # per mm of target: keeps the numbers O(1e-3)
        return w * f

    est = jax.jit(estimate)
    grad = jax.jit(jax.grad(lambda length, key: jnp.mean(estimate(length, length, key))))

    def mean_err(a):
        a = np.asarray(a, np.float64)
        return a.mean(), a.std() / np.sqrt(a.size)

    length, length_ref = jnp.asarray(100.0), jnp.asarray(60.0)
    m_direct, e_direct = mean_err(est(length, length, jax.random.key(1)))
    m_rw, e_rw = mean_err(est(length, length_ref, jax.random.key(2)))
    m_ref, e_ref = mean_err(est(length_ref, length_ref, jax.random.key(3)))
    assert abs(m_direct - m_ref) > 6 * np.hypot(e_direct, e_ref)  # the observable does depend on L
    assert abs(m_rw - m_direct) < 4 * np.hypot(e_rw, e_direct), (m_rw, e_rw, m_direct, e_direct)
    # derivative at L = 80 mm: AD of the reweighted estimate vs central differences of direct ones
    g = [float(grad(jnp.asarray(80.0), jax.random.key(10 + i))) for i in range(4)]
    h = 20.0
    hi = [mean_err(est(jnp.asarray(80.0 + h), jnp.asarray(80.0 + h), jax.random.key(20 + i))) for i in range(2)]
    lo = [mean_err(est(jnp.asarray(80.0 - h), jnp.asarray(80.0 - h), jax.random.key(30 + i))) for i in range(2)]
    fd = (np.mean([m for m, _ in hi]) - np.mean([m for m, _ in lo])) / (2 * h)
    fd_err = np.hypot(np.hypot(*[e for _, e in hi]) / 2, np.hypot(*[e for _, e in lo]) / 2) / (2 * h)
    g_mean, g_err = np.mean(g), np.std(g, ddof=1) / np.sqrt(len(g))
    assert abs(g_mean - fd) < 4 * np.hypot(g_err, fd_err), (g, g_mean, g_err, fd, fd_err)
