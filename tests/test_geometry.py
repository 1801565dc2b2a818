"""Geometry against the spec's worked examples (shared/spec/formats.md 3.2-3.4)."""

import numpy as np
import pytest

from calib_mpi.geometry import (
    AGIPD_FRAME,
    XFEL_FRAME,
    asic_blocks,
    chip_coordinates,
    quadrant_name,
    wing,
    xfel_to_agipd_frame,
    xfel_to_agipd_local,
)

# module, raw (ss, fs), AGIPD (row, col), ASIC, local (lr, lc)  -- formats.md 3.3 table
TABLE = [
    (3, (0, 0), (0, 511), 9, (0, 63)),
    (3, (511, 127), (127, 0), 1, (63, 0)),
    (3, (100, 70), (70, 411), 7, (6, 27)),
    (12, (0, 0), (127, 0), 1, (63, 0)),
    (12, (511, 127), (0, 511), 9, (0, 63)),
    (12, (100, 70), (57, 100), 15, (57, 36)),
]


@pytest.mark.parametrize("module,raw,agipd,asic,local", TABLE)
def test_spec_table(module, raw, agipd, asic, local):
    a, lr, lc = xfel_to_agipd_local(module, np.array(raw[0]), np.array(raw[1]))
    assert (int(a), int(lr), int(lc)) == (asic, *local)
    frame = np.zeros(XFEL_FRAME)
    frame[raw] = 1
    assert tuple(np.argwhere(xfel_to_agipd_frame(module, frame))[0]) == agipd
    block = next(b for b in asic_blocks(XFEL_FRAME, module)
                 if b.rows.start <= raw[0] < b.rows.stop and b.cols.start <= raw[1] < b.cols.stop)
    assert block.asic == asic


def test_agipd_frame_asic_order():
    nums = [[b.asic for b in asic_blocks(AGIPD_FRAME)][i * 8:(i + 1) * 8] for i in range(2)]
    assert nums == [[16, 15, 14, 13, 12, 11, 10, 9], [1, 2, 3, 4, 5, 6, 7, 8]]


@pytest.mark.parametrize("module", [0, 7, 8, 15])
def test_blocks_tile_the_frame_once(module):
    cover = np.zeros(XFEL_FRAME, int)
    for b in asic_blocks(XFEL_FRAME, module):
        cover[b.rows, b.cols] += 1
    assert (cover == 1).all()
    assert sorted(b.asic for b in asic_blocks(XFEL_FRAME, module)) == list(range(1, 17))


def test_wings_and_names():
    assert [wing(m) for m in (0, 7, 8, 15)] == [1, 1, 2, 2]
    assert quadrant_name(0) == "Q1M1" and quadrant_name(13) == "Q4M2"


def test_chip_coordinates_follow_injection_examples():
    """drspc k=1 injects chip rows 1+8i: AGIPD-local rows 6, 14, ... on top ASICs and 1, 9, ...
    on bottom ASICs (formats.md 3.4)."""
    blocks = asic_blocks(AGIPD_FRAME)
    top = next(b for b in blocks if b.asic == 12)
    bottom = next(b for b in blocks if b.asic == 3)
    rho, _ = chip_coordinates(AGIPD_FRAME, 0, top)
    assert sorted(set(np.nonzero(rho % 8 == 1)[0])) == list(range(6, 64, 8))
    rho, _ = chip_coordinates(AGIPD_FRAME, 0, bottom)
    assert sorted(set(np.nonzero(rho % 8 == 1)[0])) == list(range(1, 64, 8))
    # on an XFEL frame the same pixels are found through the orientation conversion
    for module in (3, 12):
        for b in asic_blocks(XFEL_FRAME, module):
            rho, kappa = chip_coordinates(XFEL_FRAME, module, b)
            assert sorted(np.unique(rho)) == list(range(64))
            assert sorted(np.unique(kappa)) == list(range(64))
