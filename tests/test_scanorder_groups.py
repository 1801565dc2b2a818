"""Which pixel group a drspc/drscs run injects, from the median change per group (issue 16):
clear only when one group changes by more than ``CLEAR`` times any other."""

from __future__ import annotations

import numpy as np

from calib_mpi.scanorder import CLEAR, injected_group


def test_one_group_standing_out_is_the_runs():
    change = np.array([3.0, 2.0, 900.0, 1.0, 0.0, 2.0, 1.0, 4.0])
    assert injected_group(change) == 2


def test_no_group_or_two_groups_changing_is_unclear():
    assert injected_group(np.zeros(8)) is None  # a run that injects nothing (dark-like)
    assert injected_group(np.full(4, 2.0)) is None
    two = np.array([0.0, 600.0, 1.0, 600.0 / CLEAR])  # second group within CLEAR
    assert injected_group(two) is None
    assert injected_group(two * np.array([1, 1, 1, 0.9])) == 1
