"""The plan: which files, trains and cells, which rank owns which ASIC, who reads what.

Everything here is a pure function of the configuration and the file metadata, so it is
unit-tested without MPI. Rank 0 builds the plan and broadcasts it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .geometry import N_ASICS
from .readers import cfel
from .readers.xfel import (
    DUP_TRAIN,
    ISOLATED,
    NON_MONOTONIC,
    FileIndex,
    add_counts,
    drop_outlier_cells,
)

#: memory-cell settings of European XFEL ("Memory cells" condition)
CELL_SETTINGS = (4, 32, 64, 76, 128, 176, 202, 250, 352)


@dataclass(frozen=True, order=True)
class Unit:
    """One ASIC block of one module: the unit of work owned by exactly one rank."""

    module: int
    block: int


@dataclass(frozen=True)
class Slab:
    """A contiguous range of whole frames of one file, read by one rank in one go."""

    run_index: int
    module: int
    file_index: int
    start: int
    stop: int

    @property
    def n_frames(self) -> int:
        return self.stop - self.start


@dataclass
class Plan:
    """Everything every rank needs to know to gather, process and join."""

    runs: tuple[int, ...]
    modules: tuple[int, ...]
    n_cells: int
    n_ranks: int
    #: (run_index, module) -> FileIndex of each sequence file, in sequence order (CFEL:
    #: PartIndex of each part, in part order)
    files: dict
    #: run_index -> sorted train IDs used in the run (union over modules)
    train_axis: dict
    #: rank -> its units, in (module, block) order
    owners: list
    #: run_index -> list of rounds; a round is a list (one entry per rank) of Slab or None
    rounds: dict
    #: (run_index, module) -> number of trains with data
    trains_used: dict = field(default_factory=dict)
    #: (run_index, module) -> {reason: count} of trains/frames left out
    dropped: dict = field(default_factory=dict)
    #: input layout (``calib_mpi.facilities``): ``xfel`` (FileIndex per sequence file, train
    #: axis of train IDs) or ``cfel`` (PartIndex per part, train axis of train positions)
    facility: str = "xfel"
    #: run_index -> {cell: frames left out} of outlier cell IDs (XFEL, drop_outlier_cells)
    outlier_cells: dict = field(default_factory=dict)
    #: cell IDs found in the data beyond the configured n_cells: {cell: frames} (XFEL)
    cells_beyond: dict = field(default_factory=dict)

    def units_of(self, rank: int) -> list[Unit]:
        return self.owners[rank]

    def owner_of(self, unit: Unit) -> int:
        for r, units in enumerate(self.owners):
            if unit in units:
                return r
        raise KeyError(unit)

    def units_in_module(self, rank: int, module: int) -> list[Unit]:
        return [u for u in self.owners[rank] if u.module == module]

    def summary(self) -> str:
        """Human-readable description, printed by ``--dry-run``."""
        lines = [f"cells: {self.n_cells}   ranks: {self.n_ranks}   modules: {list(self.modules)}"]
        for ri, run in enumerate(self.runs):
            axis = self.train_axis[ri]
            span = f"{int(axis[0])}..{int(axis[-1])}" if len(axis) else "none"
            what = "positions" if self.facility == "cfel" else "IDs"
            lines.append(
                f"run {run}: {len(axis)} trains ({what} {span}), {len(self.rounds[ri])} read "
                "rounds"
            )
            for m in self.modules:
                fl = self.files[(ri, m)]
                drop = self.dropped.get((ri, m)) or {}
                extra = f", left out: {drop}" if drop else ""
                lines.append(
                    f"  module {m:2d}: {len(fl)} files, "
                    f"{self.trains_used[(ri, m)]} trains with data{extra}"
                )
        for r, units in enumerate(self.owners):
            desc = ", ".join(
                f"M{m}:{format_ranges([u.block for u in units if u.module == m])}"
                for m in sorted({u.module for u in units})
            )
            lines.append(f"rank {r}: ASIC blocks {desc or 'none'}")
        return "\n".join(lines)


def format_ranges(xs) -> str:
    """Compact text of integers: ``[0, 1, 2, 5, 7, 8]`` -> ``"0-2,5,7-8"``."""
    xs = sorted(int(x) for x in xs)
    out, i = [], 0
    while i < len(xs):
        j = i
        while j + 1 < len(xs) and xs[j + 1] == xs[j] + 1:
            j += 1
        out.append(f"{xs[i]}" if i == j else f"{xs[i]}-{xs[j]}")
        i = j + 1
    return ",".join(out)


def assign_units(modules: tuple[int, ...], n_ranks: int) -> list[list[Unit]]:
    """Split the modules' ASIC blocks into ``n_ranks`` contiguous, balanced groups.

    Units are ordered (module, block); rank r gets ``units[r*U//R:(r+1)*U//R]``, so a module is
    shared by as few ranks as possible. Ranks beyond the number of units get nothing.
    """
    units = [Unit(m, b) for m in modules for b in range(N_ASICS)]
    n = len(units)
    return [units[r * n // n_ranks : (r + 1) * n // n_ranks] for r in range(n_ranks)]


def make_slabs(run_index: int, module: int, files: list[FileIndex],
               chunk_frames: int) -> list[Slab]:
    """Cut each file's used trains into slabs of whole trains of about ``chunk_frames``.

    Slabs never split a train (so interleaved analog/digital pairs stay together) and hold at
    least one train; a slab may span unused frames between its trains, which are read and
    dropped.
    """
    slabs = []
    for fi, info in enumerate(files):
        order = np.argsort(info.first, kind="stable")
        start = stop = None
        for a, c in zip(info.first[order], info.count[order], strict=True):
            a, b = int(a), int(a + c)
            if start is None:
                start, stop = a, b
            elif max(stop, b) - start <= chunk_frames:
                stop = max(stop, b)
            else:
                slabs.append(Slab(run_index, module, fi, start, stop))
                start, stop = a, b
        if start is not None:
            slabs.append(Slab(run_index, module, fi, start, stop))
    return slabs


def monotonic_mask(ids: np.ndarray) -> np.ndarray:
    """Keep the longest increasing sequence of train IDs, as EXtra-data does.

    At every step down, the side (before or after) that needs fewer IDs dropped loses them; on
    a tie the later side (EXtra-data's guess for format 0.5 files, which have no INDEX/flag).
    Returns a bool mask of the IDs to keep.
    """
    keep = np.ones(len(ids), bool)
    while True:
        idx = np.nonzero(keep)[0]
        v = ids[idx]
        down = np.nonzero(v[1:] <= v[:-1])[0]
        if not len(down):
            return keep
        i = down[0] + 1
        before = v[:i] >= v[i]
        after = v[i:] <= v[i - 1]
        if before.sum() < after.sum():
            keep[idx[:i][before]] = False
        else:
            keep[idx[i:][after]] = False


def clean_module_trains(files: list[FileIndex]) -> None:
    """Cross-file checks of one module's sequence files, in sequence order (in place):
    train IDs repeated in a later file, and IDs out of order."""
    if not files:
        return
    ids = np.concatenate([fi.train_ids for fi in files])
    owner = np.concatenate([np.full(len(fi.train_ids), i) for i, fi in enumerate(files)])
    _, first_seen = np.unique(ids, return_index=True)
    dup = np.ones(len(ids), bool)
    dup[first_seen] = False
    out_of_order = np.zeros(len(ids), bool)
    out_of_order[~dup] = ~monotonic_mask(ids[~dup])
    for i, fi in enumerate(files):
        fi.drop_trains(dup[owner == i], DUP_TRAIN)
    for i, fi in enumerate(files):
        mask = out_of_order[owner == i][~dup[owner == i]]
        fi.drop_trains(mask, NON_MONOTONIC)


def drop_isolated_trains(files: list[FileIndex], max_gap: int) -> None:
    """Leave out train IDs in small groups far (> ``max_gap`` trains) from the run's trains.

    The sorted IDs of all modules are split where consecutive IDs are more than ``max_gap``
    apart; groups with at most 1 % of the IDs (and at most 10) are bogus jumps and dropped.
    """
    ids = np.unique(np.concatenate([fi.train_ids for fi in files])) if files else []
    if len(ids) < 2:
        return
    cuts = np.nonzero(np.diff(ids.astype(np.int64)) > max_gap)[0] + 1
    if not len(cuts):
        return
    groups = np.split(ids, cuts)
    small = [g for g in groups if len(g) <= max(1, min(10, len(ids) // 100))]
    if len(small) == len(groups):
        return
    bogus = np.concatenate(small) if small else np.zeros(0, np.uint64)
    for fi in files:
        fi.drop_trains(np.isin(fi.train_ids, bogus), ISOLATED)


def assign_reads(slabs: list[Slab], owners: list[list[Unit]]) -> list[list[Slab | None]]:
    """Distribute slabs over ranks in rounds (one slab per rank and round).

    The slabs of a module are read by the ranks owning its ASICs (each slab by the least loaded
    of them), so data mostly stays within the group that needs it. Returns the rounds, each a
    list over ranks.
    """
    n_ranks = len(owners)
    queues: list[list[Slab]] = [[] for _ in range(n_ranks)]
    by_module: dict[int, list[Slab]] = {}
    for s in slabs:
        by_module.setdefault(s.module, []).append(s)
    for m, ms in by_module.items():
        readers = [r for r in range(n_ranks) if any(u.module == m for u in owners[r])]
        # greedy: the least loaded owner of the module reads the next slab
        for s in ms:
            best = min(readers, key=lambda r: (len(queues[r]), r))
            queues[best].append(s)
    n_rounds = max((len(q) for q in queues), default=0)
    return [[q[k] if k < len(q) else None for q in queues] for k in range(n_rounds)]


def cell_setting(max_cell: int) -> int:
    """European XFEL memory-cell setting for a largest cellId (smallest setting > max_cell)."""
    for s in CELL_SETTINGS:
        if s > max_cell:
            return s
    return max_cell + 1


def build_plan(runs: tuple[int, ...], modules: tuple[int, ...], files: dict, n_ranks: int,
               chunk_frames: int, n_cells: int = 0, max_train_gap: int = 1000) -> Plan:
    """Combine the scanned file metadata into a :class:`Plan`.

    ``files`` maps (run_index, module) to the list of :class:`FileIndex` of its sequences; they
    are cleaned in place (repeated, out-of-order and isolated train IDs left out and counted).
    ``n_cells`` 0 means ``max(cell) + 1`` over all files of all runs.
    """
    outliers = {}
    for ri in range(len(runs)):
        drop_isolated_trains([fi for m in modules for fi in files[(ri, m)]], max_train_gap)
        for m in modules:
            clean_module_trains(files[(ri, m)])
        outliers[ri] = drop_outlier_cells([fi for m in modules for fi in files[(ri, m)]])
    max_cell = max((fi.max_cell for fl in files.values() for fi in fl), default=-1)
    if n_cells <= 0:
        n_cells = max_cell + 1
    per_cell = np.sum([fi.cell_trains for fl in files.values() for fi in fl], axis=0)
    beyond = {int(c): int(per_cell[c]) for c in np.nonzero(per_cell)[0] if c >= n_cells}
    owners = assign_units(modules, n_ranks)
    train_axis, rounds, trains_used, dropped = {}, {}, {}, {}
    for ri in range(len(runs)):
        ids = [fi.train_ids for m in modules for fi in files[(ri, m)]]
        train_axis[ri] = np.unique(np.concatenate(ids)) if ids else np.zeros(0, np.uint64)
        slabs = []
        for m in modules:
            fl = files[(ri, m)]
            trains_used[(ri, m)] = sum(len(fi.train_ids) for fi in fl)
            dropped[(ri, m)] = {}
            for fi in fl:
                add_counts(dropped[(ri, m)], fi.dropped)
            slabs += make_slabs(ri, m, fl, chunk_frames)
        rounds[ri] = assign_reads(slabs, owners)
    return Plan(runs=tuple(runs), modules=tuple(modules), n_cells=n_cells, n_ranks=n_ranks,
                files=files, train_axis=train_axis, owners=owners, rounds=rounds,
                trains_used=trains_used, dropped=dropped, outlier_cells=outliers,
                cells_beyond=beyond)


def build_plan_cfel(runs: tuple[int, ...], module: int, parts: dict, n_ranks: int,
                    chunk_frames: int, n_cells: int) -> Plan:
    """The :class:`Plan` of a CFEL lab run set (one module).

    ``parts`` maps run_index to the linked :class:`~calib_mpi.readers.cfel.PartIndex` list of
    the run (:func:`~calib_mpi.readers.cfel.index_run`). XFEL's train-ID cleaning does not
    apply: the train axis of a run is ``0 .. n_trains - 1`` from the run's own
    ``frame_numbers``, frames left out are the reader's counts
    (:func:`~calib_mpi.readers.cfel.run_counts`), slabs are the reader's
    (:func:`~calib_mpi.readers.cfel.make_slabs`, never splitting an analog/digital pair) and
    ``trains_used`` is the number of trains with at least one usable pair.
    """
    owners = assign_units((module,), n_ranks)
    files, train_axis, rounds, trains_used, dropped = {}, {}, {}, {}, {}
    for ri in range(len(runs)):
        pl = parts[ri]
        files[(ri, module)] = pl
        n_trains = pl[0].n_trains if pl else 0
        train_axis[ri] = np.arange(n_trains, dtype=np.int64)
        trains = [p.cells_trains()[1] for p in pl]
        trains_used[(ri, module)] = int(len(np.unique(np.concatenate(trains)))) if pl else 0
        dropped[(ri, module)] = cfel.run_counts(pl)
        slabs = [Slab(ri, module, pi, s, t) for pi, s, t in cfel.make_slabs(pl, chunk_frames)]
        rounds[ri] = assign_reads(slabs, owners)
    return Plan(runs=tuple(runs), modules=(module,), n_cells=n_cells, n_ranks=n_ranks,
                files=files, train_axis=train_axis, owners=owners, rounds=rounds,
                trains_used=trains_used, dropped=dropped, facility="cfel")
