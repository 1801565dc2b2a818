"""drspc kernel: the exact fit sums of every pixel, cell and window."""

import numpy as np


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
