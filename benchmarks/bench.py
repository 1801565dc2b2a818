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
import resource
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


def agipd_sources(f: h5py.File) -> list[str]:
    """``INSTRUMENT/.../image/data`` paths of the AGIPD sources in an open raw file (control
    files of the same run, ``RAW-*-DA01-*.h5``, have none)."""
    out = []
    inst = f.get("INSTRUMENT")
    for det in inst if inst is not None else ():
        if "AGIPD" not in det or "DET" not in inst[det]:
            continue
        for ch in inst[det]["DET"]:
            if "image/data" in inst[det]["DET"][ch]:
                out.append(f"INSTRUMENT/{det}/DET/{ch}/image/data")
    return out


def agipd_files(raw: Path) -> list[Path]:
    """The AGIPD raw files of a run set (``raw/rNNNN/RAW-*.h5`` with an AGIPD source)."""
    out = []
    for fn in sorted(raw.glob("r*/RAW-*.h5")):
        with h5py.File(fn, "r") as f:
            if agipd_sources(f):
                out.append(fn)
    return out


def read_bandwidth(raw: Path, slab: int = 256, repeats: int = 2) -> tuple[float, int]:
    """Best of ``repeats`` passes: bytes per second of h5py reading all AGIPD frames of the
    run set in slabs, one process."""
    files = agipd_files(raw)
    if not files:
        raise SystemExit(f"bench: no AGIPD raw files under {raw}")
    best, total = 0.0, 0
    for _ in range(repeats):
        total = 0
        t0 = time.perf_counter()
        for fn in files:
            with h5py.File(fn, "r") as f:
                for path in agipd_sources(f):
                    d = f[path]
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
                 mpirun_args: str = MPIRUN_ARGS, env: dict | None = None) -> dict:
    """One ``mpirun -n ranks calib-mpi`` run; returns its timing report, with the run's wall
    time and the CPU seconds (user + system) of mpirun and its ranks."""
    cmd = ["mpirun", "-n", str(ranks), *shlex.split(mpirun_args),
           str(Path(sys.executable).parent / "calib-mpi"),
           str(conf), "--overwrite", "-q", "--report", str(report), *extra]
    t0, c0 = time.perf_counter(), _children_cpu()
    p = subprocess.run(cmd, capture_output=True, text=True,
                       env=clean_environ({**MPI_ENV, **(env or {})}), timeout=3600)
    wall, cpu = time.perf_counter() - t0, _children_cpu() - c0
    if p.returncode != 0:
        raise SystemExit(f"calib-mpi failed ({' '.join(cmd)}):\n{p.stdout}\n{p.stderr}")
    rep = json.loads(report.read_text())
    rep["wall_seconds"], rep["cpu_seconds"] = wall, cpu
    return rep


def _children_cpu() -> float:
    """User + system CPU seconds of this process's finished children."""
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def _stamped(root: Path, key: dict, write) -> None:
    """Run ``write()`` unless ``root/params.json`` says the set was written with ``key``."""
    stamp = root / "params.json"
    text = json.dumps(key, sort_keys=True)
    if not (stamp.is_file() and stamp.read_text() == text):
        root.mkdir(parents=True, exist_ok=True)
        write()
        stamp.write_text(text)


def drspc_steps(factor: int) -> tuple[int, ...]:
    """Scan steps of a drspc set ``factor`` times as long as the default (24 steps): more
    steps inside the same two fit windows."""
    from calib_mpi.synthetic.xfel_scans import DRSPC_STEPS, DRSPC_WINDOWS

    if factor == 1:
        return DRSPC_STEPS
    n = len(DRSPC_STEPS) * factor - 2
    (a0, a1), (b0, b1) = DRSPC_WINDOWS
    first = np.linspace(a0, a1 - 1, n * (a1 - a0) // (a1 - a0 + b1 - b0)).round()
    second = np.linspace(b0, b1 - 1, n - len(first)).round()
    return tuple(sorted({0, 260, *map(int, first), *map(int, second)}))


def make_scan_set(root: Path, measurement: str, factor: int, cells: int, length: int) -> Path:
    """Write (or reuse) a one-module (module 0) synthetic set of ``measurement`` (drspc, xray
    or drscs) whose run length is ``factor`` times the base: drspc 24 scan steps x 8 runs,
    xray ``length`` trains, drscs ``length`` scan steps x 4 runs (one current); returns its
    config file."""
    from calib_mpi.synthetic import xfel_drscs as xd
    from calib_mpi.synthetic import xfel_scans as xs

    raw, out, conf = root / "raw", root / "out", root / "run.conf"
    if measurement == "drspc":
        p = xs.DrspcRunSet(modules=(0,), n_cells=cells, steps=drspc_steps(factor),
                           lost_steps={})
        _stamped(root, {"m": measurement, "f": factor, "c": cells},
                 lambda: xs.write_drspc_runs(raw, p))
        return xs.write_scan_config(conf, raw, out, p)
    if measurement == "xray":
        p = xs.XrayRunSet(modules=(0,), n_cells=cells, n_trains=length * factor,
                          lost_trains={})
        _stamped(root, {"m": measurement, "n": p.n_trains, "c": cells},
                 lambda: xs.write_xray_runs(raw, p))
        return xs.write_scan_config(conf, raw, out, p)
    p = xd.XfelDrscsSet(currents=("itestc80",), current_values=(80.0,), module=0,
                        n_cells=max(1, cells // 4), n_trains=length * factor, lost=())
    _stamped(root, {"m": measurement, "n": p.n_trains, "c": cells},
             lambda: xd.write_xfel_drscs_runs(raw, p))
    return xd.write_xfel_drscs_config(conf, raw, out, p)


def _summary(rep: dict, read_bps: float) -> dict:
    """The numbers of one job kept in the results."""
    return {"seconds_total": rep["seconds_total"], "wall_seconds": rep["wall_seconds"],
            "cpu_seconds": rep["cpu_seconds"], "GB": rep["bytes_read"] / 1e9,
            "end_to_end_GBps": rep["end_to_end_GBps"], "gather_GBps": rep["gather_GBps"],
            "end_to_end_over_read": rep["end_to_end_GBps"] * 1e9 / read_bps,
            "gather_over_read": rep["gather_GBps"] * 1e9 / read_bps,
            "peak_rss_MB_per_rank": [x / 2**20 for x in rep["peak_rss_bytes_per_rank"]],
            "profile": profile(rep)}


def profile(rep: dict) -> dict:
    """Seconds of a job per phase (mean over ranks for the gather phases): ``read`` (h5py, in
    the reader thread, overlapping the others when prefetching), ``read wait`` (processing
    waited for it), ``exchange`` (alltoall, pack, Alltoallv), ``kernel`` (consume),
    ``finalize`` (statistics, fits), ``write`` (the output files), ``other`` (start-up,
    preprocess, the rest of the total)."""
    g = rep.get("seconds_profile_mean_per_rank", {})
    out = {"read": g.get("read", 0.0), "read wait": g.get("read wait", 0.0),
           "exchange": g.get("exchange", 0.0), "kernel": g.get("process", 0.0),
           "finalize": rep.get("seconds_finalize", 0.0),
           "write": rep.get("seconds_join", 0.0) + rep.get("seconds_merge", 0.0)}
    out["other"] = rep["seconds_total"] - sum(v for k, v in out.items() if k != "read")
    return out


def measure_scans(work: Path, ranks: list[int], cells: int, length: int, mpirun_args: str,
                  warm: bool) -> dict:
    """drspc, xray and drscs end to end: read rate of the 4x set's files, each job with
    ``ranks`` ranks on it (ratios to the read rate, profile), and the peak memory of one rank
    for the 1x and 4x sets."""
    out = {}
    for m in ("drspc", "xray", "drscs"):
        small = make_scan_set(work / m / "N", m, 1, cells, length)
        big = make_scan_set(work / m / "4N", m, 4, cells, length)
        bw, nbytes = read_bandwidth(big.parent / "raw")
        res: dict = {"read_GBps": bw / 1e9, "data_GB": nbytes / 1e9, "pipeline": {}}
        for r in ranks:
            if warm:
                run_pipeline(big, r, work / m / f"warm{r}.json", [], mpirun_args)
            rep = run_pipeline(big, r, work / m / f"big{r}.json", [], mpirun_args)
            res["pipeline"][str(r)] = _summary(rep, bw)
        # memory: read slabs of 4 trains for both sets, so that the N set's slab is as
        # large as the 4N set's (with the default chunk a short run's slab is smaller than
        # the chunk: that difference is the bounded read buffer, not growth with the run)
        chunk = ["--chunk_frames", str(4 * cells)]
        mn, mb = (max(run_pipeline(s, 1, work / m / f"mem{i}.json", chunk, mpirun_args)
                      ["peak_rss_bytes_per_rank"]) for i, s in enumerate((small, big)))
        res["memory"] = {"chunk_frames": 4 * cells, "peak_rss_MB_N": mn / 2**20,
                         "peak_rss_MB_4N": mb / 2**20, "ratio_4N_over_N": mb / mn}
        best = max(res["pipeline"].values(), key=lambda x: x["end_to_end_GBps"])
        print(f"[bench] {m}: read {bw / 1e9:.2f} GB/s over {nbytes / 1e9:.2f} GB; best end to "
              f"end {best['end_to_end_GBps']:.2f} GB/s ({best['end_to_end_over_read']:.2f} "
              f"of the read); memory 4N/N {mb / mn:.2f}", flush=True)
        out[m] = res
    return out


def fixed_cost(work: Path, mpirun_args: str, repeats: int = 3) -> dict:
    """The cost of a job that has almost nothing to do (one module, 16 trains x 4 cells x 3
    runs: ~50 MB): CPU seconds (user + system of mpirun and its rank, less sensitive to
    other load than wall time) and the job's own ``seconds_total``, with the prebuilt
    kernels (when built) and with numba's JIT (cached), against the floor of starting
    ``mpirun -n 1 python`` with numpy, h5py and mpi4py. The median of ``repeats`` jobs after
    a first one (page cache, numba cache)."""
    conf = make_set(work / "tiny", 16, 4, (0,))
    py = str(Path(sys.executable))
    t0, c0 = time.perf_counter(), _children_cpu()
    subprocess.run(["mpirun", "-n", "1", *shlex.split(mpirun_args), py, "-c",
                    "import numpy, h5py; from mpi4py import MPI"], check=True, timeout=300,
                   env=clean_environ(MPI_ENV), capture_output=True)
    out = {"floor": {"wall_seconds": time.perf_counter() - t0,
                     "cpu_seconds": _children_cpu() - c0}}
    for mode in ("auto", "jit"):
        reps = [run_pipeline(conf, 1, work / "tiny" / f"{mode}{i}.json", [], mpirun_args,
                             {"CALIB_MPI_KERNELS": mode}) for i in range(repeats + 1)][1:]
        out[mode] = {k: float(np.median([r[k] for r in reps]))
                     for k in ("seconds_total", "wall_seconds", "cpu_seconds")}
    out["backend_auto"] = kernel_backend()
    return out


def kernel_backend() -> str:
    """``prebuilt`` or ``jit``: what ``CALIB_MPI_KERNELS=auto`` picks in a job here."""
    p = subprocess.run([sys.executable, "-c", "from calib_mpi.process import _jit; "
                        "print(_jit.backend())"], capture_output=True, text=True, timeout=120,
                       env=clean_environ({"CALIB_MPI_KERNELS": "auto"}))
    return p.stdout.strip() or p.stderr.strip()[-200:]


def run_peer(conf: Path, work: Path, runs: tuple[int, ...]) -> dict:
    """``benchmarks/peer.py`` (the notebook way) on the dark set's module 0."""
    out = work / "peer.json"
    subprocess.run([sys.executable, str(HERE / "peer.py"), str(conf.parent / "raw"),
                    "--runs", *map(str, runs), "--module", "0", "--json", str(out)],
                   check=True, timeout=3600, env=clean_environ())
    return json.loads(out.read_text())


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
    ap.add_argument("--scan-cells", type=int, default=8,
                    help="memory cells of the drspc and xray sets (drscs: a quarter, >= 1)")
    ap.add_argument("--scan-length", type=int, default=100,
                    help="trains of the base xray set and scan steps of the base drscs set "
                         "(drspc: 24 steps); the 4N sets are 4 times as long")
    ap.add_argument("--quick", action="store_true",
                    help="tiny sizes, no warm-up runs (for the test suite)")
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
        if not a.quick:  # page cache warm
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
            "cpu_seconds": rep["cpu_seconds"], "profile": profile(rep),
        }
    # memory: a chunk small enough that even the N-train set has several read rounds per
    # rank, so both sets reach the steady state (buffers are touched lazily)
    mem = {}
    chunk = ["--chunk_frames", str(max(a.cells, 256))]
    for r in [1] if a.quick else sorted({1, min(2, max(a.ranks))}):
        s = run_pipeline(small, r, work / f"small{r}.json", chunk, a.mpirun_args)
        b = run_pipeline(big, r, work / f"bigm{r}.json", chunk, a.mpirun_args)
        ms, mb = max(s["peak_rss_bytes_per_rank"]), max(b["peak_rss_bytes_per_rank"])
        mem[str(r)] = {"chunk_frames": int(chunk[1]), "peak_rss_MB_N": ms / 2**20,
                       "peak_rss_MB_4N": mb / 2**20, "ratio_4N_over_N": mb / ms}
    res["memory"] = mem
    res["processors"] = processor_rates(a.cells if not a.quick else 4, a.quick)
    res["peer"] = run_peer(big, work, DarkRunSet().runs)
    res["peer"]["calib_mpi_over_peer"] = {
        r: p["end_to_end_GBps"] * 1e9 / (res["peer"]["bytes_read"] / res["peer"]["seconds"])
        for r, p in res["pipeline"].items()}
    res["scans"] = measure_scans(work, [1] if a.quick else a.ranks,
                                 max(1, a.scan_cells if not a.quick else 1),
                                 a.scan_length if not a.quick else 16, a.mpirun_args,
                                 warm=not a.quick)
    res["fixed_cost"] = fixed_cost(work, a.mpirun_args, repeats=1 if a.quick else 3)
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
    print_summary(res)
    path = Path(a.json) if a.json else work / "bench.json"
    path.write_text(json.dumps(res, indent=1) + "\n")
    print(f"[bench] results written to {path}")
    return 0


PHASES = ("read", "read wait", "exchange", "kernel", "finalize", "write", "other")


def print_summary(res: dict) -> None:
    """Every measurement end to end against its read rate, the peer, and the fixed cost."""
    peer = res["peer"]
    print(f"notebook peer (EXtra-data whole run + numpy mean/std), dark: "
          f"{peer['GBps']:.2f} GB/s, peak RSS {peer['peak_rss_MB']:.0f} MB; calib-mpi over it: "
          + ", ".join(f"{r} rank(s) {v:.2f}x" for r, v in peer["calib_mpi_over_peer"].items()))
    print()
    print("end to end per measurement (4N set; profile: seconds, mean over ranks; read "
          "overlaps the rest)")
    print(f"{'meas.':>6} {'ranks':>5} {'GB':>6} {'read GB/s':>9} {'e2e GB/s':>9} "
          f"{'e2e/read':>8} {'RSS MB':>7} " + " ".join(f"{k:>9}" for k in PHASES))
    rows = [("dark", r, {**p, "GB": res["data_GB"]}, res["read_GBps"])
            for r, p in res["pipeline"].items()]
    rows += [(m, r, p, v["read_GBps"]) for m, v in res["scans"].items()
             for r, p in v["pipeline"].items()]
    for m, r, p, rd in rows:
        print(f"{m:>6} {r:>5} {p['GB']:6.2f} {rd:9.2f} {p['end_to_end_GBps']:9.2f} "
              f"{p['end_to_end_over_read']:8.2f} {max(p['peak_rss_MB_per_rank']):7.0f} "
              + " ".join(f"{p['profile'][k]:9.2f}" for k in PHASES))
    for m, v in res["scans"].items():
        mm = v["memory"]
        print(f"memory, {m}, 1 rank, chunk_frames {mm['chunk_frames']}: peak RSS "
              f"{mm['peak_rss_MB_N']:.0f} MB for N, "
              f"{mm['peak_rss_MB_4N']:.0f} MB for 4N (ratio {mm['ratio_4N_over_N']:.2f})")
    fc = res["fixed_cost"]
    print(f"fixed cost (tiny dark job, mpirun -n 1, median; kernels here: "
          f"{fc['backend_auto']}): " + "; ".join(
              f"{k}: CPU {fc[k]['cpu_seconds']:.2f} s, wall {fc[k]['wall_seconds']:.2f} s, "
              f"job seconds_total {fc[k]['seconds_total']:.2f} s" for k in ("auto", "jit"))
          + f"; floor (mpirun python + numpy, h5py, mpi4py): CPU "
          f"{fc['floor']['cpu_seconds']:.2f} s, wall {fc['floor']['wall_seconds']:.2f} s")


if __name__ == "__main__":
    sys.exit(main())
