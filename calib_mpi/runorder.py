"""Before the plan: the job's operating conditions and, for darks, the gain order of the runs.

:func:`prepare_runs` (collective) reads the conditions of every run (:mod:`calib_mpi.conditions`)
on rank 0 and, for a dark job with ``run_order = check``, finds the gain stage of each run
(drspc and drscs runs: the pixel group each injects, :mod:`calib_mpi.scanorder`):

- fixed gain (gain mode 1/2/3 in every run): the run's gain mode says high, medium, low; the
  three runs must be one of each;
- adaptive gain (gain mode 0 or unknown): the digital level rises high -> medium -> low; per
  pixel, the median digital value over the first frames of the first train of the first module
  orders the runs, and at least :data:`AGREE` of the pixels must agree on one order.

Runs given in another order are put in gain order with a log line; mixed gain modes, two runs
of the same fixed gain, or digital levels without a clear order are refused with a message
naming the runs. ``run_order = trust`` keeps the order given (gain modes are still checked).
The same run twice is refused by the configuration already.
"""

from __future__ import annotations

import dataclasses
import itertools
import logging
from pathlib import Path

import numpy as np
from mpi4py import MPI

from . import conditions as C
from .config import Config
from .errors import CalibError, DataError
from .preprocess import list_files
from .readers.xfel import module_files, read_train
from .scanorder import N_GROUPS, scan_order

log = logging.getLogger("calib_mpi")

#: share of pixels whose digital levels must agree on the adaptive-gain run order
AGREE = 0.9
#: frames of the first train read per run for the adaptive-gain order
SAMPLE_FRAMES = 32
GAIN_NAMES = ("high", "medium", "low")


def _first_file(cfg: Config, run: int) -> tuple[Path, int] | None:
    """The first sequence file of the first module with files in ``run``, and the module."""
    run_dir = cfg.input_dir / cfg.run_dir_pattern.format(run=run)
    for m in cfg.modules:
        files = module_files(run_dir, cfg.file_pattern, run, m) if run_dir.is_dir() else []
        if files:
            return files[0], m
    return None


def _source(cfg: Config, module: int) -> str:
    return cfg.source_pattern.format(detector=cfg.detector, module=module)


def run_conditions(cfg: Config) -> dict[int, dict]:
    """Conditions found per run (control files, then the detector-data fallbacks)."""
    out = {}
    for run in cfg.runs:
        run_dir = cfg.input_dir / cfg.run_dir_pattern.format(run=run)
        cond = C.read_run_conditions(run_dir, cfg.control_domain) if run_dir.is_dir() else {}
        first = _first_file(cfg, run)
        if first is not None and not {"memory_cells", "acquisition_rate"} <= set(cond):
            try:
                found = C.xtdf_fallback(first[0], _source(cfg, first[1]))
            except Exception as e:  # noqa: BLE001 - a fallback only; reported below
                log.debug("run %s: no cells/rate from %s (%s)", run, first[0], e)
                found = {}
            for k, v in found.items():
                cond.setdefault(k, v)
        out[run] = cond
    return out


def job_conditions(cfg: Config) -> tuple[dict, dict[int, int | None]]:
    """Rank 0: the job's conditions (EXtra names; ``gain_mode`` 0 adaptive or 1 fixed) and
    each run's gain mode as found."""
    overrides = {v: getattr(cfg, k) for k, v in C.OVERRIDE_KEYS.items()}
    if cfg.facility != "xfel":
        cond, modes = {k: v for k, v in overrides.items() if v is not None}, {}
    else:
        cond, modes = C.combine_runs(run_conditions(cfg), overrides)
    if cfg.gain_mode is not None:  # given: every run adaptive, or fixed gain in the order given
        fixed = cfg.measurement == "dark" and cfg.gain_mode != 0
        modes = {r: (i + 1 if fixed else 0) for i, r in enumerate(cfg.runs)}
        cond["gain_mode"] = int(bool(cfg.gain_mode))
    if cfg.measurement == "xray":
        cond["source_energy"] = cfg.photon_energy
    return cond, modes


def _digital_medians(cfg: Config, run: int) -> np.ndarray | None:
    """Per-pixel median digital value over the first frames of the run's first train."""
    found = _first_file(cfg, run)
    if found is None:
        return None
    path, module = found
    frames = read_train(path, _source(cfg, module), run, module, cfg.interleaved, 0,
                        SAMPLE_FRAMES)
    if frames is None:
        return None
    return np.median(frames[:, 1].reshape(len(frames), -1), axis=0)


def adaptive_order(cfg: Config) -> tuple[int, ...]:
    """Runs in gain order from their digital levels (adaptive gain); refuses when unclear."""
    med = [_digital_medians(cfg, r) for r in cfg.runs]
    if any(m is None for m in med):  # the plan reports runs without data
        missing = [r for r, m in zip(cfg.runs, med, strict=True) if m is None]
        log.warning("runs %s: no frames to check the gain order of the dark runs; keeping the "
                    "order given", missing)
        return tuple(cfg.runs)
    levels = np.stack(med)
    votes = {}
    for perm in itertools.permutations(range(len(cfg.runs))):
        ordered = levels[list(perm)]
        votes[perm] = float(np.mean(np.all(np.diff(ordered, axis=0) > 0, axis=0)))
    best = max(votes, key=votes.get)
    if votes[best] < AGREE:
        desc = ", ".join(f"run {r}: median {np.median(m):.0f} ADU" for r, m in
                         zip(cfg.runs, med, strict=True))
        raise DataError(
            f"cannot tell the gain order of the dark runs {list(cfg.runs)} from their digital "
            f"levels: the most common order holds for only {100 * votes[best]:.0f}% of the "
            f"pixels (needed: {100 * AGREE:.0f}%; {desc}). Check that these are the high, "
            "medium and low gain darks, or set run_order = trust")
    return tuple(cfg.runs[i] for i in best)


def fixed_order(cfg: Config, modes: dict[int, int | None]) -> tuple[int, ...] | None:
    """Runs in gain order from their gain modes, None if all adaptive/unknown; refuses mixed
    or repeated modes."""
    desc = ", ".join(f"run {r}: {C.GAIN_MODE_NAMES.get(m, 'unknown')} ({m})"
                     for r, m in modes.items())
    fixed = {r: m for r, m in modes.items() if m}
    if not fixed:
        return None
    if len(fixed) != len(modes):
        raise DataError(f"dark runs mix adaptive and fixed gain modes ({desc}); a dark job "
                        "needs three adaptive or three fixed-gain runs")
    if sorted(fixed.values()) != [1, 2, 3]:
        raise DataError(f"fixed-gain dark runs must be one each of fixed high, medium and low "
                        f"gain (gain modes 1, 2, 3); found {desc}")
    return tuple(sorted(cfg.runs, key=lambda r: fixed[r]))


def dark_order(cfg: Config, modes: dict[int, int | None]) -> tuple[tuple[int, ...], str]:
    """Rank 0: the dark runs in gain order and how it was found."""
    order = fixed_order(cfg, modes)
    if order is not None:
        how = "gain modes"
    elif cfg.run_order == "trust" or cfg.facility != "xfel":
        return tuple(cfg.runs), "as given"
    else:
        order, how = adaptive_order(cfg), "digital levels"
    if cfg.run_order == "trust" and order != tuple(cfg.runs):
        raise DataError(f"runs {list(cfg.runs)} are not in the order high, medium, low gain: "
                        f"their gain modes say {list(order)} (run_order = trust only keeps an "
                        "order that agrees with the gain modes)")
    return order, how


def _prepare(cfg: Config) -> Config:
    if cfg.facility == "xfel":
        list_files(cfg, cfg.modules)  # missing runs, modules, sequences: the usual messages
    cond, modes = job_conditions(cfg)
    runs = tuple(cfg.runs)
    if cfg.measurement == "dark":
        runs, how = dark_order(cfg, modes)
        if runs != tuple(cfg.runs):
            log.warning("dark runs given as %s are in gain order %s (from their %s): "
                        "processing them as high, medium, low = %s", list(cfg.runs),
                        list(runs), how, list(runs))
            cond["runs_given"] = list(cfg.runs)
    elif cfg.measurement in N_GROUPS:
        runs = scan_order(cfg)
        if runs != tuple(cfg.runs):
            cond["runs_given"] = list(cfg.runs)
    cond["gain_modes"] = [modes.get(r) for r in runs]
    missing = C.missing_required(cond)
    if missing and cfg.facility == "xfel":
        run_dir = cfg.input_dir / cfg.run_dir_pattern.format(run=cfg.runs[0])
        log.warning("operating conditions not found: %s (control_domain = %s; %s); give them "
                    "in the config to have them in the results and the export",
                    ", ".join(missing), cfg.control_domain, C.control_sources_hint(run_dir))
    return dataclasses.replace(cfg, runs=runs, conditions=cond)


def prepare_runs(comm: MPI.Comm, cfg: Config) -> Config:
    """Collective: ``cfg`` with its runs in gain order (dark) and its ``conditions`` set;
    identical on every rank, or the same error raised on every rank."""
    out, err = None, None
    if comm.rank == 0:
        try:
            out = _prepare(cfg)
        except CalibError as e:
            err = e
        except Exception as e:  # noqa: BLE001 - unreadable control data: name the run folder
            err = DataError(f"cannot read the operating conditions of runs {list(cfg.runs)} in "
                            f"{cfg.input_dir}: {e}")
    err = comm.bcast(err, root=0)
    if err is not None:
        raise err
    return comm.bcast(out, root=0)
