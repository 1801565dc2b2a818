"""Work distribution: every ASIC owned once, every frame read once, balanced."""

import numpy as np
import pytest

from calib_mpi.plan import (
    Slab,
    assign_reads,
    assign_units,
    build_plan,
    cell_setting,
    make_slabs,
)
from calib_mpi.readers.xfel import FileIndex


def _file(n_frames, chunk=16, first_train=0, n_trains=None):
    n_trains = n_trains or n_frames // 4
    return FileIndex(path=f"f{first_train}", source="s", n_frames=n_frames, chunk_frames=chunk,
                     train_ids=np.arange(first_train, first_train + n_trains, dtype=np.uint64) + 1,
                     first=np.arange(n_trains) * 4, count=np.full(n_trains, 4),
                     bad_frames=np.zeros(0, np.int64), train_max_cell=np.full(n_trains, 3),
                     cells_present=np.arange(352) < 4)


@pytest.mark.parametrize("n_ranks", [1, 2, 3, 4, 5, 16, 17, 40])
@pytest.mark.parametrize("modules", [(0,), (0, 1), (2, 5, 9)])
def test_every_asic_owned_exactly_once(n_ranks, modules):
    owners = assign_units(modules, n_ranks)
    units = [u for o in owners for u in o]
    assert len(units) == len(set(units)) == 16 * len(modules)
    sizes = [len(o) for o in owners]
    assert max(sizes) - min(sizes) <= 1


def test_slabs_cover_frames_once_in_whole_trains():
    files = [_file(100, chunk=16), _file(36, chunk=8, first_train=25)]
    slabs = make_slabs(0, 3, files, chunk_frames=40)
    for fi, info in enumerate(files):
        mine = [s for s in slabs if s.file_index == fi]
        covered = np.concatenate([np.arange(s.start, s.stop) for s in mine])
        assert np.array_equal(covered, np.arange(*info.frame_range))
        starts = set(info.first.tolist())
        assert all(s.start in starts for s in mine)  # never split a train
        assert all(s.n_frames <= 40 for s in mine)
    # a train longer than chunk_frames still makes one slab
    big = _file(12, n_trains=1)
    big.count[:] = 12
    assert [(s.start, s.stop) for s in make_slabs(0, 0, [big], 5)] == [(0, 12)]


@pytest.mark.parametrize("n_ranks", [1, 2, 3, 4, 7])
def test_reads_assigned_once_to_owners(n_ranks):
    owners = assign_units((0, 1), n_ranks)
    slabs = [Slab(0, m, 0, a, a + 10) for m in (0, 1) for a in range(0, 200, 10)]
    rounds = assign_reads(slabs, owners)
    read = [s for rnd in rounds for s in rnd if s is not None]
    assert sorted(read, key=lambda s: (s.module, s.start)) == slabs
    for rnd in rounds:
        for r, s in enumerate(rnd):
            if s is not None:
                assert any(u.module == s.module for u in owners[r])
    per_rank = [sum(1 for rnd in rounds if rnd[r] is not None) for r in range(n_ranks)]
    assert max(per_rank) <= int(np.ceil(len(slabs) / n_ranks)) + len(slabs) // 16


def test_build_plan_train_axis_and_cells():
    files = {(0, 0): [_file(40), _file(40, first_train=10)],
             (0, 1): [_file(40, first_train=2)]}
    plan = build_plan((900,), (0, 1), files, 2, 16)
    assert plan.n_cells == 4
    assert plan.train_axis[0].tolist() == list(range(1, 21))
    assert plan.trains_used[(0, 0)] == 20 and plan.trains_used[(0, 1)] == 10
    assert "rank 1" in plan.summary()


def test_cell_settings():
    assert cell_setting(3) == 4 and cell_setting(63) == 64 and cell_setting(351) == 352
