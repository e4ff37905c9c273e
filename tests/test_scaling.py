"""Scale (DESIGN.md §7): tallies bitwise independent of device count, Dask split and kill/resume;
memory flat in the number of muons; the benchmark command."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pytest

from fastmc.chain import prepare
from fastmc.run import RunResult, run
from fastmc.runcard import load_run

from .conftest import ANALOG_CARD, ROOT

CARD = ANALOG_CARD
CHUNK = 2048


def _cfg(n_chunks: int, seed: int = 7):
    return load_run(CARD).with_overrides(n_muons=CHUNK * (n_chunks - 1) + 100, chunk_size=CHUNK, seed=seed)


@pytest.fixture(scope="module")
def reference():
    """One in-process run (12 chunks, padded last chunk) shared by the comparisons below."""
    cfg = _cfg(12)
    return cfg, run(cfg, prepare(cfg), progress=False)


_JAX_CACHE: dict[str, str] = {}


@pytest.fixture(scope="module", autouse=True)
def _compilation_cache(tmp_path_factory):
    """A persistent JAX compilation cache shared by this module's subprocesses and Dask workers
    (the same compiled chain is loaded instead of compiled again; results are unaffected)."""
    _JAX_CACHE.update({
        "JAX_COMPILATION_CACHE_DIR": str(tmp_path_factory.mktemp("jax_cache")),
        "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
        "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES": "0",
    })
    yield
    _JAX_CACHE.clear()


def _env(tmp_path: Path, **extra) -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT)] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p])
    env.update(_JAX_CACHE)
    env.update(extra)
    return env


def _cli(*args) -> list[str]:
    return [sys.executable, "-m", "fastmc", "project", str(CARD), "--chunk-size", str(CHUNK), "--seed", "7",
            "--no-progress", *args]


@pytest.mark.slow
def test_devices_bitwise_identical_to_one_device(tmp_path, reference):
    cfg, ref = reference
    np.save(tmp_path / "ref_rows.npy", ref.rows[:7])
    script = f"""
import numpy as np, jax
from fastmc.runcard import load_run
from fastmc.chain import prepare
from fastmc.run import run
cfg = load_run({str(CARD)!r}).with_overrides(n_muons={cfg.n_muons}, chunk_size={CHUNK}, seed={cfg.seed})
assert len(jax.local_devices()) == 4
# chunks 0..6 on all 4 devices: a group of 4 and a padded group of 3
four = run(cfg, prepare(cfg), progress=False, devices=None, chunk_ids=np.arange(7))
assert np.array_equal(four.chunk_ids, np.arange(7))
assert np.array_equal(four.rows, np.load({str(tmp_path / "ref_rows.npy")!r})), "rows differ from one device"
print("OK", four.rows.shape)
"""
    # FASTMC_COMPILE_JOBS=2: the four devices' programs are compiled beforehand, two at a time
    # (run.compile_programs), and the run then uses them: the same bits
    env = _env(tmp_path, XLA_FLAGS="--xla_force_host_platform_device_count=4", FASTMC_COMPILE_JOBS="2")
    r = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0 and "OK" in r.stdout, r.stderr[-3000:]
    # asking for more devices than there are: one line, exit 2
    r = subprocess.run(_cli("--n-muons", "4096", "--devices", "8"), env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "--devices = 8" in r.stderr, r.stderr


@pytest.mark.slow
def test_checkpoint_resume_after_sigkill_bitwise(tmp_path, reference):
    cfg, ref = reference
    out = tmp_path / "run.h5"
    env = _env(tmp_path)
    n = str(cfg.n_muons)
    proc = subprocess.Popen(_cli("--n-muons", n, "-o", str(out), "--checkpoint-every", "1"), env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 240
        while not out.exists():  # appears (atomically) at the first checkpoint
            assert proc.poll() is None, proc.stderr.read()[-3000:]
            assert time.monotonic() < deadline, "no checkpoint written"
            time.sleep(0.005)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait(timeout=60)
        proc.stderr.close()
    with h5py.File(out) as f:
        assert not f.attrs["complete"]
        n_done = len(f["chunks/ids"])
    assert 1 <= n_done < 12
    # a mismatched configuration is refused, and the checkpoint is left alone
    r = subprocess.run(_cli("--n-muons", n, "-o", str(out), "--resume", "--seed", "8"), env=env,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "seed differs" in r.stderr and r.stderr.count("\n") == 1, r.stderr
    # so is a checkpoint whose chunks were drawn with the other Threefry layout (fastmc.rng; files
    # without the record: JAX's old default, the partitionable one), and it is left alone
    other = tmp_path / "other_layout.h5"
    shutil.copy(out, other)
    with h5py.File(other, "a") as f:
        del f["provenance"].attrs["threefry_partitionable"]
    r = subprocess.run(_cli("--n-muons", n, "-o", str(other), "--resume"), env=env, capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 2 and "random-bit layout" in r.stderr and r.stderr.count("\n") == 1, r.stderr
    with h5py.File(other) as f:
        assert not f.attrs["complete"] and len(f["chunks/ids"]) == n_done
    # resume without repeating the flags: n_muons etc. come from the checkpoint
    r = subprocess.run([sys.executable, "-m", "fastmc", "project", str(CARD), "-o", str(out), "--resume",
                        "--no-progress", "--json"], env=env, capture_output=True, text=True, timeout=240)
    assert r.returncode == 0, r.stderr[-3000:]
    with h5py.File(out) as f:
        assert f.attrs["complete"]
        c = {k: f["chunks"][k][:] for k in ("ids", "rows", "n_gen", "overflow")}
        log_sw = f["tallies/analog/control/log_sw"][:]
    order = np.argsort(c["ids"])
    assert np.array_equal(c["ids"][order], ref.chunk_ids)
    assert np.array_equal(c["rows"][order], ref.rows)
    assert c["n_gen"].sum() == cfg.n_muons
    done = RunResult(ref.channels, ref.slots, c["ids"], c["rows"], c["n_gen"], c["overflow"])
    ctrl = [i for i, s in enumerate(ref.slots) if s[0] == "control"]
    assert np.array_equal(log_sw, [ref.tallies()["analog"][i].log_sw for i in ctrl])
    for a, b in zip(done.tallies()["analog"], ref.tallies()["analog"]):
        assert (a.log_sw, a.log_sw2, a.n, a.log_wmax, a.n_gen) == (b.log_sw, b.log_sw2, b.n, b.log_wmax, b.n_gen)
    # nothing left to resume
    r = subprocess.run(_cli("-o", str(out), "--resume"), env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "nothing to resume" in r.stderr


@pytest.mark.slow
def test_collector_idempotent_and_refuses_double_counting(reference):
    from fastmc.distributed import ChunkCollector, contiguous_ranges, task_ranges

    cfg, ref = reference

    def part(a, b):
        sl = slice(a, b)
        return RunResult(ref.channels, ref.slots, ref.chunk_ids[sl], ref.rows[sl], ref.n_gen[sl], ref.overflow[sl])

    spans = task_ranges(ref.chunk_ids, 5)
    assert [s for s in spans] == [(0, 3), (3, 6), (6, 9), (9, 12)]
    assert contiguous_ranges(np.array([0, 1, 2, 5, 6, 9])) == [(0, 3), (5, 7), (9, 10)]
    col = ChunkCollector()
    for a, b in reversed(spans):
        assert col.add((a, b), part(a, b))
    assert not col.add((3, 6), part(3, 6))  # a retried task delivered again: ignored
    bad = part(3, 6)
    bad.rows = bad.rows.copy()
    bad.rows[0, 0, 0, 2] += 1
    with pytest.raises(ValueError, match="different tallies"):
        col.add((3, 6), bad)
    with pytest.raises(ValueError, match="overlaps"):
        col.add((2, 4), part(2, 4))
    merged = col.merged()
    assert np.array_equal(np.sort(merged.chunk_ids), ref.chunk_ids)
    for a, b in zip(merged.tallies()["analog"], ref.tallies()["analog"]):
        assert (a.log_sw, a.log_sw2, a.n, a.n_gen) == (b.log_sw, b.log_sw2, b.n, b.n_gen)
    with pytest.raises(ValueError, match="overlapping"):
        merged.merge(part(0, 1))


_FAILED_ONCE = "FASTMC_TEST_FAIL_ONCE_DIR"


def flaky_task(cfg, start, stop, devices=None):
    """Fails the first time it sees each chunk range (a marker file per range), then runs it."""
    from fastmc.distributed import run_task

    marker = Path(os.environ[_FAILED_ONCE]) / f"{start}-{stop}"
    if not marker.exists():
        marker.touch()
        raise RuntimeError(f"injected failure of task {start}:{stop}")
    return run_task(cfg, start, stop, devices)


@pytest.fixture(scope="module")
def _dask():
    """Skips before the (costly) reference run when the optional 'dist' extra is missing."""
    return pytest.importorskip("distributed")


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore")  # dask's own start-up/shut-down warnings
def test_dask_localcluster_bitwise_with_retries(_dask, tmp_path, reference, monkeypatch):
    from fastmc.distributed import run_dask

    cfg, ref = reference
    monkeypatch.setenv(_FAILED_ONCE, str(tmp_path))  # inherited by the worker processes
    for k, v in _env(tmp_path).items():
        if k == "PYTHONPATH" or k.startswith("JAX_"):
            monkeypatch.setenv(k, v)  # worker processes inherit the environment
    res = run_dask(cfg, "local:2", ref.chunk_ids, tasks_per_worker=2, retries=1, task=flaky_task)
    assert len(list(tmp_path.iterdir())) == 4  # every task failed once and was retried
    order = np.argsort(res.chunk_ids)
    assert np.array_equal(res.chunk_ids[order], ref.chunk_ids)
    assert np.array_equal(res.rows[order], ref.rows) and np.array_equal(res.n_gen[order], ref.n_gen)
    for a, b in zip(res.tallies()["analog"], ref.tallies()["analog"]):
        assert (a.log_sw, a.log_sw2, a.n, a.log_wmax, a.n_gen) == (b.log_sw, b.log_sw2, b.n, b.log_wmax, b.n_gen)


def test_cli_scheduler_bad_spec_one_line(capsys):
    from fastmc.cli import main

    code = main(["project", str(CARD), "--scheduler", "udp://x", "--n-muons", "10"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "local:N or tcp://HOST:PORT" in err
    code = main(["project", str(CARD), "--checkpoint-every", "2", "--n-muons", "10"])
    err = capsys.readouterr().err
    assert code == 2 and "needs -o" in err


def _peak_rss_kib(tmp_path: Path, n_chunks: int) -> int:
    script = (
        "import sys\n"
        "from fastmc.cli import peak_rss_mb, main\n"
        f"rc = main(['project', {str(CARD)!r}, '--n-muons', '{CHUNK * n_chunks}', '--chunk-size', '{CHUNK}', "
        "'--no-progress', '--json'])\n"
        # this process's own peak (VmHWM): ru_maxrss would include the parent test runner's size
        "print('RSS', int(peak_rss_mb() * 1024), file=sys.stderr)\n"
        "sys.exit(rc)\n"
    )
    r = subprocess.run([sys.executable, "-c", script], env=_env(tmp_path), capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    return int(r.stderr.strip().splitlines()[-1].split()[1])


@pytest.mark.slow
def test_memory_flat_in_number_of_muons(tmp_path):
    _peak_rss_kib(tmp_path, 1)  # fills the compilation cache if needed: both runs below load the same program
    small = _peak_rss_kib(tmp_path, 2)
    large = _peak_rss_kib(tmp_path, 8)
    assert large < 1.10 * small, (small, large)


@pytest.mark.slow
def test_bench_json_devices_and_numpy(tmp_path):
    env = _env(tmp_path)
    r = subprocess.run([sys.executable, "-m", "fastmc", "bench", "--devices", "2"], env=env, capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 2 and "xla_force_host_platform_device_count" in r.stderr
    r = subprocess.run([sys.executable, "-m", "fastmc", "bench", "--chunk-size", str(CHUNK), "--repeats", "1",
                        "--devices", "1", "--numpy", "--transport-muons", "1024", "--json"],
                       env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    d = json.loads(r.stdout)
    assert [(x["devices"], x["chunk_size"]) for x in d["results"]] == [(1, CHUNK)]
    assert all(x["muons_per_s"] > 0 and x["first_call_s"] > 0 for x in d["results"])
    # each channel's program compiled alone (quickstart: hadron_decay, analog), and the XLA options
    assert [p["channel"] for p in d["programs"]] == ["hadron_decay", "analog"]
    assert all(p["compile_s"] > 0 and p["first_call_s"] > p["run_s"] > 0 for p in d["programs"])
    assert "xla_flags" in d and d["channel"] == "analog"
    assert d["full_chain_muons_per_core_s"] * (os.cpu_count() or 1) == pytest.approx(d["results"][0]["muons_per_s"])
    nb = d["numpy"]
    assert nb["speedup_jax_per_core_over_numpy"] == pytest.approx(
        nb["jax_muons_per_s"] / (os.cpu_count() or 1) / nb["numpy_muons_per_s"])
    assert nb["jax_muons_per_s"] > 0 and nb["numpy_muons_per_s"] > 0 and nb["elements"] > 10
    # the NumPy port transports the same way (1024 muons, exit-energy spread ≈ 12 GeV)
    assert abs(nb["mean_exit_ekin_GeV"]["jax"] - nb["mean_exit_ekin_GeV"]["numpy"]) < 2.0
    assert 0 < d["peak_rss_mb"] < 4096
    assert "peak RSS" in r.stderr and "JAX/NumPy" in r.stderr


@pytest.mark.slow
def test_numpy_baseline_is_the_same_algorithm():
    """The benchmark's NumPy port (fastmc/numpy_baseline.py) transports a muon exactly as
    fastmc's material_step does: from the same uniforms, every thick and thin element of the 2022
    setup gives the same exit state to float32 rounding (a ported line that differed, e.g. a
    missing kick or straggling term, would move ekin by ≳ 1 MeV or the angle by ≳ 1e-6 rad)."""
    import jax
    import jax.numpy as jnp

    from fastmc import numpy_baseline as nb
    from fastmc.rng import chunk_key, uniforms
    from fastmc.transport import Physics, material_step, n_step_uniforms

    cfg = load_run(CARD)
    prep = prepare(cfg)
    nt, ph, sp = nb.numpy_physics(prep)
    model = prep.physics.scattering_model
    physics = Physics(prep.physics.tables, prep.physics.scattering, model, prep.physics.lambda_i)
    b = 4096
    step = jax.jit(lambda st, m, length, ds, uu, k: material_step(physics, st, m, length, ds, k, uu)[0],
                   static_argnames="k")
    for m, length, ds, k in sorted(set(nb.absorber_sequence(prep))):
        uu = uniforms(chunk_key(3, m), (b, n_step_uniforms(k)))
        ekin = 160e3 * (0.25 + uniforms(chunk_key(4, m), (b,)))  # 40–200 GeV
        st = {c: 1e-3 * (uniforms(chunk_key(5 + i, m), (b,)) - 0.5) for i, c in enumerate(("x", "y", "tx", "ty"))}
        st.update(ekin=ekin, alive=jnp.arange(b) % 97 != 0)
        out = step(st, m, length, ds, uu, k=k)
        npo = nb.numpy_material_step(nt, {c: np.asarray(v) for c, v in st.items()}, m, length, ds, k, None, ph, sp,
                                     model, uu=np.asarray(uu))
        for c in ("ekin", "x", "y", "tx", "ty", "alive"):
            assert npo[c].dtype == np.asarray(out[c]).dtype, c  # float32 on both sides
            a, v = np.asarray(out[c], np.float64), npo[c].astype(np.float64)
            scale = np.abs(a).max()
            np.testing.assert_allclose(v, a, rtol=0, atol=2e-5 * scale, err_msg=f"{c} (mat {m}, {length} mm, K={k})")
        # the scattering really has a single-scatter tail and the kicks really act (not a trivial pass)
        assert model == "highland_single"


def test_compile_jobs_reads_the_environment(monkeypatch):
    from fastmc.config import ConfigError
    from fastmc.run import compile_jobs

    monkeypatch.delenv("FASTMC_COMPILE_JOBS", raising=False)
    assert compile_jobs() == 1
    monkeypatch.setenv("FASTMC_COMPILE_JOBS", "3")
    assert compile_jobs() == 3
    for bad in ("0", "two", "-1"):
        monkeypatch.setenv("FASTMC_COMPILE_JOBS", bad)
        with pytest.raises(ConfigError, match="FASTMC_COMPILE_JOBS"):
            compile_jobs()
