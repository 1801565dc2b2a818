"""The dark measurement: three runs with forced high, medium and low gain.

Ties the pure computation of :mod:`calib_mpi.process.dark` to the pipeline: one accumulator
per owned ASIC, run index = gain stage, and a small exchange of per-ASIC percentiles between
the owners of a module for the module-wide bad-pixel reference.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import numpy as np
from mpi4py import MPI

from ..config import Config
from ..join import DatasetSpec
from ..parallel import rank_threads
from ..plan import Plan, Unit
from ..process.dark import (
    DarkAccumulator,
    DarkLimits,
    flag_bad_pixels,
    module_reference,
    unit_quantiles,
)
from ..process.kernels import warm_up

DIMS = ("gain", "cell", "slow_scan", "fast_scan")


class DarkRecipe:
    """Dark: offset, noise, gain levels, thresholds, bad pixels per (gain, cell, pixel)."""

    name = "dark"
    #: consume touches only the unit's own accumulator (the kernel releases the GIL), so
    #: gather may consume different ASICs in parallel threads
    parallel_consume = True
    specs = [
        DatasetSpec("offset", (3,), np.float32, DIMS),
        DatasetSpec("noise", (3,), np.float32, DIMS),
        DatasetSpec("gain_level", (3,), np.float32, DIMS),
        DatasetSpec("gain_level_std", (3,), np.float32, DIMS),
        DatasetSpec("threshold", (2,), np.float32, ("threshold",) + DIMS[1:]),
        DatasetSpec("bad_pixels", (3,), np.uint32, DIMS),
    ]

    def __init__(self, cfg: Config, plan: Plan):
        self.plan = plan
        #: fixed-gain darks (gain modes 1, 2, 3): run k is gain stage k whatever the digital
        #: values; no thresholds, no gain-level separation check
        self.fixed_gain = bool(cfg.conditions.get("gain_mode"))
        self.limits = DarkLimits(cfg.offset_sigma, cfg.noise_sigma, tuple(cfg.offset_hard),
                                 tuple(cfg.noise_hard), cfg.gain_separation_sigma,
                                 check_gain_levels=not self.fixed_gain)
        self.acc: dict[Unit, DarkAccumulator] = {}
        self.threads = rank_threads(cfg.threads)

    def _map(self, fn, items: list) -> list:
        """``[fn(x) for x in items]``, in ``threads`` threads (numpy releases the GIL)."""
        if self.threads < 2 or len(items) < 2:
            return [fn(x) for x in items]
        with ThreadPoolExecutor(min(self.threads, len(items)), "calib-dark") as pool:
            return list(pool.map(fn, items))

    def start(self, units: list[Unit]) -> None:
        if units:
            warm_up()
        self.acc = {u: DarkAccumulator(self.plan.n_cells) for u in units}

    def consume(self, unit: Unit, run_index: int, frames: np.ndarray, r0: int, c0: int,
                cells: np.ndarray, trains: np.ndarray, group: tuple) -> None:
        self.acc[unit].add_frames(run_index, frames, r0, c0, group)

    def end_run(self, run_index: int) -> None:
        self._map(lambda a: a.finish_gain(run_index), list(self.acc.values()))

    def finalize(self, comm: MPI.Comm) -> dict[Unit, dict[str, np.ndarray]]:
        """Collective: module references, bad pixels; returns the results of this rank's units."""
        units = list(self.acc)
        res = dict(zip(units, self._map(lambda u: self.acc[u].result(), units), strict=True))
        if self.fixed_gain:
            for r in res.values():
                r["threshold"][:] = np.nan
        quant = dict(zip(units, self._map(
            lambda u: (unit_quantiles(res[u]["offset"]), unit_quantiles(res[u]["noise"])),
            units), strict=True))
        # send each rank the percentiles of the ASICs of the modules it owns
        wanted = [{u.module for u in self.plan.units_of(d)} for d in range(comm.size)]
        got = comm.alltoall([{u: q for u, q in quant.items() if u.module in wanted[d]}
                             for d in range(comm.size)])
        pooled = {k: v for d in got for k, v in d.items()}
        refs = {}
        for m in {u.module for u in self.acc}:
            members = sorted((u for u in pooled if u.module == m), key=lambda u: u.block)
            refs[m] = (module_reference([pooled[u][0] for u in members]),
                       module_reference([pooled[u][1] for u in members]))
        bad = self._map(lambda u: flag_bad_pixels(res[u], refs[u.module][0],
                                                  refs[u.module][1], self.limits), units)
        for u, b in zip(units, bad, strict=True):
            res[u]["bad_pixels"] = b
        self.refs = refs
        return res

    def module_extra(self, comm: MPI.Comm, results: dict[Unit, dict]) -> dict[int, dict]:
        """Collective: small per-module datasets (frames used per run and cell) for every rank."""
        mine = {u.module: r["count"] for u, r in results.items() if u.block == 0}
        counts = {}
        for d in comm.allgather(mine):
            counts.update(d)
        return {m: {"metadata/frames_used": counts[m]} for m in self.plan.modules}

    def summary(self, comm: MPI.Comm, results: dict[Unit, dict]) -> dict:
        """Collective: per-gain medians of offset and noise and bad-pixel counts per module."""
        local = {}
        for u, r in results.items():
            s = local.setdefault(u.module, {"bad": np.zeros(3, np.int64)})
            s["bad"] += (r["bad_pixels"] != 0).reshape(3, -1).sum(axis=1)
            if u.module in self.refs:
                s["offset"] = np.nanmedian(self.refs[u.module][0][0], axis=1)
                s["noise"] = np.nanmedian(self.refs[u.module][1][0], axis=1)
        out: dict = {}
        for d in comm.allgather(local):
            for m, s in d.items():
                t = out.setdefault(m, {"bad": np.zeros(3, np.int64)})
                t["bad"] = t["bad"] + s["bad"]
                for k in ("offset", "noise"):
                    if k in s:
                        t[k] = s[k]
        return out

    def describe(self, module: int, s: dict) -> list[str]:
        """Report lines of one module for the end-of-job summary."""
        lines = []
        for g, name in enumerate(("high", "medium", "low")):
            off = s.get("offset", [np.nan] * 3)[g]
            noi = s.get("noise", [np.nan] * 3)[g]
            lines.append(f"{name:>6} gain: median offset {off:8.1f} ADU, median noise "
                         f"{noi:6.2f} ADU, bad pixel-cells {int(s['bad'][g])}")
        return lines
