"""drscs over several currents: rank groups, a collective merge per ASIC, one file per module.

Data flow (``steps.md`` sections 3-5, issue: "merge across currents by collective
communication"):

1. The ranks are split into ``min(n_ranks, n_currents)`` groups (rank ``r`` in group
   ``r mod n_groups``); current ``c`` (configured order) is processed by group
   ``c mod n_groups``. A group runs the ordinary pipeline (plan, gather, process) for each of
   its currents on its own communicator, so currents are read and processed in parallel.
2. Merge, per ASIC: the ranks holding that ASIC's result for some current form a
   communicator (``Create_group``, in one global order of the ASICs, so it cannot deadlock);
   :func:`calib_mpi.merge.merge_across_currents` chooses the current of every (cell, pixel) by
   the spec's rule and reduces the chosen values to one of them (``Reduce``; the writers are
   spread over the members). Nothing is written to files and read back.
3. Join: one collective write per module of the merged fields, ``chosen_current`` (index into
   the configured currents, -1 where every current failed) and, with several currents, each
   current's own result under ``currents/<name>/``.

Errors about the input of one current are raised identically on the ranks of its group and
then agreed on by every rank (:func:`calib_mpi.parallel.agree`), so no group is left waiting.
Results do not depend on the rank count: each series is processed from the same integers and
the merge rule depends only on error codes and the configured order.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from pathlib import Path

import numpy as np
from mpi4py import MPI

from .config import Config
from .errors import CalibError, DataError
from .facilities import facility
from .join import DatasetSpec, ResultPart, write_module
from .merge import merge_across_currents
from .parallel import agree
from .plan import Plan, Unit
from .preprocess import (
    check_current_outputs,
    format_record,
    make_plan,
    output_path,
)
from .recipes.drscs import (
    DIMS,
    N_ERROR_CODES,
    DrscsRecipe,
    bytes_per_cell,
    error_counts,
    scan_steps,
)
from .steps import (
    Processed,
    after_run,
    condition_attrs,
    finish_record,
    finish_timing,
    gather_and_process,
    lab_attrs,
    plan_inputs,
    provenance,
    take_locks,
)

log = logging.getLogger("calib_mpi")

#: the merge rule, stored with the results
MERGE_RULE = ("per (cell, pixel): among the currents where it succeeded (error_code 0), the one "
              "with the fewest failed (cell, pixel)s on its ASIC; ties by the configured order "
              "of the currents; where every current failed, the current with the fewest "
              "failures (its error code is kept) and chosen_current = -1")
CHOSEN_SPEC = DatasetSpec("chosen_current", (1,), np.int16, ("one",) + DIMS[1:])


def rank_groups(n_ranks: int, n_currents: int) -> tuple[int, list[list[int]]]:
    """Group count and, per group, its currents: rank r is in group ``r % n_groups``,
    current c is processed by group ``c % n_groups``."""
    n_groups = max(1, min(n_ranks, n_currents))
    return n_groups, [list(range(g, n_currents, n_groups)) for g in range(n_groups)]


def cell_passes(n_cells: int, per_cell: int, memory_mb: float) -> list[tuple[int, int]]:
    """Memory-cell windows ``[c0, c1)`` such that the stored scans of one window, at
    ``per_cell`` bytes per cell, fit into ``memory_mb`` MB (at least one cell per pass)."""
    k = max(1, int(memory_mb * 2**20 // max(per_cell, 1)))
    return [(c0, min(c0 + k, n_cells)) for c0 in range(0, n_cells, k)]


def process_current(group: MPI.Comm, cfg: Config, plan: Plan, driver: str) -> Processed:
    """Collective over ``group``: read and process one current, in as many passes over the
    data as ``cfg.drscs_memory`` needs (each pass keeps a window of memory cells)."""
    n_units = max(len(u) for u in plan.owners)
    passes = cell_passes(plan.n_cells, bytes_per_cell(plan, n_units), cfg.drscs_memory)
    if group.rank == 0 and len(passes) > 1:
        log.warning("current %s: %d cells in %d passes over the data (drscs_memory = %g MB "
                    "per rank for %d ASIC(s) x %d scan steps)", cfg.current, plan.n_cells,
                    len(passes), cfg.drscs_memory, n_units, scan_steps(plan))
    parts = [gather_and_process(group, cfg, plan, driver,
                                recipe=DrscsRecipe(cfg, plan, cells=w), count_dropped=i == 0)
             for i, w in enumerate(passes)]
    if len(parts) == 1:
        return parts[0]
    first = parts[0]
    results = {u: {k: np.concatenate([p.results[u][k] for p in parts], axis=1) for k in r}
               for u, r in first.results.items()}
    summary = {m: {"errors": sum(p.summary[m]["errors"] for p in parts)}
               for m in first.summary}
    return dataclasses.replace(
        first, results=results, summary=summary, bytes_read=sum(p.bytes_read for p in parts),
        bytes_sent=tuple(sum(p.bytes_sent[i] for p in parts) for i in range(2)),
        seconds_per_run=[t for p in parts for t in p.seconds_per_run],
        seconds_gather=sum(p.seconds_gather for p in parts),
        seconds_process=sum(p.seconds_process for p in parts),
        profile={k: sum(p.profile.get(k, 0.0) for p in parts) for k in first.profile})


def _plan_currents(comm: MPI.Comm, group: MPI.Comm, cfg: Config, mine: list[int],
                   modules: tuple[int, ...]) -> tuple[dict, dict]:
    """Plans of this group's currents (collective over ``group``; errors agreed by all)."""
    plans, records, err = {}, {}, None
    try:
        for c in mine:
            cfg_c = dataclasses.replace(cfg.for_current(c), modules=modules)
            plans[c], records[c] = make_plan(group, cfg_c, check=False)
    except CalibError as e:  # raised identically on the group's ranks
        err = CalibError(f"current {cfg.currents[c]}: {e}")
    agree(comm, err, name_rank=False)
    return plans, records


def _agree_cells(infos: dict, currents: tuple[str, ...]) -> int:
    cells = {c: info["n_cells"] for c, info in infos.items()}
    if len(set(cells.values())) != 1:
        listed = ", ".join(f"{currents[c]}: {n}" for c, n in sorted(cells.items()))
        raise DataError(f"drscs currents have different numbers of memory cells ({listed}); "
                        "set n_cells or process them in separate jobs")
    return next(iter(cells.values()))


def _merge_units(comm: MPI.Comm, holders: dict, results: dict
                 ) -> tuple[dict[Unit, dict], dict[Unit, int]]:
    """Collective: merge every ASIC over the ranks holding its currents.

    ``holders``: (current, unit) -> world rank (identical everywhere); ``results``: this
    rank's (current, unit) -> result dict. Returns the merged results of the ASICs this rank
    writes and, per ASIC, the number of ranks its merge spanned.
    """
    units = sorted({u for (_, u) in holders})
    merged, spans = {}, {}
    for i, u in enumerate(units):
        cur = sorted(c for (c, uu) in holders if uu == u)
        members = sorted({holders[(c, u)] for c in cur})
        spans[u] = len(members)
        if comm.rank not in members:
            continue
        sub = comm.Create_group(comm.group.Incl(members), tag=0)
        writer = i % len(members)
        try:
            mine = {k: results[(c, u)] for k, c in enumerate(cur) if (c, u) in results}
            out = merge_across_currents(sub, mine, order=cur, root=writer)
        finally:
            sub.Free()
        if out is not None:
            idx = out["chosen_current"]
            out["chosen_current"] = np.where(idx >= 0, np.asarray(cur)[np.maximum(idx, 0)],
                                             -1).astype(np.int16)
            merged[u] = out
    return merged, spans


def run_currents(cfg: Config, comm: MPI.Comm, driver: str, started: str, t0: float) -> dict:
    """Collective: the drscs job for every configured current (one or more). Returns the
    report (rank 0) as :func:`calib_mpi.pipeline.run` does."""
    currents = cfg.currents
    n_groups, per_group = rank_groups(comm.size, len(currents))
    color = comm.rank % n_groups
    mine = per_group[color]
    todo, notes = check_current_outputs(comm, cfg)
    if comm.rank == 0:
        for note in notes:
            log.warning("%s", note)
        log.info("drscs: %d current(s) %s on %d rank group(s)", len(currents),
                 " ".join(currents), n_groups)
    if not todo:
        if comm.rank == 0:
            log.warning("nothing to do: every module has a complete result")
        return {"record": {"notes": notes}}
    group = comm.Split(color, comm.rank)
    locks = None
    try:
        plans, records = _plan_currents(comm, group, cfg, mine, tuple(todo))
        t_scan = time.monotonic() - t0
        shared = comm.allgather({c: {"record": records[c], "summary": plans[c].summary(),
                                     "n_cells": plans[c].n_cells} for c in mine
                                 if group.rank == 0})
        infos = {c: v for d in shared for c, v in d.items()}
        n_cells = _agree_cells(infos, currents)
        record = {"currents": {currents[c]: infos[c]["record"] for c in sorted(infos)}}
        if cfg.dry_run or cfg.steps == ("preprocess",):
            if comm.rank == 0:
                _print_plans(infos, currents, n_groups)
            finish_record(cfg, comm, record)
            return {"record": {c: infos[c]["record"] for c in infos}}
        locks = take_locks(cfg, comm, todo, n_cells)
        t1 = time.monotonic()
        done = _process_mine(comm, group, cfg, mine, plans, driver)
        t_gather = time.monotonic() - t1
        t1 = time.monotonic()
        holders = _holders(comm, group, mine, plans)
        results = {(c, u): r for c in mine for u, r in done[c].results.items()}
        merged, spans = _merge_units(comm, holders, results)
        t_merge = time.monotonic() - t1
        t1 = time.monotonic()
        per_cur = comm.allgather({c: _current_info(plans[c], done[c], group.rank)
                                  for c in mine})
        info = {c: v for d in per_cur for c, v in d.items() if v is not None}
        outputs = []
        if "join" in cfg.steps:
            for m in todo:
                outputs.append(_write_module(comm, cfg, m, driver, n_cells, info, done,
                                             merged, started))
        t_join = time.monotonic() - t1
        gathered = comm.gather((error_counts(merged), _chosen_counts(merged, len(currents))),
                               root=0)
        finish_record(cfg, comm, record)
    finally:
        if locks is not None:
            locks.release()
        group.Free()
    timing = _finish_timing(cfg, comm, t0, done, {
        "seconds_preprocess": t_scan, "seconds_gather_process": t_gather,
        "seconds_merge": t_merge, "seconds_join": t_join,
        "merge_ranks_per_asic": max(spans.values(), default=0)})
    if comm.rank != 0:
        return {}
    lines = _report(cfg, todo, n_cells, info, gathered, spans, outputs, timing)
    if outputs and cfg.export:
        after_run(dataclasses.replace(cfg, plot=False), outputs)
    return {"report": lines, "outputs": outputs, "timing": timing, "elapsed":
            timing["seconds_total"]}


def _print_plans(infos: dict, currents: tuple[str, ...], n_groups: int) -> None:
    """Dry run: each current's preprocess record and plan (rank 0)."""
    for c in sorted(infos):
        print(f"current {currents[c]} (rank group {c % n_groups}):")
        print(format_record(infos[c]["record"]))
        print(infos[c]["summary"])


def _process_mine(comm: MPI.Comm, group: MPI.Comm, cfg: Config, mine: list[int],
                  plans: dict[int, Plan], driver: str) -> dict[int, Processed]:
    """Collective on ``comm``: gather and process this rank group's currents; an error of
    one group ends the job on every rank."""
    done, err = {}, None
    try:
        for c in mine:
            if group.rank == 0 and not cfg.quiet:
                log.warning("current %s: reading and processing", cfg.currents[c])
            done[c] = process_current(group, cfg.for_current(c), plans[c], driver)
    except CalibError as e:  # raised identically on the group's ranks
        err = CalibError(f"current {cfg.currents[c]}: {e}")
    agree(comm, err, name_rank=False)
    return done


def _holders(comm: MPI.Comm, group: MPI.Comm, mine: list[int], plans: dict[int, Plan]
             ) -> dict:
    """Collective: the rank holding each (current, unit) result."""
    holders: dict = {}
    for d in comm.allgather({(c, u): comm.rank for c in mine
                             for u in plans[c].units_of(group.rank)}):
        holders.update(d)
    return holders


def _chosen_counts(merged: dict, n_currents: int) -> dict[int, np.ndarray]:
    """Per module: pixel-cells whose merged value comes from each current (index 0: none)."""
    chosen: dict[int, np.ndarray] = {}
    for u, r in merged.items():
        cc = r["chosen_current"].ravel().astype(np.int64) + 1
        chosen[u.module] = chosen.get(u.module, 0) + np.bincount(cc, minlength=n_currents + 1)
    return chosen


def _finish_timing(cfg: Config, comm: MPI.Comm, t0: float, done: dict[int, Processed],
                   seconds: dict) -> dict:
    """Collective: :func:`calib_mpi.steps.finish_timing` with the currents' sums (the
    processing's finalize taken out of the gather time)."""
    finalize = sum(d.seconds_process for d in done.values())
    seconds = {**seconds, "seconds_finalize": finalize,
               "seconds_gather_process": seconds["seconds_gather_process"] - finalize,
               "seconds_profile": {k: sum(d.profile.get(k, 0.0) for d in done.values())
                                   for k in {k for d in done.values() for k in d.profile}}}
    return finish_timing(cfg, comm, t0, sum(d.bytes_read for d in done.values()), seconds,
                         tuple(sum(d.bytes_sent[i] for d in done.values()) for i in range(2)))


def _current_info(plan: Plan, done: Processed, group_rank: int) -> dict | None:
    """What every rank needs of one current for the module files (from group rank 0)."""
    if group_rank != 0:
        return None
    return {"runs": list(plan.runs), "plan_modules": list(plan.modules),
            "trains_used": {m: [plan.trains_used[(ri, m)] for ri in range(len(plan.runs))]
                            for m in plan.modules},
            "dropped": {m: {str(plan.runs[ri]): plan.dropped[(ri, m)]
                            for ri in range(len(plan.runs))} for m in plan.modules},
            "inputs": {m: plan_inputs(plan, m) for m in plan.modules},
            "extra": done.extra,
            "errors": {m: done.summary.get(m, {}).get("errors", np.zeros(N_ERROR_CODES, np.int64))
                       for m in plan.modules}}


def _write_module(comm: MPI.Comm, cfg: Config, m: int, driver: str, n_cells: int, info: dict,
                  done: dict, merged: dict, started: str) -> Path:
    """Collective: one module file with the merged result and each current's result."""
    currents = cfg.currents
    fac = facility(cfg.facility)
    have = [c for c in range(len(currents)) if m in info[c]["plan_modules"]]
    inputs = [p for c in have for p in info[c]["inputs"][m]]
    attrs = provenance(cfg, inputs, comm, started)
    attrs.update({
        "measurement": cfg.measurement, "facility": cfg.facility, "module": m,
        "n_cells": n_cells, "currents": list(currents), "merge_rule": MERGE_RULE,
        "runs": np.array([info[c]["runs"] for c in have]),
        "trains_used": np.array([info[c]["trains_used"][m] for c in have]),
        "dropped": json.dumps({currents[c]: info[c]["dropped"][m] for c in have}),
    })
    attrs.update(lab_attrs(cfg))
    attrs.update(condition_attrs(cfg))
    extra = {"metadata/currents": np.array(list(currents)),
             "metadata/runs": attrs["runs"], "metadata/trains_used": attrs["trains_used"]}
    specs = fac.specs(DrscsRecipe.specs)
    parts = [ResultPart(specs + fac.specs([CHOSEN_SPEC]),
                        {u: r for u, r in merged.items() if u.module == m})]
    for c in have:
        prefix = f"currents/{currents[c]}/"
        for k, v in info[c]["extra"][m].items():
            extra[prefix + k] = v
        if len(currents) > 1:
            mine = done[c].results if c in done else {}
            parts.append(ResultPart(specs, {u: r for u, r in mine.items() if u.module == m},
                                    prefix))
    if len(currents) == 1:  # no subgroup: the merged result is the current's
        extra = {k.replace(f"currents/{currents[0]}/", ""): v for k, v in extra.items()}
    path = output_path(cfg, m)
    write_module(comm, m, path, driver, n_cells, fac.blocks(m), fac.frame_shape, parts,
                 attrs, extra)
    return path


def _report(cfg: Config, todo: list[int], n_cells: int, info: dict, gathered: list,
            spans: dict, outputs: list[Path], timing: dict) -> list[str]:
    """The end-of-job report of rank 0: per module and current the trains used and error
    counts, the merged counts and how often each current was chosen."""
    from . import __version__

    currents = cfg.currents
    merged: dict[int, np.ndarray] = {}
    chosen: dict[int, np.ndarray] = {}
    for cnt, ch in gathered:
        for m, v in cnt.items():
            merged[m] = merged.get(m, 0) + v
        for m, v in ch.items():
            chosen[m] = chosen.get(m, 0) + v
    name = f"{cfg.module_serial} (CFEL lab)" if cfg.facility == "cfel" else \
        ", ".join(map(str, todo))
    lines = [f"calib-mpi {__version__}: drscs calibration of module(s) {name} — {n_cells} "
             f"cell(s), {len(currents)} current(s), {timing['n_ranks']} rank(s), "
             f"{timing['seconds_total']:.1f} s; merge over up to "
             f"{max(spans.values(), default=0)} rank(s) per ASIC"]

    def errs(v: np.ndarray) -> str:
        failed = {int(k): int(n) for k, n in enumerate(v) if k and n}
        return f"ok {int(v[0])}, failed by error code {failed or 'none'}"

    for m in todo:
        label = cfg.module_serial if cfg.facility == "cfel" else f"{m:2d}"
        lines.append(f"  module {label}")
        for c, cur in enumerate(currents):
            if m not in info[c]["plan_modules"]:
                continue
            used = ", ".join(f"run {r}: {n}" for r, n in
                             zip(info[c]["runs"], info[c]["trains_used"][m], strict=True))
            lines.append(f"     current {cur}: trains used {used}; "
                         f"{errs(info[c]['errors'][m])}")
        ch = chosen.get(m, np.zeros(len(currents) + 1, np.int64))
        picks = ", ".join(f"{cur} {int(ch[c + 1])}" for c, cur in enumerate(currents))
        lines.append(f"     merged: {errs(merged.get(m, np.zeros(N_ERROR_CODES)))}; chosen "
                     f"current: {picks}, none {int(ch[0])}")
    lines += [f"  wrote {p}" for p in outputs]
    return lines
