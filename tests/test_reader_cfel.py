"""The CFEL lab reader on synthetic lab runs: discovery, metadata, placement, pairing, errors."""

import json
import shutil

import h5py
import numpy as np
import pytest

from calib_mpi.errors import DataError
from calib_mpi.readers.cfel import (
    DATA,
    DUP_FRAME,
    LOST,
    NEGATIVE,
    NO_PARTNER,
    SEQUENCE,
    add_counts,
    find_run_number,
    index_run,
    link_parts,
    make_slabs,
    read_slab,
    run_counts,
    run_files,
    scan_part,
)
from calib_mpi.synthetic.cfel import CfelDarkSet, _write_part, write_dark_runs

TEMP = "temperature_m20C"
NAMES = ("hg", "mg", "lg")


def _files(root, name, **kw):
    return run_files(root, TEMP, "dark", "M304", "m2", name, spec="tint150ns", **kw)


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    """Default synthetic set: 4 cells, 6/7/6 trains, 3 parts per run, all faults."""
    root = tmp_path_factory.mktemp("cfel")
    truth = write_dark_runs(root, CfelDarkSet())
    return root, truth


def read_run(parts, slabs, buf_frames=None):
    """All pairs of a run: frames (n, 2, 128, 512), cells, trains and read-time counts."""
    out, cells, trains, counts = [], [], [], {}
    for pi, s, t in slabs:
        buf = np.empty((buf_frames or (t - s), 128, 512), np.uint16)
        with h5py.File(parts[pi].path) as f:
            fr, c, tr, k = read_slab(f, parts[pi], s, t, buf)
        out.append(fr.copy())
        cells.append(c)
        trains.append(tr)
        add_counts(counts, k)
    return (np.concatenate(out), np.concatenate(cells), np.concatenate(trains), counts)


def check_against_truth(grp, frames, cells, trains):
    got = sorted(zip(trains.tolist(), cells.tolist(), strict=True))
    want = sorted(zip(*(x.tolist() for x in np.nonzero(grp["used"][()])), strict=True))
    assert got == want  # every usable (train, cell) exactly once, nothing else
    analog, digital = grp["analog"][()], grp["digital"][()]
    assert np.array_equal(frames[:, 0], analog[trains, cells])
    assert np.array_equal(frames[:, 1], digital[trains, cells])


# --- discovery ------------------------------------------------------------------------------


def test_parts_in_order_and_strays_ignored(lab, tmp_path):
    root, _ = lab
    shutil.copytree(root / TEMP, tmp_path / TEMP)
    d = tmp_path / TEMP / "dark"
    for stray in ("M304_m2_dark_tint150ns_hg_00012_part00000.nxs.bak",
                  "M304_m2_dark_tint150ns_hg_00012_part0003.nxs",
                  "M304_m2_dark_tint150ns_hg_00012_part00003.h5",
                  "M3041_m2_dark_tint150ns_hg_00012_part00003.nxs",
                  "M304_m2_dark_tint150ns_hg_x_00012_part00003.nxs",
                  "notes.txt"):
        (d / stray).write_bytes(b"x")
    files = _files(tmp_path, "hg")
    assert [f.name for f in files] == [f"M304_m2_dark_tint150ns_hg_00012_part{i:05d}.nxs"
                                      for i in range(3)]
    assert _files(tmp_path, "hg", run_number=12) == files


def test_missing_part_is_an_error(lab, tmp_path):
    root, _ = lab
    shutil.copytree(root / TEMP, tmp_path / TEMP)
    (tmp_path / TEMP / "dark" / "M304_m2_dark_tint150ns_lg_00014_part00001.nxs").unlink()
    with pytest.raises(DataError, match=r"not consecutive from part00000.*found parts \[0, 2\]"):
        _files(tmp_path, "lg")


def test_no_files_names_directory_and_pattern(lab):
    root, _ = lab
    with pytest.raises(DataError) as e:
        _files(root, "hg", run_number=99)
    msg = str(e.value)
    assert str(root / TEMP / "dark") in msg
    assert "M304_m2_dark_tint150ns_hg_00099_part<part:05>.nxs" in msg
    assert "found: M304_m2_dark_tint150ns_hg_00012_part00000.nxs" in msg
    with pytest.raises(DataError, match="does not exist"):
        run_files(root, "temperature_p20C", "dark", "M304", "m2", "hg", run_number=12)


def test_unsplit_run(tmp_path):
    p = CfelDarkSet(unsplit=("mg",), store_frames=False)
    write_dark_runs(tmp_path, p)
    files = _files(tmp_path, "mg")
    assert [f.name for f in files] == ["M304_m2_dark_tint150ns_mg_00013.nxs"]
    parts = index_run(files, p.n_cells)
    assert parts[0].part == 0 and not len(parts[0].cross)
    assert run_counts(parts)[LOST] == 2 * p.n_cells + 2
    # an unsplit file next to parts of the same run is ambiguous
    (files[0].parent / "M304_m2_dark_tint150ns_mg_00013_part00000.nxs").write_bytes(b"")
    with pytest.raises(DataError, match="both an unsplit file"):
        _files(tmp_path, "mg")


def test_run_number_lookup(lab, tmp_path):
    root, _ = lab
    assert [find_run_number(root, TEMP, "dark", "M304", "m2", n, spec="tint150ns")
            for n in NAMES] == [12, 13, 14]
    shutil.copytree(root / TEMP, tmp_path / TEMP)
    d = tmp_path / TEMP / "dark"
    (d / "M304_m2_dark_tint150ns_hg_00015_part00000.nxs").write_bytes(b"")
    (d / "M304_m2_dark_tint150ns_hg_00016_part00001.nxs").write_bytes(b"")  # no part 0
    with pytest.raises(DataError, match=r"several runs match.*run 12: .*run 15: "):
        find_run_number(tmp_path, TEMP, "dark", "M304", "m2", "hg", spec="tint150ns")
    with pytest.raises(DataError, match=r"run 'xx': no file .*found: "):
        find_run_number(root, TEMP, "dark", "M304", "m2", "xx", spec="tint150ns")
    with pytest.raises(DataError, match="no file"):  # the spec is part of the name
        find_run_number(root, TEMP, "dark", "M304", "m2", "hg")


# --- metadata -------------------------------------------------------------------------------


def test_scan_metadata(lab):
    root, truth = lab
    with h5py.File(truth) as tf:
        for name in NAMES:
            grp = tf[f"run_{name}"]
            bounds = json.loads(grp.attrs["part_bounds"])
            files = _files(root, name)
            infos = [scan_part(f, 4) for f in files]
            # each run has its own frame_numbers (6, 7, 6 trains)
            assert {i.frame_numbers for i in infos} == {int(grp.attrs["frame_numbers"])}
            assert {i.n_trains for i in infos} == {int(grp.attrs["n_trains"])}
            assert [i.n_frames for i in infos] == np.diff(bounds).tolist()
            assert [i.part for i in infos] == [0, 1, 2]
            assert all(i.chunk_frames == 5 and i.total_loss_frames == 2 * 4 + 2 for i in infos)
            assert not any(i.linked for i in infos)
            with pytest.raises(ValueError, match="not linked"), h5py.File(files[0]) as f:
                read_slab(f, infos[0], 0, 2, np.empty((2, 128, 512), np.uint16))


# --- placement ------------------------------------------------------------------------------


@pytest.mark.parametrize("chunk", [1, 4, 7, 1000])
def test_placement_matches_truth(lab, chunk):
    root, truth = lab
    with h5py.File(truth) as tf:
        for name in NAMES:
            grp = tf[f"run_{name}"]
            parts = index_run(_files(root, name), 4)
            slabs = make_slabs(parts, chunk)
            frames, cells, trains, counts = read_run(parts, slabs)
            check_against_truth(grp, frames, cells, trains)
            total = add_counts(run_counts(parts), counts)
            assert total == json.loads(grp.attrs["expected_counts"])
            # frames on disk = used pairs + everything left out except lost frames
            n_disk = sum(p.n_frames for p in parts)
            assert n_disk == 2 * len(cells) + sum(v for k, v in total.items() if k != LOST)


def test_slabs_never_split_a_pair_and_cross_part_pair(lab):
    root, truth = lab
    parts = index_run(_files(root, "hg"), 4)
    # the synthetic first boundary separates an analog (end of part 0) from its digital
    assert parts[0].cross.shape == (1, 4) and parts[0].cross[0, 1] == 0
    assert parts[0].cross_paths == [parts[1].path]
    key = int(parts[0].cross[0, 2])
    for chunk in (1, 2, 3):
        for pi, s, t in make_slabs(parts, chunk):
            a, d, _ = parts[pi].pair_table()
            lo, hi = np.minimum(a, d), np.maximum(a, d)
            assert not np.any((lo < s) & (hi >= s)) and not np.any((lo < t) & (hi >= t))
    frames, cells, trains, _ = read_run(parts, make_slabs(parts, 2))
    hit = np.nonzero(trains * 4 + cells == key)[0]
    assert len(hit) == 1
    with h5py.File(truth) as tf:
        t, c = divmod(key, 4)
        assert np.array_equal(frames[hit[0], 0], tf["run_hg/analog"][t, c])
        assert np.array_equal(frames[hit[0], 1], tf["run_hg/digital"][t, c])


def test_arbitrary_slab_boundaries_still_pair_correctly(lab):
    """Ranges not from make_slabs (every 3 frames from 0, splitting pairs) give the same."""
    root, truth = lab
    parts = index_run(_files(root, "mg"), 4)
    slabs = [(pi, s, min(s + 3, p.n_frames)) for pi, p in enumerate(parts)
             for s in range(0, p.n_frames, 3)]
    frames, cells, trains, counts = read_run(parts, slabs)
    with h5py.File(truth) as tf:
        check_against_truth(tf["run_mg"], frames, cells, trains)
        assert add_counts(run_counts(parts), counts) == json.loads(
            tf["run_mg"].attrs["expected_counts"])


def test_regular_slab_is_a_view_of_the_buffer(lab):
    root, _ = lab
    parts = index_run(_files(root, "hg"), 4)
    pi, s, t = make_slabs(parts, 6)[0]  # the first slab of part 0: 3 clean pairs
    buf = np.empty((t - s, 128, 512), np.uint16)
    with h5py.File(parts[pi].path) as f:
        frames, cells, trains, counts = read_slab(f, parts[pi], s, t, buf)
    assert frames.shape == (3, 2, 128, 512) and frames.dtype == np.uint16
    assert np.shares_memory(frames, buf) and counts == {}
    assert cells.tolist() == [0, 1, 2] and trains.tolist() == [0, 0, 0]


def test_dark_statistics_from_read_frames(lab):
    """Offset/noise/gain level from the reader equal the truth's exact sample statistics."""
    root, truth = lab
    with h5py.File(truth) as tf:
        for g, name in enumerate(NAMES):
            parts = index_run(_files(root, name), 4)
            frames, cells, _, _ = read_run(parts, make_slabs(parts, 5))
            assert np.bincount(cells, minlength=4).tolist() == tf["frames_used"][g].tolist()
            for c in range(4):
                a = frames[cells == c, 0].astype(np.float64)
                dg = frames[cells == c, 1].astype(np.float64)
                np.testing.assert_allclose(a.mean(0), tf["sample_offset"][g, c], rtol=1e-12)
                np.testing.assert_allclose(a.std(0), tf["sample_noise"][g, c], atol=1e-9)
                np.testing.assert_allclose(dg.mean(0), tf["sample_gain_level"][g, c],
                                           rtol=1e-12)
            # close to the generating parameters too (few frames: loose)
            off = np.stack([frames[cells == c, 0].mean(0) for c in range(4)])
            assert np.abs(off - tf["offset"][g]).mean() < 5


def test_one_cell_per_train(tmp_path):
    """Non-burst layout (C = 1, two frames per train)."""
    p = CfelDarkSet(n_cells=1, n_trains=(12, 13, 12), runs=(3, 4, 5))
    truth = write_dark_runs(tmp_path, p)
    with h5py.File(truth) as tf:
        for name in NAMES:
            parts = index_run(_files(tmp_path, name), 1)
            assert parts[0].n_trains == tf[f"run_{name}"].attrs["n_trains"]
            frames, cells, trains, counts = read_run(parts, make_slabs(parts, 3))
            assert not cells.any()
            check_against_truth(tf[f"run_{name}"], frames, cells, trains)
            assert add_counts(run_counts(parts), counts) == json.loads(
                tf[f"run_{name}"].attrs["expected_counts"])


# --- hand-made parts: duplicates across parts, negatives, errors ------------------------------


def _part(path, seq, values, frame_numbers, err=None, dtype=np.int16, shape=(128, 512)):
    data = np.zeros((len(seq),) + shape, np.int64) + np.asarray(values)[:, None, None]
    _write_part(path, data.reshape(len(seq), 128, 512), np.asarray(seq),
                np.zeros(len(seq)) if err is None else np.asarray(err), frame_numbers, 0, 2)
    if dtype != np.int16 or shape != (128, 512):
        with h5py.File(path, "r+") as f:
            del f[DATA]
            f.create_dataset(DATA, data=data.astype(dtype))


def test_duplicates_across_parts_first_copy_kept(tmp_path):
    # C = 2, 2 trains = 8 frames; part 1 repeats positions 2, 3 and loses 6, 7
    a, b = tmp_path / "r_00001_part00000.nxs", tmp_path / "r_00001_part00001.nxs"
    _part(a, [1, 2, 3, 4], [10, 20, 30, 40], 8)
    _part(b, [3, 4, 5, 6], [-1, -1, 50, 60], 8)
    parts = index_run([a, b], 2)
    assert parts[1].dropped == {DUP_FRAME: 2} and parts[0].dropped == {LOST: 2}
    frames, cells, trains, counts = read_run(parts, make_slabs(parts, 100))
    assert counts == {}  # the negative copies are duplicates, never read as data
    assert frames[:, :, 0, 0].tolist() == [[10, 20], [30, 40], [50, 60]]
    assert cells.tolist() == [0, 1, 0] and trains.tolist() == [0, 0, 1]
    # linking again gives the same counts
    assert run_counts(link_parts(parts)) == {DUP_FRAME: 2, LOST: 2}


def test_negative_values_invalidate_the_frame_and_its_pair(tmp_path):
    path = tmp_path / "r_00001.nxs"
    values = [1000, 32767, 7, 8, 9, 10]
    _part(path, [1, 2, 3, 4, 5, 6], values, 6)
    with h5py.File(path, "r+") as f:
        f[DATA][3, 5, 6] = -2  # digital of cell 1: invalid as a whole
        f[DATA][4, 0, 0] = -32768  # analog of cell 2
        f[DATA][5, 0, 0] = -1  # and its digital
    parts = index_run([path], 3)
    frames, cells, trains, counts = read_run(parts, make_slabs(parts, 6))
    assert cells.tolist() == [0] and trains.tolist() == [0]
    assert frames[0, 0, 0, 0] == 1000 and frames[0, 1, 0, 0] == 32767  # int16 max kept
    assert counts == {NEGATIVE: 3, NO_PARTNER: 1}


@pytest.mark.parametrize("dtype, shape, match", [
    (np.uint16, (128, 512), "dtype uint16, expected int16"),
    (np.int16, (512, 128), r"shape \(2, 512, 128\), expected \(frames, 128, 512\)"),
])
def test_wrong_shape_or_dtype(tmp_path, dtype, shape, match):
    path = tmp_path / "r_00001.nxs"
    _part(path, [1, 2], [1, 2], 2, dtype=dtype, shape=shape)
    with pytest.raises(DataError, match=match) as e:
        scan_part(path, 1)
    assert str(path) in str(e.value)


def test_inconsistent_metadata_is_an_error(tmp_path):
    path = tmp_path / "r_00001_part00000.nxs"
    _part(path, [1, 2], [1, 2], 4)
    with h5py.File(path, "r+") as f:
        del f[SEQUENCE]
        f.create_dataset(SEQUENCE, data=np.array([1, 2, 3]))
    with pytest.raises(DataError, match="sequence_number has 3 entries, .* has 2 frames"):
        scan_part(path, 1)
    b = tmp_path / "r_00001_part00001.nxs"
    other = tmp_path / "r_00001_part00002.nxs"
    _part(b, [1, 2], [1, 2], 4)
    _part(other, [3, 4], [1, 2], 6)
    with pytest.raises(DataError, match="disagree on .*frame_numbers"):
        index_run([b, other], 1)
    (tmp_path / "broken.nxs").write_bytes(b"not hdf5")
    with pytest.raises(DataError, match="cannot be opened as HDF5"):
        scan_part(tmp_path / "broken.nxs", 1)
