"""calib-mpi benchmarks: throughput against the read bandwidth, scaling, memory, processors.

Usage: ``python benchmarks/bench.py [--trains N] [--cells C] [--ranks 1 2 4] [--json FILE]``
(``make bench``). Writes a synthetic European XFEL dark run set of N trains and one of 4N
trains, then measures, in the same session:

1. the raw read bandwidth of the files (h5py reading ``image/data`` in large slabs, one
   process, page cache warm as for the pipeline runs);
2. the dark pipeline (``mpirun -n R calib-mpi``) for each R: end-to-end and gather+process
   throughput (raw bytes per second) and their ratio to the read bandwidth, the same for
   the runs after the first (``steady``: a long run's rate, without one-off costs), the strong
   scaling t(1)/t(R); once more with one rank bound to one core (the per-core rate, and
   the speedup of R ranks over one core);
3. the peak resident memory per rank for N and 4N trains (must stay flat: bounded by
   ``chunk_frames``, not by the run length);
4. the drspc, drscs and xray processors, in pixel-cells per second on one core;
5. (root, not with ``--quick`` or ``--no-cold``) 1. and 2. again from the disk: the page
   cache is dropped before each measurement, so the ratio says how close the pipeline comes
   to the disk's read bandwidth, not to a memory copy; each pipeline run is compared with a
   cold read just before it (this virtual disk's rate drifts).

Ranks are started with ``mpirun -n R --bind-to none`` (``--mpirun-args``): each rank reads
in a thread while it processes, which needs more than the single core Open MPI binds each
of one or two ranks to by default.

Prints a table and writes the numbers as JSON, to compare over time.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np

from calib_mpi.mpienv import clean_environ
from calib_mpi.synthetic.xfel import DarkRunSet, write_config, write_dark_runs

HERE = Path(__file__).resolve().parent
MPI_ENV = {"OMPI_ALLOW_RUN_AS_ROOT": "1", "OMPI_ALLOW_RUN_AS_ROOT_CONFIRM": "1",
           "OMPI_MCA_rmaps_base_oversubscribe": "1"}


def make_set(root: Path, n_trains: int, n_cells: int, modules: tuple[int, ...]) -> Path:
    """Write (or reuse) a synthetic dark run set; returns its config file."""
    p = DarkRunSet(modules=modules, n_cells=n_cells, n_trains=n_trains,
                   n_sequences=max(1, n_trains // 16), fast_noise=True, defects=False,
                   # 16 trains per sequence file: with 64 cells every slab is a full
                   # 1024-frame chunk for N and 4N trains alike
                   lost_trains={}, chunk_frames=32, padding_frames=0)
    raw = root / "raw"
    stamp = root / "params.json"
    key = json.dumps({"n": n_trains, "c": n_cells, "m": list(modules)})
    if not (stamp.is_file() and stamp.read_text() == key):
        write_dark_runs(raw, p)
        stamp.write_text(key)
    return write_config(root / "run.conf", raw, root / "out", p)


def read_bandwidth(raw: Path, slab: int = 256, repeats: int = 2) -> tuple[float, int]:
    """Best of ``repeats`` passes: bytes per second of h5py reading all frames in slabs."""
    files = sorted(raw.glob("r*/RAW-*-AGIPD*-S*.h5"))
    best, total = 0.0, 0
    for _ in range(repeats):
        total = 0
        t0 = time.perf_counter()
        for fn in files:
            with h5py.File(fn, "r") as f:
                src = next(iter(f["INSTRUMENT"]))
                mods = f[f"INSTRUMENT/{src}/DET"]
                d = mods[next(iter(mods))]["image/data"]
                buf = np.empty((slab,) + d.shape[1:], d.dtype)
                for a in range(0, d.shape[0], slab):
                    b = min(d.shape[0], a + slab)
                    d.read_direct(buf, np.s_[a:b], np.s_[0:b - a])
                    total += (b - a) * buf[0].nbytes
        best = max(best, total / (time.perf_counter() - t0))
    return best, total


#: options for mpirun: by default Open MPI binds each of one or two ranks to a single core,
#: where a rank's reader thread and its processing then share that core; unbound, as with
#: SLURM ``--cpus-per-task`` >= 2, they overlap (set with --mpirun-args)
MPIRUN_ARGS = "--bind-to none"


def run_pipeline(conf: Path, ranks: int, report: Path, extra: list[str],
                 mpirun_args: str = MPIRUN_ARGS) -> dict:
    """One ``mpirun -n ranks calib-mpi`` run; returns its timing report."""
    cmd = ["mpirun", "-n", str(ranks), *shlex.split(mpirun_args),
           str(Path(sys.executable).parent / "calib-mpi"),
           str(conf), "--overwrite", "-q", "--report", str(report), *extra]
    t0 = time.perf_counter()
    p = subprocess.run(cmd, capture_output=True, text=True, env=clean_environ(MPI_ENV),
                       timeout=3600)
    wall = time.perf_counter() - t0
    if p.returncode != 0:
        raise SystemExit(f"calib-mpi failed ({' '.join(cmd)}):\n{p.stdout}\n{p.stderr}")
    rep = json.loads(report.read_text())
    rep["wall_seconds"] = wall
    return rep


def steady_rate(rep: dict) -> float:
    """GB/s of gather + process over the runs after the first (equal runs): the rate of a
    long run, without the first run's one-off costs (compiled kernel loaded, buffers'
    pages mapped, MPI-IO set up)."""
    t = rep["seconds_gather_per_run"][1:]
    n = len(rep["seconds_gather_per_run"])
    return rep["bytes_read"] / n * len(t) / sum(t) / 1e9 if t else rep["gather_GBps"]


def processor_rates(n_cells: int, quick: bool) -> dict:
    """Pixel-cells per second of the drspc, drscs and xray processors on one core."""
    out = {}
    rng = np.random.default_rng(0)
    # drspc: 2 windows of 40 points each, streamed train by train, then finalized
    from calib_mpi.process.drspc import DrspcAccumulator

    t_steps = 100
    acc = DrspcAccumulator(n_cells, windows=((10, 50), (60, 100)))
    frames = rng.integers(4000, 7000, (n_cells, 64, 64)).astype(np.uint16)
    cells = np.arange(n_cells)
    t0 = time.perf_counter()
    for t in range(t_steps):
        acc.update(frames, frames, cells, np.full(n_cells, t))
    acc.finalize()
    out["drspc_pixel_cells_per_s"] = n_cells * 4096 / (time.perf_counter() - t0)
    out["drspc_steps"] = t_steps
    # drscs: whole scans of P series
    from calib_mpi.process.drscs import process_scan
    from calib_mpi.synthetic.drscs import make_drscs_scans

    p_series = 4096 * (1 if quick else 4)
    scans = make_drscs_scans(seed=0, shape=(p_series,), currents=(80.0,))
    analog, digital, valid = scans.analog[0], scans.digital[0], scans.valid[0]
    t0 = time.perf_counter()
    process_scan(analog, digital, valid)
    out["drscs_pixel_cells_per_s"] = p_series / (time.perf_counter() - t0)
    out["drscs_steps"] = int(analog.shape[0])
    # xray: histogram n_frames per cell, then peak finding
    from calib_mpi.process.xray import XrayAccumulator

    xc = min(n_cells, 4)
    n_frames = 50 if quick else 200
    origin = np.full((xc, 64, 64), 4900, np.int32)
    xa = XrayAccumulator(xc, origin, n_bins=256)
    data = rng.normal(5000, 6, (n_frames, xc, 64, 64)).astype(np.uint16)
    t0 = time.perf_counter()
    for k in range(n_frames):
        xa.update(data[k], np.arange(xc))
    xa.finalize()
    out["xray_pixel_cells_per_s"] = xc * 4096 / (time.perf_counter() - t0)
    out["xray_frames_per_cell"] = n_frames
    return out


def drop_page_cache() -> str | None:
    """Empty the kernel's page cache (root only); returns why not, or None when done."""
    try:
        os.sync()
        Path("/proc/sys/vm/drop_caches").write_text("3\n")
    except OSError as e:
        return f"cannot drop the page cache ({e.strerror}; needs root)"
    return None


def cold_runs(conf: Path, ranks: list[int], work: Path, mpirun_args: str) -> dict:
    """Read bandwidth and pipeline throughput from the disk: the page cache is dropped
    before each measurement (the disk, not memory, is then the data source). The disk's
    rate drifts, so each pipeline run is compared with a cold read just before it."""
    why = drop_page_cache()
    if why:
        return {"skipped": why}
    out: dict = {"pipeline": {}}
    reads = []
    for r in ranks:
        drop_page_cache()
        bw, _ = read_bandwidth(conf.parent / "raw", repeats=1)
        reads.append(bw / 1e9)
        drop_page_cache()
        rep = run_pipeline(conf, r, work / f"cold{r}.json", [], mpirun_args)
        out["pipeline"][str(r)] = {
            "read_GBps": bw / 1e9,
            "gather_GBps": rep["gather_GBps"], "end_to_end_GBps": rep["end_to_end_GBps"],
            "gather_over_read": rep["gather_GBps"] * 1e9 / bw,
            "end_to_end_over_read": rep["end_to_end_GBps"] * 1e9 / bw}
        print(f"[bench] cold cache, {r} rank(s): read {bw / 1e9:.2f} GB/s, gather+process "
              f"{rep['gather_GBps']:.2f} GB/s, end-to-end {rep['end_to_end_GBps']:.2f} GB/s",
              flush=True)
    out["read_GBps"] = float(np.median(reads))
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--trains", type=int, default=64,
                    help="trains of the small set (N; a multiple of 16)")
    ap.add_argument("--cells", type=int, default=64)
    ap.add_argument("--modules", type=int, nargs="+", default=[0])
    ap.add_argument("--ranks", type=int, nargs="+", default=[1, 2, 4])
    ap.add_argument("--dir", default=str(HERE.parent / "bench-out"), help="work directory")
    ap.add_argument("--json", default=None, help="write the results here (default: in --dir)")
    ap.add_argument("--mpirun-args", default=MPIRUN_ARGS,
                    help="options for mpirun (default: %(default)r)")
    ap.add_argument("--quick", action="store_true", help="tiny sizes (for the test suite)")
    ap.add_argument("--no-cold", dest="cold", action="store_false",
                    help="skip the cold-cache (disk) measurements (they need root to drop the "
                         "page cache; off with --quick)")
    a = ap.parse_args(argv)
    work = Path(a.dir)
    work.mkdir(parents=True, exist_ok=True)
    mods = tuple(a.modules)
    print(f"[bench] writing synthetic run sets ({a.trains} and {4 * a.trains} trains x "
          f"{a.cells} cells x 3 runs, modules {list(mods)}) in {work}", flush=True)
    small = make_set(work / "small", a.trains, a.cells, mods)
    big = make_set(work / "big", 4 * a.trains, a.cells, mods)

    res: dict = {"host": platform.node(), "cpus": os.cpu_count(),
                 "date": time.strftime("%Y-%m-%dT%H:%M:%S"), "trains_small": a.trains,
                 "trains_big": 4 * a.trains, "cells": a.cells, "modules": list(mods),
                 "mpirun_args": a.mpirun_args}
    bw, nbytes = read_bandwidth(big.parent / "raw")
    res["read_GBps"] = bw / 1e9
    res["data_GB"] = nbytes / 1e9
    print(f"[bench] raw read bandwidth (h5py, 256-frame slabs, 1 process): "
          f"{bw / 1e9:.2f} GB/s over {nbytes / 1e9:.2f} GB", flush=True)

    runs = {}
    for r in a.ranks:
        # page cache and numba cache warm
        run_pipeline(big, r, work / f"warm{r}.json", [], a.mpirun_args)
        runs[r] = run_pipeline(big, r, work / f"big{r}.json", [], a.mpirun_args)
        print(f"[bench] {r} rank(s): {runs[r]['seconds_total']:.2f} s, gather+process "
              f"{runs[r]['gather_GBps']:.2f} GB/s", flush=True)
    # the same job on one core (Open MPI's binding of a single rank): the per-core rate the
    # cluster estimate starts from, and the base of the speedup per core
    one = run_pipeline(big, 1, work / "core1.json", [], "--bind-to core")
    res["one_core"] = {"seconds_gather_process": one["seconds_gather_process"],
                       "gather_GBps": one["gather_GBps"],
                       "end_to_end_GBps": one["end_to_end_GBps"],
                       "gather_over_read": one["gather_GBps"] / res["read_GBps"]}
    print(f"[bench] 1 rank on one core: gather+process {one['gather_GBps']:.2f} GB/s",
          flush=True)
    res["pipeline"] = {}
    t1 = runs[a.ranks[0]]["seconds_gather_process"] * a.ranks[0]
    for r, rep in runs.items():
        res["pipeline"][str(r)] = {
            "seconds_total": rep["seconds_total"],
            "seconds_gather_process": rep["seconds_gather_process"],
            "end_to_end_GBps": rep["end_to_end_GBps"],
            "gather_GBps": rep["gather_GBps"],
            "end_to_end_over_read": rep["end_to_end_GBps"] / res["read_GBps"],
            "gather_over_read": rep["gather_GBps"] / res["read_GBps"],
            "speedup_gather": t1 / rep["seconds_gather_process"],
            "speedup_vs_one_core": one["seconds_gather_process"] / rep["seconds_gather_process"],
            "steady_GBps": steady_rate(rep),
            "steady_over_read": steady_rate(rep) / res["read_GBps"],
            "peak_rss_MB_per_rank": [x / 2**20 for x in rep["peak_rss_bytes_per_rank"]],
        }
    # memory: a chunk small enough that even the N-train set has several read rounds per
    # rank, so both sets reach the steady state (buffers are touched lazily)
    mem = {}
    chunk = ["--chunk_frames", str(max(a.cells, 256))]
    for r in sorted({1, min(2, max(a.ranks))}):
        s = run_pipeline(small, r, work / f"small{r}.json", chunk, a.mpirun_args)
        b = run_pipeline(big, r, work / f"bigm{r}.json", chunk, a.mpirun_args)
        ms, mb = max(s["peak_rss_bytes_per_rank"]), max(b["peak_rss_bytes_per_rank"])
        mem[str(r)] = {"chunk_frames": int(chunk[1]), "peak_rss_MB_N": ms / 2**20,
                       "peak_rss_MB_4N": mb / 2**20, "ratio_4N_over_N": mb / ms}
    res["memory"] = mem
    res["processors"] = processor_rates(a.cells if not a.quick else 4, a.quick)
    res["cold"] = cold_runs(big, a.ranks, work, a.mpirun_args) if a.cold and not a.quick else {
        "skipped": "--no-cold or --quick"}

    print()
    print(f"{'ranks':>5} {'total s':>8} {'e2e GB/s':>9} {'e2e/read':>9} {'gather GB/s':>12} "
          f"{'gather/read':>12} {'steady/read':>12} {'speedup':>8} {'peak RSS MB/rank':>17}")
    for r, p in res["pipeline"].items():
        print(f"{r:>5} {p['seconds_total']:8.2f} {p['end_to_end_GBps']:9.2f} "
              f"{p['end_to_end_over_read']:9.2f} {p['gather_GBps']:12.2f} "
              f"{p['gather_over_read']:12.2f} {p['steady_over_read']:12.2f} "
              f"{p['speedup_gather']:8.2f} {max(p['peak_rss_MB_per_rank']):17.0f}")
    print("steady: gather+process of the runs after the first (a long run's rate)")
    oc = res["one_core"]
    print(f"1 rank bound to one core: gather+process {oc['gather_GBps']:.2f} GB/s "
          f"({oc['gather_over_read']:.2f} of the read); speedup over it: "
          + ", ".join(f"{r} rank(s) {p['speedup_vs_one_core']:.2f}"
                      for r, p in res["pipeline"].items()))
    print(f"read bandwidth {res['read_GBps']:.2f} GB/s (same files, same session); "
          f"mpirun {a.mpirun_args}")
    for r, m in mem.items():
        print(f"memory, {r} rank(s), chunk_frames {m['chunk_frames']}: peak RSS "
              f"{m['peak_rss_MB_N']:.0f} MB for {a.trains} trains,"
              f" {m['peak_rss_MB_4N']:.0f} MB for {4 * a.trains} trains "
              f"(ratio {m['ratio_4N_over_N']:.2f})")
    cold = res["cold"]
    if "skipped" in cold:
        print(f"cold cache (disk): skipped ({cold['skipped']})")
    else:
        print("cold cache (disk), each run against a cold read just before it:")
        for r, p in cold["pipeline"].items():
            print(f"{r:>5} rank(s): read {p['read_GBps']:.2f} GB/s, gather+process "
                  f"{p['gather_GBps']:.2f} GB/s = {p['gather_over_read']:.2f} of it, "
                  f"end-to-end {p['end_to_end_GBps']:.2f} GB/s = "
                  f"{p['end_to_end_over_read']:.2f}")
    for k, v in res["processors"].items():
        if k.endswith("_per_s"):
            print(f"{k.replace('_', ' ')}: {v:,.0f} (one core)")
    path = Path(a.json) if a.json else work / "bench.json"
    path.write_text(json.dumps(res, indent=1) + "\n")
    print(f"[bench] results written to {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
