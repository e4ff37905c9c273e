"""``fastmc export``: pyhf workspaces and ROOT files of a projection, and the truth in saved events.

One tiny projection (analog, 2 × 4096 muons, the tests' analog card with a loose first region so that
the signal region of the export holds MC events) is made once for the module with ``--save-events``.
"""

from __future__ import annotations

import json
import math
import re
import shutil
import tomllib

import h5py
import numpy as np
import pytest

from fastmc.cli import main

from .conftest import ANALOG_CARD, RUNS

# pyhf 0.7 warns of jsonschema's deprecated RefResolver when it validates a workspace
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


def _card_text() -> str:
    """The tests' analog card with the signal region's numbers opened up (p_out < 140 GeV, calorimeter
    cuts at 1e6): analog selects tens of events there in 8192 muons.  Same structure (regions, cut
    variables, chunk size, --save-events) as tests/test_signal.py's run: the same compiled program
    (cut values are leaves), so JAX's persistent compilation cache can serve it."""
    text = ANALOG_CARD.read_text()
    text = text.replace('model = "../../models/', f'model = "{(RUNS / ".." / "models").resolve()}/')
    text = text.replace('{ var = "p_out_GeV", max = 80.0 }', '{ var = "p_out_GeV", max = 140.0 }')
    for var in ("e_ecal_GeV", "e_veto_MeV", "e_vhcal_GeV", "e_hcal_GeV"):
        text = re.sub(rf'{{ var = "{var}", max = [0-9.]+ }}', f'{{ var = "{var}", max = 1e6 }}', text)
    assert text.count("1e6") == 4 and "max = 140.0 }," in text
    # a low interaction cap, so that selected events overflow it (test_overflow_share_is_that_of_the_events)
    text = text.replace("max_interactions = 8", "max_interactions = 3")
    assert "max_interactions = 3" in text
    return text


@pytest.fixture(scope="module")
def proj(tmp_path_factory):
    d = tmp_path_factory.mktemp("export")
    card = d / "card.toml"
    card.write_text(_card_text())
    out = d / "proj.h5"
    assert main(["project", str(card), "--n-muons", "8192", "--chunk-size", "4096", "--save-events", "--no-progress",
                 "--json", "-o", str(out)]) == 0
    return out


def _one_line_exit2(capsys, argv):
    capsys.readouterr()
    try:
        rc = main(argv)
    except SystemExit as e:  # argparse's own errors (fastmc.cli.common.Parser.error)
        rc = e.code
    assert rc == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("fastmc: error:") and "\n" not in err and "Traceback" not in err, err
    return err


def test_overflow_share_is_that_of_the_events(proj):
    """The share of Σw the overflowing events carry (the overflow warning) is reduced on the device
    per chunk; the saved events give it independently: Σ w over the signal region's events whose
    truth_n_overflow > 0, over the region's Σw."""
    from fastmc.io import read_result

    data = read_result(proj)
    ev = data["events"]
    v = ev["variables"]
    sel = ((np.asarray(ev["region_mask"]) & 1) == 1) & (np.asarray(v["truth_n_overflow"]) > 0)
    w_events = float(np.exp(np.asarray(v["log_w_region_signal"], np.float64)[sel]).sum())
    assert sel.sum() >= 3, "the capped card must make selected events overflow"
    lw = np.asarray(data["chunks"]["overflow_log_w"])[:, 0]
    assert float(np.exp(lw).sum()) == pytest.approx(w_events, rel=1e-5)  # float32 log-weights summed
    est = data["projection"]["channels"]["analog"]
    assert est["overflow_w_share"] == pytest.approx(w_events / est["sum_w"], rel=1e-5)


def _tally(path, region, key):
    with h5py.File(path, "r") as f:
        return float(f[f"tallies/analog/{region}/{key}"][-1])


def test_export_pyhf_limit_agrees_with_fastmc(proj, tmp_path, capsys):
    pyhf = pytest.importorskip("pyhf")
    from fastmc.limits import expected_upper_limit

    b0, s0 = _tally(proj, "signal", "expected"), _tally(proj, "signal", "stat_err")
    assert _tally(proj, "signal", "n") >= 12  # σ_b/b ≤ 0.3: the regime the tolerance below was measured in
    mot = 1.98e10 * 100.0 / b0  # scaled so that b = 100 events: pyhf's asymptotic formulae apply
    out = tmp_path / "ws.json"
    capsys.readouterr()
    assert main(["export", str(proj), "--pyhf", str(out), "--mot", repr(mot)]) == 0
    summary = json.loads(capsys.readouterr().out)
    spec = json.loads(out.read_text())
    meta = json.loads((tmp_path / "ws.meta.json").read_text())
    assert summary["pyhf"]["metadata"] == str(tmp_path / "ws.meta.json") and meta["mot"] == pytest.approx(mot)
    (ch,) = spec["channels"]
    assert ch["name"] == "signal_region"
    samples = {s["name"]: s for s in ch["samples"]}
    assert sorted(samples) == ["analog", "signal"]
    assert samples["signal"]["data"] == [1.0] and samples["signal"]["modifiers"][0]["type"] == "normfactor"
    # the sample is the file's tally (written by fastmc.io), rescaled to the MOT
    b, sb = samples["analog"]["data"][0], samples["analog"]["modifiers"][0]["data"][0]
    assert b == pytest.approx(100.0, rel=1e-12) and sb == pytest.approx(s0 * mot / 1.98e10, rel=1e-12)
    assert samples["analog"]["modifiers"][0]["type"] == "shapesys"
    assert spec["observations"] == [{"name": "signal_region", "data": [0.0]}]
    model = pyhf.Workspace(spec).model()
    data = [round(b)] + model.config.auxdata
    _, exp = pyhf.infer.intervals.upper_limits.upper_limit(data, model, scan=np.linspace(0.0, 80.0, 81), level=0.1)
    mine = expected_upper_limit(b, sb)["s_up"]  # exact Poisson CLs, Gamma prior of the background
    # The asymptotic (pyhf, Cowan et al. EPJC 71 (2011) 1554) and exact limits differ by the
    # discreteness of the count (the exact CLs counts P(n ≤ n_obs), ≈ +0.45 event at b = 10…100 with
    # σ_b = 0) and by profiling (pyhf) instead of integrating (fastmc) the background's MC error
    # (≤ 0.6 event at b = 100 for σ_b/b ≤ 0.3, measured): within 1 event (4 % here).  At b ≪ 1
    # they do not both apply: with n_obs = 0 the exact limit is 2.303 events, the asymptotic one ~1.4.
    assert abs(float(exp[2]) - mine) < 1.0, (float(exp[2]), mine)
    assert meta["fastmc_limits_90cl"]["expected_mu"] == pytest.approx(mine, rel=1e-9)  # mu = events here


def test_export_pyhf_zero_event_channels_left_out_and_listed():
    pytest.importorskip("pyhf")
    import pyhf

    from fastmc.export import build_workspace

    proj = {"mot": 2e10, "region": "signal", "channels": {
        "analog": {"n_selected": 3, "expected": 5.0, "stat_err": 3.0, "upper_limit_90": None},
        "hadron_decay": {"n_selected": 7, "expected": 0.02, "stat_err": 0.01, "upper_limit_90": None},
        "momentum_misreconstruction": {"n_selected": 0, "expected": 0.0, "stat_err": 0.0, "upper_limit_90": 0.4}}}
    spec, meta = build_workspace(proj, mot=4e10, observed=2)
    names = [s["name"] for s in spec["channels"][0]["samples"]]
    assert names == ["signal", "hadron_decay"]  # analog counts the same background; no estimate for the empty one
    assert spec["channels"][0]["samples"][1]["data"] == [pytest.approx(0.04)]
    assert meta["excluded_channels"] == {"momentum_misreconstruction": {"n_selected": 0, "upper_limit_90": 0.8}}
    assert spec["observations"][0]["data"] == [2.0]
    pyhf.Workspace(spec)  # the schema accepts it


def _fake_sensitivity(path, masses=(100.0, 500.0)):
    with h5py.File(path, "w") as f:
        f.attrs["fastmc_version"] = "0"
        f.attrs["kind"] = "sensitivity"
        s = f.create_group("sensitivity")
        n = len(masses)
        cols = {"mass_MeV": masses, "yield_per_mot_g1": [2e-3, 1e-3][:n], "yield_per_mot_g1_err": [1e-4, 1e-4][:n],
                "g_up": [3e-6, 5e-6][:n], "signal_events_g1": [4e7, 2e7][:n]}
        for k, v in cols.items():
            s.create_dataset(k, data=np.asarray(v, np.float64))
        s.attrs["model"] = "z_prime"
        s.attrs["mot"] = 2e10
        s.attrs["background_json"] = "{}"
        s.attrs["limit_json"] = "{}"


def test_export_signal_from_sensitivity_file(proj, tmp_path, capsys):
    pytest.importorskip("pyhf")
    sens = tmp_path / "sens.h5"
    _fake_sensitivity(sens)
    out = tmp_path / "ws.json"
    assert main(["export", str(proj), "--pyhf", str(out), "--signal", str(sens), "--mass", "500"]) == 0
    spec = json.loads(out.read_text())
    sig = spec["channels"][0]["samples"][0]
    # mu = (g / g_ref)²: the sample is the yield at g_ref = the file's limit at 500 MeV, at the file's MOT
    assert sig["data"][0] == pytest.approx(1.98e10 * 1e-3 * 5e-6**2, rel=1e-12)
    meta = json.loads((tmp_path / "ws.meta.json").read_text())
    assert meta["signal"]["g_ref"] == 5e-6 and meta["signal"]["mass_MeV"] == 500.0
    err = _one_line_exit2(capsys, ["export", str(proj), "--pyhf", str(out), "--signal", str(sens), "--mass", "300"])
    assert "--mass = 300" in err and "100, 500" in err


def test_export_root_round_trip(proj, tmp_path, capsys):
    uproot = pytest.importorskip("uproot")
    from fastmc.io import read_result

    out = tmp_path / "ev.root"
    assert main(["export", str(proj), "--root", str(out)]) == 0
    data = read_result(proj)
    n_gen = data["projection"]["channels"]["analog"]["n_generated"]
    with uproot.open(out) as f:
        t = f["events"].arrays(library="np")
        assert len(t["weight"]) == data["n_events"] > 0
        for r, region in enumerate(("signal", "control")):
            in_r = (t["region_mask"] >> r) & 1 == 1
            # Σ of the region's weights = the region's Σw of the tally (float32 log-weights: 1e-5)
            w_r = np.exp(t[f"log_w_region_{region}"][in_r])
            assert np.sum(w_r) == pytest.approx(math.exp(_tally(proj, region, "log_sw")), rel=1e-5)
            h = f[f"hist/{region}/analog/p_out_GeV"]
            sw = h.values(flow=True)
            x = t["p_out_GeV"][in_r]
            w_mot = 1.98e10 * w_r / n_gen
            assert np.sum(sw) == pytest.approx(np.sum(w_mot), rel=1e-12)  # flow bins included
            inr = (x >= 0.0) & (x < 200.0)
            assert np.sum(h.values()) == pytest.approx(np.sum(w_mot[inr]), rel=1e-12)
            assert np.sum(h.variances(flow=True)) == pytest.approx(np.sum(w_mot**2), rel=1e-12)
            assert np.sum(sw) == pytest.approx(_tally(proj, region, "expected"), rel=1e-5)
            for var in ("e_ecal_GeV", "e_hcal_GeV", "truth_p_out_GeV"):
                assert np.sum(f[f"hist/{region}/analog/{var}"].values(flow=True)) == pytest.approx(np.sum(w_mot))
        assert json.loads(f["channels"]) == ["analog"]
    # a region that selected nothing gets empty histograms (the quickstart's signal region, often)
    from fastmc.export import weighted_hist

    sw, sw2 = weighted_hist(np.zeros(0), np.zeros(0), 10, 0.0, 1.0)
    assert sw.dtype == sw2.dtype == np.float64 and sw.shape == (12,) and not sw.any()
    sw, _ = weighted_hist(np.array([-1.0, 0.0, 0.5, 1.0, np.nan]), np.ones(5), 2, 0.0, 1.0)
    assert list(sw) == [1.0, 1.0, 1.0, 2.0]  # underflow, [0, 0.5), [0.5, 1), overflow (1.0 and NaN)


def test_export_saved_events_carry_truth(proj):
    from fastmc.chain import TRUTH_PROCESS_NAMES
    from fastmc.io import read_result

    v = read_result(proj)["events"]["variables"]
    with h5py.File(proj, "r") as f:
        names = json.loads(f["events"].attrs["truth_hardest_proc_names"])
    assert names == {str(k): n for k, n in TRUTH_PROCESS_NAMES.items()} and names["3"] == "photonuclear"
    assert set(np.unique(v["truth_hardest_proc"])) <= {-1, 0, 1, 2, 3}
    assert np.all(np.isnan(v["truth_decay_z_mm"]))  # muons only: no decay in flight
    has = v["truth_hardest_proc"] >= 0
    assert np.all(np.isfinite(v["truth_hardest_z_mm"][has])) and np.all(v["truth_hardest_GeV"][has] > 0)
    assert np.all(v["truth_p_out_GeV"] >= v["truth_p_exit_GeV"] - 1e-3)  # losses downstream only add
    # events that really lost energy upstream of MS2 (a hardest transfer > 20 GeV in the target
    # region): energy is conserved (what reaches MS2 plus that transfer stays below the beam, 160 GeV
    # with its spread), and the spectrometer's reconstruction, from hits, agrees with the true p_out
    # (a few % resolution; the truth at the setup's exit would be ~10 GeV lower, the HCAL's loss)
    model = tomllib.loads((RUNS.parent / "models" / "na64mu_2022.toml").read_text())
    z_ms2 = 1e3 * next(e["z_m"] for e in model["elements"] if e["name"] == "MS2a")
    hard = (v["truth_hardest_GeV"] > 20.0) & (v["truth_hardest_z_mm"] < z_ms2)
    assert hard.sum() >= 5
    assert np.all(v["truth_p_out_GeV"][hard] + v["truth_hardest_GeV"][hard] < 1.1 * 160.0)
    good = np.abs(v["p_out_GeV"][hard] / v["truth_p_out_GeV"][hard] - 1.0) < 0.05
    assert good.mean() > 0.8, good.mean()


def test_export_bad_inputs_one_line(proj, tmp_path, capsys, monkeypatch):
    sens = tmp_path / "sens.h5"
    _fake_sensitivity(sens)
    txt = tmp_path / "card.toml"
    txt.write_text("x = 1\n")
    no_ev = tmp_path / "noev.h5"
    shutil.copy(proj, no_ev)
    with h5py.File(no_ev, "a") as f:
        del f["events"]
    ws = str(tmp_path / "ws.json")
    cases = [
        (["export", str(proj)], "nothing to export"),
        (["export", str(tmp_path / "missing.h5"), "--pyhf", ws], "file not found"),
        (["export", str(txt), "--pyhf", ws], "not an HDF5 file"),
        (["export", str(sens), "--pyhf", ws], "a sensitivity output (fastmc sensitivity), not a background projection"),
        (["export", str(proj), "--pyhf", ws, "--signal", str(proj)], "not a 'fastmc sensitivity' output"),
        (["export", str(proj), "--pyhf", ws, "--mass", "100"], "--mass needs --signal"),
        (["export", str(proj), "--pyhf", str(tmp_path / "ws.txt")], "must end in .json"),
        (["export", str(proj), "--pyhf", "/proc/x/ws.json"], "does not exist"),
        (["export", str(proj), "--root", str(tmp_path / "x.root"), "--pyhf", "/proc/ws.json"], "cannot create a file"),
        (["export", str(proj), "--pyhf", ws, "--observed", "-1"], "--observed"),
        (["export", str(proj), "--pyhf", ws, "--mot", "0"], "--mot"),
        (["export", str(no_ev), "--root", str(tmp_path / "x.root")], "rerun 'fastmc project' with --save-events"),
    ]
    for argv, want in cases:
        assert want in _one_line_exit2(capsys, argv), argv
    assert not (tmp_path / "ws.json").exists() and not (tmp_path / "x.root").exists()
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "uproot" else real(name, *a))
    assert "pip install 'fastmc[export]'" in _one_line_exit2(capsys, ["export", str(proj), "--root", str(tmp_path / "x.root")])
