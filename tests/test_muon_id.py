"""HCAL muon identification: per-module visible energies and n_hcal_mip_modules ([muon_id]).

The pass probability of a 160 GeV muon per module is computed independently in numpy from the
module's energy-loss sample (fastmc's transport, validated against Geant4 elsewhere) and the
calorimeter resolution a/√E ⊕ b ⊕ c/E written out by hand from the model file's numbers."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

from fastmc import units as u
from fastmc.api import propagate_layers
from fastmc.config import ConfigError, MuonIdConfig, load_model
from fastmc.geometry import build_setup, setup_materials
from fastmc.reconstruct import energy_variables
from fastmc.response import group_energies, visible_energies_by_element

from .conftest import MODELS, RUNS

MODEL = load_model(MODELS / "na64mu_2022.toml")
HCAL = ("HCAL1", "HCAL2", "HCAL3", "HCAL4")
WINDOW = MuonIdConfig(group="hcal", min=0.5 * u.GeV, max=8.0 * u.GeV)  # as in runs/na64mu_2022.toml
N = 4096


def _setup():
    return build_setup(MODEL, setup_materials(MODEL)[1])


def _measure(setup, edep: dict, key=1):
    """Per-element visible energies and the energy variables for given deposits (MeV, (B,))."""
    b = next(iter(edep.values())).shape[0]
    truth = {"slabs": {}, "at": {}}
    for el in setup.elements:
        if el.kind == "slab" and el.readout != "none":
            e = jnp.asarray(edep.get(el.name, np.zeros(b)), jnp.result_type(float))
            truth["slabs"][el.name] = {"e_cont": e, "e_proc": jnp.zeros((b, 1), e.dtype)}
            # the muon crosses the module at the centre of its active area
            truth["at"][el.name] = (jnp.full((b,), el.x_centre), jnp.full((b,), el.y_centre), jnp.ones((b,), bool))
    by_el = visible_energies_by_element(setup, truth, None, jax.random.key(key))
    measured = {"energies": group_energies(setup, by_el), "element_energies": by_el}
    return {k: np.asarray(v) for k, v in energy_variables(setup, measured, WINDOW).items()}


@pytest.fixture(scope="module")
def module_losses():
    """Energy lost (MeV) by 160 GeV μ in one HCAL module, 4 independent samples (one per module)."""
    e_in = 160.0
    el = MODEL.element("HCAL1")
    cell = "+".join(f"{m}{t:g}mm" for m, t in el.layers)
    out = propagate_layers([(cell, el.thickness)], e_in, 4 * N, seed=5)
    return ((e_in - out) * u.GeV).reshape(4, N)


def test_mip_window_pass_probability_per_module(module_losses):
    setup = _setup()
    var = _measure(setup, dict(zip(HCAL, module_losses)))
    el = MODEL.element("HCAL1")  # all four modules share the readout numbers
    a, b, c = el.stochastic_term, el.constant_term, el.noise
    p_mod = []
    for i, name in enumerate(HCAL):
        loss = module_losses[i]
        sig = np.sqrt(a * a * (loss / u.GeV) * u.GeV**2 + (b * loss) ** 2 + c * c)  # a/√E ⊕ b ⊕ c/E by hand
        mu = el.response_scale * loss
        p = stats.norm.cdf((WINDOW.max - mu) / sig) - stats.norm.cdf((WINDOW.min - mu) / sig)
        e = var[f"e_{name}_GeV"] * u.GeV
        k = np.count_nonzero((e >= WINDOW.min) & (e <= WINDOW.max))
        # given the losses, the count is a sum of independent Bernoullis: variance Σp(1 − p); 4σ
        assert abs(k - p.sum()) < 4 * math.sqrt(np.sum(p * (1 - p))), (name, k, p.sum())
        p_mod.append(p.mean())
    # a muon is a MIP in each module with probability ≈ 0.9 (the card's comment); ≥ 3 of 4 then
    # keeps Σ_{k≥3} binomial(4, p) — the four modules are independent given independent losses
    pm = float(np.mean(p_mod))
    assert 0.85 < pm < 0.97, p_mod
    n = var["n_hcal_mip_modules"]
    p3 = pm**4 + 4 * pm**3 * (1 - pm)
    k3 = np.count_nonzero(n >= 3)
    assert abs(k3 - N * p3) < 4 * math.sqrt(N * p3 * (1 - p3)) + 0.02 * N, (k3, N * p3)  # + spread of p between modules
    # the module variables add up to the group's
    np.testing.assert_allclose(sum(var[f"e_{m}_GeV"] for m in HCAL), var["e_hcal_GeV"], rtol=1e-5)


def test_a_shower_in_a_module_fails_its_window():
    setup = _setup()
    mip = np.full(N, 2.15 * u.GeV)  # the median module loss of a 160 GeV muon
    # a hard photonuclear transfer of 40 GeV showering in HCAL2 (σ ≈ 3.8 GeV: 8 GeV is 8σ below)
    one = _measure(setup, {"HCAL1": mip, "HCAL2": mip + 40 * u.GeV, "HCAL3": mip, "HCAL4": mip})
    assert np.all(one["e_HCAL2_GeV"] > WINDOW.max / u.GeV)
    assert np.all(one["n_hcal_mip_modules"] <= 3)
    # a hadronic shower spread over two modules (30 GeV each) fails the card's cut (≥ 3 of 4)
    two = _measure(setup, {"HCAL1": mip, "HCAL2": mip + 30 * u.GeV, "HCAL3": mip + 30 * u.GeV, "HCAL4": mip})
    assert np.all(two["n_hcal_mip_modules"] <= 2)
    # a muon that missed the HCAL (no deposit: noise only, σ = 100 MeV; 0.5 GeV is 5σ) is no MIP
    none = _measure(setup, {m: np.zeros(N) for m in HCAL})
    assert np.all(none["n_hcal_mip_modules"] == 0)


def _card(tmp_path, text):
    model = (MODELS / "na64mu_2022.toml").read_text()
    (tmp_path / "model.toml").write_text(model)
    p = tmp_path / "card.toml"
    p.write_text(text.replace('model = "../models/na64mu_2022.toml"', 'model = "model.toml"'))
    return p


@pytest.mark.parametrize("old,new,key,value", [
    ('group = "hcal"', 'group = "hcall"', "muon_id.group", "hcall"),
    ("max_GeV = 8.0", "max_GeV = 0.5", "muon_id.max_GeV", "0.5"),
    ("min_GeV = 0.5", "min_GeV = -1.0", "muon_id.min_GeV", "-1.0"),
    ("max_GeV = 8.0", "max_GeV = 8.0\nmax_gev = 3", "muon_id.max_gev", "3"),
])
def test_bad_muon_id_is_a_one_line_error(tmp_path, old, new, key, value):
    from fastmc.runcard import load_run

    text = (RUNS / "na64mu_2022.toml").read_text()
    assert old in text
    with pytest.raises(ConfigError) as err:
        load_run(_card(tmp_path, text.replace(old, new, 1)))
    msg = str(err.value)
    assert "\n" not in msg and key in msg and value in msg and "card.toml" in msg, msg


def test_cards_use_the_muon_id():
    from fastmc.runcard import load_run

    for name in ("na64mu_2022.toml", "ls3_2e13.toml", "na64mu_2022_1e13.toml"):
        cfg = load_run(RUNS / name)
        assert cfg.muon_id == WINDOW.__class__(group="hcal", min=0.5 * u.GeV, max=8.0 * u.GeV,
                                               source=cfg.muon_id.source)
        cuts = [c for _, region in cfg.regions for c in region if c.var == "n_hcal_mip_modules"]
        assert cuts and cuts[0].min == 2.5
