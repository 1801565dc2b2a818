"""Synthetic CFEL (DESY lab) dark run sets with known ground truth.

Writes the lab layout (``shared/spec/formats.md`` 2):
``<input_dir>/<temperature>/dark/<module>_<position>_dark_[<spec>_]<run_name>_<run:05>_part
<part:05>.nxs`` for the runs ``hg, mg, lg`` (forced high, medium, low gain), each with
``entry/instrument/detector/data`` (frames, 128, 512) int16 holding analog and digital
interleaved (position ``p = sequence_number - 1``: train ``p // (2C)``, cell
``(p % (2C)) // 2``, analog if ``p`` even), ``sequence_number`` (1-based over the run),
``collection/frame_numbers``, ``collection/total_loss_frames`` and ``collection/error_code``.

Each run is split into parts at uneven positions: the first boundary separates an analog frame
from its digital (the pair is split across two files), the second falls between two cells.
With ``faults`` every run has, at cell keys ``k = t * C + c`` spread over the run:

- one analog frame lost and one digital frame lost (gaps in ``sequence_number``);
- train 2 lost completely (2C frames);
- one analog frame with ``error_code = 1`` (garbage data);
- one digital frame with negative values at a few pixels;
- a second copy of an analog frame (garbage data; the first copy is the valid one);
- one frame with ``sequence_number = frame_numbers + 3`` (out of range, garbage data), written
  between an analog frame and its digital.

``truth_cfel.h5`` in ``input_dir`` holds the generating parameters ``offset``, ``noise``,
``gain_level``, ``gain_level_noise`` and the exact statistics of the frames that must be used
(``sample_offset``, ``sample_noise``, ``sample_gain_level``, ``sample_gain_level_std``, ddof 0),
all (gain, cell, row, col) float64, and ``frames_used`` (gain, cell); per run
``run_<name>/used`` (train, cell) bool, and with ``store_frames`` the written values
``analog``/``digital`` (train, cell, row, col) uint16, with attributes ``run``,
``frame_numbers``, ``n_trains``, ``files`` and ``expected_counts`` (reason -> frames, JSON).
"""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict, dataclass
from pathlib import Path

import h5py
import numpy as np

from ..readers.cfel import (
    DATA,
    DUP_FRAME,
    ERROR_CODE,
    FRAME_NUMBERS,
    LOST,
    NEGATIVE,
    NO_PARTNER,
    OUT_OF_RANGE,
    PACKET_LOSS,
    SEQUENCE,
    TOTAL_LOSS,
)
from .conf import write_config_file

GAIN_OFFSET = (5000.0, 5600.0, 6200.0)
GAIN_NOISE = ((4.0, 5.5), (2.5, 3.5), (1.5, 2.0))
GAIN_LEVEL = (4800.0, 6400.0, 7600.0)
GAIN_LEVEL_NOISE = 8.0
#: value of frames that must never be used (packet loss, duplicates, out of range)
GARBAGE = 30000
#: pixels (row, col) set to a negative value in the negative-value fault
NEGATIVE_PIXELS = ((3, 7), (100, 400))
LOST_TRAIN = 2


@dataclass
class CfelDarkSet:
    """Parameters of a synthetic lab dark run set (one module)."""

    module: str = "M304"
    position: str = "m2"
    temperature: str = "temperature_m20C"
    spec: str | None = "tint150ns"
    run_names: tuple[str, ...] = ("hg", "mg", "lg")
    runs: tuple[int, ...] = (12, 13, 14)
    n_cells: int = 4
    #: trains per run (each run has its own frame_numbers)
    n_trains: tuple[int, ...] = (6, 7, 6)
    n_parts: int = 3
    #: HDF5 chunk length along the frame axis (odd, so chunks and pairs do not align)
    chunk_frames: int = 5
    faults: bool = True
    #: run names written as one file without ``_partNNNNN``
    unsplit: tuple[str, ...] = ()
    #: keep the written values in the truth file (n_trains * C * 2 frames per run)
    store_frames: bool = True
    seed: int = 4321


def truth_params(p: CfelDarkSet) -> dict[str, np.ndarray]:
    """Generating parameters, each (gain, cell, row, col) float64."""
    rng = np.random.default_rng([p.seed, 7])
    shape = (3, p.n_cells, 128, 512)
    offset, noise, level = np.empty(shape), np.empty(shape), np.empty(shape)
    for g in range(3):
        offset[g] = GAIN_OFFSET[g] + rng.uniform(-200, 200, shape[1:])
        noise[g] = rng.uniform(*GAIN_NOISE[g], shape[1:])
        level[g] = GAIN_LEVEL[g] + rng.uniform(-100, 100, shape[1:])
    return {"offset": offset, "noise": noise, "gain_level": level,
            "gain_level_noise": np.full(shape, GAIN_LEVEL_NOISE)}


def fault_keys(n_cells: int, n_trains: int) -> dict[str, int]:
    """Cell keys ``k = t * C + c`` of the injected single-frame faults, spread over the run
    (outside the lost train)."""
    cands = [k for k in range(n_trains * n_cells) if k // n_cells != LOST_TRAIN]
    names = ("analog_lost", "digital_lost", "packet_loss", "negative", "duplicate")
    if len(cands) < 2 * len(names):
        raise ValueError(f"faults need at least {2 * len(names)} cells outside train "
                         f"{LOST_TRAIN} (n_cells * n_trains too small)")
    step = len(cands) // (len(names) + 1)
    return {name: cands[(i + 1) * step] for i, name in enumerate(names)}


def _cuts(seq: list[int], valid_pair_start: list[bool], n_parts: int) -> list[int]:
    """Part boundaries (frame indices): odd-numbered ones split a pair, others do not."""
    n = len(seq)
    cuts = []
    for i in range(1, n_parts):
        j = max(i * n // n_parts, (cuts[-1] + 2) if cuts else 1)
        want_split = i % 2 == 1
        while j < n - 1:
            split = valid_pair_start[j - 1] and seq[j] == seq[j - 1] + 1
            between = (seq[j] - 1) % 2 == 0 and (seq[j - 1] - 1) % 2 == 1
            if (want_split and split) or (not want_split and between):
                break
            j += 1
        cuts.append(j)
    return cuts


def _write_part(path: Path, data: np.ndarray, seq: np.ndarray, err: np.ndarray,
                frame_numbers: int, total_loss: int, chunk_frames: int) -> None:
    with h5py.File(path, "w") as f:
        n = len(data)
        chunks = (max(1, min(chunk_frames, n)), 128, 512) if n else None
        f.create_dataset(DATA, data=data.astype(np.int16), chunks=chunks)
        f.create_dataset(SEQUENCE, data=seq.astype(np.uint32))
        f.create_dataset(ERROR_CODE, data=err.astype(np.int32))
        f.create_dataset(FRAME_NUMBERS, data=np.array([frame_numbers], np.uint64))
        f.create_dataset(TOTAL_LOSS, data=np.array([total_loss], np.uint64))
        f["entry"].attrs["NX_class"] = "NXentry"


def write_dark_runs(input_dir: Path | str, p: CfelDarkSet | None = None) -> Path:
    """Write the dark runs and ``truth_cfel.h5`` under ``input_dir``; returns the truth path."""
    p = p or CfelDarkSet()
    c_n = p.n_cells
    out = Path(input_dir)
    d = out / p.temperature / "dark"
    d.mkdir(parents=True, exist_ok=True)
    truth = truth_params(p)
    shape = (3, c_n, 128, 512)
    s1, s2, d1, d2 = (np.zeros(shape) for _ in range(4))
    used_n = np.zeros((3, c_n), np.int64)
    with h5py.File(out / "truth_cfel.h5", "w") as tf:
        tf.attrs["params"] = json.dumps(asdict(p))
        for k, v in truth.items():
            tf.create_dataset(k, data=v)
        for g, (name, run, n_trains) in enumerate(
                zip(p.run_names, p.runs, p.n_trains, strict=True)):
            rng = np.random.default_rng([p.seed, g, 11])
            fn = n_trains * 2 * c_n
            z = rng.standard_normal((n_trains, 2, c_n, 128, 512), dtype=np.float32)
            analog = np.clip(np.rint(truth["offset"][g] + truth["noise"][g] * z[:, 0]),
                             0, 32767).astype(np.uint16)
            digital = np.clip(np.rint(truth["gain_level"][g]
                                      + truth["gain_level_noise"][g] * z[:, 1]),
                              0, 32767).astype(np.uint16)
            used = np.ones((n_trains, c_n), bool)
            keys = fault_keys(c_n, n_trains) if p.faults else {}
            lost = set()
            if p.faults:
                used[LOST_TRAIN] = False
                lost |= set(range(LOST_TRAIN * 2 * c_n, (LOST_TRAIN + 1) * 2 * c_n))
                lost |= {2 * keys["analog_lost"], 2 * keys["digital_lost"] + 1}
                for k in keys.values():
                    used.flat[k] = False
                used.flat[keys["duplicate"]] = True
            garbage = np.full((128, 512), GARBAGE, np.int16)
            seq, err, frames, pair_start = [], [], [], []
            oor_before = (fn // 2) | 1  # between an analog and its digital
            for pos in range(fn):
                if p.faults and pos == oor_before:
                    seq.append(fn + 3)
                    err.append(0)
                    frames.append(garbage)
                    pair_start.append(False)
                if pos in lost:
                    continue
                t, c, dig = pos // (2 * c_n), (pos % (2 * c_n)) // 2, pos % 2
                frame = (digital if dig else analog)[t, c].astype(np.int16)
                e = 0
                if p.faults and pos == 2 * keys["packet_loss"]:
                    frame, e = garbage, 1
                if p.faults and pos == 2 * keys["negative"] + 1:
                    frame = frame.copy()
                    for r, cc in NEGATIVE_PIXELS:
                        frame[r, cc] = -3
                seq.append(pos + 1)
                err.append(e)
                frames.append(frame)
                pair_start.append(not dig and bool(used.flat[pos // 2]))
                if p.faults and pos == 2 * keys["duplicate"] + 1:
                    seq.append(pos)  # a second copy of the analog frame just written
                    err.append(0)
                    frames.append(garbage)
                    pair_start.append(False)
            data = np.stack(frames)
            seq_a, err_a = np.array(seq), np.array(err)
            n_parts = 1 if name in p.unsplit else p.n_parts
            bounds = [0, *_cuts(seq, pair_start, n_parts), len(seq)]
            stem = "_".join([p.module, p.position, "dark"] + ([p.spec] if p.spec else [])
                            + [name, f"{run:05d}"])
            files = []
            for i in range(n_parts):
                fname = f"{stem}.nxs" if name in p.unsplit else f"{stem}_part{i:05d}.nxs"
                a, b = bounds[i], bounds[i + 1]
                _write_part(d / fname, data[a:b], seq_a[a:b], err_a[a:b], fn, len(lost),
                            p.chunk_frames)
                files.append(fname)
            counts = {}
            if p.faults:
                counts = {LOST: len(lost), PACKET_LOSS: 1, NEGATIVE: 1, NO_PARTNER: 4,
                          DUP_FRAME: 1, OUT_OF_RANGE: 1}
            grp = tf.create_group(f"run_{name}")
            grp.attrs.update(run=run, frame_numbers=fn, n_trains=n_trains,
                             files=json.dumps(files), expected_counts=json.dumps(counts),
                             part_bounds=json.dumps(bounds))
            grp.create_dataset("used", data=used)
            if p.store_frames:
                grp.create_dataset("analog", data=analog)
                grp.create_dataset("digital", data=digital)
            for t in range(n_trains):
                for c in np.nonzero(used[t])[0]:
                    a64 = analog[t, c].astype(np.float64)
                    g64 = digital[t, c].astype(np.float64)
                    s1[g, c] += a64
                    s2[g, c] += a64 ** 2
                    d1[g, c] += g64
                    d2[g, c] += g64 ** 2
                    used_n[g, c] += 1
        nn = np.maximum(used_n, 1)[:, :, None, None]
        mean, dmean = s1 / nn, d1 / nn
        tf.create_dataset("sample_offset", data=mean)
        tf.create_dataset("sample_noise", data=np.sqrt(np.maximum(s2 / nn - mean ** 2, 0)))
        tf.create_dataset("sample_gain_level", data=dmean)
        tf.create_dataset("sample_gain_level_std",
                          data=np.sqrt(np.maximum(d2 / nn - dmean ** 2, 0)))
        tf.create_dataset("frames_used", data=used_n)
    return out / "truth_cfel.h5"


def write_config(path: Path | str, input_dir: Path | str, out_dir: Path | str,
                 p: CfelDarkSet | None = None, **extra) -> Path:
    """Write a calib-mpi config file (``facility = cfel``) for the run set (``extra``: more
    ``key = value`` lines). Run numbers are left to be found from the file names."""
    p = p or CfelDarkSet()
    return write_config_file(path, "CFEL lab dark run set", {
        "facility": "cfel", "measurement": "dark", "input_dir": Path(input_dir),
        "temperature": p.temperature, "module_serial": p.module, "position": p.position,
        "spec": p.spec or None, "run_names": p.run_names, "n_cells": p.n_cells,
        "output_dir": Path(out_dir)}, extra)


def main(argv: list[str] | None = None) -> None:
    """Command line: ``python -m calib_mpi.synthetic.cfel OUT [--cells C] [--trains N]``."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("out", type=Path, help="input_dir to write")
    ap.add_argument("--cells", type=int, default=4)
    ap.add_argument("--trains", type=int, default=6)
    ap.add_argument("--parts", type=int, default=3)
    ap.add_argument("--config", help="also write a calib-mpi config file here")
    ap.add_argument("--results", default="results", help="output_dir for --config")
    a = ap.parse_args(argv)
    p = CfelDarkSet(n_cells=a.cells, n_trains=(a.trains,) * 3, n_parts=a.parts,
                    store_frames=a.cells * a.trains <= 4096)
    print(write_dark_runs(a.out, p))
    if a.config:
        print(write_config(a.config, a.out, a.results, p))


if __name__ == "__main__":
    main()
