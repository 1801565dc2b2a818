"""Preprocess: find the run files, scan their metadata in parallel, build and share the plan.

Rank 0 lists the files and checks the output location; all ranks scan a share of the files
(INDEX and per-frame train/cell IDs only, no image data); rank 0 combines the scans into the
:class:`~calib_mpi.plan.Plan` and broadcasts it. Any problem found by any rank is raised on
every rank with the same message. The plan is also written as a human-readable record,
``<output_dir>/<measurement>/preprocess.json``: cells in use, sequences per module, the common
train range, lost trains per module and every train or frame left out, with the reason.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
from pathlib import Path

import h5py
import numpy as np
from mpi4py import MPI

from . import __version__
from .config import Config
from .errors import CalibError, DataError, OutputError
from .guard import leftover_tmps, tmp_name
from .parallel import agree
from .plan import Plan, build_plan, build_plan_cfel, format_ranges
from .readers import cfel
from .readers.xfel import module_files, scan_file

log = logging.getLogger(__name__)

#: configuration keys that do not change the constants (ignored when resuming)
NON_SCIENCE_KEYS = {"overwrite", "dry_run", "verbose", "quiet", "steps", "io_driver",
                    "chunk_frames", "config_file", "extra", "modules", "output_dir",
                    "missing_modules", "prefetch", "report", "plot", "export", "drscs_memory",
                    "threads", "pdu_names", "run_order"}


def output_path(cfg: Config, module: int) -> Path:
    """Final result file of ``module``: ``<output_dir>/<meas>/<meas>_AGIPD<MM>_<facility>.h5``
    (CFEL: ``<meas>_<module_serial>_cfel.h5``)."""
    m = cfg.measurement
    if cfg.facility == "cfel":
        return cfg.output_dir / m / f"{m}_{cfg.module_serial}_cfel.h5"
    return cfg.output_dir / m / f"{m}_AGIPD{module:02d}_{cfg.facility}.h5"


def record_path(cfg: Config) -> Path:
    """Where the preprocess record is written."""
    return cfg.output_dir / cfg.measurement / "preprocess.json"


def list_files(cfg: Config, modules: tuple[int, ...]
               ) -> tuple[dict[tuple[int, int], list[Path]], dict[int, list[int]]]:
    """(run_index, module) -> sequence files, and the modules missing from some run.

    A module without files in a run is an error naming run, module and directory, unless
    ``missing_modules = skip``: then it is left out of the job (returned as missing).
    """
    if not cfg.input_dir.is_dir():
        raise DataError(f"input_dir {cfg.input_dir} does not exist or is not a directory")
    out: dict[tuple[int, int], list[Path]] = {}
    missing: dict[int, list[int]] = {}
    for ri, run in enumerate(cfg.runs):
        run_dir = cfg.input_dir / cfg.run_dir_pattern.format(run=run)
        if not run_dir.is_dir():
            raise DataError(f"run {run}: directory {run_dir} does not exist "
                            f"(input_dir = {cfg.input_dir}, runs = {list(cfg.runs)})")
        for m in modules:
            files = module_files(run_dir, cfg.file_pattern, run, m)
            if not files:
                if cfg.missing_modules == "skip":
                    missing.setdefault(m, []).append(run)
                    continue
                example = cfg.file_pattern.format(run=run, module=m, seq=0)
                raise DataError(f"run {run}, module {m}: no raw files like {example} in "
                                f"{run_dir}; is module {m} part of this run? (set "
                                "missing_modules = skip to leave such modules out)")
            out[(ri, m)] = files
    out = {k: v for k, v in out.items() if k[1] not in missing}
    return out, missing


def list_files_cfel(cfg: Config) -> tuple[dict[tuple[int, int], list[Path]], tuple[int, ...]]:
    """CFEL: (run_index, module) -> parts of each run (in part order), and the run numbers.

    Run numbers are ``runs`` when given, else found from the names of part 0 of each run name
    (:func:`~calib_mpi.readers.cfel.find_run_number`). Missing or non-consecutive parts are a
    :class:`DataError` naming the directory and the expected file pattern.
    """
    if not cfg.input_dir.is_dir():
        raise DataError(f"input_dir {cfg.input_dir} does not exist or is not a directory")
    where = dict(spec=cfg.spec, current=cfg.current, subdir=cfg.subdir)
    names = cfg.run_names
    runs = tuple(cfg.runs) or tuple(
        cfel.find_run_number(cfg.input_dir, cfg.temperature, cfg.measurement,
                             cfg.module_serial, cfg.position, name, **where) for name in names)
    module = cfg.modules[0]
    out = {(ri, module): cfel.run_files(cfg.input_dir, cfg.temperature, cfg.measurement,
                                        cfg.module_serial, cfg.position, name, run, **where)
           for ri, (name, run) in enumerate(zip(names, runs, strict=True))}
    return out, runs


def _file_stats(paths: list[Path]) -> list[dict]:
    out = []
    for p in paths:
        st = os.stat(p)
        out.append({"path": str(p), "size": st.st_size,
                    "mtime": dt.datetime.fromtimestamp(st.st_mtime, dt.UTC).isoformat()})
    return out


def _science(cfg_dict: dict) -> dict:
    return {k: v for k, v in cfg_dict.items() if k not in NON_SCIENCE_KEYS}


def check_outputs(cfg: Config, listing: dict) -> tuple[list[int], list[str]]:
    """Decide per module: compute, resume (skip a complete identical result) or refuse.

    Returns the modules to compute and notes for the user. A complete result made with the
    same configuration and the same input files (paths, sizes, modification times) is kept
    and the module skipped; a different existing result is an :class:`OutputError` unless
    ``overwrite`` is set. A temporary file left by an interrupted run is noted (and removed
    once the job holds the result's lock, :func:`calib_mpi.steps.take_locks`).
    """
    todo, notes = [], []
    wanted = _science(json.loads(json.dumps(cfg.as_dict(), default=str)))
    for m in sorted({m for (_, m) in listing}):
        final = output_path(cfg, m)
        for old in leftover_tmps(final):
            notes.append(f"module {m}: {old} is left from an interrupted run; "
                         "computing this module from the start")
        if not final.exists():
            todo.append(m)
            continue
        if cfg.overwrite:
            notes.append(f"module {m}: replacing {final} (overwrite)")
            todo.append(m)
            continue
        inputs = _file_stats([p for (_, mm), ps in sorted(listing.items()) if mm == m
                              for p in ps])
        try:
            with h5py.File(final, "r") as f:
                old_cfg = _science(json.loads(f.attrs["config"]))
                old_inputs = json.loads(f.attrs["input_files"])
        except Exception as e:
            raise OutputError(f"{final} exists but cannot be read as a calib-mpi result ({e}); "
                              "move it away or set overwrite = true") from e
        diff = sorted(k for k in set(old_cfg) | set(wanted) if old_cfg.get(k) != wanted.get(k))
        if not diff and old_inputs == inputs:
            notes.append(f"module {m}: {final} is complete and was made with the same "
                         "configuration and inputs; skipping it (resume)")
            continue
        what = f"settings {', '.join(diff)}" if diff else "input files"
        raise OutputError(
            f"results exist already: {final} was made with different {what}; set overwrite = "
            "true (or --overwrite) to replace it, or choose another output_dir"
        )
    return todo, notes


def cell_notes(cfg: Config, plan: Plan) -> list[str]:
    """Warnings about cell IDs: outliers left out per run, and cells beyond ``n_cells``."""
    notes = []
    for ri, cells in plan.outlier_cells.items():
        if cells:
            listed = ", ".join(f"{c} ({n} frame(s))" for c, n in sorted(cells.items()))
            notes.append(f"run {plan.runs[ri]}: cell ID(s) {listed} seen in very few trains "
                         "of a run with a fixed cell set: frames left out as faults")
    if plan.cells_beyond:
        cells = sorted(plan.cells_beyond)
        notes.append(f"n_cells = {plan.n_cells}, but the data have cells up to {cells[-1]}: "
                     f"{sum(plan.cells_beyond.values())} frame(s) of cell(s) "
                     f"{format_ranges(np.array(cells))} are left out")
    return notes


def plan_record(plan: Plan, cfg: Config, missing: dict, notes: list[str]) -> dict:
    """The preprocess record: what was found in the files and what was left out, and why."""
    rec: dict = {"calib_mpi_version": __version__,
                 "created": dt.datetime.now(dt.UTC).isoformat(),
                 "input_dir": str(cfg.input_dir), "n_cells": plan.n_cells,
                 "modules": list(plan.modules), "conditions": cfg.conditions,
                 "modules_missing": {str(m): runs for m, runs in missing.items()},
                 "notes": notes, "runs": []}
    for ri, run in enumerate(plan.runs):
        axis = plan.train_axis[ri]
        present = np.zeros(352, bool)
        mods = {}
        firsts, lasts = [], []
        for m in plan.modules:
            fl = plan.files[(ri, m)]
            ids = np.sort(np.concatenate([fi.train_ids for fi in fl]))
            for fi in fl:
                present |= fi.cells_present
            lost = np.setdiff1d(axis, ids)
            rejected: dict[str, list[int]] = {}
            for fi in fl:
                for k, v in fi.rejected_ids.items():
                    rejected.setdefault(k, []).extend(v)
            if len(ids):
                firsts.append(int(ids[0]))
                lasts.append(int(ids[-1]))
            mods[str(m)] = {
                "sequences": len(fl),
                "files": [Path(fi.path).name for fi in fl],
                "trains_with_data": int(len(ids)),
                "first_train": int(ids[0]) if len(ids) else None,
                "last_train": int(ids[-1]) if len(ids) else None,
                "lost_trains": {"count": int(len(lost)), "ids": format_ranges(lost[:1000])},
                "left_out": plan.dropped[(ri, m)],
                "left_out_train_ids": {k: format_ranges(v[:1000]) for k, v in rejected.items()},
            }
        rec["runs"].append({
            "run": run,
            "cells_in_use": format_ranges(np.nonzero(present)[0]),
            "outlier_cells": {str(c): n for c, n in plan.outlier_cells.get(ri, {}).items()},
            "trains": {"count": int(len(axis)),
                       "first": int(axis[0]) if len(axis) else None,
                       "last": int(axis[-1]) if len(axis) else None},
            "common_train_range": [max(firsts), min(lasts)] if firsts else None,
            "modules": mods,
        })
    return rec


def cfel_notes(cfg: Config, runs: tuple[int, ...], parts: dict) -> list[str]:
    """Warnings about CFEL runs whose metadata does not fit the configuration."""
    notes = []
    two_c = 2 * cfg.n_cells
    for ri, pl in parts.items():
        where = f"run {cfg.run_names[ri]!r} ({runs[ri]})"
        fn = pl[0].frame_numbers
        if fn % two_c:
            notes.append(f"{where}: frame_numbers = {fn} is not a multiple of 2 x n_cells = "
                         f"{two_c}; the last train is incomplete (n_trains rounded up to "
                         f"{pl[0].n_trains}); is n_cells = {cfg.n_cells} right?")
        ends = [int((p.segments[:, 1] + p.segments[:, 2]).max()) for p in pl if len(p.segments)]
        tail = fn - max(ends, default=0)
        if tail >= two_c:
            notes.append(f"{where}: the last {tail} of {fn} frames are missing from "
                         f"{Path(pl[-1].path).name} (the last part); was a part after it "
                         "deleted or not copied?")
    return notes


def plan_record_cfel(plan: Plan, cfg: Config, notes: list[str]) -> dict:
    """The preprocess record of a CFEL run set (same layout as :func:`plan_record`; trains
    are positions ``0 .. n_trains - 1`` in each run)."""
    rec: dict = {"calib_mpi_version": __version__,
                 "created": dt.datetime.now(dt.UTC).isoformat(),
                 "input_dir": str(cfg.input_dir), "n_cells": plan.n_cells,
                 "modules": list(plan.modules), "module_serial": cfg.module_serial,
                 "conditions": cfg.conditions,
                 "modules_missing": {}, "notes": notes, "runs": []}
    for ri, run in enumerate(plan.runs):
        axis = plan.train_axis[ri]
        mods = {}
        for m in plan.modules:
            pl = plan.files[(ri, m)]
            ct = [p.cells_trains() for p in pl]
            cells = np.unique(np.concatenate([c for c, _ in ct]))
            trains = np.unique(np.concatenate([t for _, t in ct]))
            lost = np.setdiff1d(axis, trains)
            first = int(trains[0]) if len(trains) else None
            last = int(trains[-1]) if len(trains) else None
            mods[str(m)] = {
                "module_serial": cfg.module_serial,
                "sequences": len(pl),
                "files": [Path(p.path).name for p in pl],
                "frame_numbers": pl[0].frame_numbers,
                "total_loss_frames_daq": pl[0].total_loss_frames,
                "pairs": int(sum(p.n_pairs for p in pl)),
                "cells_in_use": format_ranges(cells),
                "trains_with_data": int(len(trains)),
                "first_train": first,
                "last_train": last,
                "lost_trains": {"count": int(len(lost)), "ids": format_ranges(lost[:1000])},
                "left_out": plan.dropped[(ri, m)],
            }
        rec["runs"].append({
            "run": run,
            "run_name": cfg.run_names[ri],
            "cells_in_use": next(iter(mods.values()))["cells_in_use"],
            "trains": {"count": int(len(axis)), "first": int(axis[0]) if len(axis) else None,
                       "last": int(axis[-1]) if len(axis) else None},
            "common_train_range": ([mods[str(plan.modules[0])]["first_train"],
                                    mods[str(plan.modules[0])]["last_train"]]
                                   if mods[str(plan.modules[0])]["first_train"] is not None
                                   else None),
            "modules": mods,
        })
    return rec


def _combine_cfel(cfg: Config, runs: tuple[int, ...], listing: dict, merged: dict,
                  todo: list[int], n_ranks: int, notes: list[str]) -> tuple[Plan, dict]:
    """Rank 0, CFEL: link the scanned parts of each run and build plan and record."""
    m = todo[0]
    parts = {ri: cfel.link_parts([merged[((ri, mm), i)] for i in range(len(paths))])
             for (ri, mm), paths in sorted(listing.items())}
    notes = notes + cfel_notes(cfg, runs, parts)
    plan = build_plan_cfel(runs, m, parts, n_ranks, cfg.chunk_frames, cfg.n_cells)
    for ri, pl in parts.items():
        if not sum(p.n_pairs for p in pl):
            raise DataError(f"run {cfg.run_names[ri]!r} ({runs[ri]}): no usable (train, cell) "
                            f"with both analog and digital frames in {len(pl)} part(s) "
                            f"({pl[0].path} ...)")
    return plan, plan_record_cfel(plan, cfg, notes)


def _combine_xfel(cfg: Config, listing: dict, merged: dict, todo: list[int], n_ranks: int,
                  missing: dict, notes: list[str]) -> tuple[Plan, dict]:
    """Rank 0, XFEL: clean the scanned sequence files and build plan and record."""
    files = {key: [merged[(key, i)] for i in range(len(paths))]
             for key, paths in listing.items()}
    plan = build_plan(cfg.runs, tuple(todo), files, n_ranks, cfg.chunk_frames, cfg.n_cells,
                      cfg.max_train_gap)
    notes = notes + cell_notes(cfg, plan)
    for (ri, m), fl in files.items():
        if not any(len(fi.train_ids) for fi in fl):
            raise DataError(f"run {cfg.runs[ri]}, module {m}: no usable train in "
                            f"{len(fl)} file(s) ({fl[0].path} ...)")
    return plan, plan_record(plan, cfg, missing, notes)


def list_inputs(cfg: Config) -> tuple[dict, tuple[int, ...], dict]:
    """The input files of a job: (run_index, module) -> files, run numbers, missing modules."""
    if cfg.facility == "cfel":
        listing, runs = list_files_cfel(cfg)
        return listing, runs, {}
    listing, missing = list_files(cfg, cfg.modules)
    return listing, cfg.runs, missing


def check_current_outputs(comm: MPI.Comm, cfg: Config) -> tuple[list[int], list[str]]:
    """Collective: list the inputs of every drscs current and decide once, for the merged
    result, which modules to compute (:func:`check_outputs` over all currents' files)."""
    out, err = None, None
    if comm.rank == 0:
        try:
            listing = {}
            for i in range(len(cfg.currents)):
                for (ri, m), paths in list_inputs(cfg.for_current(i))[0].items():
                    listing[((i, ri), m)] = paths
            out = check_outputs(cfg, listing)
        except CalibError as e:
            err = e
    err = comm.bcast(err, root=0)
    if err is not None:
        raise err
    return comm.bcast(out, root=0)


def make_plan(comm: MPI.Comm, cfg: Config, check: bool = True) -> tuple[Plan | None, dict]:
    """Collective: scan the input files; returns the same plan and record on every rank.

    The plan is None when every module already has a complete identical result (resume).
    ``check = False`` leaves the existing results alone (the caller checked them, e.g. once
    for all drscs currents with :func:`check_current_outputs`).
    """
    listing, missing, todo, notes, err = None, None, None, None, None
    is_cfel = cfg.facility == "cfel"
    runs = cfg.runs
    if comm.rank == 0:
        try:
            listing, runs, missing = list_inputs(cfg)
            if check:
                todo, notes = check_outputs(cfg, listing)
            else:
                todo, notes = sorted({m for (_, m) in listing}), []
        except CalibError as e:
            err = e
    err = comm.bcast(err, root=0)
    if err is not None:
        raise err
    listing, missing, todo, notes, runs = comm.bcast((listing, missing, todo, notes, runs),
                                                     root=0)
    if not listing:
        raise DataError(f"nothing to compute: no module has files in every run (modules "
                        f"{', '.join(f'{m} missing from run(s) {r}' for m, r in missing.items())}"
                        "; missing_modules = skip left out all of them)")
    if not todo:
        return None, {"notes": notes, "modules_missing": missing}
    listing = {k: v for k, v in listing.items() if k[1] in todo}
    jobs = [(key, i, p) for key, paths in sorted(listing.items()) for i, p in enumerate(paths)]
    mine, err = {}, None
    try:
        for j in range(comm.rank, len(jobs), comm.size):
            (ri, m), i, p = jobs[j]
            if is_cfel:
                mine[((ri, m), i)] = cfel.scan_part(p, cfg.n_cells)
                continue
            source = cfg.source_pattern.format(detector=cfg.detector, module=m)
            mine[((ri, m), i)] = scan_file(p, source, cfg.runs[ri], m, cfg.interleaved)
    except Exception as e:
        err = e
    agree(comm, err)
    scans = comm.gather(mine, root=0)
    plan, record, err = None, None, None
    if comm.rank == 0:
        try:
            merged = {k: v for d in scans for k, v in d.items()}
            if is_cfel:
                plan, record = _combine_cfel(cfg, runs, listing, merged, todo, comm.size,
                                             notes)
            else:
                plan, record = _combine_xfel(cfg, listing, merged, todo, comm.size, missing,
                                             notes)
        except CalibError as e:
            err = e
    err = comm.bcast(err, root=0)
    if err is not None:
        raise err
    return comm.bcast((plan, record), root=0)


def write_record(record: dict, path: Path) -> None:
    """Write the preprocess record atomically (rank 0)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = tmp_name(path)
    tmp.write_text(json.dumps(record, indent=1) + "\n")
    os.replace(tmp, path)


def format_record(record: dict) -> str:
    """Short text rendition of a preprocess record."""
    lines = [f"cells: {record['n_cells']}   modules: {record['modules']}"]
    if record.get("conditions"):
        lines.append("conditions: " + ", ".join(f"{k} {v}" for k, v in
                                                 record["conditions"].items()))
    for m, runs in record.get("modules_missing", {}).items():
        lines.append(f"module {m}: no files in run(s) {runs}; left out")
    for r in record["runs"]:
        t = r["trains"]
        lines.append(f"run {r['run']}: {t['count']} trains ({t['first']}..{t['last']}), "
                     f"common to all modules {r['common_train_range']}, cells in use "
                     f"{r['cells_in_use']}")
        for m, d in r["modules"].items():
            extra = f"; left out: {d['left_out']}" if d["left_out"] else ""
            lines.append(f"  module {int(m):2d}: {d['sequences']} sequences, "
                         f"{d['trains_with_data']} trains, {d['lost_trains']['count']} lost"
                         f"{extra}")
    lines += record.get("notes", [])
    return "\n".join(lines)
