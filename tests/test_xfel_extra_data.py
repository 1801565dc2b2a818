"""The XFEL reader against EXtra-data, the facility's own reader, as independent reference.

Runs are written by EXtra-data's mock writer (``extra_data.tests.mockdata``, the DAQ's file
layout: ``INDEX/trainId``, ``flag`` and per-train datasets padded with zeros to blocks of 32,
``first``/``count`` one entry per train), then train IDs, counts, flags, cell IDs and image
data are set with h5py. For each layout the project's per-module view (train IDs with data,
cell IDs of the frames of each train, trains left out and why) must equal what EXtra-data
reports (``RunDirectory(..., inc_suspect_trains=False)``, ``select(source)``,
``data_counts()``), except where EXtra-data is known to differ (far-off train ID, duplicate
train IDs; see the README's "Real-world data faults").
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import h5py
import numpy as np
import pytest

from calib_mpi.errors import DataError
from calib_mpi.plan import build_plan
from calib_mpi.readers import xfel as r
from calib_mpi.synthetic.xfel import (
    GAIN_LEVEL,
    GAIN_OFFSET,
    DarkRunSet,
    write_config,
    write_dark_runs,
)

from .conftest import run_mpi

extra_data = pytest.importorskip("extra_data")
from extra_data import RunDirectory  # noqa: E402
from extra_data.tests.mockdata import write_file  # noqa: E402
from extra_data.tests.mockdata.detectors import AGIPDModule  # noqa: E402

DEVICE = "SPB_DET_AGIPD1M-1/DET/{}CH0"
PATTERN = "RAW-R{run:04d}-AGIPD{module:02d}-S{seq:05d}.h5"
VERSIONS = ("0.5", "1.0", "1.1", "1.2", "1.3")
FORMS = ("unpadded", "padded", "first_last_status")
T0 = 10_000
N_TRAINS = 14
N_CELLS = 3
FAR = 50_000  # the far-off train ID is the train's ID + FAR
GARBAGE = 60_000


def src(module: int) -> str:
    return DEVICE.format(module) + ":xtdf"


def write_seq(path: Path, module: int, ids, counts, version: str, unsafe=(), form="unpadded",
              data: np.ndarray | None = None) -> None:
    """One sequence file of ``module`` by EXtra-data's mock writer, then adjusted: INDEX
    entries ``ids`` with ``counts`` frames (cells 0..count-1), ``unsafe`` positions flagged
    untrusted (format 1.1's meaning included), the INDEX form, and image data."""
    ids = np.asarray(ids, np.uint64)
    counts = np.asarray(counts, np.uint64)
    n = len(ids)
    write_file(str(path), [AGIPDModule(DEVICE.format(module), frames_per_train=counts, raw=True)],
               n, firsttrain=int(ids[0]), chunksize=32, format_version=version)
    s = src(module)
    with h5py.File(path, "r+") as f:
        f["INDEX/trainId"][:n] = ids
        f[f"INSTRUMENT/{s}/image/trainId"][:, 0] = np.repeat(ids, counts.astype(np.intp))
        if version != "0.5":
            good, bad = (0, 1) if version == "1.1" else (1, 0)
            flag = np.full(n, good)
            flag[list(unsafe)] = bad
            f["INDEX/flag"][:n] = flag
        ix = f[f"INDEX/{s}/image"]
        first, count = ix["first"][()], ix["count"][()]
        if form == "padded":
            pad = len(f["INDEX/trainId"]) - n
            for k, v in (("first", first), ("count", count)):
                del ix[k]
                ix[k] = np.concatenate([v, np.zeros(pad, np.uint64)])
        elif form == "first_last_status":
            del ix["count"]
            ix["last"] = np.where(count > 0, first + count - 1, first).astype(np.uint64)
            ix["status"] = (count > 0).astype(np.uint64)
        if data is not None:
            f[f"INSTRUMENT/{s}/image/data"][:] = data


def layout(run_dir: Path, version: str, form: str = "unpadded", splits=(7, 8)) -> dict:
    """The case table, one run of 2 modules, 2 sequence files each (split after
    ``splits[m]`` INDEX entries): module 0 lacks train 3 and has train 5 with a far-off ID;
    module 1 starts one train later, has count 0 at train 4 and (format >= 1.0) train 9
    flagged untrusted. Returns the expectations."""
    run_dir.mkdir(parents=True, exist_ok=True)
    ids0 = [T0 + t + (FAR if t == 5 else 0) for t in range(N_TRAINS) if t != 3]
    ids1 = [T0 + t for t in range(1, N_TRAINS)]
    counts1 = [0 if t == 4 else N_CELLS for t in range(1, N_TRAINS)]
    unsafe1 = [9 - 1] if version != "0.5" else []
    for m, (ids, counts, unsafe) in enumerate(((ids0, [N_CELLS] * len(ids0), []),
                                               (ids1, counts1, unsafe1))):
        k = splits[m]
        for seq, part in enumerate((slice(0, k), slice(k, None))):
            write_seq(run_dir / PATTERN.format(run=1, module=m, seq=seq), m, ids[part],
                      counts[part], version, [u - k * seq for u in unsafe
                                              if part.start <= u < (part.stop or 99)], form)
    return {"far": T0 + 5 + FAR, "no_frames": T0 + 4, "unsafe": T0 + 9 if unsafe1 else None}


def project_view(run_dir: Path, modules=(0, 1), run: int = 1) -> dict:
    """calib-mpi's view: module -> (train ID -> cell IDs of its good frames, reason -> IDs)."""
    files = {(0, m): [r.scan_file(p, src(m), run, m)
                      for p in r.module_files(run_dir, PATTERN, run, m)] for m in modules}
    build_plan((run,), tuple(modules), files, 1, 32)
    view = {}
    for m in modules:
        cells, left_out = {}, {}
        for fi in files[(0, m)]:
            with h5py.File(fi.path) as f:
                cid = f[f"INSTRUMENT/{src(m)}/image/cellId"][:, 0]
            for i, t in enumerate(fi.train_ids):
                sel = np.arange(fi.first[i], fi.first[i] + fi.count[i])
                cells[int(t)] = cid[sel[~np.isin(sel, fi.bad_frames)]].tolist()
            for reason, ids in fi.rejected_ids.items():
                left_out.setdefault(reason, []).extend(ids)
        view[m] = (cells, left_out)
    return view


def extra_data_view(run_dir: Path, modules=(0, 1)) -> dict:
    """EXtra-data's view: module -> (train ID -> cell IDs, trusted trains of its files)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # format 1.1 "not fully supported"
        run = RunDirectory(str(run_dir), inc_suspect_trains=False)
    view = {}
    for m in modules:
        sel = run.select(src(m))
        kd = sel[src(m)]["image.cellId"]
        cells = {}
        for t, c in zip(kd.train_id_coordinates(), kd.ndarray()[:, 0], strict=True):
            cells.setdefault(int(t), []).append(int(c))
        counts = sel[src(m)].data_counts(labelled=True, index_group="image")
        assert sorted(cells) == sorted(int(t) for t in counts[counts > 0].index)
        assert all(len(cells[int(t)]) == c for t, c in counts[counts > 0].items())
        files = sel[src(m)].files
        view[m] = (cells, sorted(int(t) for fa in files for t in fa.valid_train_ids))
    return view


def assert_views_agree(run_dir: Path, expect: dict, version: str) -> None:
    ours, theirs = project_view(run_dir), extra_data_view(run_dir)
    far = expect["far"]
    # format 0.5 has no flag: EXtra-data guesses the far-off ID suspect (out of order inside
    # its file, followed by 2+ trains); 1.x trusts it and returns its frames. calib-mpi
    # leaves it out as far from the run's trains.
    assert (far in theirs[0][0]) == (version != "0.5")
    theirs[0][0].pop(far, None)
    for m in (0, 1):
        assert ours[m][0] == theirs[m][0], f"module {m}"
        assert all(c == list(range(N_CELLS)) for c in ours[m][0].values())
    assert ours[0][1] == {r.ISOLATED: [far]}
    want1 = {r.NO_FRAMES: [expect["no_frames"]]}
    if expect["unsafe"]:
        want1[r.UNSAFE] = [expect["unsafe"]]
        assert expect["unsafe"] not in theirs[1][1]
    assert ours[1][1] == want1
    assert T0 + 3 not in ours[0][0] and T0 + 3 not in theirs[0][0]


@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize("version", VERSIONS)
def test_layout_matches_extra_data(tmp_path, version, form):
    expect = layout(tmp_path / "r0001", version, form)
    assert_views_agree(tmp_path / "r0001", expect, version)


@pytest.mark.parametrize("splits", [(1, 12), (7, 2), (12, 1)])
def test_sequence_split_at_any_train(tmp_path, splits):
    expect = layout(tmp_path / "r0001", "1.3", splits=splits)
    assert_views_agree(tmp_path / "r0001", expect, "1.3")


def test_daq_padding_read_positionally(tmp_path):
    """``INDEX/trainId`` padded to 32, ``first``/``count`` not: the reader takes the real
    trains and their ranges, as EXtra-data does (the shape the issue's user hit)."""
    path = tmp_path / "r0001" / PATTERN.format(run=1, module=0, seq=0)
    path.parent.mkdir()
    write_seq(path, 0, T0 + np.arange(20), [N_CELLS] * 20, "1.3")
    with h5py.File(path) as f:
        assert len(f["INDEX/trainId"]) == 32 and len(f[f"INDEX/{src(0)}/image/count"]) == 20
    fi = r.scan_file(path, src(0), 1, 0)
    assert fi.train_ids.tolist() == list(range(T0, T0 + 20)) and fi.dropped == {}
    assert fi.first.tolist() == list(range(0, 60, 3)) and set(fi.count.tolist()) == {3}


def test_format_1_1_flag_meaning(tmp_path):
    """Format 1.1 stores the source index of the train ID (0 = time server): EXtra-data's
    mock writer's flag 1 means *untrusted* there, and both readers leave every train out."""
    path = tmp_path / "r0001" / PATTERN.format(run=1, module=0, seq=0)
    path.parent.mkdir()
    write_seq(path, 0, T0 + np.arange(5), [2] * 5, "1.1")
    with h5py.File(path, "r+") as f:
        f["INDEX/flag"][:5] = 1
    assert extra_data_view(path.parent, (0,))[0][0] == {}
    fi = r.scan_file(path, src(0), 1, 0)
    assert len(fi.train_ids) == 0 and fi.dropped == {r.UNSAFE: 5}


@pytest.mark.parametrize("across_files", [False, True])
def test_duplicate_train_ids(tmp_path, across_files):
    """EXtra-data refuses a source with a train ID twice; calib-mpi keeps the first one."""
    run_dir = tmp_path / "r0001"
    run_dir.mkdir()
    ids = T0 + np.arange(8)
    if across_files:
        write_seq(run_dir / PATTERN.format(run=1, module=0, seq=0), 0, ids[:5], [2] * 5, "1.3")
        write_seq(run_dir / PATTERN.format(run=1, module=0, seq=1), 0, ids[4:], [2] * 4, "1.3")
    else:
        write_seq(run_dir / PATTERN.format(run=1, module=0, seq=0), 0,
                  np.insert(ids, 5, ids[4]), [2] * 9, "1.3")
    with pytest.raises(ValueError, match="conflicting data"):
        extra_data_view(run_dir, (0,))
    cells, left_out = project_view(run_dir, (0,))[0]
    assert sorted(cells) == ids.tolist() and left_out == {r.DUP_TRAIN: [int(ids[4])]}


@pytest.mark.parametrize("version", ["0.5", "1.3"])
@pytest.mark.parametrize("order,out", [
    ([0, 1, 2, 4, 3, 5, 6], [3]),           # a tie: the later side goes
    ([0, 1, 2, 3, 20, 21, 4, 5], [4, 5]),   # a tie of two
    ([5, 6, 7, 1, 2, 3, 4, 8, 9], [5, 6, 7]),
])
def test_train_ids_out_of_order(tmp_path, version, order, out):
    """Format 0.5 has no flag: EXtra-data guesses the out-of-order IDs suspect, and calib-mpi
    leaves out the same ones. Format 1.x: EXtra-data trusts the flag and returns them all."""
    run_dir = tmp_path / "r0001"
    run_dir.mkdir()
    ids = [T0 + t for t in order]
    write_seq(run_dir / PATTERN.format(run=1, module=0, seq=0), 0, ids, [2] * len(ids), version)
    cells, left_out = project_view(run_dir, (0,))[0]
    theirs = extra_data_view(run_dir, (0,))[0][0]
    assert left_out == {r.NON_MONOTONIC: [T0 + t for t in out]}
    want = sorted(set(ids) - set(left_out[r.NON_MONOTONIC])) if version == "0.5" else sorted(ids)
    assert sorted(cells) == sorted(set(ids) - set(left_out[r.NON_MONOTONIC]))
    assert sorted(theirs) == want


@pytest.mark.parametrize("key", ["first", "count", "flag"])
def test_index_shorter_than_trains_is_an_error(tmp_path, key):
    path = tmp_path / PATTERN.format(run=1, module=0, seq=0)
    write_seq(path, 0, T0 + np.arange(6), [2] * 6, "1.3")
    name = "INDEX/flag" if key == "flag" else f"INDEX/{src(0)}/image/{key}"
    with h5py.File(path, "r+") as f:
        short = f[name][:4]
        del f[name]
        f[name] = short
    with pytest.raises(DataError, match=f"{name} has 4 entries, fewer than the 6 trains"):
        r.scan_file(path, src(0), 1, 0)


@pytest.mark.parametrize("pad_counts", [False, True])
def test_synthetic_writer_daq_layout(tmp_path, pad_counts):
    """The project's own writer (``make demo``, ``make bench``) writes the DAQ layout, and
    EXtra-data reads its runs as calib-mpi does."""
    p = DarkRunSet(runs=(9001, 9002, 9003), n_cells=2, n_trains=10, n_sequences=2,
                   lost_trains={1: [3]}, defects=False, faults=(("unsafe", 1, 5),),
                   pad_index_counts=pad_counts)
    write_dark_runs(tmp_path, p)
    run_dir = tmp_path / "r9001"
    with h5py.File(run_dir / PATTERN.format(run=9001, module=0, seq=0)) as f:
        assert f["METADATA/dataFormatVersion"][0] == b"1.3"
        assert len(f["INDEX/trainId"]) == len(f["INDEX/flag"]) == 32
        assert len(f[f"INDEX/{src(0)}/image/count"]) == (32 if pad_counts else 5)
    ours, theirs = project_view(run_dir, run=9001), extra_data_view(run_dir)
    for m in (0, 1):
        assert ours[m][0] == theirs[m][0]
    lost = [p.first_train_id + t for t in p.lost_trains[1]]
    assert ours[1][1] == {r.NO_FRAMES: lost, r.UNSAFE: [p.first_train_id + 5]}


# ---- a dark job on EXtra-data-written runs ------------------------------------------------

RUNS = (1, 2, 3)


def _dark_runs(raw: Path) -> None:
    """Three forced-gain dark runs of 2 modules in EXtra-data's layout (format 1.3), module 0
    in 2 sequence files with train 3 lost and train 6 far off, module 1 in 3 files with
    count 0 at train 4 and train 9 flagged untrusted; bad trains hold garbage."""
    rng = np.random.default_rng(15)
    for g, run in enumerate(RUNS):
        run_dir = raw / f"r{run:04d}"
        run_dir.mkdir(parents=True)
        for m in (0, 1):
            pos = [t for t in range(N_TRAINS) if not (m == 0 and t == 3)]
            ids = [T0 + 100 * g + t + (FAR if (m == 0 and t == 6) else 0) for t in pos]
            counts = [0 if (m == 1 and t == 4) else N_CELLS for t in pos]
            n = sum(counts)
            data = np.empty((n, 2, 512, 128), np.uint16)
            a = GAIN_OFFSET[g] + rng.normal(0, 4, (n, 512, 128))
            data[:, 0] = np.rint(a)
            data[:, 1] = np.rint(GAIN_LEVEL[g] + rng.normal(0, 8, (n, 512, 128)))
            bad = [pos.index(6)] if m == 0 else [pos.index(9)]
            starts = np.concatenate([[0], np.cumsum(counts)])
            for b in bad:
                data[starts[b]:starts[b + 1]] = GARBAGE
            cuts = [0, 7, len(pos)] if m == 0 else [0, 4, 10, len(pos)]
            for s in range(len(cuts) - 1):
                lo, hi = cuts[s], cuts[s + 1]
                unsafe = [bad[0] - lo] if m == 1 and lo <= bad[0] < hi else []
                write_seq(run_dir / PATTERN.format(run=run, module=m, seq=s), m, ids[lo:hi],
                          counts[lo:hi], "1.3", unsafe, data=data[starts[lo]:starts[hi]])


def _extra_data_statistics(raw: Path, m: int) -> tuple[np.ndarray, np.ndarray]:
    """Per gain and cell: mean and population std of the analog frames EXtra-data returns,
    far-off train IDs (> T0 + FAR) excluded, (gain, cell, 512, 128) float64."""
    mean = np.empty((3, N_CELLS, 512, 128))
    std = np.empty_like(mean)
    for g, run in enumerate(RUNS):
        sd = RunDirectory(str(raw / f"r{run:04d}"), inc_suspect_trains=False)[src(m)]
        kd = sd["image.data"]
        tids = kd.train_id_coordinates()
        # EXtra-data returns the far-off train (module 0) with its garbage frames
        assert np.count_nonzero(tids > T0 + FAR) == (N_CELLS if m == 0 else 0)
        frames = kd.ndarray()[tids < T0 + FAR, 0].astype(np.float64)
        cells = sd["image.cellId"].ndarray()[tids < T0 + FAR, 0]
        assert frames.max() < GARBAGE
        for c in range(N_CELLS):
            mean[g, c] = frames[cells == c].mean(axis=0)
            std[g, c] = frames[cells == c].std(axis=0)
    return mean, std


@pytest.mark.mpi
def test_dark_job_equals_extra_data_statistics(tmp_path):
    raw = tmp_path / "raw"
    _dark_runs(raw)
    p = DarkRunSet(runs=RUNS, modules=(0, 1))
    results = {}
    for n in (1, 3):
        out = tmp_path / f"out{n}"
        res = run_mpi(n, [write_config(tmp_path / f"run{n}.conf", raw, out, p)], timeout=180)
        assert res.returncode == 0, res.output
        results[n] = out / "dark"
    for m in (0, 1):
        mean, std = _extra_data_statistics(raw, m)
        name = f"dark_AGIPD{m:02d}_xfel.h5"
        with h5py.File(results[1] / name) as f1, h5py.File(results[3] / name) as f3:
            for k in ("offset", "noise"):
                assert np.array_equal(f1[k][()], f3[k][()]), k
            np.testing.assert_allclose(f1["offset"][()], mean, atol=0.01, rtol=0)
            np.testing.assert_allclose(f1["noise"][()], std, atol=0.01, rtol=0)
            dropped = json.loads(f1.attrs["dropped"])
        want = {r.ISOLATED: 1} if m == 0 else {r.NO_FRAMES: 1, r.UNSAFE: 1}
        assert all(dropped[str(run)] == want for run in RUNS), dropped
