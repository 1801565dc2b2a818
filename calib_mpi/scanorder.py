"""drspc and drscs (XFEL): which pixel group each run injects, found in the run's data.

Run k of a drspc set injects the chip rows ``rho = k (mod 8)``, run k of a drscs current the
chip columns ``kappa = k (mod 4)`` (``shared/spec/formats.md`` 3.4); the recipes trust the
configured order. Before the plan, rank 0 reads a few frames of each run (the first train of
its first file and the last train of its last file, first module with files): pixels the run
injects change along the scan by hundreds of ADU (analog) or by a gain step (digital), the
others stay at their baseline. The group whose median change is largest is the run's, when it
is at least :data:`CLEAR` times any other group's. Runs given in another order are put right
with a log line; runs whose group is unclear, or two runs injecting one group, are refused.
``run_order = trust`` keeps the order given. Lab runs (``facility = cfel``) are named by their
group in the file names (``r1``.., ``col15``..) and are not checked here.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from .config import Config
from .errors import DataError
from .geometry import XFEL_FRAME, asic_blocks
from .readers.xfel import module_files, read_train

log = logging.getLogger("calib_mpi")

#: pixel groups per run set: drspc chip rows mod 8, drscs chip columns mod 4
N_GROUPS = {"drspc": 8, "drscs": 4}
#: the injected group's median change must exceed every other group's by this factor
CLEAR = 5.0
#: frames read per train
SAMPLE_FRAMES = 32


def pixel_groups(measurement: str, module: int) -> np.ndarray:
    """(512, 128) group of each pixel of an XFEL module frame, by the recipe's own injection
    masks: chip row mod 8 (drspc) or chip column mod 4 (drscs)."""
    if measurement == "drspc":
        from .recipes.drspc import injection_masks
    else:  # imported on use: scipy (drscs processing) is not loaded for other jobs
        from .recipes.drscs import injection_masks
    out = np.empty(XFEL_FRAME, np.int64)
    for b, blk in enumerate(asic_blocks(XFEL_FRAME, module)):
        out[blk.rows, blk.cols] = injection_masks(module, b).argmax(axis=0)
    return out


def _train_mean(cfg: Config, path: Path, module: int, run: int, index: int
                ) -> np.ndarray | None:
    """Mean analog and digital value (2, 512, 128) of train ``index`` of a file (0 first,
    -1 last), over up to :data:`SAMPLE_FRAMES` frames."""
    source = cfg.source_pattern.format(detector=cfg.detector, module=module)
    frames = read_train(path, source, run, module, cfg.interleaved, index, SAMPLE_FRAMES)
    return None if frames is None else frames.mean(axis=0, dtype=np.float64)


def group_change(cfg: Config, run: int) -> np.ndarray | None:
    """Median change (ADU, analog + digital) between the run's first and last train per pixel
    group, (n_groups,); None when the run has no frames to compare."""
    run_dir = cfg.input_dir / cfg.run_dir_pattern.format(run=run)
    for m in cfg.modules:
        files = module_files(run_dir, cfg.file_pattern, run, m) if run_dir.is_dir() else []
        if not files:
            continue
        first = _train_mean(cfg, files[0], m, run, 0)
        end = _train_mean(cfg, files[-1], m, run, -1)
        if first is None or end is None:
            return None
        change = np.abs(end - first).sum(axis=0)
        groups = pixel_groups(cfg.measurement, m)
        return np.array([np.median(change[groups == g])
                         for g in range(N_GROUPS[cfg.measurement])])
    return None


def injected_group(change: np.ndarray) -> int | None:
    """The group a run injects, or None when no group stands out by :data:`CLEAR`."""
    order = np.argsort(change)[::-1]
    best, second = change[order[0]], change[order[1]]
    return int(order[0]) if best > CLEAR * max(second, 1.0) else None


def _describe(runs: tuple[int, ...], changes: list[np.ndarray]) -> str:
    return "; ".join(f"run {r}: " + " ".join(f"{c:.0f}" for c in ch)
                     for r, ch in zip(runs, changes, strict=True))


def group_order(cfg: Config, runs: tuple[int, ...]) -> tuple[int, ...]:
    """``runs`` (one drspc set, or one drscs current) in the order of the groups they inject;
    refuses runs whose group is unclear or shared."""
    what = "chip row group (rho mod 8)" if cfg.measurement == "drspc" else \
        "chip column group (kappa mod 4)"
    changes = [group_change(cfg, r) for r in runs]
    if any(ch is None for ch in changes):  # the plan reports runs without data
        log.warning("runs %s: too few frames to check which pixels each %s run injects; "
                    "keeping the order given", [r for r, ch in zip(runs, changes, strict=True)
                                                if ch is None], cfg.measurement)
        return runs
    groups = [injected_group(ch) for ch in changes]
    if None in groups or sorted(groups) != list(range(len(runs))):
        found = ", ".join(f"run {r}: {'unclear' if g is None else g}"
                          for r, g in zip(runs, groups, strict=True))
        raise DataError(
            f"{cfg.measurement} runs {list(runs)}: each must inject a different {what}, "
            f"found {found} (median change from the first to the last train per group, ADU: "
            f"{_describe(runs, changes)}). Check the runs, or set run_order = trust")
    return tuple(r for _, r in sorted(zip(groups, runs, strict=True)))


def scan_order(cfg: Config) -> tuple[int, ...]:
    """Rank 0: the job's drspc/drscs runs in injection order (drscs: per current, four runs
    each); the order given with ``run_order = trust``, for lab runs and other measurements."""
    if cfg.measurement not in N_GROUPS or cfg.facility != "xfel" or cfg.run_order == "trust":
        return tuple(cfg.runs)
    n = N_GROUPS[cfg.measurement]
    runs = tuple(cfg.runs)
    out: tuple[int, ...] = ()
    for i in range(0, len(runs), n):
        part = runs[i:i + n]
        ordered = group_order(cfg, part)
        if ordered != part:
            log.warning("%s runs given as %s inject their pixel groups in the order %s (from "
                        "their data): processing them as %s", cfg.measurement, list(part),
                        list(ordered), list(ordered))
        out += ordered
    return out
