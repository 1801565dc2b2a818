"""CFEL (DESY lab) AGIPD runs: file discovery, frame bookkeeping and analog/digital pairing.

A lab run is split into parts ``..._part00000.nxs, _part00001.nxs, ...`` (or one file without
``_partNNNNN``). Each part holds ``entry/instrument/detector/data`` (frames, 128, 512) int16 in
the AGIPD frame orientation (row, col), with analog and digital **interleaved as separate
frames**, and a run-wide 1-based ``sequence_number`` per frame (``shared/spec/formats.md`` 2).

Placement (``C`` = cells per train, 352 in burst mode, 1 for non-burst xray): the frame with
``p = sequence_number - 1`` belongs to train ``t = p // (2C)``, cell ``c = (p % (2C)) // 2``,
and is the analog half if ``p`` is even, the digital half if odd. Its *cell key* is
``k = p // 2 = t * C + c``. A (train, cell) is used only when both halves are present and
valid; they are returned together as one ``(2, 128, 512)`` frame.

Workflow: :func:`scan_part` reads the metadata of one part (parallel-friendly, no image data);
:func:`link_parts` combines the parts of one run (duplicates across parts, pairs whose halves
are in different parts, frames lost from the run); :func:`make_slabs` cuts parts into read
ranges that never split a pair; :func:`read_slab` reads one range and returns paired frames.
:func:`index_run` does scan + link for a list of files.

Frames left out are counted per reason (keys below, units in brackets). Scan/link counts live
in :attr:`PartIndex.dropped` (run-wide counts, e.g. lost frames, in part 0), read-time counts
(negative values and their partners) are returned by :func:`read_slab`; summing both over all
parts and slabs gives the run's totals without double counting.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import h5py
import numpy as np

from ..errors import DataError
from .xfel import add_counts

#: one lab frame, AGIPD orientation (row, col)
FRAME_SHAPE = (128, 512)
#: AGIPD has at most 352 memory cells (704 frames per train in the lab)
MAX_CELLS = 352

DETECTOR = "entry/instrument/detector"
DATA = f"{DETECTOR}/data"
SEQUENCE = f"{DETECTOR}/sequence_number"
FRAME_NUMBERS = f"{DETECTOR}/collection/frame_numbers"
TOTAL_LOSS = f"{DETECTOR}/collection/total_loss_frames"
ERROR_CODE = f"{DETECTOR}/collection/error_code"

# reasons, keys of the ``dropped`` counters (all in frames)
LOST = "frame lost, gap in sequence_number (frames)"
PACKET_LOSS = "packet loss, error_code != 0 (frames)"
OUT_OF_RANGE = "sequence_number outside 1..frame_numbers (frames)"
DUP_FRAME = "sequence_number repeated (frames)"
NEGATIVE = "negative values (frames)"
NO_PARTNER = "analog or digital of the cell missing or invalid (frames)"

_INT = np.int64


def _empty(cols: int) -> np.ndarray:
    return np.zeros((0, cols), _INT)


@dataclass
class PartIndex:
    """Metadata of one part of a lab run, enough to place and pair every frame.

    Small and picklable (arrays are run-length compressed), so rank 0 can broadcast it.

    Attributes
    ----------
    path : the file.
    part : part number (0 for an unsplit run).
    n_frames : length of ``data`` along the frame axis.
    chunk_frames : HDF5 chunk length of ``data`` along the frame axis (1 if contiguous).
    n_cells : memory cells per train C (a train is 2C frames).
    frame_numbers : expected total frames of the run (``collection/frame_numbers[0]``).
    total_loss_frames : lost frames as counted by the DAQ (informational).
    segments : (k, 3) int64 ``[index, position, length]``: runs of usable frames (position in
        range, error_code 0, first copy in the part) with consecutive index and position.
    error_positions : positions ``p`` of in-range frames with error_code != 0.
    pairs : (k, 4) int64 ``[analog_index, digital_index, key, length]``, set by
        :func:`link_parts`: pairs with both halves in this part; pair j of a row is
        ``(analog_index + 2j, digital_index + 2j)`` with cell key ``key + j``.
    cross : (m, 4) int64 ``[own_index, own_is_digital, key, partner_index]``, set by
        :func:`link_parts`: pairs whose other half is frame ``partner_index`` of
        ``cross_paths[i]`` (another part); each such pair is listed in the part holding its
        earlier half only.
    cross_paths : (m,) partner file of each ``cross`` row.
    dropped : reason -> frames left out (run-wide counts are added to part 0).
    scan_dropped : the part's own counts from :func:`scan_part` (``dropped`` before linking).
    linked : :func:`link_parts` has run (required by :func:`read_slab`).
    """

    path: str
    part: int
    n_frames: int
    chunk_frames: int
    n_cells: int
    frame_numbers: int
    total_loss_frames: int
    segments: np.ndarray
    error_positions: np.ndarray
    pairs: np.ndarray = field(default_factory=lambda: _empty(4))
    cross: np.ndarray = field(default_factory=lambda: _empty(4))
    cross_paths: list = field(default_factory=list)
    dropped: dict = field(default_factory=dict)
    scan_dropped: dict = field(default_factory=dict)
    linked: bool = False

    @property
    def n_trains(self) -> int:
        """Trains of the run: ``ceil(frame_numbers / (2C))`` (from this run's own metadata)."""
        return -(-self.frame_numbers // (2 * self.n_cells))

    @property
    def n_pairs(self) -> int:
        """Pairs (usable (train, cell)) owned by this part."""
        return int(self.pairs[:, 3].sum()) + len(self.cross)

    def usable(self) -> tuple[np.ndarray, np.ndarray]:
        """Indices and positions ``p`` of the usable frames, both (n,) int64, index order."""
        return _expand_segments(self.segments)

    def pair_table(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Analog index, digital index and cell key of the in-part pairs, each (n,) int64."""
        return _expand_pairs(self.pairs)

    def cells_trains(self) -> tuple[np.ndarray, np.ndarray]:
        """Cell and train of every pair owned by this part (in-part, then cross), (n,) int64."""
        key = np.concatenate([self.pair_table()[2], self.cross[:, 2]])
        return key % self.n_cells, key // self.n_cells


def _expand_segments(seg: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    if not len(seg):
        return np.zeros(0, _INT), np.zeros(0, _INT)
    lengths = seg[:, 2]
    step = np.arange(lengths.sum()) - np.repeat(np.cumsum(lengths) - lengths, lengths)
    return np.repeat(seg[:, 0], lengths) + step, np.repeat(seg[:, 1], lengths) + step


def _expand_pairs(rows: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    if not len(rows):
        z = np.zeros(0, _INT)
        return z, z, z
    lengths = rows[:, 3]
    j = np.arange(lengths.sum()) - np.repeat(np.cumsum(lengths) - lengths, lengths)
    return (np.repeat(rows[:, 0], lengths) + 2 * j, np.repeat(rows[:, 1], lengths) + 2 * j,
            np.repeat(rows[:, 2], lengths) + j)


def _runs(columns: list[np.ndarray], steps: list[int]) -> np.ndarray:
    """Run-length compress parallel columns advancing by ``steps`` per element:
    rows ``[first values..., length]``."""
    n = len(columns[0])
    if n == 0:
        return _empty(len(columns) + 1)
    cont = np.ones(n - 1, bool)
    for col, s in zip(columns, steps, strict=True):
        cont &= np.diff(col) == s
    starts = np.concatenate([[0], np.nonzero(~cont)[0] + 1])
    lengths = np.diff(np.concatenate([starts, [n]]))
    return np.column_stack([c[starts] for c in columns] + [lengths]).astype(_INT)


# ---------------------------------------------------------------------------------------------
# file discovery


def run_dir(input_dir: Path | str, temperature: str, measurement: str,
            current: str | None = None, subdir: str | None = None) -> Path:
    """``<input_dir>/<temperature>/<measurement>/[<current>/][<subdir>/]``."""
    d = Path(input_dir) / temperature / measurement
    if current:
        d = d / current
    if subdir:
        d = d / subdir
    return d


def _prefix(module: str, position: str, measurement: str, spec: str | None,
            run_name: str | None) -> str:
    parts = [module, position, measurement] + [x for x in (spec, run_name) if x]
    return "_".join(parts) + "_"


def _listing(d: Path, limit: int = 12) -> str:
    names = sorted(p.name for p in d.iterdir()) if d.is_dir() else []
    if not d.is_dir():
        return "the directory does not exist"
    if not names:
        return "the directory is empty"
    more = f" ... ({len(names) - limit} more)" if len(names) > limit else ""
    return "found: " + ", ".join(names[:limit]) + more


def find_run_number(input_dir: Path | str, temperature: str, measurement: str, module: str,
                    position: str, run_name: str | None, spec: str | None = None,
                    current: str | None = None, subdir: str | None = None) -> int:
    """Run number of the run called ``run_name`` (e.g. ``hg``, ``r3``, ``col26``; None or ``""``
    for names without a run name, such as lab xray ``..._xray_Cu_<run:05>...``).

    Looks for part 0 (``..._<run:05>_part00000.nxs``) or an unsplit file
    (``..._<run:05>.nxs``) with exactly the expected prefix; raises :class:`DataError` listing
    the candidates when none or several runs match.
    """
    d = run_dir(input_dir, temperature, measurement, current, subdir)
    prefix = _prefix(module, position, measurement, spec, run_name)
    regex = re.escape(prefix) + r"(\d{5,})(?:_part00000)?\.nxs"
    found: dict[int, list[str]] = {}
    for p in d.iterdir() if d.is_dir() else []:
        m = re.fullmatch(regex, p.name)
        if m:
            found.setdefault(int(m.group(1)), []).append(p.name)
    pattern = f"{prefix}<run:05>_part00000.nxs or {prefix}<run:05>.nxs"
    what = f"run {run_name!r}" if run_name else f"{measurement} run"
    if len(found) == 1:
        return next(iter(found))
    if not found:
        raise DataError(f"{what}: no file {pattern} in {d} ({_listing(d)})")
    cands = "; ".join(f"run {r}: {', '.join(sorted(v))}" for r, v in sorted(found.items()))
    raise DataError(f"{what}: several runs match {pattern} in {d} ({cands}); "
                    "give the run number explicitly")


def run_files(input_dir: Path | str, temperature: str, measurement: str, module: str,
              position: str, run_name: str | None, run_number: int | None = None,
              spec: str | None = None, current: str | None = None,
              subdir: str | None = None) -> list[Path]:
    """The parts of one run, in part order.

    Names must be exactly ``<module>_<position>_<measurement>_[<spec>_][<run_name>_]<run:05>``
    followed by ``_part<part:05>.nxs`` (parts consecutive from 0) or ``.nxs`` (unsplit run);
    other files are ignored. ``run_number`` None: found with :func:`find_run_number`.
    Raises :class:`DataError` naming the directory, the expected pattern and what was found.
    """
    if run_number is None:
        run_number = find_run_number(input_dir, temperature, measurement, module, position,
                                     run_name, spec, current, subdir)
    d = run_dir(input_dir, temperature, measurement, current, subdir)
    stem = f"{_prefix(module, position, measurement, spec, run_name)}{run_number:05d}"
    pattern = f"{stem}_part<part:05>.nxs (or {stem}.nxs)"
    parts: list[tuple[int, Path]] = []
    unsplit = None
    for p in d.iterdir() if d.is_dir() else []:
        m = re.fullmatch(re.escape(stem) + r"(?:_part(\d{5}))?\.nxs", p.name)
        if m and m.group(1) is None:
            unsplit = p
        elif m:
            parts.append((int(m.group(1)), p))
    parts.sort()
    where = f"run {run_name!r} ({run_number})" if run_name else f"run {run_number}"
    if unsplit is not None and parts:
        raise DataError(f"{where}: both an unsplit file {unsplit.name} and parts "
                        f"{[p.name for _, p in parts]} in {d}; expected one or the other")
    if unsplit is not None:
        return [unsplit]
    if not parts:
        raise DataError(f"{where}: no file {pattern} in {d} ({_listing(d)})")
    numbers = [n for n, _ in parts]
    if numbers != list(range(len(numbers))):
        raise DataError(f"{where}: parts in {d} are not consecutive from part00000 "
                        f"(expected {pattern}; found parts {numbers})")
    return [p for _, p in parts]


# ---------------------------------------------------------------------------------------------
# metadata


def _read1d(f: h5py.File, path: str, where: str, required: bool = True) -> np.ndarray | None:
    if path not in f:
        if required:
            raise DataError(f"{where}: dataset {path} is missing")
        return None
    try:
        return np.asarray(f[path][()]).astype(_INT).ravel()
    except Exception as e:  # h5py raises OSError/KeyError variants on damaged files
        raise DataError(f"{where}: dataset {path} cannot be read ({e})") from e


def _part_number(path: Path) -> int:
    m = re.search(r"_part(\d{5})\.nxs$", path.name)
    return int(m.group(1)) if m else 0


def scan_part(path: Path | str, n_cells: int = MAX_CELLS) -> PartIndex:
    """Read the metadata of one part (no image data) and classify its frames.

    Checks ``data`` is (frames, 128, 512) int16 and that ``sequence_number`` (and
    ``error_code`` when present; missing means 0) have one entry per frame. Leaves out, and
    counts, frames whose position ``p = sequence_number - 1`` is outside
    ``0 .. frame_numbers - 1``, frames with error_code != 0, and later copies of a position
    already seen in the part. The result must go through :func:`link_parts` before reading.
    """
    path = Path(path)
    where = f"file {path}"
    if not 1 <= n_cells <= MAX_CELLS:
        raise DataError(f"{where}: n_cells = {n_cells}, expected 1..{MAX_CELLS}")
    try:
        f = h5py.File(path, "r")
    except Exception as e:
        raise DataError(f"{where}: cannot be opened as HDF5 ({e}); truncated or corrupt?") from e
    with f:
        if DATA not in f:
            raise DataError(f"{where}: no dataset {DATA} (expected a CFEL lab .nxs file)")
        dset = f[DATA]
        if dset.ndim != 3 or tuple(dset.shape[1:]) != FRAME_SHAPE:
            raise DataError(f"{where}: {DATA} has shape {dset.shape}, expected (frames, 128, "
                            "512) (interleaved analog/digital AGIPD frames, row x col)")
        if dset.dtype != np.int16:
            raise DataError(f"{where}: {DATA} has dtype {dset.dtype}, expected int16")
        n = dset.shape[0]
        chunk = dset.chunks[0] if dset.chunks else 1
        seq = _read1d(f, SEQUENCE, where)
        err = _read1d(f, ERROR_CODE, where, required=False)
        fn = _read1d(f, FRAME_NUMBERS, where)
        loss = _read1d(f, TOTAL_LOSS, where, required=False)
    err = np.zeros(n, _INT) if err is None else err
    for name, arr in ((SEQUENCE, seq), (ERROR_CODE, err)):
        if len(arr) != n:
            raise DataError(f"{where}: {name} has {len(arr)} entries, {DATA} has {n} frames")
    if len(fn) == 0 or fn[0] <= 0:
        raise DataError(f"{where}: {FRAME_NUMBERS} is {fn.tolist()}, expected the run's "
                        "positive total number of frames")
    frame_numbers = int(fn[0])
    pos = seq - 1
    in_range = (pos >= 0) & (pos < frame_numbers)
    bad_err = in_range & (err != 0)
    valid = in_range & ~bad_err
    idx = np.nonzero(valid)[0]
    _, first = np.unique(pos[idx], return_index=True)
    keep = np.zeros(len(idx), bool)
    keep[first] = True
    dropped = add_counts({}, {OUT_OF_RANGE: int((~in_range).sum()),
                              PACKET_LOSS: int(bad_err.sum()),
                              DUP_FRAME: int((~keep).sum())})
    idx = idx[keep]
    return PartIndex(path=str(path), part=_part_number(path), n_frames=int(n),
                     chunk_frames=int(chunk), n_cells=int(n_cells), frame_numbers=frame_numbers,
                     total_loss_frames=int(loss[0]) if loss is not None and len(loss) else 0,
                     segments=_runs([idx, pos[idx]], [1, 1]),
                     error_positions=np.unique(pos[bad_err]), dropped=dict(dropped),
                     scan_dropped=dropped)


def link_parts(parts: list[PartIndex]) -> list[PartIndex]:
    """Combine the scanned parts of one run (in part order) and set their pairs, in place.

    - a position seen in an earlier part (or earlier in the same part) is a duplicate: the
      first copy is kept, later ones counted (``DUP_FRAME``) in their part;
    - positions ``0 .. frame_numbers - 1`` with no frame at all are lost (``LOST``, in part 0);
    - a usable half whose partner is missing or invalid is counted (``NO_PARTNER``) in its part;
    - pairs with both halves in one part go to ``pairs``; pairs split across parts go to
      ``cross`` of the part holding the earlier half, whose slab then reads the other half
      from the partner file (so no pair is lost at a part boundary).

    Raises :class:`DataError` when the parts disagree on ``frame_numbers`` or ``n_cells``.
    """
    if not parts:
        return parts
    fns = {p.frame_numbers for p in parts}
    cells = {p.n_cells for p in parts}
    if len(fns) > 1 or len(cells) > 1:
        detail = ", ".join(f"{Path(p.path).name}: {p.frame_numbers}" for p in parts)
        raise DataError(f"parts of one run disagree on {FRAME_NUMBERS} or n_cells ({detail})")
    frame_numbers = parts[0].frame_numbers
    idx_l, pos_l, own_l = [], [], []
    for i, p in enumerate(parts):
        ix, ps = p.usable()
        idx_l.append(ix)
        pos_l.append(ps)
        own_l.append(np.full(len(ix), i, _INT))
        p.dropped = dict(p.scan_dropped)
    idx, pos, own = np.concatenate(idx_l), np.concatenate(pos_l), np.concatenate(own_l)
    _, first = np.unique(pos, return_index=True)
    dup = np.ones(len(pos), bool)
    dup[first] = False
    for i in np.unique(own[dup]):
        add_counts(parts[i].dropped, {DUP_FRAME: int((own[dup] == i).sum())})
    idx, pos, own = idx[~dup], pos[~dup], own[~dup]
    seen = np.union1d(pos, np.concatenate([p.error_positions for p in parts]))
    add_counts(parts[0].dropped, {LOST: frame_numbers - len(seen)})

    key, digital = pos // 2, pos % 2 == 1
    a_sel, d_sel = np.nonzero(~digital)[0], np.nonzero(digital)[0]
    a_sel = a_sel[np.argsort(key[a_sel], kind="stable")]
    d_sel = d_sel[np.argsort(key[d_sel], kind="stable")]
    both = np.intersect1d(key[a_sel], key[d_sel], assume_unique=True)
    ai = a_sel[np.searchsorted(key[a_sel], both)]
    di = d_sel[np.searchsorted(key[d_sel], both)]
    orphan = np.ones(len(pos), bool)
    orphan[ai] = orphan[di] = False
    for i in np.unique(own[orphan]):
        add_counts(parts[i].dropped, {NO_PARTNER: int((own[orphan] == i).sum())})

    same = own[ai] == own[di]
    for i, p in enumerate(parts):
        sel = np.nonzero(same & (own[ai] == i))[0]
        a, d, k = idx[ai[sel]], idx[di[sel]], both[sel]
        order = np.argsort(np.minimum(a, d), kind="stable")
        p.pairs = _runs([a[order], d[order], k[order]], [2, 2, 1])
        p.cross, p.cross_paths = _empty(4), []
    cross = np.nonzero(~same)[0]
    rows: dict[int, list] = {}
    for j in cross:
        a, d = int(ai[j]), int(di[j])
        a_first = (own[a], idx[a]) < (own[d], idx[d])
        mine, other = (a, d) if a_first else (d, a)
        rows.setdefault(int(own[mine]), []).append(
            ([int(idx[mine]), 0 if a_first else 1, int(both[j]), int(idx[other])],
             parts[int(own[other])].path))
    for i, lst in rows.items():
        parts[i].cross = np.array([r for r, _ in lst], _INT).reshape(-1, 4)
        parts[i].cross_paths = [path for _, path in lst]
    for p in parts:
        p.linked = True
    return parts


def index_run(paths: list[Path], n_cells: int = MAX_CELLS) -> list[PartIndex]:
    """:func:`scan_part` every part of one run (in part order), then :func:`link_parts`."""
    return link_parts([scan_part(p, n_cells) for p in paths])


def run_counts(parts: list[PartIndex]) -> dict:
    """Frames left out per reason over the whole run as known after scanning (read-time
    counts from :func:`read_slab` come on top)."""
    out: dict = {}
    for p in parts:
        add_counts(out, p.dropped)
    return out


# ---------------------------------------------------------------------------------------------
# slabs and reading


def _owners(info: PartIndex) -> np.ndarray:
    a, d, _ = info.pair_table()
    return np.sort(np.concatenate([np.minimum(a, d), info.cross[:, 0]]))


def make_slabs(parts: list[PartIndex], chunk_frames: int) -> list[tuple[int, int, int]]:
    """Cut the parts of one run into read ranges ``(part_index, start, stop)``.

    Each range holds about ``chunk_frames`` frames (rounded to the file's HDF5 chunk length),
    starts where possible on an HDF5 chunk boundary and never splits a pair whose halves are
    in the same part: a cut that would separate an analog from its digital moves forward past
    the pair (in regular data: a range always starts at an analog frame). Frames before the
    first and after the last pair of a part, and ranges without pairs, are not read.
    """
    slabs = []
    for pi, info in enumerate(parts):
        owners = _owners(info)
        if not len(owners):
            continue
        a, d, _ = info.pair_table()
        lo_ix, hi_ix = np.minimum(a, d), np.maximum(a, d)
        ends = np.concatenate([hi_ix, info.cross[:, 0]])
        lo, hi = int(owners[0]), int(ends.max()) + 1
        cover = np.zeros(info.n_frames + 2, _INT)
        np.add.at(cover, lo_ix + 1, 1)
        np.add.at(cover, hi_ix + 1, -1)
        split = np.cumsum(cover) > 0  # split[j]: a cut before frame j separates a pair
        k = max(1, info.chunk_frames)
        step = max(k, chunk_frames // k * k)
        s = lo
        while s < hi:
            t = min(s + step, hi)
            if t < hi and t // k * k > s:
                t = t // k * k
            while t < hi and split[t]:
                t += 1
            n_own = np.searchsorted(owners, t) - np.searchsorted(owners, s)
            if n_own:
                slabs.append((pi, s, t))
            s = t
    return slabs


def _fill_pairs(outv: np.ndarray, raw: np.ndarray, dset: h5py.Dataset, start: int,
                a: np.ndarray, d: np.ndarray) -> None:
    """``outv[j] = (frame a[j], frame d[j])`` (int16 view) from the slab ``raw`` read at
    ``start``; halves beyond the slab are read from ``dset`` one frame at a time."""
    n = len(raw)
    inside = (a < n) & (d < n)
    if inside.all():
        np.take(raw, a, axis=0, out=outv[:len(a), 0])
        np.take(raw, d, axis=0, out=outv[:len(a), 1])
    else:
        outv[inside, 0] = raw[a[inside]]
        outv[inside, 1] = raw[d[inside]]
    for j in np.nonzero(~inside)[0]:
        for half, ix in ((0, a[j]), (1, d[j])):
            outv[j, half] = raw[ix] if ix < n else dset[start + ix]


def _fill_cross_pairs(outv: np.ndarray, raw: np.ndarray, start: int, crows: np.ndarray,
                      cpaths: list[str], open_part: Callable[[str], h5py.File] | None) -> None:
    """Pairs split across parts (rows ``own index, own half, key, other index`` of
    ``PartIndex.cross``): this part's half from the slab, the other from its part."""
    for j, (row, path) in enumerate(zip(crows, cpaths, strict=True)):
        own_ix, own_dig, _key, other = (int(x) for x in row)
        outv[j, own_dig] = raw[own_ix - start]
        if open_part is None:
            with h5py.File(path, "r") as g:
                outv[j, 1 - own_dig] = g[DATA][other]
        else:
            outv[j, 1 - own_dig] = open_part(path)[DATA][other]


def read_slab(f: h5py.File, info: PartIndex, start: int, stop: int, buf: np.ndarray,
              pair_buf: np.ndarray | None = None,
              open_part: Callable[[str], h5py.File] | None = None
              ) -> tuple[np.ndarray, np.ndarray, np.ndarray, dict]:
    """Read frames ``start:stop`` of one part and return the usable (train, cell) pairs.

    Parameters
    ----------
    f : the open part ``info.path``.
    buf : C-contiguous, 2-byte elements (uint16 or int16), at least ``(stop - start) * 128 *
        512`` elements; the raw int16 frames are read into it.
    pair_buf : (m, 2, 128, 512) uint16 output buffer; a new one is allocated when None or too
        small. Not needed when the slab is regular (then the result is a view of ``buf``).
    open_part : opens another part of the run by path, for pairs split across parts
        (default ``h5py.File(path, "r")``).

    Returns
    -------
    frames : (n, 2, 128, 512) uint16, ``[:, 0]`` analog, ``[:, 1]`` digital (row, col).
    cells : (n,) int64 memory cell.
    trains : (n,) int64 train position in the run (``p // (2C)``).
    counts : reason -> frames left out while reading: ``NEGATIVE`` (any value < 0; the frame is
        invalid as a whole) and ``NO_PARTNER`` (the valid other half of such a frame).

    Every pair is returned by exactly one slab: the one containing its earlier half (its
    lower frame index in this part, or for a pair split across parts the half in the earlier
    part). A half outside ``start:stop`` (only when the range was not cut by
    :func:`make_slabs`) or in another part is read separately, one frame at a time.
    """
    if not info.linked:
        raise ValueError(f"{info.path}: PartIndex not linked; call link_parts first")
    n = stop - start
    h, w = FRAME_SHAPE
    raw = buf.reshape(-1)[:n * h * w].view(np.int16).reshape(n, h, w)
    dset = f[DATA]
    if n:
        dset.read_direct(raw, np.s_[start:stop], np.s_[0:n])
    a, d, key = info.pair_table()
    sel = (np.minimum(a, d) >= start) & (np.minimum(a, d) < stop)
    a, d, key = a[sel] - start, d[sel] - start, key[sel]
    crows = info.cross[(info.cross[:, 0] >= start) & (info.cross[:, 0] < stop)]
    cpaths = [p for p, r in zip(info.cross_paths, info.cross[:, 0], strict=True)
              if start <= r < stop]
    n_pairs = len(a) + len(crows)
    neg = raw.reshape(n, -1).min(axis=1) < 0 if n else np.zeros(0, bool)
    counts: dict = {}
    regular = (not len(crows) and n % 2 == 0 and len(a) == n // 2
               and np.array_equal(a, np.arange(0, n, 2)) and np.array_equal(d, a + 1))
    if regular and not neg.any():
        return (buf.reshape(-1)[:n * h * w].view(np.uint16).reshape(n // 2, 2, h, w),
                key % info.n_cells, key // info.n_cells, counts)
    if n_pairs == 0:
        return np.zeros((0, 2, h, w), np.uint16), np.zeros(0, _INT), np.zeros(0, _INT), counts
    if pair_buf is None or len(pair_buf) < n_pairs:
        pair_buf = np.empty((n_pairs, 2, h, w), np.uint16)
    out = pair_buf[:n_pairs]
    outv = out.view(np.int16)
    _fill_pairs(outv, raw, dset, start, a, d)
    _fill_cross_pairs(outv[len(a):], raw, start, crows, cpaths, open_part)
    key = np.concatenate([key, crows[:, 2]])
    neg_a = outv[:, 0].reshape(n_pairs, -1).min(axis=1) < 0
    neg_d = outv[:, 1].reshape(n_pairs, -1).min(axis=1) < 0
    ok = ~(neg_a | neg_d)
    add_counts(counts, {NEGATIVE: int(neg_a.sum() + neg_d.sum()),
                        NO_PARTNER: int((neg_a ^ neg_d).sum())})
    if not ok.all():
        keep = np.nonzero(ok)[0]
        out[:len(keep)] = out[keep]
        out, key = out[:len(keep)], key[keep]
    return out, key % info.n_cells, key // info.n_cells, counts
