"""Synthetic pulsed-capacitor (drspc) sweeps of one ASIC with known ground truth.

Model per (cell, pixel), train (scan step) ``t`` = 0..T-1, AGIPD-like numbers in ADU:

- high gain while ``t < switch_train``: ``a = offset_high + slope_high·t + noise``,
  ``offset_high`` ~ 5000, ``slope_high`` ~ 20 ADU/step; digital ~ ``gain_level_high`` ~ 5000;
- medium gain from ``switch_train`` on: ``a = offset_medium + slope_medium·t + noise`` with
  ``slope_medium = slope_high / r``, r ~ U(30, 40), ``offset_medium`` ~ 5800;
  digital ~ ``gain_level_medium`` ~ 6500;
- ``switch_train`` ~ U(180, 340), between the default fit windows [42, 122) and [402, 552);
- Gaussian noise (default σ = 10 ADU) on analog and digital, rounded, clipped to uint16.

Broken pixels (all cells of a pixel): ``dead`` (constant analog and digital), ``no_switch`` (stays
in high gain over the whole sweep), ``noisy`` (analog noise σ = 15× the nominal).
"""

from dataclasses import dataclass, field

import numpy as np

from ..badpixels import BadPixels, bits

__all__ = ["DrspcSweep", "make_drspc_sweep"]


@dataclass
class DrspcSweep:
    """A synthetic sweep and its truth.

    ``analog``, ``digital``: ``(train, cell, 64, 64)`` uint16. Truth arrays are
    ``(cell, 64, 64)`` float64 (``switch_train`` int64) and describe the nominal model, also for
    broken pixels. ``dead``, ``no_switch``, ``noisy``: ``(n, 2)`` int arrays of (row, col).
    """

    analog: np.ndarray
    digital: np.ndarray
    slope_high: np.ndarray
    offset_high: np.ndarray
    slope_medium: np.ndarray
    offset_medium: np.ndarray
    gain_level_high: np.ndarray
    gain_level_medium: np.ndarray
    switch_train: np.ndarray
    noise: float
    dead: np.ndarray = field(default_factory=lambda: np.zeros((0, 2), dtype=np.int64))
    no_switch: np.ndarray = field(default_factory=lambda: np.zeros((0, 2), dtype=np.int64))
    noisy: np.ndarray = field(default_factory=lambda: np.zeros((0, 2), dtype=np.int64))

    @property
    def broken(self) -> np.ndarray:
        """All broken pixels, ``(n, 2)`` (row, col)."""
        return np.concatenate([self.dead, self.no_switch, self.noisy])

    def frames(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """The sweep as a frame stream in train-major order.

        Returns
        -------
        analog, digital : (frame, 64, 64) uint16
        cells, trains : (frame,) int64 memory cell and train position of each frame
        """
        n_trains, n_cells = self.analog.shape[:2]
        shape = (n_trains * n_cells, *self.analog.shape[2:])
        cells = np.tile(np.arange(n_cells, dtype=np.int64), n_trains)
        trains = np.repeat(np.arange(n_trains, dtype=np.int64), n_cells)
        return self.analog.reshape(shape), self.digital.reshape(shape), cells, trains


def make_drspc_sweep(
    seed: int,
    n_cells: int,
    n_trains: int = 560,
    *,
    noise: float = 10.0,
    n_dead: int = 0,
    n_no_switch: int = 0,
    n_noisy: int = 0,
    block_shape: tuple[int, int] = (64, 64),
) -> DrspcSweep:
    """Generate a pulsed-capacitor sweep of one ASIC.

    Parameters
    ----------
    seed : int
        Seed of ``numpy.random.default_rng``; equal seeds give equal sweeps.
    n_cells, n_trains : int
        Memory cells and scan steps (trains); the default windows need ``n_trains >= 552``.
    noise : float
        Gaussian noise σ of analog and digital values, ADU.
    n_dead, n_no_switch, n_noisy : int
        Number of broken pixels of each kind (distinct pixels, chosen at random).
    block_shape : (int, int)
        Pixel shape of the ASIC.

    Returns
    -------
    DrspcSweep
    """
    rng = np.random.default_rng(seed)
    shape = (n_cells, *block_shape)
    slope_high = rng.normal(20.0, 2.0, shape)
    offset_high = rng.normal(5000.0, 300.0, shape)
    slope_medium = slope_high / rng.uniform(30.0, 40.0, shape)
    offset_medium = rng.normal(5800.0, 300.0, shape)
    gl_high = rng.normal(5000.0, 100.0, shape)
    gl_medium = rng.normal(6500.0, 100.0, shape)
    switch_train = rng.integers(180, 341, shape)

    t = np.arange(n_trains, dtype=np.float64)[:, None, None, None]
    high = t < switch_train
    noisy_sigma = np.full(block_shape, noise)

    n_broken = n_dead + n_no_switch + n_noisy
    flat = rng.choice(block_shape[0] * block_shape[1], size=n_broken, replace=False)
    coords = np.stack(np.unravel_index(flat, block_shape), axis=1).astype(np.int64)
    dead, no_switch, noisy = np.split(coords, [n_dead, n_dead + n_no_switch])
    high[:, :, no_switch[:, 0], no_switch[:, 1]] = True
    noisy_sigma[noisy[:, 0], noisy[:, 1]] = 15.0 * noise

    analog = np.where(high, offset_high + slope_high * t, offset_medium + slope_medium * t)
    analog += rng.normal(0.0, 1.0, analog.shape) * noisy_sigma
    digital = np.where(high, gl_high, gl_medium) + rng.normal(0.0, noise, analog.shape)
    analog[:, :, dead[:, 0], dead[:, 1]] = 4000.0
    digital[:, :, dead[:, 0], dead[:, 1]] = 5000.0

    return DrspcSweep(
        analog=_to_uint16(analog),
        digital=_to_uint16(digital),
        slope_high=slope_high,
        offset_high=offset_high,
        slope_medium=slope_medium,
        offset_medium=offset_medium,
        gain_level_high=gl_high,
        gain_level_medium=gl_medium,
        switch_train=switch_train,
        noise=float(noise),
        dead=dead,
        no_switch=no_switch,
        noisy=noisy,
    )


def _to_uint16(values: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(values), 0, np.iinfo(np.uint16).max).astype(np.uint16)


def broken_truth(sw: DrspcSweep) -> tuple[np.ndarray, list[tuple[int, int, int]]]:
    """The bad-pixel bits the broken pixels of a sweep must get, (2, cell, 64, 64) uint32
    (high, medium gain), and the broken pixels as (kind, row, col) in the block (kind 0 dead,
    1 no_switch, 2 noisy)."""
    req = np.zeros((2,) + sw.slope_high.shape, np.uint32)
    broken = []
    for kind, coords in enumerate((sw.dead, sw.no_switch, sw.noisy)):
        r, c = coords[:, 0], coords[:, 1]
        broken += [(kind, int(a), int(b)) for a, b in zip(r, c, strict=True)]
        if kind == 0:
            req[:, :, r, c] |= bits(BadPixels.CI_GAIN_OF_OF_THRESHOLD,
                                    BadPixels.GAIN_THRESHOLDING_ERROR)
        elif kind == 1:
            req[1][:, r, c] |= bits(BadPixels.CI_GAIN_OF_OF_THRESHOLD)
            req[:, :, r, c] |= bits(BadPixels.GAIN_THRESHOLDING_ERROR)
        else:
            req[:, :, r, c] |= bits(BadPixels.CI_LINEAR_DEVIATION)
    return req, broken
