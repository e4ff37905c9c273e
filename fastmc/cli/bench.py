"""``fastmc bench``: throughput of the full chain per chunk size and device count; optionally the muon
transport against plain NumPy (:mod:`fastmc.numpy_baseline`) and Geant4."""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

from fastmc.cli.common import UsageError, int_in


def add_bench(sub) -> None:
    be = sub.add_parser("bench", help="measure the throughput of the full chain (muons/s)")
    be.add_argument("card", nargs="?", default=None, help="run card (default: runs/quickstart.toml of the source tree)")
    be.add_argument("--n-muons", type=int_in("--n-muons", 1, 10**12), default=None)
    be.add_argument("--chunk-size", type=int_in("--chunk-size", 1, 2**24), action="append",
                    help="chunk size(s) to time (repeatable; default: the card's)")
    be.add_argument("--repeats", type=int_in("--repeats", 1, 1000), default=5, help="timed chunks per chunk size")
    be.add_argument("--devices", type=int_in("--devices", 1, 4096), action="append", metavar="N",
                    help="device count(s) to time (repeatable; default: 1 and all local devices)")
    be.add_argument("--numpy", action="store_true",
                    help="also time the muon transport through the 2022 absorber sequence: JAX vs plain NumPy")
    be.add_argument("--geant4", action="store_true",
                    help="also time the same muon-only transport in Geant4 (geant4-pybind; skipped if missing)")
    be.add_argument("--transport-muons", type=int_in("--transport-muons", 1, 10**8), default=None, metavar="N",
                    help="muons for the --numpy/--geant4 transport comparison "
                         "(default: 65536 JAX/NumPy, 2000 Geant4)")
    be.add_argument("--json", action="store_true", help="print one JSON object (the table goes to stderr)")


def peak_rss_mb() -> float:
    """Peak resident memory of this process (MB).  Linux: VmHWM of /proc/self/status, which
    starts afresh at exec — ru_maxrss does not (a process started from a large parent, e.g. a
    test runner, would report the parent's size).  Elsewhere: ru_maxrss."""
    import resource

    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return float(line.split()[1]) / 1024.0  # kB
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux: KiB


def cmd_bench(args) -> int:
    import dataclasses

    import jax
    import numpy as np

    from fastmc.chain import prepare
    from fastmc.run import simulate_group
    from fastmc.runcard import load_run

    # the first call's time is the compile time: no programs from the on-disk cache here
    jax.config.update("jax_enable_compilation_cache", False)
    card = args.card or str(Path(__file__).resolve().parents[2] / "runs" / "quickstart.toml")
    cfg = load_run(card)
    sizes = args.chunk_size or [cfg.chunk_size]
    local = jax.local_devices()
    n_devs = args.devices or sorted({1, len(local)})
    for d in n_devs:
        if d > len(local):
            raise UsageError(f"--devices = {d}: only {len(local)} local device(s) "
                             "(on CPU: XLA_FLAGS=--xla_force_host_platform_device_count=N)")
    if (args.numpy or args.geant4) and args.transport_muons and args.transport_muons % max(n_devs):
        raise UsageError(f"--transport-muons = {args.transport_muons}: does not split over {max(n_devs)} devices")
    t0 = time.perf_counter()
    prep = prepare(cfg)
    t_prep = time.perf_counter() - t0
    # the full chain's throughput: the analog channel, or the card's first one if it has none
    chain_channel = "analog" if "analog" in prep.channels else cfg.channels[0]
    placed: dict = {}  # the run's inputs placed on each device, once
    # every channel's program, compiled alone (first chunk size, one device): first call − second call
    programs = []
    opts0 = dataclasses.replace(prep.options, chunk_size=sizes[0])
    for name in cfg.channels:
        times = []
        for c in range(2):
            t0 = time.perf_counter()
            simulate_group(prep, name, cfg.seed, np.arange(c, c + 1), np.full(1, sizes[0]), local[:1], placed,
                           opts=opts0)  # rows back on the host
            times.append(time.perf_counter() - t0)
        programs.append({"channel": name, "chunk_size": sizes[0], "first_call_s": times[0], "run_s": times[1],
                         "compile_s": max(times[0] - times[1], 0.0)})
    rows = []
    for nd in n_devs:
        for cs in sizes:
            opts = dataclasses.replace(prep.options, chunk_size=cs)

            def call(first: int, opts=opts, nd=nd, cs=cs):
                # chunks first … first + nd − 1, one per device, dispatched as a run dispatches them
                return simulate_group(prep, chain_channel, cfg.seed, np.arange(first, first + nd), np.full(nd, cs),
                                      local[:nd], placed, opts=opts)

            t0 = time.perf_counter()
            call(0)  # rows back on the host: compiled and run
            t_compile = time.perf_counter() - t0
            reps = args.repeats if args.n_muons is None else max(1, -(-args.n_muons // (cs * nd)))
            t0 = time.perf_counter()
            for c in range(1, reps + 1):
                call(c * nd)  # rows back on the host, as in a run
            dt = time.perf_counter() - t0
            rows.append({"devices": nd, "chunk_size": cs, "chunks": reps * nd, "muons": reps * cs * nd, "seconds": dt,
                         "muons_per_s": reps * cs * nd / dt, "first_call_s": t_compile})
    res = {"card": card, "backend": jax.default_backend(), "devices": [str(d) for d in local],
           "xla_flags": os.environ.get("XLA_FLAGS", ""), "tables_and_setup_s": t_prep, "channel": chain_channel,
           "results": rows, "programs": programs}
    cores = os.cpu_count() or 1
    best = max(rows, key=lambda r: r["muons_per_s"])  # the full chain on its best device count
    res["full_chain_muons_per_core_s"] = best["muons_per_s"] / cores
    if args.numpy or args.geant4:
        from fastmc import numpy_baseline as nb
    if args.numpy:
        res["numpy"] = nb.compare(cfg, prep, args.transport_muons or 65536, seed=cfg.seed, repeats=3,
                                  devices=max(n_devs))
        # per core: the NumPy port runs on one core, JAX on all of them
        res["numpy"]["speedup_jax_per_core_over_numpy"] = res["numpy"]["jax_muons_per_s"] / cores / res["numpy"][
            "numpy_muons_per_s"]
    if args.geant4:
        n_g4 = args.transport_muons or 2000
        g4 = nb.geant4_compare(cfg, n_g4, seed=cfg.seed)
        if "skipped" not in g4:
            jx = res.get("numpy") or nb.compare(cfg, prep, max(n_g4, 4096), seed=cfg.seed, repeats=3,
                                                devices=max(n_devs))
            g4["fastmc_transport_muons_per_s"] = jx["jax_muons_per_s"]
            g4["fastmc_transport_muons_per_core_s"] = jx["jax_muons_per_s"] / cores
            g4["cores"] = cores
            g4["speedup_fastmc_per_core_over_geant4"] = jx["jax_muons_per_s"] / cores / g4["muons_per_core_s"]
            g4["mean_exit_ekin_GeV_fastmc"] = jx["mean_exit_ekin_GeV"]["jax"]
            g4["speedup_full_chain_per_core_over_geant4"] = res["full_chain_muons_per_core_s"] / g4["muons_per_core_s"]
        res["geant4"] = g4
    res["peak_rss_mb"] = peak_rss_mb()
    _print_bench(res, sys.stderr if args.json else sys.stdout)
    if args.json:
        print(json.dumps(res))
    return 0


def _print_bench(res: dict, out) -> None:
    print("fastmc bench — full chain (beam, transport, response, reconstruction, selection, tally)", file=out)
    print(f"card {res['card']}; backend {res['backend']}; tables+setup {res['tables_and_setup_s']:.2f} s; "
          f"XLA_FLAGS {res['xla_flags'] or '(none)'}", file=out)
    for p in res["programs"]:
        print(f"program of channel {p['channel']} (chunk {p['chunk_size']}, 1 device): compile {p['compile_s']:.2f} s "
              f"(first call {p['first_call_s']:.2f} s, next {p['run_s']:.2f} s)", file=out)
    print(f"full chain: channel {res['channel']}", file=out)
    print(f"{'chunk size':>11}{'muons':>12}{'seconds':>10}{'muons/s':>14}{'first call s':>25}{'devices':>9}",
          file=out)
    for r in res["results"]:
        print(f"{r['chunk_size']:>11}{r['muons']:>12}{r['seconds']:>10.2f}{r['muons_per_s']:>14.4g}"
              f"{r['first_call_s']:>25.2f}{r['devices']:>9}", file=out)
    print(f"full chain per core: {res['full_chain_muons_per_core_s']:.4g} muons/core/s", file=out)
    if "numpy" in res:
        r = res["numpy"]
        print(f"muon transport through the {r['elements']} material elements ({r['muons']} muons, "
              f"{r['scattering_model']} scattering): fastmc/JAX {r['jax_muons_per_s']:.4g} muons/s on "
              f"{r['jax_devices']} device(s) (first call {r['jax_first_call_s']:.2f} s), "
              f"NumPy {r['numpy_muons_per_s']:.4g} muons/s → JAX/NumPy = {r['speedup_jax_over_numpy']:.3g}"
              f" ({r['speedup_jax_per_core_over_numpy']:.3g} per core)"
              + (f" ({r['speedup_jax_1_device_over_numpy']:.3g} on 1 device)" if r["jax_devices"] > 1 else "") + "; "
              f"mean exit E {r['mean_exit_ekin_GeV']['jax']:.3f} / {r['mean_exit_ekin_GeV']['numpy']:.3f} GeV",
              file=out)
    if "geant4" in res:
        g = res["geant4"]
        if "skipped" in g:
            print(f"Geant4: skipped — {g['skipped']}", file=out)
        else:
            print(f"Geant4 {g['geant4_version']} muon-only through {g['layers']} layers ({g['muons']} muons): "
                  f"{g['muons_per_core_s']:.4g} muons/core/s; fastmc {g['fastmc_transport_muons_per_core_s']:.4g} "
                  f"muons/core/s ({g['cores']} cores) → {g['speedup_fastmc_per_core_over_geant4']:.3g}× per core "
                  f"(full chain: {g['speedup_full_chain_per_core_over_geant4']:.3g}×); "
                  f"mean exit E {g['mean_exit_ekin_GeV']:.3f} (G4) / {g['mean_exit_ekin_GeV_fastmc']:.3f} GeV",
                  file=out)
    print(f"peak RSS {res['peak_rss_mb']:.0f} MB", file=out)
