"""Hot loops: compiled (numba source in ``_kernels``, loaded by ``_jit``: prebuilt or
JIT), with exact numpy fallbacks when numba is not installed.

The dark kernel adds a slab of frames to per-(cell, pixel) integer sums. Frames of one cell
are summed in sets of up to 8 (in registers, row by row), so the large accumulators are
touched once per set rather than once per frame; every sum is exact (uint64), so the result
does not depend on the order of the frames or on how they were chunked.
"""

from __future__ import annotations

import importlib.util
import threading

import numpy as np

from . import _jit

#: numba is installed (the compiled kernels may still come prebuilt, without importing it)
HAVE_NUMBA = importlib.util.find_spec("numba") is not None


def group_by_cell(cells: np.ndarray, n_cells: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Frames grouped by cell: ``(order, starts, cells_u)``.

    ``order`` lists frame indices sorted by cell (stable), group g is
    ``order[starts[g]:starts[g+1]]`` with cell ``cells_u[g]``. Cells < 0 or >= n_cells are
    left out.
    """
    ok = np.nonzero((cells >= 0) & (cells < n_cells))[0]
    order = ok[np.argsort(cells[ok], kind="stable")]
    cells_u, first = np.unique(cells[order], return_index=True)
    starts = np.append(first, len(order)).astype(np.int64)
    return order.astype(np.int64), starts, cells_u.astype(np.int64)


def _dark_sums_numpy(frames, r0, c0, order, starts, cells_u, sa1, sa2, sd1, sd2):
    block = frames[:, :, r0:r0 + sa1.shape[1], c0:c0 + sa1.shape[2]]
    for g in range(len(cells_u)):
        x = block[order[starts[g]:starts[g + 1]]].astype(np.uint64)
        c = cells_u[g]
        sa1[c] += x[:, 0].sum(axis=0)
        sa2[c] += (x[:, 0] * x[:, 0]).sum(axis=0)
        sd1[c] += x[:, 1].sum(axis=0)
        sd2[c] += (x[:, 1] * x[:, 1]).sum(axis=0)


def dark_sums(frames: np.ndarray, r0: int, c0: int, group: tuple, sums: list[np.ndarray]
              ) -> None:
    """Add analog/digital values and squares of a block of ``frames`` to ``sums`` (in place).

    frames : (frame, 2, H, W) uint16, C-contiguous; the block is rows ``r0:r0+64`` and columns
        ``c0:c0+64`` of each frame (the whole frame when H = W = 64).
    group : :func:`group_by_cell` of the frames' cells.
    sums : [analog sum, analog sum of squares, digital sum, digital sum of squares], each
        (cell, 64, 64) uint64.
    """
    order, starts, cells_u = group
    if not len(order):
        return
    fast = _jit.kernel("dark_sums")
    if fast is not None and frames.flags.c_contiguous and frames.dtype == np.uint16:
        fast(frames, int(r0), int(c0), order, starts, cells_u, *sums)
    else:
        _dark_sums_numpy(frames, r0, c0, order, starts, cells_u, *sums)


def warm_up() -> threading.Thread:
    """Load (prebuilt: ~ms; JIT: import numba and compile or load its cache, ~0.3-1 s) the
    dark kernel in a background thread, so that the first slab does not wait for it; a call
    before the thread ends waits for the same load."""
    def load() -> None:
        frames = np.zeros((1, 2, 64, 64), np.uint16)
        sums = [np.zeros((1, 64, 64), np.uint64) for _ in range(4)]
        dark_sums(frames, 0, 0, group_by_cell(np.zeros(1, np.int64), 1), sums)

    t = threading.Thread(target=load, name="calib-kernel-warm-up", daemon=True)
    t.start()
    return t
