"""Nominal trajectory, active areas and the trigger (issue #22 items 3–4) against hand calculations.

The transport tests switch the material off (every density scale 0: no energy loss, no
scattering), so the true positions are pure geometry: straight lines and thin-lens kicks.  The
references are written out here (kick angles 0.2998·∫B dl/p, Gaussian fractions with erf),
independently of :func:`fastmc.geometry.nominal_trajectory` and :func:`beam_fraction_inside`.
"""

from __future__ import annotations

import dataclasses
import math
import re

import jax.numpy as jnp
import numpy as np
import pytest

from fastmc import units as u
from fastmc.beam import sample_beam
from fastmc.chain import prepare, trigger_log_prob
from fastmc.cli import main
from fastmc.config import ConfigError, load_model
from fastmc.geometry import accidental_probability, build_trigger, nominal_trajectory
from fastmc.response import inside_area, tracker_hits, trigger_probability
from fastmc.rng import STREAM_BEAM, STREAM_RESPONSE, chunk_key, stream_key
from fastmc.runcard import load_run
from fastmc.transport import transport

from .conftest import ANALOG_CARD, ROOT

MODEL_2022 = ROOT / "models" / "na64mu_2022.toml"
N = 8192
C = 0.299792458  # GeV per (T·m) per rad


def _phi(x: float) -> float:
    return 0.5 * (1.0 + math.erf(x / math.sqrt(2.0)))


def _ms2_offset_mm(p_gev: float, z_m: float) -> float:
    """x of a muon of p crossing the target on axis, at z (2022 model by hand): MS2a, MS2b of
    1.4 T·m each kick at their centres z = 3.5 m and 6.0 m."""
    k = C * 1.4 / p_gev
    return 1e3 * sum(k * (z_m - zc) for zc in (3.5, 6.0) if z_m > zc)


def test_nominal_trajectory_by_hand():
    m = load_model(MODEL_2022)
    # on axis with zero slope between the last MS1 magnet (B6c, centre −29.5 m) and MS2a (3.5 m)
    for z in (-20e3, -1e3, 0.0, 2e3):
        x, y, tx, ty = (float(v) for v in nominal_trajectory(m, z))
        assert x == y == tx == ty == 0.0
    # upstream: back-propagated through three 10 mrad kicks (5.337 T·m at 160 GeV) at −41.5, −35.5, −29.5 m
    k = C * 5.337 / 160.0
    x, y, tx, ty = (float(v) for v in nominal_trajectory(m, -55e3))
    assert y == pytest.approx(1e3 * k * ((-41.5 + 55) + (-35.5 + 55) + (-29.5 + 55)), rel=1e-12)
    assert ty == pytest.approx(-3 * k, rel=1e-12) and x == tx == 0.0
    # downstream: MS2, for the beam and for a 100 GeV muon
    for p in (160.0, 100.0):
        x, y, tx, ty = (float(v) for v in nominal_trajectory(m, 16.505e3, p * u.GeV))
        assert x == pytest.approx(_ms2_offset_mm(p, 16.505), rel=1e-12)
        assert tx == pytest.approx(2 * C * 1.4 / p, rel=1e-12) and y == ty == 0.0


def test_accidental_probability_by_hand():
    """P_acc = 1 − exp(−rate·window·f), f = min over counters of the nominal beam's Gaussian
    fraction inside (σ² = σ_spot² + (σ_θ (z − z_focus))², centred on the nominal trajectory)."""
    m = load_model(MODEL_2022)
    fr = []
    for name, z_end, inner in (("S4", 16.505, 37.0026), ("Smu", 17.505, 40.1505)):
        e = m.element(name)
        assert e.x_offset - e.half_width_x == pytest.approx(inner, abs=0.01)  # inner edge on the 100 GeV path
        assert inner == pytest.approx(_ms2_offset_mm(100.0, z_end) - _ms2_offset_mm(160.0, z_end), abs=1e-3)
        edge = e.x_offset - e.half_width_x  # the file's value (rounded to 0.01 mm)
        sig = math.hypot(10.0, 0.5e-3 * z_end * 1e3)  # 10 mm spot at z = 0, 0.5 mrad
        fx = _phi((edge + 300.0) / sig) - _phi(edge / sig)
        fy = 2 * _phi(100.0 / sig) - 1
        fr.append(fx * fy)
    window = 10.0 * u.ns
    ref = 1 - math.exp(-6e5 * 10e-9 * min(fr))
    got = accidental_probability(m, ("S4", "Smu"), window)
    # float64 arithmetic on both sides
    assert got == pytest.approx(ref, rel=1e-9)
    assert got == pytest.approx(6e5 * 10e-9 * min(fr), rel=1e-4)  # μ ≈ 8e-6 ≪ 1: P_acc ≈ rate × window × f


def test_trigger_log_prob_is_bernoulli():
    p = jnp.asarray([0.0, 0.25, 1.0])
    f = trigger_log_prob(p)
    np.testing.assert_allclose(np.exp(np.asarray(f(0.5, jnp.inf))), [0.0, 0.25, 1.0], atol=1e-7)
    np.testing.assert_allclose(np.exp(np.asarray(f(-jnp.inf, 0.5))), [1.0, 0.75, 0.0], atol=1e-7)
    np.testing.assert_allclose(np.exp(np.asarray(f(-1.0, 2.0))), [1.0, 1.0, 1.0], atol=1e-7)


# ------------------------------------------------------------------ transport without material


@pytest.fixture(scope="module")
def prep():
    cfg = load_run(ANALOG_CARD).with_overrides(n_muons=N, chunk_size=N)
    return prepare(cfg)


def _geometry_only(prep, **beam):
    """No material, and the beam's core only (no low-momentum tail, no halo) with ``beam``'s widths."""
    beam = {"tail_fraction": 0.0, "halo_fraction": 0.0, **beam}
    s = prep.setup
    zero = lambda v: v * 0  # noqa: E731
    return dataclasses.replace(
        s, gap_density_scale=zero(s.gap_density_scale),
        elements=tuple(dataclasses.replace(e, density_scale=zero(e.density_scale)) for e in s.elements),
        beam=dataclasses.replace(s.beam, **{k: jnp.asarray(v, s.beam.spot_sigma.dtype) for k, v in beam.items()}))


def _transport(prep, setup, seed=1):
    key = chunk_key(seed, 0)
    st = sample_beam(setup.beam, stream_key(key, STREAM_BEAM), N)
    st["alive"] = jnp.ones((N,), bool)
    return transport(setup, prep.physics, st, key, 8, prep.options.branches)[1], key


def test_beam_follows_the_nominal_trajectory(prep):
    """A 160 GeV muon without spot, divergence or spread, no material: at every element's exit
    face the truth equals the nominal trajectory (float32: ≲ 1e-3 mm over 55 m)."""
    setup = _geometry_only(prep, spot_sigma=0.0, divergence_sigma=0.0, momentum_spread_rel=0.0)
    truth, _ = _transport(prep, setup)
    model = prep.cfg.model
    for e in model.elements:
        if e.kind == "magnet":
            continue
        x, y, alive = (np.asarray(v) for v in truth["at"][e.name])
        xn, yn, _, _ = nominal_trajectory(model, e.z_end)
        assert alive.all()
        assert np.abs(x - xn).max() < 1e-3 and np.abs(y - yn).max() < 1e-3, e.name
        if -20e3 < e.z_end < 2e3:  # on axis around the target
            assert np.abs(x).max() < 1e-3 and np.abs(y).max() < 1e-3, e.name


def test_tracker_aperture_losses_match_gaussian_acceptance(prep):
    """A wide Gaussian beam (σ = 30 mm at the target focus, 1 mrad) through the 8 × 8 cm² MM1, GEM1
    and ST2 (these two widened in the bend plane and off-centre, towards the deflected muons): the
    area [c − a_x, c + a_x] × [−a_y, a_y] around the nominal trajectory gives
    P(hit) = ε · [Φ((c + a_x)/σ) − Φ((c − a_x)/σ)] · [2Φ(a_y/σ) − 1], σ(z)² = σ² + (σ_θ z)²."""
    sig0, div = 30.0, 1.0e-3
    setup = _geometry_only(prep, spot_sigma=sig0, divergence_sigma=div, momentum_spread_rel=0.0)
    truth, key = _transport(prep, setup, seed=3)
    hits, _ = tracker_hits(setup, truth, stream_key(key, STREAM_RESPONSE))
    for name, eff in (("MM1", 0.97), ("GEM1", 0.97), ("ST2", 0.95)):
        e = prep.cfg.model.element(name)
        c, ax, ay = e.x_offset, e.half_width_x, e.half_width_y
        sig = math.hypot(sig0, div * e.z_end)
        pick = float(setup.element(name).pickup)  # a stray hit replaces a missing one (≈ 3e-4 here)
        ref = (eff + (1 - eff) * pick) * (_phi((c + ax) / sig) - _phi((c - ax) / sig)) * (2 * _phi(ay / sig) - 1)
        got = float(np.mean(np.asarray(hits[name][2])))
        # binomial: 4 σ of N = 8192 draws
        tol = 4 * math.sqrt(ref * (1 - ref) / N)
        assert abs(got - ref) < tol, (name, got, ref, tol)


@pytest.mark.parametrize("p_gev", [160.0, 90.0], ids=["beam_160GeV", "deflected_90GeV"])
def test_trigger_acceptance_matches_hand_calculation(prep, p_gev):
    """Muons of p crossing the target around the axis (σ = 20 mm, no divergence: the position at
    each counter is x_focus + the MS2 offset by hand), trigger S4·Sμ: the mean P_trig equals
    1 − (1 − ε² P_in)(1 − P_acc), P_in = P(x_f + d_S4 ∈ S4 and x_f + d_Sμ ∈ Sμ)·P(|y_f| ≤ 100)."""
    sig = 20.0
    m = prep.cfg.model
    x0, y0, tx0, ty0 = (float(v) for v in nominal_trajectory(m, m.beam.z_start, p_gev * u.GeV))
    setup = _geometry_only(prep, spot_sigma=sig, divergence_sigma=0.0, momentum_spread_rel=0.0,
                           momentum=p_gev * u.GeV, x_start=x0, y_start=y0, tx_start=tx0, ty_start=ty0)
    trig = build_trigger(m, ("S4", "Smu"), 10.0 * u.ns)
    setup = dataclasses.replace(setup, trigger=trig)
    truth, _ = _transport(prep, setup, seed=5)
    got = float(np.mean(np.asarray(trigger_probability(setup, truth))))
    lo, hi = -np.inf, np.inf
    for z_end, centre in ((16.505, m.element("S4").x_offset), (17.505, m.element("Smu").x_offset)):
        d = _ms2_offset_mm(p_gev, z_end) - _ms2_offset_mm(160.0, z_end)  # from the counter's reference
        lo, hi = max(lo, centre - 150.0 - d), min(hi, centre + 150.0 - d)
    p_in = max(_phi(hi / sig) - _phi(lo / sig), 0.0) * (2 * _phi(100.0 / sig) - 1)
    p_acc = accidental_probability(m, ("S4", "Smu"), 10.0 * u.ns)
    ref = 1 - (1 - 0.99**2 * p_in) * (1 - p_acc)
    tol = 4 * math.sqrt(max(p_in * (1 - p_in), 1 / N) / N)  # binomial, 4 σ (at least 1/N for p_in ≈ 0)
    assert abs(got - ref) < tol, (got, ref, tol, p_in)
    if p_gev == 160.0:
        assert ref < 0.05  # the beam stays off the counters
    else:
        assert ref > 0.5  # a 90 GeV muon is deflected onto them


def test_inside_area_rectangle():
    e = type("E", (), {"x_centre": 10.0, "y_centre": -5.0, "half_width_x": 2.0, "half_width_y": 1.0})()
    x = jnp.asarray([10.0, 11.9, 12.1, 8.1, 10.0, 10.0])
    y = jnp.asarray([-5.0, -5.0, -5.0, -5.0, -3.9, -4.1])
    assert np.asarray(inside_area(e, x, y)).tolist() == [True, True, False, True, False, True]


def test_selection_puts_the_trigger_first(prep):
    for region in prep.selection.regions:
        assert region.cuts[0].var == "trigger" and float(region.cuts[0].lo) == 0.5


# ------------------------------------------------------------------ bad inputs


def _card_with(tmp_path, model_text=None, trigger=None):
    card = (ANALOG_CARD).read_text()
    if model_text is not None:
        (tmp_path / "model.toml").write_text(model_text)
        card = card.replace('"../../models/na64mu_2022.toml"', '"model.toml"')
    else:
        card = card.replace('"../../models/', f'"{ROOT}/models/')
    if trigger is not None:
        card = card.replace('counters = ["S4", "Smu"]', trigger)
    p = tmp_path / "card.toml"
    p.write_text(card)
    return p


BAD = [
    ("aperture_zero", lambda t: t.replace("half_width_x_mm = 40.0", "half_width_x_mm = 0.0", 1), None,
     "half_width_x_mm = 0.0"),
    ("counter_without_area", lambda t: re.sub(r"(name = \"S4\"(?:.|\n)*?)half_width_x_mm = [^\n]*\n", r"\1", t, count=1),
     None, "a counter needs an active area"),
    ("unknown_counter", None, 'counters = ["S4", "S5"]', "'S5' is not a counter of the model"),
    ("tracker_as_counter", None, 'counters = ["S4", "MM1"]', "'MM1' is not a counter of the model"),
]


@pytest.mark.parametrize("edit,trigger,needle", [b[1:] for b in BAD], ids=[b[0] for b in BAD])
def test_bad_inputs_exit_2_one_line(tmp_path, capsys, edit, trigger, needle):
    model_text = edit(MODEL_2022.read_text()) if edit is not None else None
    card = _card_with(tmp_path, model_text, trigger)
    with pytest.raises(ConfigError) as e:
        load_run(card)
    assert needle in str(e.value) and "\n" not in str(e.value), str(e.value)
    code = main(["project", str(card), "--no-progress"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and needle in err, err
