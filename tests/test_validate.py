"""``fastmc validate``: comparison machinery on synthetic histograms, a reduced-statistics run on
real tables, a perturbed table that must fail, and the CLI exit codes."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import h5py
import numpy as np
import pytest

from fastmc.cli import main
from fastmc.validate import (
    Hist,
    TableError,
    chi2_check,
    chi2_sf,
    compare_bins,
    core_width_check,
    default_tables_dir,
    hist_from_samples,
    homogenise_layers,
    load_tables,
    load_tolerances,
    median_check,
    run_validation,
    tail_check,
    write_report,
)

TABLES = default_tables_dir()
EDGES = np.linspace(-5.0, 5.0, 101)


def _gauss_hist(seed: int, n: int, sigma: float = 1.0, tail: float = 0.0) -> Hist:
    rng = np.random.default_rng(seed)
    x = rng.normal(0.0, sigma, n)
    if tail:
        m = rng.random(n) < tail
        x[m] = rng.choice([-1, 1], m.sum()) * rng.uniform(3.0, 5.0, m.sum())
    return hist_from_samples(x, EDGES, n, unit="mrad", scale=1.0)


# ----------------------------------------------------------------------------- machinery


def test_chi2_sf_matches_known_values():
    from scipy.stats import chi2

    for x, k in [(1.0, 1), (10.0, 3), (95.0, 100), (150.0, 100), (3.0, 7), (400.0, 300)]:
        assert chi2_sf(x, k) == pytest.approx(chi2.sf(x, k), rel=1e-9, abs=1e-300)


def test_compare_identical_histograms_pass():
    a = _gauss_hist(1, 200_000)
    cmp = compare_bins(a, a)
    assert cmp["chi2"] == 0.0 and cmp["p_value"] == pytest.approx(1.0)
    assert chi2_check(a, a, 0.001)["passed"]
    assert tail_check(a, a, [2.0, 3.0], 0.1, 3.0, two_sided=True)["passed"]
    assert core_width_check(a, a, 0.05, 3.0)["passed"]
    assert median_check(a, a, 0.03, 3.0)["passed"]


def test_compare_independent_samples_pass():
    # two statistically independent samples of the same law, different sizes (per-event normalisation)
    a, b = _gauss_hist(1, 400_000), _gauss_hist(2, 100_000)
    r = chi2_check(a, b, 0.001)
    assert r["passed"] and 0.6 < r["chi2_ndf"] < 1.5
    assert core_width_check(a, b, 0.05, 3.0)["passed"]
    assert tail_check(a, b, [2.0, 3.0], 0.1, 3.0, two_sided=True)["passed"]


def test_compare_perturbed_histograms_fail():
    a = _gauss_hist(1, 400_000)
    wider = _gauss_hist(2, 400_000, sigma=1.08)
    w = core_width_check(a, wider, 0.05, 3.0)
    assert not w["passed"] and w["ratio"] == pytest.approx(1.08, abs=0.01)
    assert not chi2_check(a, wider, 0.001)["passed"]
    tails = _gauss_hist(3, 400_000, tail=0.002)
    t = tail_check(a, tails, [3.0, 4.0], 0.1, 3.0, two_sided=True)
    assert not t["passed"] and t["worst"]["ratio"] > 1.5
    shifted = hist_from_samples(np.random.default_rng(4).normal(0.1, 1.0, 400_000), EDGES, 400_000)
    assert not median_check(a, shifted, 0.03, 3.0)["passed"]  # |Δ| = 0.1 at median 0: only z decides


def test_normalisation_is_per_generated_event():
    a = _gauss_hist(1, 100_000)
    lost = a.with_full(np.floor(a.full() * 0.9))  # 10 % of the events lost, same shape
    assert not chi2_check(a, lost, 0.001)["passed"]


def test_homogenise_layers_collapses_sampling_cells():
    layers = [("lead", 1.5), ("scintillator", 1.5)] * 150 + [("scintillator", 20.0)] + \
             [("copper", 10.0), ("scintillator", 2.0)] * 30 + [("iron", 25.0), ("scintillator", 4.0)] * 192
    out, changed = homogenise_layers(layers)
    assert changed
    assert out == [("lead1.5mm+scintillator1.5mm", 450.0), ("scintillator", 20.0),
                   ("copper10mm+scintillator2mm", 360.0), ("iron25mm+scintillator4mm", 5568.0)]
    assert homogenise_layers([("iron", 500.0)]) == ([("iron", 500.0)], False)


def test_tolerances_each_have_a_reason(tmp_path):
    tol = load_tolerances(TABLES / "tolerances.toml")
    for suite in ("eloss", "deflection", "decay"):
        for checks in tol[suite].values():
            for par in checks.values():
                assert par["reason"].strip()
    bad = tmp_path / "tol.toml"
    bad.write_text('schema_version = 1\n[eloss.eloss.median]\nrel_tol = 0.03\nn_sigma = 3.0\n')
    with pytest.raises(TableError, match="reason"):
        load_tolerances(bad)


# ----------------------------------------------------------------------------- real tables


@pytest.mark.slow
@pytest.mark.validation
def test_validate_reduced_statistics_passes(tmp_path):
    """Configurations where fastmc and Geant4 agree (thick iron energy loss; K⁺ → μ⁺ν; π⁺ → μ⁺ν
    spectra) pass at reduced statistics, and the report is written."""
    rep = run_validation("eloss", stat_scale=0.03, seed=7, groups=["iron_1p5m_160GeV"])
    assert rep["rows"] and rep["passed"], [r for r in rep["rows"] if not r["passed"]]
    rep_d = run_validation("decay", stat_scale=0.05, seed=7, groups=["Kplus_160GeV_mu_nu", "Kplus_160GeV_pi0_mu_nu"])
    assert rep_d["passed"], [r for r in rep_d["rows"] if not r["passed"]]
    assert {r["observable"] for r in rep_d["rows"]} == {"p_mu", "theta_mu"}
    rep_d["wall_s"] = 0.0
    written = write_report(rep_d, tmp_path / "report", plots=False)
    summary = json.loads(Path(written["json"]).read_text())
    assert summary["passed"] and summary["n_checks"] == 4


@pytest.mark.slow
@pytest.mark.validation
def test_validate_perturbed_table_fails(tmp_path):
    """Scaling the tail (ΔE > 5 GeV) of a real table by 1.3 must make the tail check fail."""
    tables = tmp_path / "tables"
    tables.mkdir()
    shutil.copy(TABLES / "eloss.h5", tables / "eloss.h5")
    with h5py.File(tables / "eloss.h5", "r+") as fh:
        _scale_tail(fh["iron_1p5m_160GeV/eloss"], 1.3)
    rep = run_validation("eloss", tables, stat_scale=0.03, seed=7, groups=["iron_1p5m_160GeV"])
    by = {r["check"]: r for r in rep["rows"]}
    assert not by["tail_fraction"]["passed"]
    assert by["tail_fraction"]["result"]["worst"]["ratio"] < 0.85
    assert not rep["passed"]


def _scale_tail(d, factor: float) -> None:
    """Scale the counts with ΔE > 5 GeV by ``factor``, taking the extra entries from the peak bin
    (the table stays consistent: entries ≤ n_events)."""
    edges, counts = d["edges"][()], d["counts"][()]
    tail = edges[:-1] >= 5.0
    new_tail = np.round(counts[tail] * factor).astype(counts.dtype)
    counts[np.argmax(counts)] -= int(new_tail.sum() - counts[tail].sum())
    counts[tail] = new_tail
    d["counts"][...] = counts


def test_inconsistent_table_is_rejected(tmp_path):
    shutil.copy(TABLES / "eloss.h5", tmp_path / "eloss.h5")
    with h5py.File(tmp_path / "eloss.h5", "r+") as fh:
        d = fh["iron_1p5m_160GeV/eloss/counts"]
        d[...] = d[()] * 2
    with pytest.raises(TableError, match="exceed"):
        load_tables(tmp_path, ("eloss",))


# ----------------------------------------------------------------------------- CLI


def _small_tables(tmp_path: Path, scale_tail: float | None = None) -> Path:
    """A one-group eloss table (iron 1.5 m) so the CLI run stays short."""
    tables = tmp_path / "tables"
    tables.mkdir(parents=True)
    with h5py.File(TABLES / "eloss.h5", "r") as src, h5py.File(tables / "eloss.h5", "w") as dst:
        for k, v in src.attrs.items():
            dst.attrs[k] = v
        src.copy("iron_1p5m_160GeV", dst)
        if scale_tail is not None:
            _scale_tail(dst["iron_1p5m_160GeV/eloss"], scale_tail)
    return tables


@pytest.mark.validation
def test_cli_validate_exit_codes(tmp_path, capsys):
    good = _small_tables(tmp_path / "a")
    assert main(["validate", "--suite", "eloss", "--tables", str(good), "--stat-scale", "0.03", "--seed", "7",
                 "--report", str(tmp_path / "rep")]) == 0
    out = capsys.readouterr()
    assert "PASS" in out.out and "FAIL" not in out.out
    summary = json.loads((tmp_path / "rep" / "summary.json").read_text())
    assert summary["passed"] and summary["tolerances"].endswith("tolerances.toml")
    pytest.importorskip("matplotlib")
    assert (tmp_path / "rep" / "eloss_iron_1p5m_160GeV_eloss.png").stat().st_size > 10_000

    bad = _small_tables(tmp_path / "b", scale_tail=1.3)
    assert main(["validate", "--suite", "eloss", "--tables", str(bad), "--stat-scale", "0.03", "--seed", "7"]) == 1
    assert "FAIL" in capsys.readouterr().out


def test_cli_validate_bad_input_exit_2(tmp_path, capsys):
    def one_line_error(argv):
        assert main(argv) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("fastmc: error:") and "\n" not in err
        return err

    assert "unknown suite" in one_line_error(["validate", "--suite", "showers"])
    assert "not a folder" in one_line_error(["validate", "--tables", str(tmp_path / "nope")])
    assert "missing reference table" in one_line_error(["validate", "--suite", "decay", "--tables", str(tmp_path)])
    (tmp_path / "eloss.h5").write_bytes(b"not an hdf5 file")
    assert "unreadable" in one_line_error(["validate", "--suite", "eloss", "--tables", str(tmp_path)])
    with pytest.raises(SystemExit) as e:  # flag values are checked by argparse: exit 2, one line
        main(["validate", "--stat-scale", "-1"])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip()
    assert "--stat-scale" in err and "\n" not in err
    with pytest.raises(SystemExit) as e:
        main(["validate", "--help"])
    assert e.value.code == 0


def test_load_tables_reads_every_suite():
    tables = load_tables(TABLES, ("eloss", "deflection", "decay"))
    assert len(tables["eloss"]) == 9 and len(tables["deflection"]) == 6
    g = tables["deflection"][0]
    assert set(g.hists) == {"theta_x", "theta_y", "theta_space", "disp_x"} and g.hists["theta_x"].scale > 0


def test_validate_package_imports_only_lower_layers():
    """fastmc/validate/ is layered: statistics < tables < simulate < suites, report (text and files)
    beside them; no module imports one above it, statistics no other fastmc module, and JAX is
    imported only inside functions (``import fastmc.validate`` stays light)."""
    import ast

    import fastmc.validate

    allowed = {"statistics": set(), "tables": {"statistics"}, "report": {"statistics"},
               "simulate": {"statistics", "tables"}, "suites": {"statistics", "tables", "simulate", "report"}}
    pkg = Path(fastmc.validate.__file__).parent
    assert {p.stem for p in pkg.glob("*.py")} == set(allowed) | {"__init__"}
    for name, ok in allowed.items():
        tree = ast.parse((pkg / f"{name}.py").read_text())
        mods = {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
        mods |= {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
        inner = {m.rsplit(".", 1)[1] for m in mods if m.startswith("fastmc.validate.")}
        assert inner <= ok, (name, inner - ok)
        assert not any(m == "fastmc.validate" for m in mods), name
        if name == "statistics":
            assert not any(m.split(".")[0] == "fastmc" for m in mods)
        top = {a.name for n in tree.body if isinstance(n, ast.Import) for a in n.names}
        top |= {n.module for n in tree.body if isinstance(n, ast.ImportFrom) and n.module}
        assert not any(m.split(".")[0] == "jax" for m in top), name
