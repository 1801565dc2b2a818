"""Numba source of the compiled kernels (imported only to compile them: by
:mod:`calib_mpi.process.aot` ahead of time, or by :mod:`calib_mpi.process._jit` just in time when
no prebuilt module matches this file).

An exported kernel is a plain Python function listed in :data:`EXPORTS` with its one signature
(the AOT module is compiled for exactly these types; the JIT path compiles the same function
for the types it is called with). Helpers it calls are ``@njit`` functions here. Adding a
kernel: write it here, add it to :data:`EXPORTS`, call it through
``_jit.kernel(name)`` with a numpy fallback; ``python -m calib_mpi.process.aot`` (run by
``scripts/setup-env.sh``) then builds it in. Any change to this file changes its hash, so a
prebuilt module of an older version is ignored (the JIT path is used) until rebuilt.
"""

import numpy as np
from numba import njit

# Frames of one cell are added in sets of 8, 4, 2 and 1: per pixel row, the set's rows
# are summed in registers and the accumulator row is read and written once per set
# rather than once per frame (the accumulators, (cell, 64, 64) x 4 x 8 bytes, are far
# larger than the caches). Measured here on one core: 1.5-1.9x the speed of summing
# frame by frame into a block-sized buffer.

@njit(nogil=True, inline="always")
def _add8(frames, ch, r, c0, cols, order, k, s1, s2):
    f0 = frames[order[k], ch, r, c0:c0 + cols]
    f1 = frames[order[k + 1], ch, r, c0:c0 + cols]
    f2 = frames[order[k + 2], ch, r, c0:c0 + cols]
    f3 = frames[order[k + 3], ch, r, c0:c0 + cols]
    f4 = frames[order[k + 4], ch, r, c0:c0 + cols]
    f5 = frames[order[k + 5], ch, r, c0:c0 + cols]
    f6 = frames[order[k + 6], ch, r, c0:c0 + cols]
    f7 = frames[order[k + 7], ch, r, c0:c0 + cols]
    for x in range(cols):
        a, b = np.uint64(f0[x]), np.uint64(f1[x])
        c, d = np.uint64(f2[x]), np.uint64(f3[x])
        e, f = np.uint64(f4[x]), np.uint64(f5[x])
        g, h = np.uint64(f6[x]), np.uint64(f7[x])
        s1[x] += ((a + b) + (c + d)) + ((e + f) + (g + h))
        s2[x] += ((a * a + b * b) + (c * c + d * d)) + ((e * e + f * f) + (g * g + h * h))

@njit(nogil=True, inline="always")
def _add4(frames, ch, r, c0, cols, order, k, s1, s2):
    f0 = frames[order[k], ch, r, c0:c0 + cols]
    f1 = frames[order[k + 1], ch, r, c0:c0 + cols]
    f2 = frames[order[k + 2], ch, r, c0:c0 + cols]
    f3 = frames[order[k + 3], ch, r, c0:c0 + cols]
    for x in range(cols):
        a, b = np.uint64(f0[x]), np.uint64(f1[x])
        c, d = np.uint64(f2[x]), np.uint64(f3[x])
        s1[x] += (a + b) + (c + d)
        s2[x] += (a * a + b * b) + (c * c + d * d)

@njit(nogil=True, inline="always")
def _add2(frames, ch, r, c0, cols, order, k, s1, s2):
    f0 = frames[order[k], ch, r, c0:c0 + cols]
    f1 = frames[order[k + 1], ch, r, c0:c0 + cols]
    for x in range(cols):
        a, b = np.uint64(f0[x]), np.uint64(f1[x])
        s1[x] += a + b
        s2[x] += a * a + b * b

@njit(nogil=True, inline="always")
def _add1(frames, ch, r, c0, cols, order, k, s1, s2):
    f0 = frames[order[k], ch, r, c0:c0 + cols]
    for x in range(cols):
        a = np.uint64(f0[x])
        s1[x] += a
        s2[x] += a * a

def dark_sums(frames, r0, c0, order, starts, cells_u, sa1, sa2, sd1, sd2):
    """Exact sums and sums of squares of frames (frame, 2, H, W), block rows r0:r0+64 and
    columns c0:c0+64, grouped by cell (see ``kernels.dark_sums``), into (cell, 64, 64)."""
    rows, cols = sa1.shape[1], sa1.shape[2]
    for g in range(cells_u.shape[0]):
        c = cells_u[g]
        k, k1 = starts[g], starts[g + 1]
        while k + 8 <= k1:
            for y in range(rows):
                _add8(frames, 0, r0 + y, c0, cols, order, k, sa1[c, y], sa2[c, y])
                _add8(frames, 1, r0 + y, c0, cols, order, k, sd1[c, y], sd2[c, y])
            k += 8
        if k + 4 <= k1:
            for y in range(rows):
                _add4(frames, 0, r0 + y, c0, cols, order, k, sa1[c, y], sa2[c, y])
                _add4(frames, 1, r0 + y, c0, cols, order, k, sd1[c, y], sd2[c, y])
            k += 4
        if k + 2 <= k1:
            for y in range(rows):
                _add2(frames, 0, r0 + y, c0, cols, order, k, sa1[c, y], sa2[c, y])
                _add2(frames, 1, r0 + y, c0, cols, order, k, sd1[c, y], sd2[c, y])
            k += 2
        if k < k1:
            for y in range(rows):
                _add1(frames, 0, r0 + y, c0, cols, order, k, sa1[c, y], sa2[c, y])
                _add1(frames, 1, r0 + y, c0, cols, order, k, sd1[c, y], sd2[c, y])


def xray_hist(analog, order, starts, cells_u, origin, counts, underflow, overflow):
    """Unit-bin histograms of analog values (frame, 64, 64) (any strides), frames grouped by
    cell (``order``, ``starts``, ``cells_u`` as for ``dark_sums``): value ``v`` of pixel p of
    a frame of cell c goes to ``counts[c * 4096 + p, v - origin[c, p]]``, below bin 0 to
    ``underflow``, beyond the last bin to ``overflow`` (see ``XrayAccumulator.update``).
    Pixel row by pixel row, all frames of the cell: the row's 64 histograms (64 x n_bins
    counts) stay in the cache while they are filled."""
    n_bins = counts.shape[1]
    rows, cols = analog.shape[1], analog.shape[2]
    for g in range(cells_u.shape[0]):
        c = cells_u[g]
        for y in range(rows):
            base = (c * rows + y) * cols
            org = origin[c, y]
            for k in range(starts[g], starts[g + 1]):
                a = analog[order[k], y]
                for x in range(cols):
                    v = np.int64(a[x]) - np.int64(org[x])
                    if v < 0:
                        underflow[base + x] += 1
                    elif v >= n_bins:
                        overflow[base + x] += 1
                    else:
                        counts[base + x, v] += 1


def drspc_sums(analog, digital, cells, steps, windows, rows, sums):
    """Exact drspc fit sums (see ``process.drspc``): for every frame f of a valid cell c
    (``cells[f] >= 0``) whose step t lies in window g (``windows[g, 0] <= t < windows[g, 1]``),
    add a, t*a, a*a, d, d*d of the pixels of ``rows`` to ``sums[g, c, 0..4, row * W + col]``.

    analog, digital: (frame, H, W) uint16, any strides; cells, steps: (frame,) int64;
    windows: (window, 2) int64; rows: rows of the frame to add; sums: (window, cell, 5, H * W)
    int64, updated in place.
    """
    n_cols = analog.shape[2]
    for f in range(analog.shape[0]):
        c = cells[f]
        if c < 0:
            continue
        t = steps[f]
        for g in range(windows.shape[0]):
            if t < windows[g, 0] or t >= windows[g, 1]:
                continue
            st = sums[g, c]
            for r in rows:
                p0 = r * n_cols
                for x in range(n_cols):
                    a = np.int64(analog[f, r, x])
                    d = np.int64(digital[f, r, x])
                    st[0, p0 + x] += a
                    st[1, p0 + x] += t * a
                    st[2, p0 + x] += a * a
                    st[3, p0 + x] += d
                    st[4, p0 + x] += d * d


_U64_3D = "uint64[:, :, ::1]"
# analog of any strides (an ASIC's block of the slab, a view), counts uint32 or uint16
_XRAY_SIG = ("void(uint16[:, :, :], int64[::1], int64[::1], int64[::1], int32[:, :, ::1], "
             "{}[:, ::1], int64[::1], int64[::1])")

#: kernel name -> (function, signature of the ahead-of-time build)
EXPORTS = {
    "dark_sums": (dark_sums, "void(uint16[:, :, :, ::1], int64, int64, int64[::1], int64[::1], "
                             f"int64[::1], {_U64_3D}, {_U64_3D}, {_U64_3D}, {_U64_3D})"),
    "xray_hist": (xray_hist, _XRAY_SIG.format("uint32")),
    "xray_hist_u16": (xray_hist, _XRAY_SIG.format("uint16")),
    "drspc_sums": (drspc_sums, "void(uint16[:, :, :], uint16[:, :, :], int64[::1], int64[::1], "
                               "int64[:, ::1], int64[::1], int64[:, :, :, ::1])"),
}
