"""Command-line entry point: ``mpirun -n N calib-mpi run.conf [--key value ...]``.

Steps: preprocess (scan files, plan) -> gather + process (streamed together) -> join.
Errors about the input, configuration or output are raised identically on every rank and end
the job with exit code 2 and one message; anything unexpected is logged with its rank and
ends the whole job through ``MPI.COMM_WORLD.Abort``.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import io
import json
import logging
import os
import resource
import socket
import sys
import time
import traceback

import numpy as np
from mpi4py import MPI

from . import __version__
from .config import Config, parse_config
from .errors import CalibError
from .facilities import facility
from .gather import gather_run
from .join import write_module
from .parallel import resolve_driver
from .preprocess import format_record, make_plan, output_path, record_path, write_record
from .readers.xfel import add_counts
from .recipes import RECIPES

log = logging.getLogger("calib_mpi")

#: ``calib-mpi <name> ...`` runs ``<module>.main(argv)`` instead of a calibration
SUBCOMMANDS = {"plot": "calib_mpi.plot", "export": "calib_mpi.export"}


def _setup_logging(cfg: Config | None, rank: int) -> None:
    level = logging.INFO
    if cfg is not None:
        level = logging.WARNING if cfg.quiet else (logging.DEBUG if cfg.verbose else logging.INFO)
    if rank != 0 and level > logging.DEBUG:
        level = max(level, logging.WARNING)
    logging.basicConfig(level=level, stream=sys.stderr,
                        format=f"[calib-mpi r{rank}] %(message)s", force=True)


def _provenance(cfg: Config, plan, module: int, comm: MPI.Comm, started: str) -> dict:
    """Attributes saying how a module file was made: version, config, inputs, ranks, times."""
    files = [fi for (_, m), fl in sorted(plan.files.items()) if m == module for fi in fl]
    inputs = []
    for fi in files:
        st = os.stat(fi.path)
        inputs.append({"path": fi.path, "size": st.st_size,
                       "mtime": dt.datetime.fromtimestamp(st.st_mtime, dt.UTC)
                       .isoformat()})
    return {
        "calib_mpi_version": __version__,
        "config": json.dumps(cfg.as_dict(), default=str),
        "input_files": json.dumps(inputs),
        "n_ranks": comm.size,
        "host": socket.gethostname(),
        "started": started,
        "finished": dt.datetime.now(dt.UTC).isoformat(),
    }


def run(cfg: Config, comm: MPI.Comm) -> dict:
    """Run the configured steps; collective. Returns a summary (rank 0; {} elsewhere)."""
    started = dt.datetime.now(dt.UTC).isoformat()
    driver = resolve_driver(cfg.io_driver, comm)
    t0 = time.monotonic()
    if cfg.steps != ("preprocess",) and ("gather" not in cfg.steps
                                         or "process" not in cfg.steps):
        raise CalibError(f"steps = {' '.join(cfg.steps)}: gather and process run together "
                         "(frames are streamed, not stored); include both")
    plan, record = make_plan(comm, cfg)
    if comm.rank == 0:
        for note in record.get("notes", []):
            log.warning("%s", note)
        for m, runs in record.get("modules_missing", {}).items():
            log.warning("module %s has no files in run(s) %s: left out (missing_modules = "
                        "skip)", m, runs)
    if plan is None:
        if comm.rank == 0:
            log.warning("nothing to do: every module has a complete result")
        return {"record": record}
    if comm.rank == 0:
        log.info("plan: %d run(s), %d module(s), %d cells, %d rank(s), I/O driver %s",
                 len(plan.runs), len(plan.modules), plan.n_cells, comm.size, driver)
        if "preprocess" in cfg.steps and not cfg.dry_run:
            write_record(record, record_path(cfg))
            log.info("preprocess record: %s", record_path(cfg))
    if cfg.dry_run or cfg.steps == ("preprocess",):
        if comm.rank == 0:
            print(format_record(record))
            print(plan.summary())
        return {"plan": plan, "record": record}
    t_scan = time.monotonic() - t0
    t_gather0 = time.monotonic()
    fac = facility(cfg.facility)
    blocks = fac.blocks()
    recipe = RECIPES[cfg.measurement](cfg, plan)
    recipe.start(plan.units_of(comm.rank))
    rejected, bytes_read, t_runs = {}, 0, []
    for ri in range(len(plan.runs)):
        st = gather_run(comm, plan, ri, blocks, recipe.consume, driver, cfg.prefetch,
                        show_progress=comm.rank == 0 and not cfg.quiet)
        recipe.end_run(ri)
        for (m, reason), v in st.rejected.items():
            rejected[(ri, m, reason)] = v
        bytes_read += st.bytes_read
        t_runs.append(st.seconds)
    for d in comm.allgather(rejected):  # frames left out while reading go into the metadata
        for (ri, m, reason), v in d.items():
            add_counts(plan.dropped[(ri, m)], {reason: v})
    t_gather = time.monotonic() - t_gather0
    t1 = time.monotonic()
    results = recipe.finalize(comm)
    extra = recipe.module_extra(comm, results)
    summary = recipe.summary(comm, results)
    t_process = time.monotonic() - t1
    t1 = time.monotonic()
    outputs = []
    if "join" in cfg.steps:
        for m in plan.modules:
            attrs = _provenance(cfg, plan, m, comm, started)
            attrs.update({
                "measurement": cfg.measurement, "facility": cfg.facility, "module": m,
                "n_cells": plan.n_cells, "runs": np.array(plan.runs),
                "trains_used": np.array([plan.trains_used[(ri, m)]
                                         for ri in range(len(plan.runs))]),
                "dropped": json.dumps({str(plan.runs[ri]): plan.dropped[(ri, m)]
                                       for ri in range(len(plan.runs))}),
            })
            if cfg.facility == "cfel":
                attrs.update({"module_serial": cfg.module_serial, "position": cfg.position,
                              "temperature": cfg.temperature,
                              "run_names": list(cfg.run_names)})
            ex = dict(extra[m])
            ex["metadata/runs"] = np.array(plan.runs)
            ex["metadata/trains_used"] = attrs["trains_used"]
            write_module(comm, plan, m, output_path(cfg, m), driver,
                         fac.blocks(m), fac.frame_shape, fac.specs(recipe.specs),
                         {u: results[u] for u in plan.units_in_module(comm.rank, m)},
                         attrs, ex)
            outputs.append(output_path(cfg, m))
    t_join = time.monotonic() - t1
    if comm.rank == 0 and outputs and (cfg.plot or cfg.export):
        _after_run(cfg, outputs)
    elapsed = time.monotonic() - t0
    rss = comm.gather(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024, root=0)
    total_read = comm.reduce(bytes_read, root=0)
    if comm.rank != 0:
        return {}
    timing = {"n_ranks": comm.size, "bytes_read": total_read, "seconds_total": elapsed,
              "seconds_preprocess": t_scan, "seconds_gather_process": t_gather,
              "seconds_gather_per_run": t_runs, "seconds_finalize": t_process,
              "seconds_join": t_join, "peak_rss_bytes_per_rank": rss,
              "gather_GBps": total_read / max(t_gather, 1e-9) / 1e9,
              "end_to_end_GBps": total_read / max(elapsed, 1e-9) / 1e9}
    log.info("timing: preprocess %.2f s, gather+process %.2f s (%.2f GB/s), finalize %.2f s, "
             "join %.2f s; peak memory per rank %s MB", t_scan, t_gather,
             timing["gather_GBps"], t_process, t_join,
             ", ".join(f"{r / 2**20:.0f}" for r in rss))
    if cfg.report:
        cfg.report.parent.mkdir(parents=True, exist_ok=True)
        cfg.report.write_text(json.dumps(timing, indent=1) + "\n")
    return {"plan": plan, "summary": summary, "outputs": outputs, "elapsed": elapsed,
            "timing": timing, "recipe": recipe}


def _after_run(cfg: Config, outputs: list) -> None:
    """Pictures and pycalibration constants of the results, when asked for (rank 0)."""
    base = cfg.output_dir / cfg.measurement
    if cfg.plot:
        from .plot import plot_results

        files = plot_results(outputs, base / "plots")
        log.info("pictures: %d PNG files in %s", len(files), base / "plots")
    if cfg.export:
        from .export import export_module

        n = sum(len(export_module(p, base / "pycalibration", overwrite=cfg.overwrite))
                for p in outputs)
        log.info("pycalibration constants: %d files in %s", n, base / "pycalibration")


def print_summary(cfg: Config, info: dict) -> None:
    """Short human-readable report of a finished run (rank 0)."""
    plan = info["plan"]
    names = ([f"{cfg.module_serial} (CFEL lab)"] if cfg.facility == "cfel"
             else [str(m) for m in plan.modules])
    print(f"calib-mpi {__version__}: {cfg.measurement} calibration of module(s) "
          f"{', '.join(names)} — {plan.n_cells} cells, "
          f"{plan.n_ranks} rank(s), {info['elapsed']:.1f} s")
    for m in plan.modules:
        used = ", ".join(f"run {r}: {plan.trains_used[(ri, m)]}"
                         for ri, r in enumerate(plan.runs))
        name = cfg.module_serial if cfg.facility == "cfel" else f"{m:2d}"
        print(f"  module {name}  trains used: {used}")
        for line in info["recipe"].describe(m, info["summary"].get(m, {})):
            print(f"     {line}")
    for p in info["outputs"]:
        print(f"  wrote {p}")


def main(argv: list[str] | None = None) -> int:
    """Console entry point."""
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] in SUBCOMMANDS:
        import importlib

        return importlib.import_module(SUBCOMMANDS[argv[0]]).main(argv[1:])
    comm = MPI.COMM_WORLD
    cfg = None
    try:
        if comm.rank == 0:
            cfg = parse_config(argv)
        else:  # parse quietly: rank 0 prints help, version and usage errors
            with contextlib.redirect_stdout(io.StringIO()), \
                    contextlib.redirect_stderr(io.StringIO()):
                cfg = parse_config(argv)
        _setup_logging(cfg, comm.rank)
        info = run(cfg, comm)
        if comm.rank == 0 and not cfg.quiet and "summary" in info:
            print_summary(cfg, info)
        return 0
    except SystemExit as e:  # --help / --version
        return int(e.code or 0)
    except CalibError as e:  # raised identically on every rank (see parallel.agree)
        if comm.rank == 0:
            print(f"calib-mpi: error: {e}", file=sys.stderr, flush=True)
        return 2
    except BaseException:
        sys.stderr.write(f"[calib-mpi r{comm.rank}] unexpected error, aborting the job:\n"
                         + traceback.format_exc())
        sys.stderr.flush()
        if comm.size > 1:
            comm.Abort(1)
        return 1


if __name__ == "__main__":
    sys.exit(main())
