"""Hit times of the tracker response (issue #22 item 2): accepted pile-up strays against the
Poisson rate in the time cut, true-hit time acceptance against erf, the stray-time law, the
consistency of hits drawn before the transport, and the bad-input errors of the time cut."""

from __future__ import annotations

import math
import re
import types
from pathlib import Path

import numpy as np
import pytest

from fastmc import units as u
from fastmc.config import ConfigError
from fastmc.runcard import load_run

from .conftest import MODELS, RUNS

N = 200_000  # draws per plane: binomial σ ≤ 1.2e-3 on any probability


def _toy_setup(planes: list[dict]):
    """A Setup of trackers only (the 2022 model's planes as templates), leaves set per plane."""
    from fastmc._pytree import replace
    from fastmc.geometry import build_setup, setup_materials

    model = load_run(RUNS / "na64mu_2022.toml").model
    _, index = setup_materials(model)
    full = build_setup(model, index)
    tmpl = full.element("MM3")
    els = tuple(replace(tmpl, name=f"T{i}", **{k: np.float32(v) for k, v in kw.items()})
                for i, kw in enumerate(planes))
    return replace(full, elements=els, spectrometers=(), trigger=None)


def _draw(setup, seed=1):
    import jax
    import jax.numpy as jnp

    from fastmc.response import tracker_hits

    zeros = jnp.zeros((N,), jnp.float32)
    truth = {"hits": {n: (zeros, zeros, jnp.ones((N,), bool)) for n in setup.trackers}}
    hits, _ = jax.jit(lambda k, s, t: tracker_hits(s, t, k))(jax.random.key(seed), setup, truth)
    return {n: np.asarray(h[2]) for n, h in hits.items()}


def _check_binomial(est, expected, what):
    # 5σ of the binomial spread of N draws: a false failure has probability 6e-7 per check
    sigma = math.sqrt(max(expected * (1 - expected), 1e-12) / N)
    assert abs(est - expected) < 5 * sigma, (what, est, expected, sigma)


def test_hit_time_accepted_strays_follow_rate_times_cut_times_density():
    """No true hit (ε = 0): a plane is present iff a stray is accepted.  pickup_probability turns
    rate, readout window τ, road and beam spot into P(≥ 1 stray in τ); the time cut must leave
    P = 1 − exp(−rate·2 cut·(2 road)²/(2π σ²)) (closed form), also at large μ where the naive
    P(τ)·2cut/τ is far off; an untimed plane (cut = τ/2) keeps P(τ) itself."""
    from fastmc.geometry import pickup_probability

    spot = 10.0  # mm, beam spot σ
    beam = types.SimpleNamespace(rate_per_s=0.0, spot_sigma=spot)
    cases = [  # (rate /s, τ ns, road mm, σ_t ns, cut ns)
        (6e5, 100.0, 5.0, 9.0, 27.0),  # 2022-like, small μ
        (2e8, 100.0, 5.0, 9.0, 20.0),  # λ(τ) ≈ 3.2: saturated readout window
        (1e7, 150.0, 3.0, 5.0, 15.0),  # LS3-like straw
        (2e8, 100.0, 5.0, 0.0, 50.0),  # untimed: the whole window counts
    ]
    planes = []
    for rate, tau, road, sig_t, cut in cases:
        el = types.SimpleNamespace(time_window=tau * u.ns, road=road)
        p = pickup_probability(el, beam, rate)
        planes.append(dict(efficiency=0.0, tail_fraction=0.0, pickup=p, road=road, time_window=tau,
                           time_resolution=sig_t, time_cut=cut))
    present = _draw(_toy_setup(planes))
    for i, (rate, _tau, road, _sig_t, cut) in enumerate(cases):
        density = (2 * road) ** 2 / (2 * math.pi * spot**2)
        expected = -math.expm1(-rate * 2 * cut * 1e-9 * density)
        _check_binomial(present[f"T{i}"].mean(), expected, cases[i])
    # small μ: rate × 2 cut × density itself (the linear law; λ_c/2 ≈ 0.25 % relative, below 5σ ≈ 6 %)
    rate, tau, road, _, cut = cases[0]
    lin = rate * 2 * cut * 1e-9 * (2 * road) ** 2 / (2 * math.pi * spot**2)
    _check_binomial(present["T0"].mean(), lin, "linear")


def test_hit_time_true_hit_acceptance_is_erf():
    """ε = 1, no strays: a true hit (core or wide) is kept iff |t| ≤ cut, t ~ N(0, σ_t):
    P = erf(cut/(√2 σ_t))."""
    cases = [(9.0, 27.0), (12.0, 12.0), (5.0, 7.5), (0.5, 1.0)]  # (σ_t, cut) ns
    planes = [dict(efficiency=1.0, tail_fraction=0.3, pickup=0.0, time_window=100.0, time_resolution=s, time_cut=c)
              for s, c in cases]
    present = _draw(_toy_setup(planes), seed=2)
    for i, (s, c) in enumerate(cases):
        _check_binomial(present[f"T{i}"].mean(), math.erf(c / (math.sqrt(2) * s)), cases[i])


def test_hit_time_stray_times_are_uniform_in_the_window():
    """hit_times of strays: at small λ the recorded time is uniform in ±τ/2 (q → 2cut/τ), and at
    any λ accepted ⇔ |t| ≤ cut and the time is uniform inside the cut (P(|t| ≤ x | accepted) = x/cut)."""
    import jax
    import jax.numpy as jnp

    from fastmc.response.trackers import CAT_STRAY, hit_times

    ut = jax.random.uniform(jax.random.key(5), (2, N, 2), jnp.float32)
    cat = jnp.full((2, N), CAT_STRAY)
    col = lambda *v: jnp.asarray(v, jnp.float32)[:, None]  # noqa: E731
    pick = col(1e-4, 0.95)
    t, acc = hit_times(cat, ut, col(9.0, 9.0), col(100.0, 100.0), col(27.0, 27.0), pick)
    t, acc = np.asarray(t), np.asarray(acc)
    assert np.all(np.abs(t) <= 50.0 + 1e-4) and np.all(acc == (np.abs(t) <= 27.0 + 1e-4))
    for x in (5.0, 20.0, 40.0):  # plane 0 (small λ): uniform in ±50 ns
        _check_binomial(np.mean(np.abs(t[0]) <= x), x / 50.0, ("uniform", x))
    lam = -math.log1p(-0.95)  # plane 1: accepted fraction (1 − e^{−λ·0.54})/(1 − e^{−λ})
    _check_binomial(acc[1].mean(), -math.expm1(-lam * 0.54) / 0.95, "q")
    inside = np.abs(t[1][acc[1]])
    for x in (5.0, 20.0):  # uniform inside the cut (binomial on the accepted ones: N·q ≥ 1e5, loose 5σ)
        assert abs(np.mean(inside <= x) - x / 27.0) < 5 * math.sqrt(0.25 / inside.size), x


def test_hit_time_hits_drawn_before_transport_are_identical():
    """hit_offsets (drawn before the transport) + the truth ≡ detector_response's own draw,
    time cut included (same keys, same streams)."""
    import jax
    import jax.numpy as jnp

    from fastmc.response import detector_response, hit_offsets

    setup = _toy_setup([dict(efficiency=0.8, pickup=0.3, time_resolution=9.0, time_cut=15.0),
                        dict(efficiency=0.9, pickup=0.5, time_resolution=12.0, time_cut=12.0)])
    n = 4096
    key = jax.random.key(11)
    x = jnp.linspace(-3.0, 3.0, n, dtype=jnp.float32)
    reached = jnp.arange(n) % 7 != 0
    hits = {nm: (x, -x, reached) for nm in setup.trackers}
    truth = {"hits": hits, "at": hits, "slabs": {}}  # trackers only: no slab, no trigger
    direct = detector_response(setup, truth, key)["hits"]
    pre = detector_response(setup, truth, key, hits_pre=hit_offsets(setup, key, None, n))["hits"]
    for nm in setup.trackers:
        for a, b in zip(direct[nm], pre[nm]):
            assert np.array_equal(np.asarray(a), np.asarray(b)), nm
        assert 0.5 < np.asarray(direct[nm][2]).mean() < 0.95  # the time cut and the strays act


def _card(tmp_path: Path, extra: str = "", model_edit=lambda m: m) -> Path:
    model = model_edit((MODELS / "na64mu_2022.toml").read_text())
    (tmp_path / "model.toml").write_text(model)
    card = (RUNS / "na64mu_2022.toml").read_text().replace('"../models/na64mu_2022.toml"', '"model.toml"')
    p = tmp_path / "card.toml"
    p.write_text(card + "\n[reconstruction]\n" + extra + "\n" if extra else card)
    return p


def test_hit_time_default_cut_is_three_sigma(tmp_path):
    cfg = load_run(_card(tmp_path))
    assert cfg.reconstruction.hit_time_cut is None and cfg.reconstruction.hit_time_cut_sigma == 3.0
    cfg = load_run(_card(tmp_path, "hit_time_cut_ns = 20.0"))
    assert cfg.reconstruction.hit_time_cut == pytest.approx(20.0 * u.ns)


@pytest.mark.parametrize("extra, key, value", [
    ("hit_time_cut_ns = 0.2", "reconstruction.hit_time_cut_ns", "0.2"),  # < BMS σ_t = 0.5 ns
    ("hit_time_cut_ns = 10.0", "reconstruction.hit_time_cut_ns", "10"),  # < GEM σ_t = 12 ns
    ("hit_time_cut_sigma = 0.5", "reconstruction.hit_time_cut_sigma", "0.5"),
    ("hit_time_cut_sigma = 3.0\nhit_time_cut_ns = 20.0", "reconstruction.hit_time_cut_ns", "20"),
    ("hit_time_cut = 3.0", "reconstruction.hit_time_cut", "3"),  # unknown key
])
def test_hit_time_bad_cut_is_a_one_line_error(tmp_path, extra, key, value):
    p = _card(tmp_path, extra)
    with pytest.raises(ConfigError) as exc:
        load_run(p)
    msg = str(exc.value)
    assert "\n" not in msg and str(p) in msg and key in msg and value in msg, msg


def test_hit_time_model_window_shorter_than_resolution_is_a_one_line_error(tmp_path):
    def edit(m):  # BMS1's readout window (the first tracker) below its 0.5 ns resolution
        return re.sub(r"time_window_ns = 100.0 ", "time_window_ns = 0.3 ", m, count=1)

    p = _card(tmp_path, model_edit=edit)
    with pytest.raises(ConfigError) as exc:
        load_run(p)
    msg = str(exc.value)
    assert "\n" not in msg and "model.toml" in msg and "time_window_ns" in msg and "0.3" in msg, msg
