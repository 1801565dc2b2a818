"""The pieces of the gather, alone (no MPI): what a rank sends and receives per round, how it
packs ASIC blocks, how it counts frames the reader left out."""

from __future__ import annotations

import numpy as np

from calib_mpi import gather as G
from calib_mpi.geometry import asic_blocks
from calib_mpi.plan import Unit
from calib_mpi.readers.xfel import CELL_RANGE

E = G.BLOCK_ELEMS


def test_send_and_receive_counts():
    """Rank 1 of 4 read 5 frames of module 0: rank 0 owns 2 of its ASICs (sent), rank 2 one
    (in place on the node: nothing sent), rank 3 none; rank 1 keeps its own."""
    units = [[Unit(0, 0), Unit(0, 1)], [Unit(0, 2)], [Unit(0, 3)], []]
    sc = G.send_counts(5, units, rank=1, in_place=[False, True, True, False])
    assert sc.tolist() == [10 * E, 0, 0, 0]
    assert G.displacements(np.array([3, 0, 4, 2])).tolist() == [0, 3, 3, 7]
    # receiving on rank 1: rank 0 sends 4 frames of a module with 2 of our units, rank 2's
    # frames are read in place, rank 3 has nothing for us
    received = [(np.zeros(4), np.zeros(4), None), None, (np.zeros(3), np.zeros(3), 128), None]
    assert G.recv_counts(received, [2, 1, 1, 0], rank=1).tolist() == [8 * E, 0, 0, 0]


def test_pack_blocks_places_each_destination_s_asics():
    rng = np.random.default_rng(0)
    frames = rng.integers(0, 65535, (3, 2, 512, 128), dtype=np.uint16)
    blocks = asic_blocks((512, 128))
    dest = [[Unit(0, 5), Unit(0, 9)], [], [Unit(0, 15)]]
    sc = G.send_counts(3, dest, rank=1, in_place=[False, False, False])
    sd = G.displacements(sc)
    buf = np.zeros(int(sc.sum()), np.uint16)
    G.pack_blocks(buf, frames, dest, blocks, sc, sd)
    parts = buf.reshape(3, 3, 2, 64, 64)  # (unit in send order, frame, 2, 64, 64)
    for i, b in enumerate((5, 9, 15)):
        blk = blocks[b]
        assert np.array_equal(parts[i], frames[:, :, blk.rows, blk.cols])


def test_count_rejected():
    rej: dict = {}
    G.count_rejected(rej, 3, 4)
    G.count_rejected(rej, 3, 0)
    G.count_rejected(rej, 3, 2)
    assert rej == {(3, CELL_RANGE): 6}
    G.count_rejected(rej, 1, {"negative values": 5})
    assert rej[(1, "negative values")] == 5
