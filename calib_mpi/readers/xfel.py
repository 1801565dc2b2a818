"""European XFEL raw AGIPD runs: file discovery, INDEX reading and frame placement.

One :class:`FileIndex` describes one sequence file of one module (metadata only, small and
picklable, so rank 0 can broadcast it). Both INDEX forms are read here and nowhere else:
``first``/``count`` (file format >= 0.5) and the old ``first``/``last``/``status``.
See ``shared/spec/formats.md`` section 1.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

import h5py
import numpy as np

from ..errors import DataError

FRAME_SHAPE = (2, 512, 128)


@dataclass
class FileIndex:
    """Metadata of one raw file of one module, enough to place every frame.

    Attributes
    ----------
    path : the file.
    source : the detector source name inside the file.
    n_frames : length of ``image/data`` (may include trailing unused rows).
    chunk_frames : HDF5 chunk length of ``image/data`` along the frame axis (1 if contiguous).
    train_ids : (n_trains,) uint64, train ID of each used INDEX entry (valid ID, count > 0).
    first, count : (n_trains,) int64, frame range ``first:first+count`` of each train.
    max_cell : largest ``cellId`` among the frames of the used trains (-1 if none).
    dropped : reasons -> number of trains or frames left out, e.g. ``{"zero train id": 2}``.
    """

    path: str
    source: str
    n_frames: int
    chunk_frames: int
    train_ids: np.ndarray
    first: np.ndarray
    count: np.ndarray
    max_cell: int
    dropped: dict = field(default_factory=dict)

    @property
    def frame_range(self) -> tuple[int, int]:
        """``(start, stop)`` of the frames belonging to used trains (empty: ``(0, 0)``)."""
        if len(self.first) == 0:
            return 0, 0
        return int(self.first.min()), int((self.first + self.count).max())

    def frame_train_index(self, start: int, stop: int) -> np.ndarray:
        """For frames ``start:stop``, the index into ``train_ids`` of their train, -1 if none."""
        out = np.full(stop - start, -1, dtype=np.int64)
        for i in np.nonzero((self.first < stop) & (self.first + self.count > start))[0]:
            a = max(int(self.first[i]), start)
            b = min(int(self.first[i] + self.count[i]), stop)
            out[a - start : b - start] = i
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


def scan_file(path: Path, source: str, run: int, module: int) -> FileIndex:
    """Read the INDEX and per-frame bookkeeping of one raw file (no image data).

    Checks the image data shape ``(n, 2, 512, 128)`` uint16, the INDEX ranges, and the
    per-frame ``image/trainId`` against ``INDEX/trainId``; trains with ID 0 or no frames are
    left out and counted in ``dropped``.
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

        ids = _read(f, "INDEX/trainId", where).astype(np.uint64).ravel()
        ix = f"INDEX/{source}/image"
        first = _read(f, f"{ix}/first", where).astype(np.int64).ravel()
        if f"{ix}/count" in f:
            count = _read(f, f"{ix}/count", where).astype(np.int64).ravel()
        elif f"{ix}/last" in f:
            last = _read(f, f"{ix}/last", where).astype(np.int64).ravel()
            status = (
                _read(f, f"{ix}/status", where).astype(np.int64).ravel()
                if f"{ix}/status" in f
                else np.ones_like(last)
            )
            if np.any((status != 0) & (last < first)):
                raise DataError(f"{where}: {ix}/last is before 'first' for a train with data")
            count = np.where(status != 0, last - first + 1, 0)
        else:
            raise DataError(f"{where}: {ix} has neither 'count' nor 'last'")
        if not (len(ids) == len(first) == len(count)):
            raise DataError(
                f"{where}: INDEX lengths differ (trainId {len(ids)}, first {len(first)}, "
                f"count {len(count)})"
            )
        dropped: dict[str, int] = {}
        zero = ids == 0
        empty = (count <= 0) & ~zero
        if zero.any():
            dropped["zero train id (trains)"] = int(zero.sum())
        if empty.any():
            dropped["no frames in this module (trains)"] = int(empty.sum())
        use = ~zero & (count > 0)
        ids, first, count = ids[use], first[use], count[use]
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
        max_cell = -1
        if len(ids):
            frame_train = np.repeat(ids, count)
            sel = np.concatenate([np.arange(a, a + c) for a, c in zip(first, count, strict=False)])
            mismatch = frame_tid[sel] != frame_train
            if mismatch.any():
                dropped["frame trainId differs from INDEX (frames)"] = int(mismatch.sum())
            max_cell = int(cell_id[sel][~mismatch].max()) if (~mismatch).any() else -1
    return FileIndex(
        path=str(path),
        source=source,
        n_frames=n_frames,
        chunk_frames=int(chunk),
        train_ids=ids,
        first=first,
        count=count,
        max_cell=max_cell,
        dropped=dropped,
    )


def read_frame_meta(
    f: h5py.File, info: FileIndex, start: int, stop: int
) -> tuple[np.ndarray, np.ndarray]:
    """Cell ID and train ID of frames ``start:stop``; frames of unused trains get cell -1.

    Frames whose own ``image/trainId`` differs from the INDEX train are also given cell -1.
    Returns ``(cells, train_ids)``, both (stop - start,) int64 / uint64.
    """
    img = f"INSTRUMENT/{info.source}/image"
    cells = f[f"{img}/cellId"][start:stop].astype(np.int64).ravel()
    tids = f[f"{img}/trainId"][start:stop].astype(np.uint64).ravel()
    tix = info.frame_train_index(start, stop)
    expected = np.where(tix >= 0, info.train_ids[np.maximum(tix, 0)], 0)
    bad = (tix < 0) | (tids != expected)
    cells[bad] = -1
    return cells, expected
