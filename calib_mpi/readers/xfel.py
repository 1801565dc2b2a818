"""European XFEL raw AGIPD runs: file discovery, INDEX reading and frame placement.

One :class:`FileIndex` describes one sequence file of one module (metadata only, small and
picklable, so rank 0 can broadcast it). File-format differences are handled here and nowhere
else: the INDEX read positionally as EXtra-data does (:func:`read_index`: the DAQ's zero
padding, both forms ``first``/``count`` and the old ``first``/``last``/``status``, the
meaning of ``INDEX/flag`` per format version), and the 2017 interleaved mode in which analog
and digital arrive as separate frames in ``data[:, 0]`` (even cellId analog, odd digital).
Every train or frame left out is counted with its reason. See ``shared/spec/formats.md`` 1.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

import h5py
import numpy as np

from ..errors import DataError

FRAME_SHAPE = (2, 512, 128)
#: AGIPD has at most 352 memory cells; larger cellIds are corrupt
MAX_CELLS = 352

# reasons, used as keys of the ``dropped`` counters (units in brackets)
ZERO_ID = "train id 0 (trains)"
NO_FRAMES = "no frames in this module (trains)"
UNSAFE = "train id not from the time server, INDEX/flag (trains)"
DUP_TRAIN = "duplicate train id (trains)"
NON_MONOTONIC = "train id out of order (trains)"
ISOLATED = "train id far from the run's trains (trains)"
TID_MISMATCH = "frame trainId differs from INDEX (frames)"
BAD_CELL = f"cellId beyond {MAX_CELLS} cells (frames)"
DUP_CELL = "cellId repeated within a train (frames)"
CELL_RANGE = "cellId >= n_cells (frames)"
CELL_OUTLIER = "cellId seen in very few trains of the run (frames)"
#: a cell seen in at most this many trains of a file keeps its frame list (outlier candidate)
RARE_TRAINS = 10
NO_PAIR = "analog or digital frame missing, interleaved mode (frames)"


def add_counts(into: dict, more: dict) -> dict:
    """Add the counters of ``more`` to ``into`` (in place) and return it."""
    for k, v in more.items():
        if v:
            into[k] = into.get(k, 0) + int(v)
    return into


@dataclass
class FileIndex:
    """Metadata of one raw file of one module, enough to place every frame.

    Attributes
    ----------
    path : the file.
    source : the detector source name inside the file.
    n_frames : length of ``image/data`` (may include trailing unused rows).
    chunk_frames : HDF5 chunk length of ``image/data`` along the frame axis (1 if contiguous).
    train_ids : (n_trains,) uint64, train ID of each used train.
    first, count : (n_trains,) int64, frame range ``first:first+count`` of each used train.
    bad_frames : sorted frame indices inside used trains that must not be used.
    train_max_cell : (n_trains,) largest cell with a good frame in each used train (-1: none);
        cells are cellId, or cellId // 2 in interleaved mode.
    cells_present : (352,) bool, cells with good frames in the file.
    cell_trains : (352,) int64, number of used trains with a good frame of each cell.
    rare_cells : cell -> (frame indices, their train IDs) of the cells seen in at most
        ``RARE_TRAINS`` trains of the file (candidates for :func:`drop_outlier_cells`).
    interleaved : 2017 mode, analog and digital as separate frames.
    dropped : reason -> number of trains or frames left out.
    rejected_ids : reason -> train IDs left out for that reason (for the preprocess record).
    """

    path: str
    source: str
    n_frames: int
    chunk_frames: int
    train_ids: np.ndarray
    first: np.ndarray
    count: np.ndarray
    bad_frames: np.ndarray
    train_max_cell: np.ndarray
    cells_present: np.ndarray
    interleaved: bool = False
    dropped: dict = field(default_factory=dict)
    rejected_ids: dict = field(default_factory=dict)
    cell_trains: np.ndarray = field(default_factory=lambda: np.zeros(MAX_CELLS, np.int64))
    rare_cells: dict = field(default_factory=dict)

    @property
    def max_cell(self) -> int:
        """Largest cell with good frames in the used trains (-1 if none)."""
        return int(self.train_max_cell.max()) if len(self.train_max_cell) else -1

    @property
    def frame_range(self) -> tuple[int, int]:
        """``(start, stop)`` of the frames belonging to used trains (empty: ``(0, 0)``)."""
        if len(self.first) == 0:
            return 0, 0
        return int(self.first.min()), int((self.first + self.count).max())

    def drop_trains(self, drop: np.ndarray, reason: str) -> None:
        """Leave out the trains where ``drop`` (bool, per used train) is set, counting them."""
        if not drop.any():
            return
        self.dropped[reason] = self.dropped.get(reason, 0) + int(drop.sum())
        self.rejected_ids.setdefault(reason, []).extend(int(t) for t in self.train_ids[drop])
        keep = ~drop
        self.train_ids, self.first, self.count = (self.train_ids[keep], self.first[keep],
                                                  self.count[keep])
        self.train_max_cell = self.train_max_cell[keep]

    def drop_cell(self, cell: int, reason: str) -> int:
        """Leave out the frames of a rare ``cell`` (in ``rare_cells``) of the used trains,
        counting them; returns how many."""
        frames, tids = self.rare_cells.pop(cell, (np.zeros(0, np.int64), np.zeros(0)))
        frames = frames[np.isin(tids, self.train_ids)]
        if not len(frames):
            return 0
        add_counts(self.dropped, {reason: len(frames)})
        self.bad_frames = np.union1d(self.bad_frames, frames)
        self.cells_present[cell] = False
        self.cell_trains[cell] = 0
        top = int(np.nonzero(self.cells_present)[0].max(initial=-1))
        inside = (frames[:, None] >= self.first) & (frames[:, None] < self.first + self.count)
        for i in np.nonzero(inside.any(axis=0))[0]:
            span = np.arange(self.first[i], self.first[i] + self.count[i])
            if np.isin(span, self.bad_frames).all():
                self.train_max_cell[i] = -1
        self.train_max_cell = np.minimum(self.train_max_cell, top)
        return len(frames)

    def frame_train_index(self, start: int, stop: int) -> np.ndarray:
        """For frames ``start:stop``, the index into ``train_ids`` of their train, -1 if none."""
        out = np.full(stop - start, -1, dtype=np.int64)
        for i in np.nonzero((self.first < stop) & (self.first + self.count > start))[0]:
            a = max(int(self.first[i]), start)
            b = min(int(self.first[i] + self.count[i]), stop)
            out[a - start:b - start] = i
        return out


def module_files(run_dir: Path, pattern: str, run: int, module: int) -> list[Path]:
    """Sequence files of ``module`` in ``run_dir``, sorted by sequence number.

    ``pattern`` is the file-name pattern with ``{run}``, ``{module}`` and ``{seq}`` fields; only
    names matching it exactly are taken (stray files are ignored, never picked up by a glob).
    """
    marker = "\x00"
    templ = re.sub(r"\{seq[^}]*\}", marker, pattern).format(run=run, module=module)
    regex = re.escape(templ).replace(re.escape(marker), r"(\d+)")
    found = []
    for p in run_dir.iterdir() if run_dir.is_dir() else []:
        m = re.fullmatch(regex, p.name)
        if m:
            found.append((int(m.group(1)) if m.groups() else 0, p))
    found.sort()
    seqs = [s for s, _ in found]
    if seqs and seqs != list(range(len(seqs))):
        raise DataError(
            f"run {run}, module {module}: sequence files in {run_dir} are not consecutive "
            f"from S00000 (found sequences {seqs})"
        )
    return [p for _, p in found]


def _read(f: h5py.File, path: str, where: str) -> np.ndarray:
    if path not in f:
        raise DataError(f"{where}: dataset {path} is missing")
    try:
        return f[path][()]
    except Exception as e:  # h5py raises OSError/KeyError variants on damaged files
        raise DataError(f"{where}: dataset {path} cannot be read ({e})") from e


def format_version(f: h5py.File) -> str:
    """File format version as written in ``METADATA/dataFormatVersion`` (e.g. ``"1.3"``);
    files without it are the first format, called ``"0.5"`` (as EXtra-data does)."""
    if "METADATA/dataFormatVersion" not in f:
        return "0.5"
    raw = f["METADATA/dataFormatVersion"][()]
    raw = raw.ravel()[0] if getattr(raw, "ndim", 0) else raw
    text = raw.decode("ascii", "replace") if isinstance(raw, bytes) else str(raw)
    return text.strip()


@dataclass
class TrainIndex:
    """The per-train INDEX of one source group of one file, positions aligned.

    Attributes
    ----------
    version : file format version (``"0.5"`` when the file has none).
    train_ids : (n,) uint64, ``INDEX/trainId`` up to its last non-zero entry (the DAQ pads
        with zeros; a 0 before the last real ID is kept, a train without ID).
    first, count : (n,) int64, frame range ``first:first+count`` of each entry.
    safe : (n,) bool, train ID from the time server per ``INDEX/flag`` (all True in 0.5).
    tail_without_id : entries after the last train ID that still have frames (trains
        without ID, left out).
    """

    version: str
    train_ids: np.ndarray
    first: np.ndarray
    count: np.ndarray
    safe: np.ndarray
    tail_without_id: int = 0


def _at_least(f: h5py.File, path: str, n: int, where: str) -> np.ndarray:
    """A 1-D INDEX dataset, all of it; an error if it has fewer than ``n`` entries."""
    a = _read(f, path, where).ravel()
    if len(a) < n:
        raise DataError(
            f"{where}: {path} has {len(a)} entries, fewer than the {n} trains in "
            "INDEX/trainId (truncated or inconsistent INDEX)"
        )
    return a


def _counts(f: h5py.File, ix: str, n: int, where: str) -> tuple[np.ndarray, np.ndarray]:
    """``first`` and ``count`` of an INDEX group (from ``last``/``status`` in the old form),
    at least ``n`` entries each, int64."""
    first = _at_least(f, f"{ix}/first", n, where).astype(np.int64)
    if f"{ix}/count" in f:
        return first, _at_least(f, f"{ix}/count", n, where).astype(np.int64)
    if f"{ix}/last" not in f:
        raise DataError(f"{where}: {ix} has neither 'count' nor 'last'")
    last = _at_least(f, f"{ix}/last", n, where).astype(np.int64)
    status = (_at_least(f, f"{ix}/status", n, where).astype(np.int64)
              if f"{ix}/status" in f else np.ones_like(last))
    m = min(len(first), len(last), len(status))
    first, last, status = first[:m], last[:m], status[:m]
    if np.any((status != 0) & (last < first)):
        raise DataError(f"{where}: {ix}/last is before 'first' for a train with data")
    return first, np.where(status != 0, last - first + 1, 0)


def read_index(f: h5py.File, source: str, group: str, where: str) -> TrainIndex:
    """Read the INDEX of ``source``/``group`` as EXtra-data's ``FileAccess`` does.

    Train IDs are the entries of ``INDEX/trainId`` up to its last non-zero one (trailing
    zeros are the DAQ's padding to its allocation blocks); ``first``, ``count`` and
    ``INDEX/flag`` are taken positionally ``[:n]`` and may be padded or not, but must not be
    shorter. The old form ``first``/``last``/``status`` gives ``count = last - first + 1`` where
    ``status != 0``. ``INDEX/flag`` != 0 marks a trusted train ID, except in format 1.1 where
    it is the index of the ID's source and 0 (the time server) is the trusted one; format 0.5
    has no flag. Zeros *inside* ``INDEX/trainId`` are kept as ID 0 at their position (EXtra-data
    drops them first and so shifts the later trains' ranges; its validator reports such files).
    Padding entries with frames (``count > 0``) are trains without ID: counted in
    ``tail_without_id``, never read (EXtra-data ignores them too).
    """
    version = format_version(f)
    all_ids = _read(f, "INDEX/trainId", where).astype(np.uint64).ravel()
    nonzero = np.nonzero(all_ids)[0]
    n = int(nonzero[-1]) + 1 if len(nonzero) else 0
    first, count = _counts(f, f"INDEX/{source}/{group}", n, where)
    tail = int(np.count_nonzero(count[n:len(all_ids)] > 0))
    if version == "0.5":
        safe = np.ones(n, bool)
    elif "INDEX/flag" not in f:
        raise DataError(f"{where}: dataset INDEX/flag is missing (required in file format "
                        f"{version}; only format 0.5 files have none)")
    else:
        flag = _at_least(f, "INDEX/flag", n, where)[:n]
        safe = flag == 0 if version == "1.1" else flag != 0
    return TrainIndex(version=version, train_ids=all_ids[:n], first=first[:n],
                      count=count[:n], safe=safe, tail_without_id=tail)


def _frame_checks(ids, first, count, frame_tid, cell_id, interleaved
                  ) -> tuple[np.ndarray, dict]:
    """Per-frame checks inside the used trains; returns bad frame indices and counts."""
    if not len(ids):
        return np.zeros(0, np.int64), {}
    sel = np.concatenate([np.arange(a, a + c) for a, c in zip(first, count, strict=True)])
    train = np.repeat(np.arange(len(ids)), count)
    cells = cell_id[sel]
    mismatch = frame_tid[sel] != np.repeat(ids, count)
    limit = 2 * MAX_CELLS if interleaved else MAX_CELLS
    beyond = (cells >= limit) & ~mismatch
    ok = ~(mismatch | beyond)
    key = train * limit + np.where(ok, cells, 0)
    # a repeated (train, cell): keep the first occurrence
    _, first_of = np.unique(np.where(ok, key, -1 - np.arange(len(key))), return_index=True)
    is_first = np.zeros(len(key), bool)
    is_first[first_of] = True
    dup = ok & ~is_first
    bad = mismatch | beyond | dup
    counts = {TID_MISMATCH: int(mismatch.sum()), BAD_CELL: int(beyond.sum()),
              DUP_CELL: int(dup.sum())}
    return sel[bad], counts


def _usable_trains(index: TrainIndex) -> tuple[np.ndarray, dict, dict]:
    """Per INDEX entry: is the train used; and the counts and IDs of those left out (ID 0,
    no frames, untrusted ID, ID seen before in the file)."""
    ids, count = index.train_ids, index.count
    dropped: dict[str, int] = {}
    rejected: dict[str, list[int]] = {}
    zero = ids == 0
    empty = (count <= 0) & ~zero
    unsafe = ~index.safe & ~zero & ~empty
    cand = np.nonzero(~(zero | empty | unsafe))[0]
    _, first_seen = np.unique(ids[cand], return_index=True)
    dup = np.zeros(len(ids), bool)
    dup[cand] = True
    dup[cand[first_seen]] = False
    if index.tail_without_id:
        dropped[ZERO_ID] = index.tail_without_id
    for mask, reason in ((zero, ZERO_ID), (empty, NO_FRAMES), (unsafe, UNSAFE),
                         (dup, DUP_TRAIN)):
        if mask.any():
            dropped[reason] = dropped.get(reason, 0) + int(mask.sum())
            if reason != ZERO_ID:
                rejected[reason] = [int(t) for t in ids[mask]]
    return ~(zero | empty | unsafe | dup), dropped, rejected


def scan_file(path: Path, source: str, run: int, module: int,
              interleaved: bool = False) -> FileIndex:
    """Read the INDEX and per-frame bookkeeping of one raw file (no image data).

    Checks the image data shape ``(n, 2, 512, 128)`` uint16 and the INDEX ranges; leaves out,
    and counts, trains with ID 0, no frames, an untrusted ID (``INDEX/flag``) or an ID seen
    before in the file, and frames whose own trainId differs from the INDEX, whose cellId is
    impossible, or whose cellId repeats within the train.
    """
    where = f"run {run}, module {module}, file {path}"
    try:
        f = h5py.File(path, "r")
    except Exception as e:
        raise DataError(f"{where}: cannot be opened as HDF5 ({e}); truncated or corrupt?") from e
    with f:
        img = f"INSTRUMENT/{source}/image"
        if f"{img}/data" not in f:
            sources: list[str] = []
            if "INSTRUMENT" in f:
                f["INSTRUMENT"].visit(
                    lambda n: sources.append(n[:-6]) if n.endswith("/image") else None
                )
            raise DataError(
                f"{where}: no dataset {img}/data (expected detector source {source!r}; "
                f"sources in the file: {sorted(sources)}); check 'detector' and "
                "'source_pattern'"
            )
        dset = f[f"{img}/data"]
        if dset.ndim != 4 or tuple(dset.shape[1:]) != FRAME_SHAPE:
            raise DataError(
                f"{where}: {img}/data has shape {dset.shape}, expected (frames, 2, 512, 128) "
                "(analog and digital of a 512x128 AGIPD module)"
            )
        if dset.dtype != np.uint16:
            raise DataError(f"{where}: {img}/data has dtype {dset.dtype}, expected uint16")
        n_frames = dset.shape[0]
        chunk = dset.chunks[0] if dset.chunks else 1

        index = read_index(f, source, "image", where)
        use, dropped, rejected = _usable_trains(index)
        ids, first, count = index.train_ids[use], index.first[use], index.count[use]
        if np.any(first < 0) or np.any(first + count > n_frames):
            raise DataError(
                f"{where}: INDEX points beyond the {n_frames} frames of {img}/data "
                "(inconsistent or truncated file)"
            )
        frame_tid = _read(f, f"{img}/trainId", where).astype(np.uint64).ravel()
        cell_id = _read(f, f"{img}/cellId", where).astype(np.int64).ravel()
        if len(frame_tid) < n_frames or len(cell_id) < n_frames:
            raise DataError(
                f"{where}: {img}/trainId or cellId is shorter than {img}/data ({n_frames})"
            )
    bad, counts = _frame_checks(ids, first, count, frame_tid, cell_id, interleaved)
    add_counts(dropped, counts)
    train_max, present = _cell_summary(ids, first, count, bad, cell_id, interleaved)
    cell_trains, rare = _cell_trains(ids, first, count, bad, cell_id, interleaved)
    if interleaved:
        add_counts(dropped, {NO_PAIR: _unpaired(first, count, bad, cell_id)})
    return FileIndex(path=str(path), source=source, n_frames=n_frames, chunk_frames=int(chunk),
                     train_ids=ids, first=first, count=count, bad_frames=bad,
                     train_max_cell=train_max, cells_present=present, interleaved=interleaved,
                     dropped=dropped, rejected_ids=rejected, cell_trains=cell_trains,
                     rare_cells=rare)


def _cell_trains(ids, first, count, bad, cell_id, interleaved) -> tuple[np.ndarray, dict]:
    """Per cell the number of used trains with a good frame of it, and the frames (with
    their train IDs) of the cells seen in at most ``RARE_TRAINS`` trains."""
    frames, train = _good_frames(first, count, bad)
    cells = cell_id[frames] // 2 if interleaved else cell_id[frames]
    pairs = np.unique(train * MAX_CELLS + cells)
    n = np.bincount(pairs % MAX_CELLS, minlength=MAX_CELLS).astype(np.int64)
    rare = {}
    for c in np.nonzero((n > 0) & (n <= RARE_TRAINS))[0]:
        sel = cells == c
        rare[int(c)] = (frames[sel], ids[train[sel]])
    return n, rare


def drop_outlier_cells(files: list[FileIndex]) -> dict[int, int]:
    """Leave out the frames of cell IDs that are faults: in a run whose trains carry a fixed
    cell set, a cell seen in very few trains (at most 1 % of the module-trains, at most 10,
    and at most a quarter of the typical cell's count) over all ``files`` of the run.
    Returns cell -> frames left out (counted as ``CELL_OUTLIER`` in each file)."""
    if not files:
        return {}
    n = np.sum([fi.cell_trains for fi in files], axis=0)
    seen = n > 0
    if seen.sum() < 2:
        return {}
    typical = float(np.median(n[seen]))
    limit = max(1, min(RARE_TRAINS, sum(len(fi.train_ids) for fi in files) // 100))
    out = {}
    for c in np.nonzero(seen & (n <= limit) & (4 * n <= typical))[0]:
        k = sum(fi.drop_cell(int(c), CELL_OUTLIER) for fi in files)
        if k:
            out[int(c)] = k
    return out


def _good_frames(first, count, bad) -> tuple[np.ndarray, np.ndarray]:
    """Indices of the good frames of the used trains and the train index of each."""
    if not len(first):
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    sel = np.concatenate([np.arange(a, a + c) for a, c in zip(first, count, strict=True)])
    train = np.repeat(np.arange(len(first)), count)
    ok = ~np.isin(sel, bad)
    return sel[ok], train[ok]


def _cell_summary(ids, first, count, bad, cell_id, interleaved):
    """Per used train the largest good cell, and which cells have good frames."""
    frames, train = _good_frames(first, count, bad)
    cells = cell_id[frames]
    if interleaved:
        keep = cells % 2 == 0
        cells, train = cells[keep] // 2, train[keep]
    train_max = np.full(len(ids), -1, np.int64)
    np.maximum.at(train_max, train, cells)
    present = np.zeros(MAX_CELLS, bool)
    present[cells[cells < MAX_CELLS]] = True
    return train_max, present


def _unpaired(first, count, bad, cell_id) -> int:
    """Interleaved mode: good frames whose analog/digital partner is missing."""
    frames, train = _good_frames(first, count, bad)
    key = train * 2 * MAX_CELLS + cell_id[frames]
    return int((~np.isin(key ^ 1, key)).sum())


def read_slab(f: h5py.File, info: FileIndex, start: int, stop: int, buf: np.ndarray,
              pair_buf: np.ndarray | None, train_axis: np.ndarray, n_cells: int
              ) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    """Read frames ``start:stop`` and return the usable ones with their cell and train.

    Returns ``(frames, cells, trains, n_beyond)``: frames (n, 2, 512, 128) uint16
    analog/digital (a view of ``buf``, of ``pair_buf`` in interleaved mode, or a compacted
    copy), cells (n,) int64, trains (n,) int64 positions on ``train_axis``, and the number of
    good frames left out because their cell is ``>= n_cells``. Frames of unused trains and bad
    frames are left out silently (they were counted when the file was scanned).
    """
    n = stop - start
    img = f"INSTRUMENT/{info.source}/image"
    dset = f[f"{img}/data"]
    if info.interleaved:
        dset.read_direct(buf, np.s_[start:stop, 0:1], np.s_[0:n, 0:1])
    else:
        dset.read_direct(buf, np.s_[start:stop], np.s_[0:n])
    cell_ids = f[f"{img}/cellId"][start:stop].astype(np.int64).ravel()
    tix = info.frame_train_index(start, stop)
    ok = tix >= 0
    bad = info.bad_frames[(info.bad_frames >= start) & (info.bad_frames < stop)] - start
    ok[bad] = False
    trains = np.searchsorted(train_axis, info.train_ids[np.maximum(tix, 0)]).astype(np.int64)
    if info.interleaved:
        return _pair_frames(buf, ok, cell_ids, tix, trains, pair_buf, n_cells)
    beyond = ok & (cell_ids >= n_cells)
    ok &= ~beyond
    if ok.all():
        return buf[:n], cell_ids, trains, 0
    idx = np.nonzero(ok)[0]
    return buf[idx], cell_ids[idx], trains[idx], int(beyond.sum())


def read_train(path: Path, source: str, run: int, module: int, interleaved: bool, index: int,
               max_frames: int) -> np.ndarray | None:
    """Up to ``max_frames`` usable frames (n, 2, 512, 128) uint16 of train ``index`` (an
    index into the file's trains, negative from the end) of one raw file; None when the file
    has no trains or that train no usable frames. A small sample for checks before the plan."""
    info = scan_file(path, source, run, module, interleaved)
    if not len(info.first):
        return None
    start = int(info.first[index])
    stop = start + min(int(info.count[index]), max_frames)
    if stop <= start:
        return None
    buf = np.empty((stop - start, 2, 512, 128), np.uint16)
    pair = np.empty_like(buf) if interleaved else None
    with h5py.File(path, "r") as f:
        frames, _, _, _ = read_slab(f, info, start, stop, buf, pair, info.train_ids, MAX_CELLS)
    return frames if len(frames) else None


def _pair_frames(buf, ok, cell_ids, tix, trains, pair_buf, n_cells):
    """Interleaved mode: combine analog (even cellId) and digital (odd) frames of one cell."""
    key = tix * 2 * MAX_CELLS + cell_ids
    good = np.nonzero(ok)[0]
    order = good[np.argsort(key[good], kind="stable")]
    skeys = key[order]
    analog = good[cell_ids[good] % 2 == 0]
    pos = np.searchsorted(skeys, key[analog] + 1)
    has = (pos < len(skeys)) & (skeys[np.minimum(pos, len(skeys) - 1)] == key[analog] + 1)
    analog, digital = analog[has], order[pos[has]]
    beyond = cell_ids[analog] // 2 >= n_cells
    analog, digital = analog[~beyond], digital[~beyond]
    out = pair_buf[:len(analog)]
    out[:, 0] = buf[analog, 0]
    out[:, 1] = buf[digital, 0]
    return out, cell_ids[analog] // 2, trains[analog], int(beyond.sum())
