"""Command-line entry point: ``mpirun -n N calib-mpi run.conf [--key value ...]``.

Steps: preprocess (scan files, plan) -> gather + process (streamed together) -> join.
Errors about the input, configuration or output are raised identically on every rank and end
the job with exit code 2 and one message; a write error ends the job with exit 2 from the
failing rank (:func:`calib_mpi.guard.abort_write`); SIGINT/SIGTERM end it with 130/143
(:func:`calib_mpi.guard.watch_signals`); anything unexpected is logged with its rank and
ends the whole job through ``MPI.COMM_WORLD.Abort``. Temporary files and output locks are
removed in every case.
"""

from __future__ import annotations

import contextlib
import io
import logging
import sys
import traceback

from mpi4py import MPI

from . import __version__
from .config import Config, parse_config
from .errors import CalibError
from .guard import cleanup, watch_signals
from .pipeline import run

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


def print_summary(cfg: Config, info: dict) -> None:
    """Short human-readable report of a finished run (rank 0)."""
    if "report" in info:  # drscs: made by calib_mpi.currents
        print("\n".join(info["report"]))
        return
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
    watch_signals()
    try:
        if comm.rank == 0:
            cfg = parse_config(argv)
        else:  # parse quietly: rank 0 prints help, version and usage errors
            with contextlib.redirect_stdout(io.StringIO()), \
                    contextlib.redirect_stderr(io.StringIO()):
                cfg = parse_config(argv)
        _setup_logging(cfg, comm.rank)
        info = run(cfg, comm)
        if comm.rank == 0 and not cfg.quiet and ("summary" in info or "report" in info):
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
        cleanup()
        if comm.size > 1:
            comm.Abort(1)
        return 1


if __name__ == "__main__":
    sys.exit(main())
