"""Every command over bad inputs and foreign files (one line on stderr, exit 2, no traceback), every
file fastmc writes recognised by every command, and one regression test per bug of issue #26.

The fastmc files are written once per module by fastmc's own writers (fastmc.io.write_result,
fastmc.sensitivity.write_sensitivity via the CLI, fastmc.optimise.write_history) from small
synthetic results: no simulation runs here (the signal yields of ``fastmc sensitivity`` are
replaced by fixed numbers; everything after them is the command's own code).
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import subprocess
import sys
import types

import h5py
import numpy as np
import pytest

from fastmc.cli import COMMANDS, main

from .conftest import ROOT

QUICKSTART = ROOT / "runs" / "quickstart.toml"
SIGNAL_CARD = ROOT / "runs" / "na64mu_2022.toml"  # has a [signal] table
PNG = b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + bytes(range(256)) * 4


def run_cli(args, capsys):
    try:
        code = main([str(a) for a in args])
    except SystemExit as e:  # argparse's own errors (Parser.error) exit from inside parse_args
        code = e.code
    out, err = capsys.readouterr()
    return code, out, err


def assert_one_line_error(code, err, *needles):
    assert code == 2, err
    assert "Traceback" not in err
    lines = err.strip("\n").split("\n")
    assert len(lines) == 1 and lines[0].startswith("fastmc: error: "), err
    for n in needles:
        assert n in err, (n, err)


# ------------------------------------------------------------------------------------------
# files: bad inputs, and the files fastmc writes (from synthetic results)
# ------------------------------------------------------------------------------------------

def _fake_result(chunk_ids, heavy: bool):
    """A RunResult of one channel, two regions (two slots each), 4096 weighted events per chunk.
    ``heavy``: weights from a Pareto law of index 1/0.95 (a heavy tail: Pareto-k ≈ 0.95)."""
    import jax.numpy as jnp

    from fastmc.run import RunResult
    from fastmc.tally import chunk_tally

    rows = []
    for c in chunk_ids:
        rng = np.random.default_rng(100 + int(c))
        u = rng.uniform(size=4096)
        lw = -np.log(u) * 0.95 if heavy else np.log(rng.uniform(0.5, 1.5, size=4096))
        sel = rng.uniform(size=4096) < 0.5
        masks = jnp.stack([jnp.ones(4096, bool), jnp.asarray(sel), jnp.ones(4096, bool), jnp.asarray(sel)])
        rows.append([np.asarray(chunk_tally(masks, jnp.asarray(lw - 20.0)), dtype=np.float64)])
    return RunResult(channels=("analog",), slots=[("signal", 0, "generated"), ("signal", 1, "p_out_GeV <= 80"),
                                                  ("control", 0, "generated"), ("control", 1, "p_out_GeV <= 140")],
                     chunk_ids=np.asarray(chunk_ids), rows=np.array(rows), n_gen=np.full(len(chunk_ids), 4096),
                     overflow=np.zeros((len(chunk_ids), 1), np.int64))


def _write_projection(path, cfg, chunk_ids, heavy=False):
    from fastmc.io import write_result
    from fastmc.projection import projection_from

    res = _fake_result(chunk_ids, heavy)
    return write_result(path, cfg, res, projection_from(cfg.mot, "signal", res), None, "test")


def _fake_signal_yields(cfg, masses, model, *, n_muons=None, progress=False, log=None):
    rows = [{"mass_MeV": m, "sigma_pb_lead_g1": 1e3, "emission_prob_g1": 1e-9, "efficiency": 0.5,
             "br_invisible": 1.0, "yield_per_mot_g1": 5e-10, "yield_per_mot_g1_err": 1e-11} for m in masses]
    return rows, None, types.SimpleNamespace(chunk_ids=np.arange(1), seconds=0.0)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    from fastmc.optimise import write_history
    from fastmc.runcard import load_run

    d = tmp_path_factory.mktemp("robust")
    bad = {"missing": d / "missing.h5", "empty": d / "empty.h5", "png": d / "image.png", "text": d / "notes.txt",
           "foreign_h5": d / "foreign.h5", "directory": d / "folder"}
    bad["empty"].write_bytes(b"")
    bad["png"].write_bytes(PNG)
    bad["text"].write_text("run = 'not a fastmc file'\nhello world\n")
    with h5py.File(bad["foreign_h5"], "w") as f:
        f.create_dataset("x", data=np.arange(3))
        f.attrs["creator"] = "somebody else"
    bad["directory"].mkdir()
    cfg = load_run(QUICKSTART)
    good = {"q1": _write_projection(d / "q1.h5", cfg, [0]), "q2": _write_projection(d / "q2.h5", cfg, [1]),
            "bg": _write_projection(d / "bg.h5", cfg, [0, 1], heavy=True)}
    problem = types.SimpleNamespace(params=[types.SimpleNamespace(name="ECAL.z_m", unit="m")],
                                    lo=np.array([0.0]), hi=np.array([1.0]))
    hist = {"loss": [1.0, 0.5], "grad_norm": [0.3, 0.1], "x": [[0.1], [0.2]], "seconds": [0.1, 0.2], "x_final": [0.2]}
    good["opt"] = d / "opt.h5"
    write_history(good["opt"], cfg, problem, hist, {"x_baseline": [0.1], "x_written": [0.2]}, "", None, "test")
    return types.SimpleNamespace(dir=d, bad=bad, cfg=cfg, **good)


@pytest.fixture(scope="module")
def sens(files):
    """``fastmc sensitivity --background-from bg.h5 -o s.h5 --json`` (signal yields replaced by fixed numbers):
    (exit code, stdout, stderr, output path)."""
    import fastmc.sensitivity as S

    mp = pytest.MonkeyPatch()
    mp.setattr(S, "signal_yields", _fake_signal_yields)
    out = files.dir / "s.h5"
    so, se = io.StringIO(), io.StringIO()
    try:
        with contextlib.redirect_stdout(so), contextlib.redirect_stderr(se):
            code = main(["sensitivity", str(SIGNAL_CARD), "--background-from", str(files.bg), "--masses", "100,500",
                         "-o", str(out), "--json", "--no-progress"])
    finally:
        mp.undo()
    return code, so.getvalue(), se.getvalue(), out


# ------------------------------------------------------------------------------------------
# the walk: every command × every bad input
# ------------------------------------------------------------------------------------------

BAD_KINDS = ("missing", "empty", "png", "text", "foreign_h5", "directory")


def _invocations(files, bad, tmp):
    out = tmp / "out.h5"
    cases = {
        "project": [["project", bad], ["project", QUICKSTART, "-o", bad if bad.suffix == ".h5" else tmp / "x.txt"]],
        "inspect": [["inspect", bad], ["inspect", bad, "--json"]],
        "merge": [["merge", bad, files.q1, "-o", out], ["merge", files.q1, bad, "-o", out]],
        "plot": [["plot", bad, "-o", tmp / "plots"]],
        "sensitivity": [["sensitivity", bad], ["sensitivity", SIGNAL_CARD, "--background-from", bad]],
        "optimize": [["optimize", bad]],
        "validate": [["validate", "--tables", bad]],
        "bench": [["bench", bad]],
        "env": [],
    }
    if "export" in COMMANDS:  # added by another branch (issue #26): a projection file in, pyhf JSON out
        cases["export"] = [["export", bad, "--pyhf", tmp / "ws.json"]]
    return cases


@pytest.mark.parametrize("kind", BAD_KINDS)
def test_cli_every_command_refuses_bad_files_in_one_line(files, kind, tmp_path, capsys):
    bad = files.bad[kind]
    cases = _invocations(files, bad, tmp_path)
    assert set(cases) >= set(COMMANDS) - {"export"}, "a new command: add its file arguments to the walk"
    for command, invocations in cases.items():
        for args in invocations:
            if command == "project" and args[2:3] == ["-o"] and kind in ("missing", "empty", "foreign_h5"):
                continue  # a writable .h5 path: a good output, not a bad input
            code, out, err = run_cli(args, capsys)
            assert_one_line_error(code, err)
            assert out == "", (args, out)
    assert not (tmp_path / "out.h5").exists()


def test_cli_validate_refuses_foreign_tables_in_one_line(files, tmp_path, capsys):
    for name in ("eloss.h5", "deflection.h5", "decay.h5"):
        shutil.copy(files.bad["png"], tmp_path / name)
    code, _, err = run_cli(["validate", "--tables", tmp_path, "--suite", "eloss"], capsys)
    assert_one_line_error(code, err, "eloss.h5")
    shutil.copy(files.bad["foreign_h5"], tmp_path / "eloss.h5")
    code, _, err = run_cli(["validate", "--tables", tmp_path, "--suite", "eloss"], capsys)
    assert_one_line_error(code, err, "eloss.h5")


# ------------------------------------------------------------------------------------------
# bug 1: every file fastmc writes is recognised; a foreign one is refused
# ------------------------------------------------------------------------------------------

def test_cli_outputs_carry_their_kind(files, sens):
    assert sens[0] == 0, sens[2]
    for path, kind in ((files.q1, "projection"), (sens[3], "sensitivity"), (files.opt, "optimise")):
        with h5py.File(path) as f:
            assert f.attrs["kind"] == kind


def test_cli_inspect_shows_a_sensitivity_output(files, sens, capsys):
    code, out, err = run_cli(["inspect", sens[3]], capsys)
    assert code == 0, err
    assert "sensitivity output" in out and "g_up" in out and "mass MeV" in out
    code, out, err = run_cli(["inspect", sens[3], "--json"], capsys)
    d = json.loads(out)
    assert d["kind"] == "sensitivity" and [r["mass_MeV"] for r in d["rows"]] == [100.0, 500.0]
    assert d["limit"] == json.loads(sens[1])["limit"]


def test_cli_inspect_shows_an_optimise_output(files, capsys):
    code, out, err = run_cli(["inspect", files.opt], capsys)
    assert code == 0, err
    assert "optimise output" in out and "ECAL.z_m" in out and "1 → 0.5" in out


def test_cli_inspect_reads_files_written_before_the_kind_attribute(files, sens, tmp_path, capsys):
    for src in (files.q1, sens[3], files.opt):
        old = tmp_path / src.name
        shutil.copy(src, old)
        with h5py.File(old, "a") as f:
            del f.attrs["kind"]
        code, out, err = run_cli(["inspect", old], capsys)
        assert code == 0, err


def test_cli_merge_refuses_a_sensitivity_output_in_one_line(files, sens, tmp_path, capsys):
    code, out, err = run_cli(["merge", files.q1, sens[3], "-o", tmp_path / "m.h5"], capsys)
    assert_one_line_error(code, err, str(sens[3]), "sensitivity output")
    code, out, err = run_cli(["merge", files.q1, files.opt, "-o", tmp_path / "m.h5"], capsys)
    assert_one_line_error(code, err, "optimise output")
    assert not (tmp_path / "m.h5").exists()


def test_cli_plot_draws_a_sensitivity_output(files, sens, tmp_path, capsys):
    pytest.importorskip("matplotlib")
    code, out, err = run_cli(["plot", sens[3], "-o", tmp_path], capsys)
    assert code == 0, err
    assert (tmp_path / "s_exclusion.png").stat().st_size > 0


# ------------------------------------------------------------------------------------------
# bug 2: a binary file as run card or model
# ------------------------------------------------------------------------------------------

def test_cli_binary_card_or_model_is_one_line(files, tmp_path, capsys):
    code, _, err = run_cli(["project", files.bad["png"]], capsys)
    assert_one_line_error(code, err, "image.png", "binary")
    card = tmp_path / "card.toml"
    card.write_text(QUICKSTART.read_text().replace('"../models/na64mu_2022.toml"', json.dumps(str(files.bad["png"]))))
    code, _, err = run_cli(["project", card], capsys)
    assert_one_line_error(code, err, "image.png", "binary")


# ------------------------------------------------------------------------------------------
# bug 4: plot -o creates its folder
# ------------------------------------------------------------------------------------------

def test_cli_plot_creates_its_output_folder(files, tmp_path, capsys):
    pytest.importorskip("matplotlib")
    target = tmp_path / "plots" / "run1"
    code, out, err = run_cli(["plot", files.q1, "-o", target], capsys)
    assert code == 0, err
    assert target.is_dir() and any(target.glob("*.png"))
    (tmp_path / "afile").write_text("x")
    code, _, err = run_cli(["plot", files.q1, "-o", tmp_path / "afile"], capsys)
    assert_one_line_error(code, err, "not a folder")


# ------------------------------------------------------------------------------------------
# bug 5: typos are reported as unknown keys first, with the closest known name
# ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("old,new,needles", [
    ("\nn_muons = ", "\nn_muon = ", ("run.n_muon = ", "unknown key", "did you mean n_muons?")),
    ("\n[physics]", "\n[phyiscs]", ("[phyiscs]", "unknown table", "did you mean [physics]?")),
    ("\nseed = ", "\nsede = ", ("run.sede", "unknown key", "did you mean seed?")),
])
def test_cli_typo_is_reported_first_with_a_suggestion(tmp_path, capsys, old, new, needles):
    text = QUICKSTART.read_text()
    assert old in text
    card = tmp_path / "typo.toml"
    card.write_text(text.replace(old, new).replace("../models/", str(ROOT / "models") + "/"))
    code, _, err = run_cli(["project", card], capsys)
    assert_one_line_error(code, err, *needles)
    assert "required" not in err and "{" not in err  # not "missing", never a dumped dict


# ------------------------------------------------------------------------------------------
# bug 6: merge names the key that differs and both values
# ------------------------------------------------------------------------------------------

def test_cli_merge_names_the_differing_key_and_both_values(files, tmp_path, capsys):
    other = tmp_path / "q2_seed.h5"
    shutil.copy(files.q2, other)
    with h5py.File(other, "a") as f:
        f["provenance"].attrs["seed"] = 777
    code, _, err = run_cli(["merge", files.q1, other, "-o", tmp_path / "m.h5"], capsys)
    assert_one_line_error(code, err, "seed", "777", str(files.cfg.seed))
    assert not (tmp_path / "m.h5").exists()


def test_cli_merge_json_has_the_cutflow_raw_and_weighted(files, tmp_path, capsys):
    code, out, err = run_cli(["merge", files.q1, files.q2, "-o", tmp_path / "m.h5", "--json"], capsys)
    assert code == 0, err
    d = json.loads(out)
    with h5py.File(tmp_path / "m.h5") as f:
        assert f.attrs["kind"] == "projection"
        sig = f["tallies/analog/signal"]
        n, expected = list(sig["n"][:]), list(sig["expected"][:])
    steps = d["cutflow"]["analog"]["signal"]
    assert [s["raw"] for s in steps] == n and [s["weighted"] for s in steps] == pytest.approx(expected, rel=1e-12)
    assert steps[0]["raw"] == 8192 and set(d["cutflow"]["analog"]) == {"signal", "control"}


# ------------------------------------------------------------------------------------------
# bug 7: python -m fastmc.cli, a closed stdout, the top-level error's help
# ------------------------------------------------------------------------------------------

def _env():
    return {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}


def test_cli_runs_as_python_m_fastmc_cli():
    r = subprocess.run([sys.executable, "-m", "fastmc.cli", "--version"], capture_output=True, text=True,
                       timeout=60, env=_env())
    assert r.returncode == 0 and r.stdout.startswith("fastmc "), r.stderr
    r = subprocess.run([sys.executable, "-m", "fastmc.cli", "bogus"], capture_output=True, text=True,
                       timeout=60, env=_env())
    assert r.returncode == 2 and "(see 'fastmc --help')" in r.stderr and "fastmc fastmc" not in r.stderr


def test_cli_closed_stdout_ends_quietly(files):
    r, w = os.pipe()
    os.close(r)  # the reader is gone before anything is written (as 'fastmc inspect --json F | head' ends)
    try:
        p = subprocess.run([sys.executable, "-m", "fastmc", "inspect", "--json", str(files.q1)], stdout=w,
                           stderr=subprocess.PIPE, text=True, timeout=120, env=_env())
    finally:
        os.close(w)
    assert p.returncode in (0, 141), p.stderr
    assert p.stderr == "", p.stderr


def test_cli_closed_stdout_in_process(files, monkeypatch, capsys):
    class Closed:
        def write(self, s):
            raise BrokenPipeError(32, "Broken pipe")

        def flush(self):
            raise BrokenPipeError(32, "Broken pipe")

    monkeypatch.setattr(sys, "stdout", Closed())
    assert main(["inspect", "--json", str(files.q1)]) == 141


# ------------------------------------------------------------------------------------------
# bug 8: the background's diagnostic warnings reach the sensitivity output
# ------------------------------------------------------------------------------------------

def test_cli_sensitivity_carries_the_background_warnings(files, sens):
    from fastmc.io import read_result
    from fastmc.tally import PARETO_K_WARN

    code, out, err, path = sens
    assert code == 0, err
    k = read_result(files.bg)["projection"]["channels"]["analog"]["pareto_k"]
    assert k > PARETO_K_WARN  # the synthetic background has a heavy weight tail (index 0.95)
    assert "fastmc: warning: background channel analog: Pareto-k" in err
    warns = json.loads(out)["background"]["warnings"]
    assert len(warns) >= 1 and any("Pareto-k" in w for w in warns)
    with h5py.File(path) as f:
        assert json.loads(f["sensitivity"].attrs["background_warnings"]) == warns
    from fastmc.sensitivity import read_sensitivity

    assert read_sensitivity(path)["background"]["warnings"] == warns


# ------------------------------------------------------------------------------------------
# tables: Pareto-k column, cut flow in inspect (raw and weighted), --region, env
# ------------------------------------------------------------------------------------------

def test_cli_inspect_table_has_pareto_k_and_the_cutflow(files, capsys):
    from fastmc.io import read_result

    proj = read_result(files.bg)["projection"]
    code, out, err = run_cli(["inspect", files.bg], capsys)
    assert code == 0, err
    header = next(line for line in out.splitlines() if line.startswith("channel"))
    row = next(line for line in out.splitlines() if line.startswith("analog"))
    assert header.split()[-1] == "Pareto-k"
    assert row.split()[-1] == f"{proj['channels']['analog']['pareto_k']:.2f}"
    assert "cut flow [analog] region 'signal'" in out and "raw" in out and "weighted" in out
    assert "region 'control'" not in out


def test_cli_inspect_region_shows_a_control_region(files, capsys):
    from fastmc.io import read_result

    steps = read_result(files.q1)["projection"]["cutflow"]["analog"]["control"]
    code, out, err = run_cli(["inspect", files.q1, "--region", "control"], capsys)
    assert code == 0, err
    assert "region 'control'" in out and "cut flow [analog] region 'control'" in out
    row = next(line for line in out.splitlines() if line.startswith("analog"))
    assert int(row.split()[4]) == steps[-1]["n_selected"]
    code, out, err = run_cli(["inspect", files.q1, "--region", "control", "--json"], capsys)
    assert json.loads(out)["channels"]["analog"]["expected"] == steps[-1]["expected"]
    code, _, err = run_cli(["inspect", files.q1, "--region", "sr"], capsys)
    assert_one_line_error(code, err, "'sr'", "signal, control")


def test_cli_env_lists_optional_packages(capsys):
    from importlib import metadata

    code, out, err = run_cli(["env"], capsys)
    assert code == 0, err
    for name in ("matplotlib", "dask", "scipy", "geant4-pybind", "pyhf", "uproot"):
        line = next(ln for ln in out.splitlines() if ln.split()[:1] == [name])
        try:
            assert metadata.version(name) in line
        except metadata.PackageNotFoundError:
            assert "not installed" in line
