"""One calibration job, top-down: checks, run order, plan, then gather + process and join.

:func:`run` (called by ``calib_mpi.cli.main``) checks what can be checked before reading
(:func:`calib_mpi.guard.preflight`), puts the runs in order (:mod:`calib_mpi.runorder`), plans
the job (:mod:`calib_mpi.preprocess`), takes the output locks and runs the steps of
:mod:`calib_mpi.steps`; a drscs job, one plan per current on rank groups followed by the merge,
is run by :func:`calib_mpi.currents.run_currents` on the same steps.
"""

from __future__ import annotations

import datetime as dt
import logging
import time

import numpy as np
from mpi4py import MPI

from .config import Config
from .currents import run_currents
from .facilities import facility
from .guard import preflight, share_job_tag
from .join import ResultPart, write_module
from .parallel import resolve_driver, share_cores
from .plan import Plan
from .preprocess import make_plan, output_path
from .runorder import prepare_runs
from .steps import (
    after_run,
    check_steps,
    finish_record,
    finish_timing,
    gather_and_process,
    module_attrs,
    report_plan,
    take_locks,
)

log = logging.getLogger("calib_mpi")


def run(cfg: Config, comm: MPI.Comm) -> dict:
    """Run the configured steps; collective. Returns a summary (rank 0; {} elsewhere)."""
    started = dt.datetime.now(dt.UTC).isoformat()
    driver = resolve_driver(cfg.io_driver, comm)
    share_job_tag(comm)
    share_cores(comm)
    t0 = time.monotonic()
    check_steps(cfg)
    preflight(cfg, comm, driver)
    if comm.rank == 0:
        log.info("I/O driver %s", driver)
    cfg = prepare_runs(comm, cfg)
    if cfg.measurement == "drscs":
        return run_currents(cfg, comm, driver, started, t0)
    plan, record = make_plan(comm, cfg)
    if report_plan(cfg, comm, plan, record):
        return {"plan": plan, "record": record}
    locks = take_locks(cfg, comm, plan.modules, plan.n_cells)
    try:
        return _compute(cfg, comm, plan, record, driver, started, t0)
    finally:
        locks.release()


def _compute(cfg: Config, comm: MPI.Comm, plan: Plan, record: dict, driver: str,
             started: str, t0: float) -> dict:
    """Collective: gather, process and join of a planned job; the preprocess record is
    written at the end."""
    t_scan = time.monotonic() - t0
    fac = facility(cfg.facility)
    done = gather_and_process(comm, cfg, plan, driver)
    t1 = time.monotonic()
    outputs = []
    if "join" in cfg.steps:
        for m in plan.modules:
            attrs = module_attrs(cfg, plan, m, comm, started)
            ex = dict(done.extra[m])
            ex["metadata/runs"] = np.array(plan.runs)
            ex["metadata/trains_used"] = attrs["trains_used"]
            mine = {u: done.results[u] for u in plan.units_in_module(comm.rank, m)}
            write_module(comm, m, output_path(cfg, m), driver, plan.n_cells, fac.blocks(m),
                         fac.frame_shape, [ResultPart(fac.specs(done.recipe.specs), mine)],
                         attrs, ex)
            outputs.append(output_path(cfg, m))
    t_join = time.monotonic() - t1
    finish_record(cfg, comm, record)
    if comm.rank == 0 and outputs and (cfg.plot or cfg.export):
        after_run(cfg, outputs)
    timing = finish_timing(cfg, comm, t0, done.bytes_read, {
        "seconds_preprocess": t_scan, "seconds_gather_process": done.seconds_gather,
        "seconds_gather_per_run": done.seconds_per_run,
        "seconds_finalize": done.seconds_process, "seconds_join": t_join,
        "seconds_profile": done.profile}, done.bytes_sent)
    if comm.rank != 0:
        return {}
    return {"plan": plan, "summary": done.summary, "outputs": outputs,
            "elapsed": timing["seconds_total"], "timing": timing, "recipe": done.recipe}
