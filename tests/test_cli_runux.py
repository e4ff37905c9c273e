"""The run as a user lives it (issue #26): status lines before the bar, Ctrl-C keeps the work,
unwritable outputs refused up front, --channels, non-converging channels stopped and named, and the
sensitivity's own background projection with a printed budget.

One small card (the tests' analog card, 4096-muon chunks: the program the other CLI tests compile too) and
module-scoped runs: an uninterrupted run, and the same run interrupted after two chunks and resumed.
The tests that simulate are marked slow: the chain's compilation (shared by the whole file, ~50 s on two
busy cores) dominates; their chunks take seconds.
"""

from __future__ import annotations

import contextlib
import io
import json
import math

import h5py
import numpy as np
import pytest

import fastmc.chain
import fastmc.io
import fastmc.run
from fastmc.cli import main
from fastmc.run import cannot_converge

from .conftest import ANALOG_CARD, ROOT

CARD = str(ANALOG_CARD)
SMALL = ["--n-muons", "16384", "--chunk-size", "4096"]  # 4 chunks


def call(argv):
    """``main(argv)`` with stdout and stderr captured (usable in module-scoped fixtures)."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(argv)
    return code, out.getvalue(), err.getvalue()


@pytest.fixture(scope="module")
def full(tmp_path_factory):
    """The uninterrupted run, with the progress bar on."""
    path = tmp_path_factory.mktemp("full") / "full.h5"
    code, out, err = call(["project", CARD, *SMALL, "--json", "-o", str(path)])
    assert code == 0, err
    return json.loads(out), err, path


@pytest.fixture(scope="module")
def interrupted(tmp_path_factory):
    """The same run, Ctrl-C in the third chunk (checkpoints every chunk), then resumed."""
    path = tmp_path_factory.mktemp("ctrlc") / "part.h5"
    real = fastmc.run.simulate_group
    calls = []

    def flaky(*a, **k):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(*a, **k)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(fastmc.run, "simulate_group", flaky)
        first = call(["project", CARD, *SMALL, "--checkpoint-every", "1", "-o", str(path)])
    with h5py.File(path) as f:
        saved = (bool(f.attrs["complete"]), f["chunks/ids"][:].tolist())
    second = call(["project", CARD, *SMALL, "--json", "--no-progress", "-o", str(path), "--resume"])
    return first, saved, second, path


@pytest.mark.slow
def test_run_status_lines_come_before_the_bar(full):
    _, err, _ = full
    lines = err.replace("\r", "\n").split("\n")
    first_bar = next(i for i, line in enumerate(lines) if line.startswith("simulating analog"))
    for needle in ("preparing ", "prepared in ", "compiling channel analog", "channel analog: compiled and first chunk"):
        at = next((i for i, line in enumerate(lines) if line.startswith(needle)), None)
        assert at is not None and at < first_bar, (needle, err)
    # the bar starts after the first chunk (its rate and ETA come from finished chunks)
    assert lines[first_bar].split("|")[0].strip().endswith("25%"), lines[first_bar]


@pytest.mark.slow
def test_ctrl_c_keeps_the_finished_chunks_and_says_how_to_resume(interrupted, full):
    (code, out, err), saved, _, path = interrupted
    assert code == 130
    assert out.startswith("PARTIAL result (interrupted by Ctrl-C: 2 of 4 chunks)")
    assert "fastmc background projection" in out
    assert saved == (False, [0, 1])  # a checkpoint, as --checkpoint-every writes it
    assert f"2/4 chunks saved in {path}; continue with: fastmc project {CARD} -o {path} --resume" in err
    assert "Traceback" not in err


@pytest.mark.slow
def test_checkpoint_messages_do_not_land_on_the_bar_line(interrupted):
    (_, _, err), _, _, _ = interrupted
    lines = [line for line in err.split("\n") if "checkpoint: " in line]
    assert lines, err
    for line in lines:  # tqdm.write clears the bar's line first: what remains after the last \r is the message
        assert line.split("\r")[-1].startswith("checkpoint: "), repr(line)
    assert "checkpoint: 1/4 chunks in " in err


@pytest.mark.slow
def test_resume_after_ctrl_c_is_the_uninterrupted_run(interrupted, full):
    _, _, (code, out, err), path = interrupted
    assert code == 0, err
    d, _, full_path = full
    ours = json.loads(out)
    for key in ("expected", "stat_err", "n_selected", "n_generated", "upper_limit_90"):
        assert ours["channels"]["analog"][key] == d["channels"]["analog"][key], key
    with h5py.File(path) as fr, h5py.File(full_path) as ff:
        assert fr.attrs["complete"]
        for key in ("log_sw", "log_sw2", "n", "n_gen"):
            assert np.array_equal(fr[f"tallies/analog/signal/{key}"][:], ff[f"tallies/analog/signal/{key}"][:])
    # the summary names why this part stopped (it ended in an empty "stopped: " before)
    summary = next(line for line in err.split("\n") if " primaries in " in line)
    assert summary.endswith("stopped: all chunks done"), summary
    assert "resuming " in err and "2 of 4 chunks done, 2 to simulate" in err


def test_output_in_an_uncreatable_place_is_refused_before_simulating(monkeypatch):
    def boom(*a, **k):  # nothing may be prepared or simulated
        raise AssertionError("simulated although -o cannot be written")

    monkeypatch.setattr(fastmc.chain, "prepare", boom)
    code, out, err = call(["project", CARD, *SMALL, "-o", "/proc/fastmc_runux.h5"])
    assert code == 2 and out == ""
    assert err.count("\n") == 1 and err.startswith("fastmc: error: -o = '/proc/fastmc_runux.h5': cannot create")


@pytest.mark.slow
def test_output_error_after_the_run_keeps_the_table(tmp_path, monkeypatch):
    def full_disk(*a, **k):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(fastmc.io, "write_result", full_disk)
    path = tmp_path / "q.h5"
    code, out, err = call(["project", CARD, "--n-muons", "8192", "--chunk-size", "4096", "--no-progress",
                           "-o", str(path)])
    assert code == 2
    assert out.startswith("fastmc background projection") and "analog" in out
    last = err.rstrip("\n").split("\n")[-1]
    assert last.startswith(f"fastmc: error: -o = '{path}': cannot write the output (No space left on device)")
    assert "Traceback" not in err and sorted(p.name for p in tmp_path.iterdir()) == []


def test_channels_unknown_name_lists_the_cards_channels():
    card = str(ROOT / "tests" / "data" / "closure_hadron.toml")
    code, out, err = call(["project", card, "--channels", "hadron_decay,kaon"])
    assert code == 2 and out == "" and err.count("\n") == 1
    assert "'kaon' not among the card's channels (analog, hadron_decay)" in err


def test_channels_runs_only_the_named_ones(monkeypatch):
    seen = {}

    class Stop(Exception):
        pass

    def fake_prepare(cfg):
        seen["channels"] = cfg.channels
        raise Stop

    monkeypatch.setattr(fastmc.chain, "prepare", fake_prepare)
    card = str(ROOT / "tests" / "data" / "closure_hadron.toml")
    with pytest.raises(Stop):
        call(["project", card, "--channels", "hadron_decay", "--no-progress"])
    assert seen["channels"] == ("hadron_decay",)


@pytest.mark.parametrize("n_sel, rel_err, n_done, budget, target, stops", [
    # zero events: stop when √(n_done / (ln(100)·budget)) > target
    (0, None, 4096, 16384, 0.1, True),  # ≥ 23 % at best
    (0, None, 4096, 16384, 0.3, False),  # 23 % still possible
    (0, None, 100, 10**6, 0.1, False),  # 0.5 %: too early to tell
    # events: after a quarter of the budget, extrapolated rel. err. above 3 × target
    (4, 0.7, 4096, 16384, 0.1, True),  # → 35 %
    (4, 0.5, 4096, 16384, 0.1, False),  # → 25 %
    (2, 0.9, 2048, 16384, 0.1, False),  # an eighth of the budget: not yet
    (4, 0.7, 16384, 16384, 0.1, False),  # budget spent: nothing to save
])
def test_cannot_converge_rule(n_sel, rel_err, n_done, budget, target, stops):
    why = cannot_converge(n_sel, rel_err, n_done, budget, target)
    if n_sel == 0 and n_done < budget:
        assert stops == (math.sqrt(n_done / (math.log(100) * budget)) > target)  # the rule, independently
    assert (why is not None) == stops
    if stops:
        assert why.startswith(f"cannot reach {target:.0%} ({n_sel} events")


@pytest.mark.slow
def test_target_rel_err_stops_and_names_a_channel_that_cannot_converge():
    # analog selects nothing in the signal region of 4096 analog-card muons: 10 % is out of reach in 16384
    code, out, err = call(["project", CARD, *SMALL, "--json", "--no-progress", "--target-rel-err", "0.1"])
    assert code == 0, err
    d = json.loads(out)
    assert d["channels"]["analog"]["n_generated"] == 4096  # not the whole budget
    assert d["not_converged"]["analog"].startswith("cannot reach 10% (0 events in 4096 primaries")
    assert "not converged: analog (cannot reach 10%" in d["stop_reason"]
    assert "channel analog: stopped, cannot reach 10%" in err
    table_line = next(line for line in err.split("\n") if line.startswith("analog "))
    assert table_line.endswith("not converged")


class _Stop(Exception):
    pass


def test_sensitivity_projects_its_background_with_a_printed_budget(monkeypatch):
    seen = {}

    def fake_run(cfg, prep, **kw):
        seen.update(kw, channels=cfg.channels, n_muons=cfg.n_muons)
        raise _Stop

    monkeypatch.setattr(fastmc.chain, "prepare", lambda cfg: None)
    monkeypatch.setattr(fastmc.run, "run", fake_run)
    card = str(ROOT / "runs" / "na64mu_2022.toml")
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err), pytest.raises(_Stop):
        main(["sensitivity", card, "--no-progress"])
    assert seen["target_rel_err"] == 0.3 and seen["max_seconds"] == 300.0 and seen["log"] is not None
    assert "until a relative error of 0.3" in err.getvalue() and "300 s" in err.getvalue()
    seen.clear()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err), pytest.raises(_Stop):
        main(["sensitivity", card, "--no-progress", "--n-muons", "65536", "--max-seconds", "20",
              "--target-rel-err", "0.5", "--channels", "analog"])
    assert (seen["target_rel_err"], seen["max_seconds"], seen["n_muons"], seen["channels"]) == (
        0.5, 20.0, 65536, ("analog",))


def test_sensitivity_budget_flags_need_the_projection():
    code, out, err = call(["sensitivity", str(ROOT / "runs" / "na64mu_2022.toml"), "--background", "0.1",
                           "--max-seconds", "10"])
    assert code == 2 and err.count("\n") == 1 and "--max-seconds" in err
