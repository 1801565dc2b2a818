"""Module and ASIC geometry of AGIPD in the two frame orientations.

An AGIPD module has 16 ASICs of 64x64 pixels, numbered 1..16 as in the original toolbox.

- XFEL raw frame ``(slow_scan, fast_scan) = (512, 128)``: ASIC block ``(k, j)`` with
  ``k = ss // 64`` (0..7) and ``j = fs // 64`` (0..1).
- AGIPD (lab) frame ``(row, col) = (128, 512)``: ASIC block ``(rb, cb)`` with ``rb = row // 64``
  and ``cb = col // 64``.

ASIC blocks are always processed in the orientation of the input frame (no transposition on the
hot path); :func:`chip_coordinates` gives the chip's own ``(rho, kappa)`` coordinates of each
pixel of a block, which is what the injection patterns of drspc/drscs are defined in
(``shared/spec/formats.md`` 3.3, 3.4).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

ASIC_SIZE = 64
N_ASICS = 16
XFEL_FRAME = (512, 128)
AGIPD_FRAME = (128, 512)


def wing(module: int) -> int:
    """Detector wing (1 or 2) of XFEL module ``module`` (0..7 -> 1, 8..15 -> 2)."""
    return 1 if module % 16 < 8 else 2


def quadrant_name(module: int) -> str:
    """European XFEL name ``Q{m//4+1}M{m%4+1}`` of module ``module``."""
    return f"Q{module // 4 + 1}M{module % 4 + 1}"


@dataclass(frozen=True)
class AsicBlock:
    """One ASIC's place in a module frame.

    Attributes
    ----------
    asic : ASIC number 1..16.
    rows, cols : slices of the frame's first and second axis.
    """

    asic: int
    rows: slice
    cols: slice

    @property
    def top(self) -> bool:
        """True for the top-row ASICs 9..16 (rotated by 180 degrees on the module)."""
        return self.asic >= 9


def xfel_asic_number(module: int, k: int, j: int) -> int:
    """ASIC number of XFEL raw-frame block ``(k = ss//64, j = fs//64)`` of ``module``."""
    if wing(module) == 1:
        return 9 + k if j == 0 else 8 - k
    return 1 + k if j == 0 else 16 - k


def agipd_asic_number(rb: int, cb: int) -> int:
    """ASIC number of AGIPD-frame block ``(rb = row//64, cb = col//64)``."""
    return 16 - cb if rb == 0 else 1 + cb


def asic_blocks(frame_shape: tuple[int, int], module: int = 0) -> list[AsicBlock]:
    """The 16 ASIC blocks of a module frame, in frame order (C order of the block grid).

    ``frame_shape`` is ``XFEL_FRAME`` (512, 128) or ``AGIPD_FRAME`` (128, 512). The list index is
    the block index used for rank assignment; ``AsicBlock.asic`` is the ASIC number.
    """
    n0, n1 = frame_shape[0] // ASIC_SIZE, frame_shape[1] // ASIC_SIZE
    if n0 * n1 != N_ASICS or frame_shape[0] % ASIC_SIZE or frame_shape[1] % ASIC_SIZE:
        raise ValueError(f"frame shape {frame_shape} is not a 16-ASIC AGIPD module")
    xfel = tuple(frame_shape) == XFEL_FRAME
    blocks = []
    for b0 in range(n0):
        for b1 in range(n1):
            asic = xfel_asic_number(module, b0, b1) if xfel else agipd_asic_number(b0, b1)
            blocks.append(
                AsicBlock(
                    asic,
                    slice(b0 * ASIC_SIZE, (b0 + 1) * ASIC_SIZE),
                    slice(b1 * ASIC_SIZE, (b1 + 1) * ASIC_SIZE),
                )
            )
    return blocks


def xfel_to_agipd_local(module: int, ss: np.ndarray, fs: np.ndarray):
    """ASIC number and AGIPD-local ``(lr, lc)`` of XFEL raw pixels ``(ss, fs)`` of ``module``.

    Formulas of ``shared/spec/formats.md`` 3.3 ("XFEL pixel directly -> ASIC").
    """
    ss = np.asarray(ss)
    fs = np.asarray(fs)
    if wing(module) == 1:
        asic = np.where(fs < 64, 9 + ss // 64, 8 - ss // 64)
        return asic, fs % 64, 63 - ss % 64
    asic = np.where(fs < 64, 1 + ss // 64, 16 - ss // 64)
    return asic, 63 - fs % 64, ss % 64


def local_agipd_coordinates(
    frame_shape: tuple[int, int], module: int, block: AsicBlock
) -> tuple[np.ndarray, np.ndarray]:
    """AGIPD-local ``(lr, lc)`` of each pixel of ``block``, both shaped (64, 64) like the block."""
    r = np.arange(block.rows.start, block.rows.stop)[:, None]
    c = np.arange(block.cols.start, block.cols.stop)[None, :]
    if tuple(frame_shape) == XFEL_FRAME:
        _, lr, lc = xfel_to_agipd_local(module, r, c)
    else:
        lr, lc = r % 64, c % 64
    return np.broadcast_to(lr, (64, 64)).copy(), np.broadcast_to(lc, (64, 64)).copy()


def chip_coordinates(
    frame_shape: tuple[int, int], module: int, block: AsicBlock
) -> tuple[np.ndarray, np.ndarray]:
    """Chip coordinates ``(rho, kappa)`` of each pixel of ``block``, shaped (64, 64).

    ``(rho, kappa) = (lr, lc)`` for ASICs 1..8 and ``(63 - lr, 63 - lc)`` for 9..16
    (``shared/spec/formats.md`` 3.4).
    """
    lr, lc = local_agipd_coordinates(frame_shape, module, block)
    if block.top:
        return 63 - lr, 63 - lc
    return lr, lc


def xfel_to_agipd_frame(module: int, frame: np.ndarray) -> np.ndarray:
    """Convert arrays ``(..., ss, fs) = (..., 512, 128)`` to the AGIPD frame ``(..., 128, 512)``."""
    if wing(module) == 1:
        return np.swapaxes(frame[..., ::-1, :], -1, -2)
    return np.swapaxes(frame[..., :, ::-1], -1, -2)
