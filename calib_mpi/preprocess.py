"""Preprocess: find the run files, scan their metadata in parallel, build and share the plan.

Rank 0 lists the files and checks the output location; all ranks scan a share of the files
(INDEX and per-frame train/cell IDs only, no image data); rank 0 combines the scans into the
:class:`~calib_mpi.plan.Plan` and broadcasts it. Any problem found by any rank is raised on
every rank with the same message.
"""

from __future__ import annotations

from pathlib import Path

from mpi4py import MPI

from .config import Config
from .errors import CalibError, DataError, OutputError
from .parallel import agree
from .plan import Plan, build_plan
from .readers.xfel import module_files, scan_file


def output_path(cfg: Config, module: int) -> Path:
    """Final result file of ``module``: ``<output_dir>/<meas>/<meas>_AGIPD<MM>_<facility>.h5``."""
    m = cfg.measurement
    return cfg.output_dir / m / f"{m}_AGIPD{module:02d}_{cfg.facility}.h5"


def list_files(cfg: Config) -> dict[tuple[int, int], list[Path]]:
    """(run_index, module) -> sequence files; raises :class:`DataError` naming what is missing."""
    if not cfg.input_dir.is_dir():
        raise DataError(f"input_dir {cfg.input_dir} does not exist or is not a directory")
    out = {}
    for ri, run in enumerate(cfg.runs):
        run_dir = cfg.input_dir / cfg.run_dir_pattern.format(run=run)
        if not run_dir.is_dir():
            raise DataError(f"run {run}: directory {run_dir} does not exist "
                            f"(input_dir = {cfg.input_dir}, runs = {list(cfg.runs)})")
        for m in cfg.modules:
            files = module_files(run_dir, cfg.file_pattern, run, m)
            if not files:
                example = cfg.file_pattern.format(run=run, module=m, seq=0)
                raise DataError(f"run {run}, module {m}: no raw files like {example} in "
                                f"{run_dir}; is module {m} part of this run?")
            out[(ri, m)] = files
    return out


def check_outputs(cfg: Config) -> None:
    """Refuse to replace existing results unless ``overwrite`` is set."""
    if cfg.overwrite:
        return
    existing = [output_path(cfg, m) for m in cfg.modules if output_path(cfg, m).exists()]
    if existing:
        raise OutputError(
            f"results exist already: {', '.join(str(p) for p in existing)}; "
            "set overwrite = true (or --overwrite) to replace them, or choose another output_dir"
        )


def make_plan(comm: MPI.Comm, cfg: Config) -> Plan:
    """Collective: scan the input files and return the same plan on every rank."""
    listing, err = None, None
    if comm.rank == 0:
        try:
            check_outputs(cfg)
            listing = list_files(cfg)
        except CalibError as e:
            err = e
    err = comm.bcast(err, root=0)
    if err is not None:
        raise err
    listing = comm.bcast(listing, root=0)
    jobs = [(key, i, p) for key, paths in sorted(listing.items()) for i, p in enumerate(paths)]
    mine, err = {}, None
    try:
        for j in range(comm.rank, len(jobs), comm.size):
            (ri, m), i, p = jobs[j]
            source = cfg.source_pattern.format(detector=cfg.detector, module=m)
            mine[((ri, m), i)] = scan_file(p, source, cfg.runs[ri], m)
    except Exception as e:
        err = e
    agree(comm, err)
    scans = comm.gather(mine, root=0)
    plan, err = None, None
    if comm.rank == 0:
        try:
            merged = {k: v for d in scans for k, v in d.items()}
            files = {key: [merged[(key, i)] for i in range(len(paths))]
                     for key, paths in listing.items()}
            plan = build_plan(cfg.runs, cfg.modules, files, comm.size, cfg.chunk_frames,
                              cfg.n_cells)
            for (ri, m), fl in files.items():
                if not any(len(fi.train_ids) for fi in fl):
                    raise DataError(f"run {cfg.runs[ri]}, module {m}: no train with data in "
                                    f"{len(fl)} file(s) ({fl[0].path} ...)")
        except CalibError as e:
            err = e
    err = comm.bcast(err, root=0)
    if err is not None:
        raise err
    return comm.bcast(plan, root=0)
