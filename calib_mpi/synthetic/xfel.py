"""Synthetic European XFEL dark run sets with known ground truth.

Writes the real raw layout (``rNNNN/RAW-RNNNN-AGIPDMM-SNNNNN.h5`` with INSTRUMENT, INDEX and
METADATA groups, ``shared/spec/formats.md`` 1.2) as the DAQ does, format 1.3 with the
per-train datasets (``INDEX/trainId``, ``flag``, ...) padded with zeros to blocks of 32
entries (:func:`write_index`), for three dark runs (forced high, medium, low gain) of a few
modules, split into sequence files whose boundaries differ between modules, with
lost trains and a module that starts later than the others. Next to the runs, ``truth.h5``
holds, per module:

- ``module_MM/offset``, ``noise``, ``gain_level``, ``gain_level_noise``: the generating
  parameters, each (gain, cell, slow_scan, fast_scan) float64;
- ``module_MM/sample_offset``, ``sample_noise``, ``sample_gain_level``: the statistics of the
  frames actually written (population std), computed independently while writing;
- ``module_MM/bad_pixels``: the flags the injected defects must produce (uint32);
- ``module_MM/trains_used``: (run,) number of trains with data; ``frames_used``: (run, cell).

Run ``python -m calib_mpi.synthetic.xfel --help`` for a command-line writer.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import h5py
import numpy as np

from ..badpixels import BadPixels, bits
from ..conditions import memory_cells_from_cells
from .conf import write_config_file
from .control import RunConditions, write_control_file

DETECTOR = "SPB_DET_AGIPD1M-1"


@dataclass
class DarkRunSet:
    """Parameters of a synthetic dark run set."""

    runs: tuple[int, int, int] = (9001, 9002, 9003)
    modules: tuple[int, ...] = (0, 1)
    n_cells: int = 4
    n_trains: int = 20
    n_sequences: int = 3
    first_train_id: int = 100_000
    detector: str = DETECTOR
    seed: int = 1234
    chunk_frames: int = 16
    #: (module index in ``modules``) -> train positions lost in that module, all runs
    lost_trains: dict = field(default_factory=lambda: {1: [3, 11]})
    #: the last module starts this many trains after the others
    late_start: int = 1
    #: trailing all-zero rows appended to ``image/*`` of each file (as the DAQ does)
    padding_frames: int = 2
    #: write the old INDEX form first/last/status (format 0.5, no INDEX/flag) instead of
    #: format 1.3's first/count
    old_index: bool = False
    #: pad INDEX/<source>/<group>/first|count with zeros like INDEX/trainId (the DAQ writes
    #: both forms; by default one entry per train)
    pad_index_counts: bool = False
    #: inject the known-bad pixels listed in :data:`DEFECTS`
    defects: bool = True
    #: 2017 interleaved mode: analog and digital as separate frames in ``data[:, 0]``
    interleaved: bool = False
    #: data faults, each ``(kind, module index, train position)``, in every run; see
    #: :data:`FAULTS`. Frames of faulty trains/frames hold garbage (60000 ADU), so using them
    #: by mistake moves the constants far from the truth.
    faults: tuple = ()
    #: draw the noise from a small pool of random frames (fast; for large benchmark sets)
    fast_noise: bool = False
    #: write each run's control file (``RAW-R<run>-DA01-S00000.h5``) with these conditions
    #: (:class:`~calib_mpi.synthetic.control.RunConditions` fields; memory_cells defaults to
    #: the smallest AGIPD setting >= n_cells); None: no control files
    conditions: dict | None = field(default_factory=dict)
    #: gain mode of each run (0 adaptive; 1, 2, 3 fixed high, medium, low), in ``runs`` order;
    #: the data of run k are always those of gain stage k
    gain_modes: tuple = (0, 0, 0)

    @property
    def fixed_gain(self) -> bool:
        return any(self.gain_modes)

    def run_conditions(self, k: int) -> RunConditions:
        """Conditions written into the control file of run index ``k``."""
        c = {"memory_cells": memory_cells_from_cells(self.n_cells - 1), **(self.conditions or {})}
        return RunConditions(**c, gain_mode=self.gain_modes[k])


#: Injected defects: name -> (ss, fs, affected gains)
DEFECTS = {
    "dead": (10, 20, (0, 1, 2)),        # analog constant 0: offset/noise out, std zero
    "noisy": (300, 100, (0,)),          # 20x noise in high gain
    "hot": (200, 64, (1,)),             # offset +2000 ADU in medium gain
    "gain_swap": (400, 5, (0, 1)),      # medium-gain digital level equal to high gain
}

#: fault kind -> what the reader must do with it (reason counted in the output metadata)
FAULTS = {
    "zero_id": "train written with INDEX/trainId 0 (and frames with trainId 0): left out",
    "bogus_id": "train ID jumps by +50000 for one train: left out as isolated",
    "unsafe": "INDEX/flag 0 (train ID not from the time server): left out",
    "duplicate_train": "the train appears a second time right after itself: copy left out",
    "out_of_order": "an extra train with the ID of an earlier (lost) train: left out",
    "bad_cell": "an extra frame with cellId 1000 in the train: left out",
    "outlier_cell": "an extra frame with cellId 100 in the train: left out as a cell outlier",
    "repeated_cell": "an extra frame repeating cellId 0 in the train: left out",
    "tid_mismatch": "an extra frame whose image/trainId differs from the INDEX: left out",
}
GARBAGE = 60000
GAIN_OFFSET = (5000.0, 5600.0, 6200.0)
GAIN_NOISE = ((4.0, 5.5), (2.5, 3.5), (1.5, 2.0))
GAIN_LEVEL = (4800.0, 6400.0, 7600.0)
GAIN_LEVEL_NOISE = 8.0


def module_truth(p: DarkRunSet, mi: int) -> dict[str, np.ndarray]:
    """Generating parameters of module index ``mi``, each (gain, cell, 512, 128) float64."""
    rng = np.random.default_rng([p.seed, mi, 7])
    shape = (3, p.n_cells, 512, 128)
    offset = np.empty(shape)
    noise = np.empty(shape)
    level = np.empty(shape)
    for g in range(3):
        offset[g] = GAIN_OFFSET[g] + rng.uniform(-200, 200, shape[1:])
        noise[g] = rng.uniform(*GAIN_NOISE[g], shape[1:])
        level[g] = GAIN_LEVEL[g] + rng.uniform(-100, 100, shape[1:])
    level_noise = np.full(shape, GAIN_LEVEL_NOISE)
    bad = np.zeros(shape, np.uint32)
    if p.defects:
        ss, fs, _ = DEFECTS["dead"]
        offset[:, :, ss, fs] = 0.0
        noise[:, :, ss, fs] = 0.0
        bad[:, :, ss, fs] |= bits(BadPixels.OFFSET_OUT_OF_THRESHOLD,
                                  BadPixels.NOISE_OUT_OF_THRESHOLD, BadPixels.DATA_STD_IS_ZERO)
        ss, fs, _ = DEFECTS["noisy"]
        noise[0, :, ss, fs] *= 20.0
        bad[0, :, ss, fs] |= bits(BadPixels.NOISE_OUT_OF_THRESHOLD)
        ss, fs, _ = DEFECTS["hot"]
        offset[1, :, ss, fs] += 2000.0
        bad[1, :, ss, fs] |= bits(BadPixels.OFFSET_OUT_OF_THRESHOLD)
        ss, fs, _ = DEFECTS["gain_swap"]
        level[1, :, ss, fs] = level[0, :, ss, fs]
        if not p.fixed_gain:  # fixed gain: no gain switching, levels are not checked
            bad[0:2, :, ss, fs] |= bits(BadPixels.GAIN_THRESHOLDING_ERROR)
    return {"offset": offset, "noise": noise, "gain_level": level,
            "gain_level_noise": level_noise, "bad_pixels": bad}


def _train_positions(p: DarkRunSet, mi: int) -> np.ndarray:
    start = p.late_start if (mi == len(p.modules) - 1 and len(p.modules) > 1) else 0
    pos = np.arange(start, p.n_trains)
    return pos


#: the DAQ allocates per-train datasets in blocks of this many entries, padded with zeros
INDEX_BLOCK = 32
#: file format written (old INDEX form: 0.5, which has no METADATA version and no INDEX/flag)
FORMAT_VERSION = "1.3"


def _padded(a: np.ndarray, n: int, dtype) -> np.ndarray:
    """``a`` followed by zeros up to length ``n``."""
    out = np.zeros((n,) + a.shape[1:], dtype)
    out[:len(a)] = a
    return out


def write_index(f: h5py.File, ids: np.ndarray, flags: np.ndarray,
                groups: dict[str, np.ndarray], old_form: bool = False,
                pad_counts: bool = False) -> None:
    """Write ``INDEX`` in the DAQ's layout (as EXtra-data's mock writer does).

    ``INDEX/trainId``, ``timestamp``, ``flag`` (format >= 1.0) and ``origin`` have one entry
    per train, padded with zeros to a multiple of :data:`INDEX_BLOCK`; ``groups`` maps
    ``"<source>/<group>"`` to its per-train entry counts, written as
    ``INDEX/<source>/<group>/first|count`` with one entry per train (``pad_counts``: padded
    too), or ``first|last|status`` (``old_form``, format 0.5: no flag). ``ids`` (n,) train
    IDs, ``flags`` (n,) 1 = train ID from the time server.
    """
    nt = len(ids)
    n_pad = -(-max(nt, 1) // INDEX_BLOCK) * INDEX_BLOCK
    f.create_dataset("INDEX/trainId", data=_padded(ids, n_pad, np.uint64), maxshape=(None,))
    f.create_dataset("INDEX/timestamp", data=_padded(
        1_600_000_000 * 10**9 + 10**8 * ids.astype(np.uint64), n_pad, np.uint64))
    if not old_form:
        f.create_dataset("INDEX/flag", data=_padded(flags, n_pad, np.int32))
        f.create_dataset("INDEX/origin", data=_padded(np.full(nt, -1), n_pad, np.int32))
    n_entries = n_pad if pad_counts else nt
    for grp, per_train in groups.items():
        per_train = np.asarray(per_train, np.uint64)
        first = np.concatenate([[0], np.cumsum(per_train)[:-1]]).astype(np.uint64)
        ix = f"INDEX/{grp}"
        f.create_dataset(f"{ix}/first", data=_padded(first, n_entries, np.uint64))
        if old_form:
            last = np.where(per_train > 0, first + per_train - 1, first)
            f.create_dataset(f"{ix}/last", data=_padded(last, n_entries, np.uint64))
            f.create_dataset(f"{ix}/status", data=_padded(per_train > 0, n_entries, np.uint64))
        else:
            f.create_dataset(f"{ix}/count", data=_padded(per_train, n_entries, np.uint64))


def _write_metadata(f: h5py.File, src: str, old_form: bool) -> None:
    """METADATA: the data source list (and the format version from 1.0 on)."""
    ids = [f"INSTRUMENT/{src}/{g}".encode() for g in ("detector", "header", "image", "trailer")]
    if old_form:
        f.create_dataset("METADATA/dataSourceId", data=np.array(ids))
        return
    f.create_dataset("METADATA/dataFormatVersion", data=np.array([FORMAT_VERSION.encode()]))
    f.create_dataset("METADATA/dataSources/dataSourceId", data=np.array(ids))
    f.create_dataset("METADATA/dataSources/root", data=np.array([b"INSTRUMENT"] * len(ids)))
    f.create_dataset("METADATA/dataSources/deviceId",
                     data=np.array([i.split(b"/", 1)[1].rsplit(b"/", 1)[0] for i in ids]))


def _write_file(path: Path, p: DarkRunSet, module: int, ids: np.ndarray, counts: np.ndarray,
                frames: np.ndarray, cells: np.ndarray, frame_tid: np.ndarray,
                flags: np.ndarray) -> None:
    """One sequence file in the DAQ layout; ``frames`` (n, 2, 512, 128), ``cells``/``frame_tid``
    per frame; per-train datasets padded to :data:`INDEX_BLOCK` entries."""
    src = f"{p.detector}/DET/{module}CH0:xtdf"
    n = frames.shape[0]
    pad = p.padding_frames
    if p.old_index and np.any(flags != 1):
        raise ValueError("the old INDEX form (format 0.5) has no INDEX/flag: no unsafe trains")
    with h5py.File(path, "w") as f:
        _write_metadata(f, src, p.old_index)
        img = f.create_group(f"INSTRUMENT/{src}/image")
        chunks = (max(1, min(p.chunk_frames, n + pad)), 2, 512, 128)
        d = img.create_dataset("data", shape=(n + pad, 2, 512, 128), dtype=np.uint16,
                               chunks=chunks)
        if n:
            d[:n] = frames
        img.create_dataset("trainId", data=_padded(frame_tid, n + pad, np.uint64)[:, None])
        img.create_dataset("cellId", data=_padded(cells, n + pad, np.uint16)[:, None])
        img.create_dataset("pulseId", data=_padded(cells, n + pad, np.uint64)[:, None])
        img.create_dataset("length", data=np.full((n + pad, 1), 262144, np.uint32))
        img.create_dataset("status", data=np.zeros((n + pad, 1), np.uint16))
        nt = len(ids)
        n_pad = -(-max(nt, 1) // INDEX_BLOCK) * INDEX_BLOCK
        for grp in ("header", "detector", "trailer"):
            f.create_dataset(f"INSTRUMENT/{src}/{grp}/trainId", data=_padded(ids, n_pad,
                                                                            np.uint64))
        f.create_dataset(f"INSTRUMENT/{src}/header/pulseCount",
                         data=_padded(counts, n_pad, np.uint64))
        groups = {f"{src}/image": counts}
        groups.update({f"{src}/{g}": np.ones(nt, np.uint64)
                       for g in ("header", "detector", "trailer")})
        write_index(f, ids, flags, groups, old_form=p.old_index,
                    pad_counts=p.pad_index_counts)


class _Train:
    """One INDEX entry being assembled: its ID, flag and frames."""

    def __init__(self, tid: int, flag: int = 1):
        self.tid, self.flag = tid, flag
        self.frames: list[np.ndarray] = []
        self.cells: list[int] = []
        self.frame_tids: list[int] = []

    def add(self, frame: np.ndarray, cell: int, frame_tid: int | None = None) -> None:
        self.frames.append(frame)
        self.cells.append(cell)
        self.frame_tids.append(self.tid if frame_tid is None else frame_tid)


def _garbage() -> np.ndarray:
    return np.full((2, 512, 128), GARBAGE, np.uint16)


def _write_sequence(path: Path, p: DarkRunSet, module: int, trains: list[_Train]) -> None:
    frames = [f for t in trains for f in t.frames]
    arr = np.stack(frames) if frames else np.zeros((0, 2, 512, 128), np.uint16)
    _write_file(path, p, module,
                np.array([t.tid for t in trains], np.uint64),
                np.array([len(t.frames) for t in trains], np.int64),
                arr,
                np.array([c for t in trains for c in t.cells], np.int64),
                np.array([x for t in trains for x in t.frame_tids], np.uint64),
                np.array([t.flag for t in trains], np.int64))


def write_dark_runs(out_dir: Path | str, p: DarkRunSet | None = None) -> Path:
    """Write the three dark runs and ``truth.h5`` under ``out_dir``; returns ``out_dir``."""
    p = p or DarkRunSet()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if p.conditions is not None:
        for g, run in enumerate(p.runs):
            (out / f"r{run:04d}").mkdir(exist_ok=True)
            write_control_file(out / f"r{run:04d}", run,
                               p.first_train_id + 1000 * g + np.arange(p.n_trains),
                               p.run_conditions(g))
    truth_path = out / "truth.h5"
    with h5py.File(truth_path, "w") as tf:
        tf.attrs["params"] = json.dumps(asdict(p))
        tf.attrs["defects"] = json.dumps({k: list(v[:2]) + [list(v[2])]
                                          for k, v in DEFECTS.items()})
        for mi, module in enumerate(p.modules):
            truth = module_truth(p, mi)
            grp = tf.create_group(f"module_{module:02d}")
            for k, v in truth.items():
                grp.create_dataset(k, data=v, compression="gzip" if v.dtype != np.uint32 else None)
            s1 = np.zeros((3, p.n_cells, 512, 128))
            s2 = np.zeros_like(s1)
            d1 = np.zeros_like(s1)
            n = np.zeros((3, p.n_cells), np.int64)
            trains_used = []
            lost = set(p.lost_trains.get(mi, []))
            for g, run in enumerate(p.runs):
                rng = np.random.default_rng([p.seed, mi, g, 11])
                pos = np.array([t for t in _train_positions(p, mi)])
                # sequence boundaries differ per module: shift by module index
                bounds = np.linspace(0, len(pos), p.n_sequences + 1).astype(int)
                bounds[1:-1] = np.clip(bounds[1:-1] + mi, 1, len(pos) - 1)
                run_dir = out / f"r{run:04d}"
                run_dir.mkdir(exist_ok=True)
                used = 0
                faults = {(k, t) for k, fm, t in p.faults if fm == mi}
                pool = None
                for s in range(p.n_sequences):
                    trains: list[_Train] = []
                    for t in pos[bounds[s]:bounds[s + 1]]:
                        tid = p.first_train_id + 1000 * g + int(t)
                        kinds = {k for k, tt in faults if tt == t}
                        bad_train = kinds & {"zero_id", "bogus_id", "unsafe"}
                        tr = _Train(0 if "zero_id" in kinds else
                                    tid + 50_000 if "bogus_id" in kinds else tid,
                                    flag=0 if "unsafe" in kinds else 1)
                        trains.append(tr)
                        if t in lost:
                            continue
                        if p.fast_noise:
                            if pool is None:
                                pool = rng.standard_normal((4, 2, p.n_cells, 512, 128),
                                                           dtype=np.float32)
                            z = np.roll(pool[t % 4], int(t) * 7, axis=-1)
                        else:
                            z = rng.standard_normal((2, p.n_cells, 512, 128), dtype=np.float32)
                        a = truth["offset"][g] + truth["noise"][g] * z[0]
                        dg = truth["gain_level"][g] + truth["gain_level_noise"][g] * z[1]
                        a = np.clip(np.rint(a), 0, 65535).astype(np.uint16)
                        dg = np.clip(np.rint(dg), 0, 65535).astype(np.uint16)
                        for c in range(p.n_cells):
                            if bad_train:
                                tr.add(_garbage(), c)
                            elif p.interleaved:
                                tr.add(np.stack([a[c], np.zeros_like(a[c])]), 2 * c)
                                tr.add(np.stack([dg[c], np.zeros_like(dg[c])]), 2 * c + 1)
                            else:
                                tr.add(np.stack([a[c], dg[c]]), c)
                        if "bad_cell" in kinds:
                            tr.add(_garbage(), 1000)
                        if "outlier_cell" in kinds:
                            tr.add(_garbage(), 100)
                        if "repeated_cell" in kinds:
                            tr.add(_garbage(), 0)
                        if "tid_mismatch" in kinds:
                            tr.add(_garbage(), p.n_cells - 1, tid + 7)
                        if "duplicate_train" in kinds:
                            dup = _Train(tid)
                            for c in range(p.n_cells):
                                dup.add(_garbage(), c)
                            trains.append(dup)
                        if "out_of_order" in kinds and lost:
                            ooo = _Train(p.first_train_id + 1000 * g + min(lost))
                            for c in range(p.n_cells):
                                ooo.add(_garbage(), c)
                            trains.append(ooo)
                        if bad_train:
                            continue
                        s1[g] += a
                        s2[g] += a.astype(np.float64) ** 2
                        d1[g] += dg
                        n[g] += 1
                        used += 1
                    name = f"RAW-R{run:04d}-AGIPD{module:02d}-S{s:05d}.h5"
                    _write_sequence(run_dir / name, p, module, trains)
                trains_used.append(used)
            nn = np.maximum(n, 1)[:, :, None, None]
            mean = s1 / nn
            grp.create_dataset("sample_offset", data=mean)
            grp.create_dataset("sample_noise", data=np.sqrt(np.maximum(s2 / nn - mean**2, 0)))
            grp.create_dataset("sample_gain_level", data=d1 / nn)
            grp.create_dataset("trains_used", data=np.array(trains_used))
            grp.create_dataset("frames_used", data=n)
    return out


def write_config(path: Path | str, raw_dir: Path | str, out_dir: Path | str,
                 p: DarkRunSet | None = None, **extra) -> Path:
    """Write a calib-mpi config file for the run set (``extra``: more ``key = value`` lines)."""
    p = p or DarkRunSet()
    return write_config_file(path, "dark run set", {
        "facility": "xfel", "measurement": "dark", "input_dir": Path(raw_dir),
        "runs": p.runs, "modules": p.modules, "detector": p.detector,
        "output_dir": Path(out_dir)}, extra)


def main(argv: list[str] | None = None) -> None:
    """Command-line writer: ``python -m calib_mpi.synthetic.xfel OUT_DIR [options]``."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out_dir", help="directory for the run folders and truth.h5")
    ap.add_argument("--modules", type=int, nargs="+", default=[0, 1])
    ap.add_argument("--cells", type=int, default=4)
    ap.add_argument("--trains", type=int, default=20)
    ap.add_argument("--sequences", type=int, default=3)
    ap.add_argument("--seed", type=int, default=1234)
    ap.add_argument("--config", help="also write a calib-mpi config file here")
    ap.add_argument("--results", default="results", help="output_dir for --config")
    a = ap.parse_args(argv)
    p = DarkRunSet(modules=tuple(a.modules), n_cells=a.cells, n_trains=a.trains,
                   n_sequences=a.sequences, seed=a.seed)
    write_dark_runs(a.out_dir, p)
    print(f"wrote dark runs {p.runs} for modules {p.modules} ({p.n_trains} trains x "
          f"{p.n_cells} cells, {p.n_sequences} sequences) to {a.out_dir}")
    if a.config:
        write_config(a.config, a.out_dir, a.results, p)
        print(f"wrote config {a.config}")


if __name__ == "__main__":
    main()
