"""Regression tier (DESIGN.md §6.4): gold numbers from fixed keys, compared bit for bit.

Small fixed-seed runs of every channel of the shipped cards (``runs/quickstart.toml``,
``runs/na64mu_2022.toml``, ``runs/ls3_2e13.toml``), one ``fastmc sensitivity`` mass and one
soft-mode (optimisation) gradient.  Their per-chunk tally rows (log Σw, log Σw², n, log max w and
the largest log-weights of every cut-flow slot), overflow counts, signal yields and gradient
components are stored in ``tests/gold/<case>.json`` as exact hexadecimal floats and must come out
with the same bits: a refactoring that moves code keeps them; a change that alters numbers on
purpose regenerates them and says so in its commit message::

    python3 -m pytest tests/test_gold.py --gold --regen-gold -n 2 --dist load

Bits are those of this machine kind's XLA CPU backend (CI runs on the same kind); a different CPU
or JAX version may legitimately change the last bits (then regenerate, and say why).

The quickstart case always runs (one small program, ~20 s); the others compile the full chains of
the 2022 and LS3 cards (~1 min per channel on 2 cores) and run with ``--gold``.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parent.parent
GOLD = Path(__file__).resolve().parent / "gold"
CHUNK = 4096  # muons per chunk of the gold runs (2 chunks: the chunk loop and its reduction)


def _hex(a) -> list:
    a = np.asarray(a, np.float64)
    return [float(x).hex() for x in a.ravel()] + [list(a.shape)]


def _check(case: str, numbers: dict[str, object], regen: bool) -> None:
    path = GOLD / f"{case}.json"
    got = {k: _hex(v) for k, v in numbers.items()}
    if regen:
        GOLD.mkdir(exist_ok=True)
        path.write_text(json.dumps(got, indent=0, sort_keys=True) + "\n")
        pytest.skip(f"regenerated {path.name}")
    if not path.is_file():
        pytest.fail(f"no gold numbers for {case}: run `python3 -m pytest tests/test_gold.py --gold --regen-gold`")
    want = json.loads(path.read_text())
    assert sorted(got) == sorted(want), f"{case}: stored quantities differ"
    for k in want:
        if got[k] != want[k]:
            g, w = got[k], want[k]
            diff = [i for i, (x, y) in enumerate(zip(g[:-1], w[:-1])) if x != y]
            pytest.fail(f"{case}/{k}: shape {g[-1]} vs gold {w[-1]}; {len(diff)} value(s) differ, first at "
                        f"flat index {diff[:1]}: {[float.fromhex(g[i]) for i in diff[:3]]} vs gold "
                        f"{[float.fromhex(w[i]) for i in diff[:3]]}")


def _run_card(card: str, channel: str) -> dict[str, object]:
    from fastmc.chain import prepare
    from fastmc.run import run
    from fastmc.runcard import load_run

    cfg = load_run(ROOT / "runs" / card).with_overrides(n_muons=2 * CHUNK, chunk_size=CHUNK, channels=(channel,))
    res = run(cfg, prepare(cfg), progress=False)
    return {"rows": res.rows, "overflow": res.overflow, "n_gen": res.n_gen}


CARD_CASES = [("quickstart.toml", "analog")] + [
    pytest.param(card, ch, marks=pytest.mark.gold)
    for card, chs in (("na64mu_2022.toml", ("hadron_decay", "momentum_misreconstruction",
                                            "calorimeter_nonhermeticity", "analog")),
                      ("ls3_2e13.toml", ("hadron_decay", "momentum_misreconstruction", "calorimeter_nonhermeticity")))
    for ch in chs
]


@pytest.mark.parametrize("card,channel", CARD_CASES)
def test_gold_card_channel_tallies_are_bit_identical(card, channel, request):
    _check(f"{Path(card).stem}__{channel}", _run_card(card, channel), request.config.getoption("--regen-gold"))


@pytest.mark.gold
def test_gold_sensitivity_mass_is_bit_identical(request):
    from fastmc.runcard import load_run
    from fastmc.sensitivity import signal_yields

    cfg = load_run(ROOT / "runs" / "na64mu_2022.toml").with_overrides(chunk_size=CHUNK)
    rows, _, res = signal_yields(cfg, [100.0], "z_prime", n_muons=2 * CHUNK)
    keys = ("emission_prob_g1", "efficiency", "yield_per_mot_g1", "yield_per_mot_g1_err", "n_selected", "ess")
    _check("sensitivity_2022_z_prime_100MeV", {"rows": res.rows, **{k: rows[0][k] for k in keys}},
           request.config.getoption("--regen-gold"))


@pytest.mark.gold
def test_gold_soft_gradient_is_bit_identical(request):
    import jax

    from fastmc import optimise as O
    from fastmc.runcard import load_run

    cfg = load_run(ROOT / "tests" / "data" / "optimise_card.toml")
    pb = O.build_problem(cfg)
    loss, comps, grad = O.evaluate(pb, pb.x0, jax.random.key(11))
    _check("soft_gradient_optimise_card", {"loss": loss, "grad": grad, "signal": comps["signal"],
                                           "background": comps["background"]},
           request.config.getoption("--regen-gold"))
