"""The command line as a user runs it: exit codes, one-line errors, JSON schema, output files."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time

import h5py
import numpy as np
import pytest

from fastmc.cli import main

from .conftest import ANALOG_CARD, ROOT

SMALL = ["--n-muons", "8192", "--chunk-size", "4096", "--no-progress"]


def run_cli(args, capsys):
    code = main(args)
    out, err = capsys.readouterr()
    return code, out, err


def test_cli_version_is_fast_and_lazy():
    t0 = time.perf_counter()
    r = subprocess.run([sys.executable, "-m", "fastmc", "--version"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and r.stdout.startswith("fastmc ")
    # and it does not import JAX (what makes it instant)
    r2 = subprocess.run(
        [sys.executable, "-c", "import sys; from fastmc.cli import build_parser; build_parser(); print('jax' in sys.modules)"],
        capture_output=True, text=True, timeout=60,
    )
    assert r2.stdout.strip() == "False"
    assert time.perf_counter() - t0 < 30


@pytest.mark.slow
def test_cli_project_json_has_all_fields(tmp_path, capsys):
    out_h5 = tmp_path / "q.h5"
    code, out, err = run_cli(["project", str(ANALOG_CARD), "--json", "-o", str(out_h5), *SMALL], capsys)
    assert code == 0, err
    d = json.loads(out)
    assert set(d) >= {"mot", "channels", "total", "output"}
    assert d["output"] == str(out_h5)
    assert isinstance(d["mot"], float) and d["mot"] == pytest.approx(1.98e10)
    ch = d["channels"]["analog"]
    for key, typ in [("expected", float), ("stat_err", float), ("n_selected", int), ("n_generated", int),
                     ("ess", float), ("max_weight_share", (float, type(None))), ("upper_limit_90", (float, type(None)))]:
        assert isinstance(ch[key], typ), (key, ch[key])
    assert ch["n_generated"] == 8192
    # zero signal events in 8192 muons → an explicit upper limit, not 0 ± 0
    assert ch["n_selected"] == 0 and ch["upper_limit_90"] == pytest.approx(2.302585 * 1.98e10 / 8192, rel=1e-6)
    assert set(d["total"]) == {"expected", "stat_err"}
    # the HDF5 file is readable with plain h5py and carries provenance
    with h5py.File(out_h5) as f:
        assert f.attrs["schema_version"] == 1
        for key in ("jax", "numpy", "seed", "chunk_size", "config_sha256", "table_hash", "backend", "git_describe"):
            assert key in f["provenance"].attrs, key
        assert json.loads(f["config"].attrs["json"])["n_muons"] == 8192
        assert f["tallies/analog/signal/n"][0] == 8192
        # (chunks, channels, slots, fields): slots 1 + trigger + 11 signal cuts, 1 + trigger + 4 control cuts
        assert f["chunks/rows"].shape == (2, 1, 13 + 6, 4 + 32)
    # inspect round trip
    code, out2, _ = run_cli(["inspect", str(out_h5), "--json"], capsys)
    assert code == 0 and json.loads(out2)["channels"]["analog"] == d["channels"]["analog"]
    code, text, _ = run_cli(["inspect", str(out_h5)], capsys)
    assert code == 0 and "analog" in text and "seed" in text


BAD_FLAGS = [
    (["--mot", "-1"], "--mot"),
    (["--mot", "nan"], "--mot"),
    (["--n-muons", "1.5"], "--n-muons"),
    (["--seed", "-3"], "--seed"),
    (["--chunk-size", "0"], "--chunk-size"),
    (["--chunks", "5:2"], "--chunks"),
    (["--bogus"], "unrecognized"),
]


@pytest.mark.parametrize("flags,needle", BAD_FLAGS, ids=[" ".join(f) for f, _ in BAD_FLAGS])
def test_cli_bad_flags_exit_2_one_line(flags, needle, capsys):
    with pytest.raises(SystemExit) as e:
        main(["project", str(ANALOG_CARD), *flags])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and needle in err, err


def test_cli_malformed_card_exit_2_and_nothing_written(tmp_path, capsys):
    good = tmp_path / "good.h5"
    good.write_bytes(b"previous good output")
    card = tmp_path / "card.toml"
    card.write_text((ANALOG_CARD).read_text()
                    .replace('"../../models/', f'"{ROOT}/models/').replace("seed = 20221", "seed = -4"))
    code, out, err = run_cli(["project", str(card), "-o", str(good)], capsys)
    assert code == 2
    assert err.count("\n") == 1 and "run.seed = -4" in err and str(card) in err
    assert good.read_bytes() == b"previous good output"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["card.toml", "good.h5"]  # no temp or partial files


def test_cli_bad_output_path_exit_2(tmp_path, capsys):
    code, _, err = run_cli(["project", str(ANALOG_CARD), "-o", str(tmp_path / "no" / "x.h5")], capsys)
    assert code == 2 and "does not exist" in err and err.count("\n") == 1


def test_cli_inspect_not_a_file(tmp_path, capsys):
    bad = tmp_path / "x.h5"
    bad.write_text("not hdf5")
    code, _, err = run_cli(["inspect", str(bad)], capsys)
    assert code == 2 and err.count("\n") == 1


@pytest.mark.slow
def test_cli_subprocess_exit_code_for_missing_card():
    r = subprocess.run([sys.executable, "-m", "fastmc", "project", "does/not/exist.toml"],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 2
    assert r.stderr.strip().count("\n") == 0 and "file not found" in r.stderr


@pytest.mark.parametrize("argv,help_cmd", [
    (["project", str(ANALOG_CARD), "--bogus"], "fastmc project --help"),
    (["inspect", "x.h5", "--bogus", "--also"], "fastmc inspect --help"),
    (["project"], "fastmc project --help"),  # a missing argument, reported by the command's parser
    (["--bogus"], "fastmc --help"),
])
def test_cli_usage_error_names_the_right_help(argv, help_cmd, capsys):
    """An unknown flag after a command points to that command's --help (it once said 'fastmc fastmc --help')."""
    with pytest.raises(SystemExit) as e:
        main(argv)
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.rstrip().endswith(f"(see '{help_cmd}')"), err


@pytest.mark.slow
def test_cli_runs_as_python_m_fastmc_cli():
    """``python -m fastmc.cli`` is the same entry point as ``fastmc`` (help, and a command's dispatch)."""
    r = subprocess.run([sys.executable, "-m", "fastmc.cli", "--help"], capture_output=True, text=True, timeout=60,
                       check=False)
    assert r.returncode == 0 and r.stdout.startswith("usage: fastmc"), r.stderr
    r = subprocess.run([sys.executable, "-m", "fastmc.cli", "optimize", "does/not/exist.toml"],
                       capture_output=True, text=True, timeout=60, check=False)
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "file not found" in r.stderr, r.stderr


def test_readme_commands_match_ci():
    """The README's two set-up commands are exactly what .ci/run executes."""
    readme = (ROOT / "README.md").read_text()
    blocks = re.findall(r"```(?:bash|sh)?\n(.*?)```", readme, flags=re.S)
    first = [line for line in blocks[0].splitlines() if line.strip() and not line.startswith("#")]
    assert len(first) == 2, first
    ci = [line.strip() for line in (ROOT / ".ci" / "run").read_text().splitlines()]
    for cmd in first:
        assert cmd.strip() in ci, cmd


@pytest.mark.slow
def test_cli_chunk_ranges_merge_to_the_single_job(tmp_path, capsys):
    card = str(ANALOG_CARD)
    small = ["--n-muons", "12288", "--chunk-size", "4096", "--no-progress", "--json"]
    whole, a, b, merged = (tmp_path / f"{n}.h5" for n in ("whole", "a", "b", "merged"))
    assert main(["project", card, *small, "-o", str(whole)]) == 0
    assert main(["project", card, *small, "--chunks", "0:1", "-o", str(a)]) == 0
    assert main(["project", card, *small, "--chunks", "1:3", "-o", str(b)]) == 0
    capsys.readouterr()
    assert main(["merge", str(b), str(a), "-o", str(merged), "--json"]) == 0
    d = json.loads(capsys.readouterr().out)
    with h5py.File(whole) as fw, h5py.File(merged) as fm:
        for key in ("log_sw", "log_sw2", "n", "n_gen"):
            for region in ("signal", "control"):
                assert np.array_equal(fw[f"tallies/analog/{region}/{key}"][:], fm[f"tallies/analog/{region}/{key}"][:])
        assert json.loads(fm["provenance"].attrs["chunk_range"]) == [0, 3]
    assert d["channels"]["analog"]["n_generated"] == 12288
    # overlapping ranges are refused, nothing written
    bad = tmp_path / "bad.h5"
    assert main(["merge", str(a), str(whole), "-o", str(bad)]) == 2
    assert "overlapping" in capsys.readouterr().err and not bad.exists()
    # so are chunks drawn with the other Threefry layout (fastmc.rng; a file without the record: the
    # partitionable one, JAX's default before fastmc fixed it)
    with h5py.File(a, "a") as f:
        del f["provenance"].attrs["threefry_partitionable"]
    assert main(["merge", str(b), str(a), "-o", str(bad)]) == 2
    assert "random-bit layout" in capsys.readouterr().err and not bad.exists()


@pytest.mark.slow
def test_cli_target_rel_err_stops_each_channel_on_its_own(tmp_path, capsys):
    """With --target-rel-err a channel that has reached the target stops and the budget goes to
    the others: on the kaon closure card hadron_decay reaches 10 % after its first chunk, analog (≈ 20 % after
    all 8) does not.  The stopped channel's numbers are, bit for bit, those of a run of only
    the chunk it simulated; the HDF5 file records which chunks each channel simulated, and reading
    it back gives the same projection."""
    target = "0.1"
    card = str(ROOT / "tests" / "data" / "closure_hadron.toml")
    out = tmp_path / "t.h5"
    code, o, err = run_cli(["project", card, "--json", "--no-progress", "--target-rel-err", target, "-o", str(out)], capsys)
    assert code == 0, err
    d = json.loads(o)
    had, ana = d["channels"]["hadron_decay"], d["channels"]["analog"]
    assert had["n_generated"] == 16384 and had["rel_err"] <= float(target)
    assert ana["n_generated"] == 131072 and ana["rel_err"] > float(target)
    assert "reached by hadron_decay (after 16384 primaries)" in d["stop_reason"]
    # the figure of merit needs a chunk timed after compilation: analog has seven, hadron_decay none
    assert ana["fom"] > 0 and "fom" not in had
    with h5py.File(out) as f:
        assert f["chunks/active"][:].tolist() == [[True, True]] + [[True, False]] * 7
    code, o1, err = run_cli(["project", card, "--json", "--no-progress", "--chunks", "0:1"], capsys)
    assert code == 0, err
    one = json.loads(o1)["channels"]["hadron_decay"]
    for key in ("expected", "stat_err", "n_selected", "n_generated", "ess"):
        assert had[key] == one[key], key
    from fastmc.io import read_result, stored_result
    from fastmc.projection import projection_from

    r = read_result(out)
    back = projection_from(r["projection"]["mot"], r["projection"]["region"], stored_result(r))["channels"]
    for ch in ("hadron_decay", "analog"):
        for key in ("expected", "stat_err", "n_generated"):
            assert back[ch][key] == d["channels"][ch][key], (ch, key)


@pytest.mark.slow
def test_cli_target_rel_err_stops_early(capsys):
    card = str(ROOT / "tests" / "data" / "closure_hadron.toml")
    code, out, err = run_cli(["project", card, "--json", "--no-progress", "--target-rel-err", "0.5"], capsys)
    assert code == 0, err
    d = json.loads(out)
    assert d["stop_reason"].startswith("target relative error 0.5")
    for ch in d["channels"].values():
        assert ch["rel_err"] <= 0.5
        assert ch["n_generated"] < 65536  # stopped before the card's budget of 4 chunks


def test_provenance_records_xla_flags():
    from types import SimpleNamespace

    from fastmc.io import provenance
    from fastmc.runcard import load_run

    prov = provenance(load_run(ANALOG_CARD), SimpleNamespace(chunk_ids=np.arange(0), seconds=0.0))
    assert prov["xla_flags"] == os.environ.get("XLA_FLAGS", "")
