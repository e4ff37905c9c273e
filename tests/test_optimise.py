"""Differentiable optimisation (fastmc.optimise, ``fastmc optimize``).

The gradient tests run in float64 on tests/data/optimise_card.toml (a short NA64μ-like line with
one optimisable number of every kind, two interaction slots: a small program).  The gradient of
the soft objective must equal central finite differences taken with the *same* keys and the same
frozen reference geometry (common random numbers): with every discrete draw frozen the sample
objective is smooth, so the two agree to O(h²) + rounding — 2 % is the issue's tolerance.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fastmc.config import ConfigError, load_model
from fastmc.runcard import load_run
from fastmc.selection import build_selection, pass_masks, soft_pass

DATA = Path(__file__).parent / "data"
CARD = DATA / "optimise_card.toml"


# ------------------------------------------------------------------------------ soft cuts (cheap)

def test_soft_pass_tends_to_hard_cuts_and_has_finite_gradients():
    cfg = load_run(CARD)
    sel = build_selection(cfg)
    rng = np.random.default_rng(1)
    n = 2000
    variables = {}
    for r in cfg.regions:
        for c in r[1]:
            lo = -50.0 if c.min is None else c.min
            hi = (c.min or 0.0) + 200.0 if c.max is None else c.max
            span = hi - lo
            variables[c.var] = jnp.asarray(rng.uniform(lo - 0.5 * span, hi + 0.5 * span, n))
    variables["kink_p_out_pt_MeV"] = variables["kink_p_out_pt_MeV"].at[:10].set(jnp.inf)  # no track
    valid = jnp.ones(n, bool)
    hard = np.asarray(pass_masks(sel, variables, valid))
    soft = np.asarray(soft_pass(sel, variables, valid, 1e-7))
    assert np.array_equal(soft > 0.5, hard)
    assert np.all(soft[:, :10][-1] == 0.0)  # an infinite kink fails its upper cut exactly
    # gradients with respect to the variables: finite everywhere, also where a variable is inf
    g = jax.grad(lambda v: jnp.sum(soft_pass(sel, v, valid, 0.05)[-1]))(variables)
    assert all(np.all(np.isfinite(np.asarray(x))) for x in g.values())
    # a wider temperature smears: some events strictly between 0 and 1
    mid = np.asarray(soft_pass(sel, variables, valid, 0.05))[-1]
    assert np.any((mid > 0.01) & (mid < 0.99))


# ------------------------------------------------------------------------------ model errors (cheap)

def _model_with(tmp_path, extra: str) -> Path:
    text = (DATA / "optimise_model.toml").read_text()
    text = text[: text.index('[optimise."BMS4.z_m"]')] + extra
    p = tmp_path / "m.toml"
    p.write_text(text)
    return p


@pytest.mark.parametrize("extra, needle", [
    ('[optimise."NOPE.z_m"]\nmin = 0\nmax = 1\n', "no element 'NOPE'"),
    ('[optimise."MM1.field_integral_Tm"]\nmin = 0\nmax = 1\n', "not optimisable for a tracker"),
    ('[optimise."ECAL.thickness_mm"]\nmin = 10\nmax = 500\n', "optimised as n_layers"),
    ('[optimise."MS2.field_integral_Tm"]\nmin = 3.5\nmax = 5\n', "outside [min, max]"),
    ('[optimise."MS2.field_integral_Tm"]\nmin = 4\nmax = 2\n', "must be > min"),
    ('[optimise."ECAL.n_layers"]\nmin = 60\nmax = 200\n', "may overlap 'VETO'"),
    ('[optimise."ECAL.n_layers"]\nmin = 60\nmax = 100\nprice = 3\n', "unknown key"),
])
def test_bad_optimise_tables_give_one_line_errors(tmp_path, extra, needle):
    path = _model_with(tmp_path, extra)
    with pytest.raises(ConfigError) as err:
        load_model(path)
    msg = str(err.value)
    assert needle in msg and str(path) in msg and "\n" not in msg


# ------------------------------------------------------------------------------ gradients (float64)

@pytest.fixture(scope="module")
def problem64():
    from fastmc import optimise as O

    with jax.enable_x64(True):
        cfg = load_run(CARD)
        pb = O.build_problem(cfg)
        key = jax.random.key(11)
        first = O.evaluate(pb, pb.x0, key)
        yield O, pb, key, first


@pytest.mark.slow
def test_soft_gradient_equals_finite_differences(problem64):
    O, pb, key, (loss0, comps, g) = problem64
    assert math.isfinite(loss0) and comps["background"] > 0 and comps["signal"] > 0
    assert comps["n_nonfinite_tangents"] == 0
    with jax.enable_x64(True):
        for i, p in enumerate(pb.params):
            h = 1e-4 * (p.hi - p.lo)
            xp, xm = pb.x0.copy(), pb.x0.copy()
            xp[i] += h
            xm[i] -= h
            fd = (O.evaluate(pb, xp, key, x_ref=pb.x0)[0] - O.evaluate(pb, xm, key, x_ref=pb.x0)[0]) / (2 * h)
            assert abs(g[i] - fd) <= 0.02 * abs(fd) + 1e-9, (p.name, g[i], fd)
            assert abs(fd) > 1e-7, f"{p.name}: the objective does not depend on it (a vacuous check)"


@pytest.mark.slow
def test_gradient_finite_at_the_bounds_and_no_recompilation(problem64):
    O, pb, _, _ = problem64
    n_compiled = O.value_and_grad._cache_size()
    with jax.enable_x64(True):
        for x in (pb.lo, pb.hi):
            loss, _, g = O.evaluate(pb, x, jax.random.key(12))
            assert math.isfinite(loss) and np.all(np.isfinite(g))
        # other geometry, reference geometry, keys and temperature: the same program
        O.evaluate(pb, 0.5 * (pb.lo + pb.hi), jax.random.key(13), x_ref=pb.lo, temperature=0.2)
    assert O.value_and_grad._cache_size() == n_compiled


@pytest.mark.slow
def test_frozen_proposal_reweighting_is_unbiased(problem64):
    """Soft background with the interaction counts/absorptions drawn at a thinner reference
    geometry and reweighted must equal, in expectation, the one drawn at the geometry itself."""
    O, pb, _, _ = problem64
    x = pb.x0.copy()
    names = [p.name for p in pb.params]
    x[names.index("ECAL.n_layers")] = 130.0
    x[names.index("VHCAL.n_layers")] = 45.0
    x_ref = pb.x0
    a, b = [], []
    with jax.enable_x64(True):
        for k in range(16):
            kk = jax.random.key(100 + k)
            a.append(O.evaluate(pb, x, kk, x_ref=x_ref)[1]["signal"])
            b.append(O.evaluate(pb, x, jax.random.fold_in(kk, 7))[1]["signal"])
    a, b = np.array(a), np.array(b)
    assert not np.allclose(a, b)  # different draws
    diff = a.mean() - b.mean()
    se = math.sqrt(a.var(ddof=1) / len(a) + b.var(ddof=1) / len(b))
    assert abs(diff) < 3.5 * se, (a.mean(), b.mean(), se)


# ------------------------------------------------------------------------------ the command

@pytest.mark.slow
def test_cli_optimize_end_to_end(problem64, tmp_path, capsys):
    """Two Adam steps, the optimised model and card, the hard-mode re-evaluation (fresh keys),
    HDF5 history with provenance, the plot; hard mode does not depend on the temperature."""
    pytest.importorskip("matplotlib")
    import dataclasses

    import h5py

    from fastmc.cli import main

    O, pb, _, _ = problem64
    out = tmp_path / "opt.h5"
    with jax.enable_x64(True):  # the gradient program of the fixture: no recompilation
        rc = main(["optimize", str(CARD), "--steps", "2", "-o", str(out), "--json", "--no-progress"])
    assert rc == 0
    summary = json.loads(capsys.readouterr().out)
    m = load_model(summary["model"])
    x_new = [getattr(m.element(p.element), {"z_m": "z", "n_layers": "n_layers", "thickness_mm": "thickness",
                                             "field_integral_Tm": "field_integral", "resolution_mm": "resolution"}[p.field])
             for p in pb.params]
    assert m.name.endswith("_optimised") and x_new != [p.value for p in pb.params]
    cfg_new = load_run(summary["card"])
    assert cfg_new.model.path.resolve() == Path(summary["model"]).resolve()
    for key in ("baseline", "optimised"):
        ev = summary[key]
        assert ev["fom"] > 0 and 0 < ev["fom_err"] < ev["fom"] and ev["seed"] != load_run(CARD).seed
    with h5py.File(out) as f:
        assert f["optimise/loss"].shape == (3,) and f["optimise/x"].shape == (3, len(pb.params))
        assert np.all(np.isfinite(f["optimise/grad_norm"][:]))
        assert f["provenance"].attrs["model_sha256"] and f.attrs["kind"] == "optimise"
    assert Path(summary["plot"]).stat().st_size > 10_000
    # hard mode ignores the temperature: the same numbers, bit for bit
    with jax.enable_x64(True):
        cfg = load_run(CARD)
        hot = cfg.with_overrides(optimise=dataclasses.replace(cfg.optimise, temperature=0.5))
        e1, _ = O.hard_evaluation(cfg, 77, 4096)
        e2, _ = O.hard_evaluation(hot, 77, 4096)
    assert e1["background"] == e2["background"] and e1["fom"] == e2["fom"] and e1["background"] > 0


def test_cli_optimize_refuses_a_model_without_optimise_tables(tmp_path, capsys):
    from fastmc.cli import main

    card = tmp_path / "c.toml"
    card.write_text((DATA / "calo_closure.toml").read_text().replace('"calo_closure_model.toml"',
                                                                     f'"{DATA / "calo_closure_model.toml"}"'))
    assert main(["optimize", str(card), "-o", str(tmp_path / "o.h5")]) == 2
    err = capsys.readouterr().err.strip()
    assert "declares no optimisable number" in err and "\n" not in err
    assert not (tmp_path / "o.h5").exists()
    with pytest.raises(SystemExit) as ex:
        main(["optimize", str(CARD), "--steps", "-3"])
    assert ex.value.code == 2
