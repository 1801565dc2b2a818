"""The steps of a job on a communicator, shared by :mod:`calib_mpi.pipeline` (one plan) and
:mod:`calib_mpi.currents` (drscs: one plan per current on rank groups, then the merge):
gather + process (:func:`gather_and_process`), result attributes and provenance, output
locks, the preprocess record, timings and the pictures/export after a job. Errors about
input, configuration or output are raised identically on every rank (see
:func:`calib_mpi.parallel.agree`).
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import resource
import socket
import time
from dataclasses import dataclass, field

import numpy as np
from mpi4py import MPI

from . import __version__
from .conditions import calcat_dict
from .config import Config
from .errors import CalibError, OutputError
from .facilities import facility
from .gather import gather_run, release_node_buffers
from .guard import (
    OutputLocks,
    add_cleanup,
    add_cleanup_dir,
    check_free,
    leftover_tmps,
)
from .join import ResultPart, result_size
from .parallel import agree, rank_threads
from .plan import Plan
from .preprocess import format_record, output_path, record_path, write_record
from .readers.xfel import add_counts
from .recipes import recipe_class

log = logging.getLogger("calib_mpi")


def plan_inputs(plan: Plan, module: int) -> list[str]:
    """Paths of the input files of ``module`` in ``plan``, in (run, file) order."""
    return [fi.path for (_, m), fl in sorted(plan.files.items()) if m == module for fi in fl]


def provenance(cfg: Config, inputs: list[str], comm: MPI.Comm, started: str) -> dict:
    """Attributes saying how a module file was made: version, config, inputs, ranks, times."""
    stats = []
    for path in inputs:
        st = os.stat(path)
        stats.append({"path": path, "size": st.st_size,
                      "mtime": dt.datetime.fromtimestamp(st.st_mtime, dt.UTC).isoformat()})
    return {
        "calib_mpi_version": __version__,
        "config": json.dumps(cfg.as_dict(), default=str),
        "input_files": json.dumps(stats),
        "n_ranks": comm.size,
        "host": socket.gethostname(),
        "started": started,
        "finished": dt.datetime.now(dt.UTC).isoformat(),
    }


@dataclass
class Processed:
    """What gather + process of one plan produced on this rank."""

    recipe: object
    #: unit -> {dataset name: (k, cell, 64, 64)} of this rank's units
    results: dict
    #: module -> small datasets (recipe.module_extra), identical on all ranks of the plan
    extra: dict
    #: module -> recipe summary (identical on all ranks of the plan)
    summary: dict
    bytes_read: int
    seconds_per_run: list
    seconds_gather: float
    seconds_process: float
    #: bytes of ASIC blocks this rank sent in the gather to ranks of its node / other nodes
    bytes_sent: tuple[int, int] = (0, 0)
    #: this rank's seconds per gather phase, summed over runs (``GatherStats.profile``)
    profile: dict = field(default_factory=dict)


def consume_threads(cfg: Config, recipe) -> int:
    """Threads consuming a round's ASICs at once: ``cfg.threads``, or (0) the cores this
    rank may run on (``mpirun`` binds each of few ranks to one core by default), for
    recipes whose ``consume`` is safe for different ASICs in parallel; else 1."""
    if not getattr(recipe, "parallel_consume", False):
        return 1
    return rank_threads(cfg.threads)


def gather_and_process(comm: MPI.Comm, cfg: Config, plan: Plan, driver: str, recipe=None,
                       count_dropped: bool = True) -> Processed:
    """Collective over ``comm`` (the ranks of ``plan``): stream every run of the plan into
    ``recipe`` (default: a new one of ``cfg.measurement``) and finalize it. Frames left out
    while reading are added to ``plan.dropped`` (identically on every rank) when
    ``count_dropped`` (once per plan when the data are read several times)."""
    t0 = time.monotonic()
    blocks = facility(cfg.facility).blocks()
    if recipe is None:
        recipe = recipe_class(cfg.measurement)(cfg, plan)
    recipe.start(plan.units_of(comm.rank))
    rejected, bytes_read, t_runs, sent, profile = {}, 0, [], np.zeros(2, np.int64), {}
    for ri in range(len(plan.runs)):
        st = gather_run(comm, plan, ri, blocks, recipe.consume, driver, cfg.prefetch,
                        threads=consume_threads(cfg, recipe), node_sharing=cfg.node_sharing,
                        show_progress=comm.rank == 0 and not cfg.quiet)
        te = time.monotonic()
        recipe.end_run(ri)
        log.debug("run %s: gather %.2f s, end of run %.2f s", plan.runs[ri], st.seconds,
                  time.monotonic() - te)
        for (m, reason), v in st.rejected.items():
            rejected[(ri, m, reason)] = v
        bytes_read += st.bytes_read
        sent += (st.bytes_sent_same_node, st.bytes_sent_other_nodes)
        t_runs.append(st.seconds)
        for k, v in st.profile.items():
            profile[k] = profile.get(k, 0.0) + v
    release_node_buffers(comm)
    for d in comm.allgather(rejected):  # frames left out while reading go into the metadata
        for (ri, m, reason), v in d.items():
            if count_dropped:
                add_counts(plan.dropped[(ri, m)], {reason: v})
    t1 = time.monotonic()
    results = recipe.finalize(comm)
    extra = recipe.module_extra(comm, results)
    summary = recipe.summary(comm, results)
    return Processed(recipe, results, extra, summary, bytes_read, t_runs, t1 - t0,
                     time.monotonic() - t1, (int(sent[0]), int(sent[1])), profile)


def module_attrs(cfg: Config, plan: Plan, module: int, comm: MPI.Comm, started: str) -> dict:
    """Root attributes of a module file: provenance, what was measured, trains used."""
    attrs = provenance(cfg, plan_inputs(plan, module), comm, started)
    attrs.update({
        "measurement": cfg.measurement, "facility": cfg.facility, "module": module,
        "n_cells": plan.n_cells, "runs": np.array(plan.runs),
        "trains_used": np.array([plan.trains_used[(ri, module)]
                                 for ri in range(len(plan.runs))]),
        "dropped": json.dumps({str(plan.runs[ri]): plan.dropped[(ri, module)]
                               for ri in range(len(plan.runs))}),
    })
    attrs.update(lab_attrs(cfg))
    attrs.update(condition_attrs(cfg))
    return attrs


def condition_attrs(cfg: Config) -> dict:
    """Root attributes of the operating conditions: each under its CalCat name, all of them as
    JSON ``conditions``, and the gain mode of each run as found (``gain_modes``, in run order;
    null = unknown)."""
    cond = calcat_dict(cfg.conditions)
    out: dict = {"conditions": json.dumps(cond), "control_domain": cfg.control_domain,
                 "gain_modes": json.dumps(cfg.conditions.get("gain_modes", []))}
    if "runs_given" in cfg.conditions:
        out["runs_given"] = np.array(cfg.conditions["runs_given"])
    out.update(cond)
    return out


def lab_attrs(cfg: Config) -> dict:
    """Root attributes naming a CFEL lab module and its runs (none for XFEL)."""
    if cfg.facility != "cfel":
        return {}
    return {"module_serial": cfg.module_serial, "position": cfg.position,
            "temperature": cfg.temperature, "run_names": list(cfg.run_names)}


def check_steps(cfg: Config) -> None:
    if cfg.steps != ("preprocess",) and ("gather" not in cfg.steps
                                         or "process" not in cfg.steps):
        raise CalibError(f"steps = {' '.join(cfg.steps)}: gather and process run together "
                         "(frames are streamed, not stored); include both")


def report_plan(cfg: Config, comm: MPI.Comm, plan: Plan | None, record: dict) -> bool:
    """Log the plan's notes and write the preprocess record (rank 0); True when the job
    stops here (nothing to do, dry run or preprocess only)."""
    if comm.rank == 0:
        for note in record.get("notes", []):
            log.warning("%s", note)
        for m, runs in record.get("modules_missing", {}).items():
            log.warning("module %s has no files in run(s) %s: left out (missing_modules = "
                        "skip)", m, runs)
    if plan is None:
        if comm.rank == 0:
            log.warning("nothing to do: every module has a complete result")
        return True
    if comm.rank == 0:
        log.info("plan: %d run(s), %d module(s), %d cells, %d rank(s), %d thread(s) on "
                 "rank 0", len(plan.runs), len(plan.modules), plan.n_cells, comm.size,
                 rank_threads(cfg.threads))
    if cfg.dry_run or cfg.steps == ("preprocess",):
        if comm.rank == 0:
            print(format_record(record))
            print(plan.summary())
        if not cfg.dry_run:
            finish_record(cfg, comm, record)
        return True
    return False


def finish_record(cfg: Config, comm: MPI.Comm, record: dict) -> None:
    """Collective: write the preprocess record (rank 0) at the end of a finished job, so
    that an aborted job never replaces the record of a finished one."""
    if "preprocess" not in cfg.steps or cfg.dry_run:
        return
    err = None
    if comm.rank == 0:
        try:
            write_record(record, record_path(cfg))
            log.info("preprocess record: %s", record_path(cfg))
        except OSError as e:
            err = OutputError(f"{record_path(cfg)}: cannot be written ({e.strerror or e})")
    agree(comm, err, name_rank=False)


def expected_size(cfg: Config, n_cells: int) -> int:
    """Bytes of one module result, roughly from above (for the room check before reading):
    the recipe's datasets, for drscs once merged and once per current."""
    fac = facility(cfg.facility)
    specs = list(recipe_class(cfg.measurement).specs)
    if cfg.measurement == "drscs" and len(cfg.currents) > 1:
        specs = specs * (len(cfg.currents) + 1)
    return result_size([ResultPart(fac.specs(specs), {})], n_cells, fac.frame_shape, {}, {})


def take_locks(cfg: Config, comm: MPI.Comm, modules, n_cells: int) -> OutputLocks:
    """Collective: rank 0 checks that the results of ``modules`` (``n_cells`` cells) fit on
    the output file system, locks them (creating the output directory) and removes temporary
    files left there by earlier jobs; a lock held by another job or too little room refuses
    this one on every rank. Call after every check that can refuse the job, before reading."""
    locks, err = OutputLocks(), None
    if comm.rank == 0 and "join" in cfg.steps:
        try:
            check_free(cfg.output_dir / cfg.measurement,
                       expected_size(cfg, n_cells) * len(modules), len(modules))
            for note in locks.acquire([output_path(cfg, m) for m in modules]):
                log.warning("%s", note)
            for m in modules:
                for old in leftover_tmps(output_path(cfg, m)):
                    old.unlink(missing_ok=True)
        except OutputError as e:
            err = e
        except OSError as e:
            locks.release()
            err = OutputError(f"{cfg.output_dir / cfg.measurement}: cannot be used ({e})")
    agree(comm, err, name_rank=False)
    paths, dirs = comm.bcast((locks.paths, locks.made_dirs), root=0)
    for lock in paths:  # any rank that aborts the job removes them
        add_cleanup(lock)
    for d in dirs:
        add_cleanup_dir(d)
    return locks


def finish_timing(cfg: Config, comm: MPI.Comm, t0: float, bytes_read: int,
                  seconds: dict, bytes_sent: tuple[int, int] = (0, 0)) -> dict:
    """Collective: timings, bytes read, bytes the gather sent (``bytes_sent``: this rank's
    to its own node, to other nodes) and peak memory per rank; logged and written to
    ``cfg.report`` by rank 0 (which gets the dict; other ranks get {}). ``seconds`` may hold
    this rank's ``seconds_profile`` (phase -> s): reported as the mean over ranks."""
    elapsed = time.monotonic() - t0
    seconds = dict(seconds)
    profiles = comm.gather(seconds.pop("seconds_profile", {}), root=0)
    rss = comm.gather(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024, root=0)
    total_read = comm.reduce(bytes_read, root=0)
    sent = comm.reduce(np.asarray(bytes_sent, np.int64), root=0)
    node = comm.Split_type(MPI.COMM_TYPE_SHARED)
    n_nodes = comm.allreduce(int(node.rank == 0))
    node.Free()
    if comm.rank != 0:
        return {}
    same, other = (int(x) for x in sent)
    t_gather = seconds["seconds_gather_process"]
    timing = {"n_ranks": comm.size, "n_nodes": n_nodes, "bytes_read": total_read,
              "bytes_sent_same_node": same, "bytes_sent_other_nodes": other,
              "seconds_total": elapsed, **seconds, "peak_rss_bytes_per_rank": rss,
              "gather_GBps": total_read / max(t_gather, 1e-9) / 1e9,
              "end_to_end_GBps": total_read / max(elapsed, 1e-9) / 1e9,
              "seconds_profile_mean_per_rank": {
                  k: sum(p.get(k, 0.0) for p in profiles) / len(profiles)
                  for k in sorted({k for p in profiles for k in p})}}
    log.info("timing: preprocess %.2f s, gather+process %.2f s (%.2f GB/s), finalize %.2f s, "
             "join %.2f s; peak memory per rank %s MB", seconds["seconds_preprocess"], t_gather,
             timing["gather_GBps"], seconds["seconds_finalize"], seconds["seconds_join"],
             ", ".join(f"{r / 2**20:.0f}" for r in rss))
    if n_nodes > 1:
        log.info("%d nodes: the gather sent %.1f MB between ranks of a node, %.1f MB between "
                 "nodes", n_nodes, same / 1e6, other / 1e6)
    if cfg.report:
        cfg.report.parent.mkdir(parents=True, exist_ok=True)
        cfg.report.write_text(json.dumps(timing, indent=1, default=str) + "\n")
    return timing


def after_run(cfg: Config, outputs: list) -> None:
    """Pictures and pycalibration constants of the results, when asked for (rank 0)."""
    base = cfg.output_dir / cfg.measurement
    if cfg.plot:
        from .plot import plot_results

        files = plot_results(outputs, base / "plots", geom_file=cfg.geometry,
                             quad_pos=cfg.quad_pos, detector=cfg.detector,
                             units=cfg.plot_units)
        log.info("pictures: %d PNG files in %s", len(files), base / "plots")
    if cfg.export:
        from .export import export_results

        n = len(export_results(outputs, base / "pycalibration", dict(cfg.pdu_names),
                               overwrite=cfg.overwrite))
        log.info("CalCat constants: %d files in %s", n, base / "pycalibration")
