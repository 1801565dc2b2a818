"""The XFEL reader on synthetic files: both INDEX forms, padding, lost trains, errors."""

import h5py
import numpy as np
import pytest

from calib_mpi.errors import DataError
from calib_mpi.readers.xfel import TID_MISMATCH, module_files, read_slab, scan_file
from calib_mpi.synthetic.xfel import DarkRunSet, write_dark_runs

SRC = "SPB_DET_AGIPD1M-1/DET/{}CH0:xtdf"
PATTERN = "RAW-R{run:04d}-AGIPD{module:02d}-S{seq:05d}.h5"


@pytest.fixture(scope="module", params=[False, True], ids=["first-count", "first-last-status"])
def small_set(request, tmp_path_factory):
    p = DarkRunSet(modules=(0, 1), n_cells=3, n_trains=9, n_sequences=2,
                   lost_trains={1: [4]}, old_index=request.param)
    raw = tmp_path_factory.mktemp("reader") / "raw"
    write_dark_runs(raw, p)
    return raw, p


def test_files_sorted_and_strays_ignored(small_set):
    raw, _ = small_set
    (raw / "r9001" / "RAW-R9001-AGIPD00-S00000.h5.bak").write_bytes(b"x")
    (raw / "r9001" / "notes.txt").write_text("x")
    files = module_files(raw / "r9001", PATTERN, 9001, 0)
    assert [f.name for f in files] == ["RAW-R9001-AGIPD00-S00000.h5",
                                      "RAW-R9001-AGIPD00-S00001.h5"]


def test_gap_in_sequences_is_an_error(small_set, tmp_path):
    raw, _ = small_set
    d = tmp_path / "r9001"
    d.mkdir()
    for s in (0, 2):
        (d / PATTERN.format(run=9001, module=0, seq=s)).write_bytes(b"")
    with pytest.raises(DataError, match="not consecutive"):
        module_files(d, PATTERN, 9001, 0)


def test_scan_counts_trains_and_places_frames(small_set):
    raw, p = small_set
    infos = [scan_file(f, SRC.format(1), 9001, 1)
             for f in module_files(raw / "r9001", PATTERN, 9001, 1)]
    ids = np.concatenate([i.train_ids for i in infos]) - p.first_train_id
    # module 1 (the last) starts one train late and loses train 4
    assert ids.tolist() == [1, 2, 3, 5, 6, 7, 8]
    assert sum(i.dropped.get("no frames in this module (trains)", 0) for i in infos) == 1
    assert all(i.max_cell == 2 for i in infos)
    info = infos[0]
    axis = np.unique(np.concatenate([i.train_ids for i in infos]))
    buf = np.empty((64, 2, 512, 128), np.uint16)
    with h5py.File(info.path) as f:
        start, stop = info.frame_range
        frames, cells, trains, beyond = read_slab(f, info, start, stop + 2, buf, None, axis, 3)
        raw = f[f"INSTRUMENT/{SRC.format(1)}/image/data"][start:stop]
    # the 2 padding rows belong to no train and are left out
    assert cells.tolist() == [0, 1, 2] * ((stop - start) // 3)
    assert np.array_equal(frames, raw)
    assert trains.tolist() == np.repeat(np.arange(len(info.train_ids)), 3).tolist()
    assert beyond == 0
    with h5py.File(info.path) as f:
        _, cells, _, beyond = read_slab(f, info, start, stop, buf, None, axis, 2)
    assert cells.tolist() == [0, 1] * ((stop - start) // 3) and beyond == (stop - start) // 3


def test_frame_train_mismatch_is_dropped(small_set, tmp_path):
    raw, _ = small_set
    src_file = module_files(raw / "r9001", PATTERN, 9001, 0)[0]
    f2 = tmp_path / src_file.name
    f2.write_bytes(src_file.read_bytes())
    with h5py.File(f2, "r+") as f:
        f[f"INSTRUMENT/{SRC.format(0)}/image/trainId"][4] = 7
    info = scan_file(f2, SRC.format(0), 9001, 0)
    assert info.dropped[TID_MISMATCH] == 1
    buf = np.empty((6, 2, 512, 128), np.uint16)
    with h5py.File(f2) as f:
        _, cells, trains, _ = read_slab(f, info, 0, 6, buf, None, info.train_ids, 3)
    assert cells.tolist() == [0, 1, 2, 0, 2] and trains.tolist() == [0, 0, 0, 1, 1]


def test_missing_source_names_what_is_there(small_set):
    raw, _ = small_set
    f = module_files(raw / "r9001", PATTERN, 9001, 0)[0]
    with pytest.raises(DataError, match="SPB_DET_AGIPD1M-1/DET/0CH0:xtdf"):
        scan_file(f, "MID_DET_AGIPD1M-1/DET/0CH0:xtdf", 9001, 0)


def test_index_beyond_data_is_an_error(small_set, tmp_path):
    raw, _ = small_set
    src_file = module_files(raw / "r9001", PATTERN, 9001, 0)[0]
    f2 = tmp_path / "bad.h5"
    f2.write_bytes(src_file.read_bytes())
    with h5py.File(f2, "r+") as f:
        f[f"INDEX/{SRC.format(0)}/image/first"][-1] = 10_000
    with pytest.raises(DataError, match="INDEX points beyond|is before 'first'"):
        scan_file(f2, SRC.format(0), 9001, 0)
