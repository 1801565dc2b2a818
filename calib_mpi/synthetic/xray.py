"""Synthetic X-ray fluorescence (xray) runs of one ASIC with known ground truth.

Model per (cell, pixel) and train, AGIPD-like numbers in ADU (high gain, Cu K-alpha):

- photons per frame ``n ~ Poisson(rate)``, ``rate`` ~ U(0.3, 0.5);
- ``a = offset + n * spacing + sqrt(noise^2 + n * sigma_fano^2) * z``, ``z ~ N(0, 1)``, rounded
  and clipped to uint16; ``offset`` ~ U(4800, 5200), ``noise`` ~ U(5, 8),
  ``spacing`` ~ U(60, 75), ``sigma_fano`` = 3 ADU (charge statistics and gain spread lumped
  together), so the 1-photon peak has width ``sqrt(noise^2 + sigma_fano^2)``.

Broken pixels (one (cell, pixel) each, distinct, outside empty cells), with the bad-pixel bit
the xray processor must set:

- ``dead``: constant value ``round(offset)`` → ``FF_GAIN_EVAL_ERROR``;
- ``no_photons``: ``rate = 0`` → ``FF_GAIN_EVAL_ERROR``;
- ``noisy``: ``noise`` x 6 (30-48 ADU, peaks merge) → ``FF_GAIN_EVAL_ERROR``;
- ``deviant``: ``spacing`` x 1.8 (well measurable, beyond 5 robust sigmas of U(60, 75))
  → ``FF_GAIN_DEVIATION``.

``empty_cells`` get no valid frame (→ ``FF_NO_ENTRIES``); a fraction of the other frames can be
marked invalid (cell -1) and filled with garbage that would spoil any histogram including it.

Occupancy sets (:func:`occupancy_run`): the mean photon number per frame users run at,
:data:`OCCUPANCIES` 0.1 .. 2.0 (2-photon and more frames as Poisson says), each with
:data:`OCCUPANCY_TRAINS` frames per cell so that both the 0- and the 1-photon peak hold a few
hundred entries, and per-pixel noise U(5, 15) ADU, so the peak separation ``spacing / sigma1``
ranges from ~4 to ~13.
"""

from dataclasses import dataclass, field

import numpy as np

from calib_mpi.badpixels import BAD_PIXEL_DTYPE, BadPixels

__all__ = ["BROKEN_KINDS", "OCCUPANCIES", "OCCUPANCY_TRAINS", "XrayRun", "make_xray_run",
           "occupancy_rate", "occupancy_run"]

#: mean photon numbers per frame covered by the occupancy sets
OCCUPANCIES = (0.1, 0.5, 1.0, 1.5, 2.0)
#: frames per cell of the occupancy sets: 0- and 1-photon peak >= ~200 entries each
OCCUPANCY_TRAINS = {0.1: 3000, 0.5: 800, 1.0: 800, 1.5: 1000, 2.0: 2000}

#: Broken-pixel kinds and the bad-pixel bit expected for them.
BROKEN_KINDS = {
    "dead": BadPixels.FF_GAIN_EVAL_ERROR,
    "no_photons": BadPixels.FF_GAIN_EVAL_ERROR,
    "noisy": BadPixels.FF_GAIN_EVAL_ERROR,
    "deviant": BadPixels.FF_GAIN_DEVIATION,
}


def _no_pixels() -> np.ndarray:
    return np.zeros((0, 3), dtype=np.int64)


@dataclass
class XrayRun:
    """A synthetic run and its truth.

    ``analog``: ``(train, cell, 64, 64)`` uint16; ``valid``: ``(train, cell)`` bool. Truth arrays
    ``offset`` (mean of the noise peak), ``noise`` (its sigma), ``spacing``, ``rate`` (mean
    photons per frame) are ``(cell, 64, 64)`` float64 and hold the values actually used, also
    for broken pixels. ``n_photons``: ``(3, cell, 64, 64)`` int64, valid frames with 0, 1 and
    >= 2 photons. ``broken``: kind → ``(n, 3)`` int64 (cell, row, col). ``expected_bits``:
    ``(cell, 64, 64)`` uint32 bits the processor must set.
    """

    analog: np.ndarray
    valid: np.ndarray
    offset: np.ndarray
    noise: np.ndarray
    spacing: np.ndarray
    rate: np.ndarray
    sigma_fano: float
    n_photons: np.ndarray
    expected_bits: np.ndarray
    broken: dict[str, np.ndarray] = field(default_factory=dict)

    @property
    def sigma1(self) -> np.ndarray:
        """True width of the 1-photon peak, ``(cell, 64, 64)`` ADU."""
        return np.sqrt(self.noise**2 + self.sigma_fano**2)

    @property
    def separation(self) -> np.ndarray:
        """Peak separation ``spacing / sigma1`` in 1-photon widths, ``(cell, 64, 64)``."""
        return self.spacing / self.sigma1

    @property
    def good(self) -> np.ndarray:
        """``(cell, 64, 64)`` bool, pixels expected to give a valid, unflagged result."""
        return self.expected_bits == 0

    def frames(self) -> tuple[np.ndarray, np.ndarray]:
        """The run as a frame stream in train-major order.

        Returns
        -------
        analog : (frame, 64, 64) uint16
        cells : (frame,) int64 memory cell, -1 for invalid frames
        """
        n_trains, n_cells = self.analog.shape[:2]
        cells = np.tile(np.arange(n_cells, dtype=np.int64), n_trains)
        cells[~self.valid.reshape(-1)] = -1
        return self.analog.reshape(n_trains * n_cells, 64, 64), cells


def make_xray_run(
    seed: int,
    n_cells: int,
    n_trains: int,
    *,
    rate: tuple[float, float] = (0.3, 0.5),
    offset: tuple[float, float] = (4800.0, 5200.0),
    noise: tuple[float, float] = (5.0, 8.0),
    spacing: tuple[float, float] = (60.0, 75.0),
    sigma_fano: float = 3.0,
    n_dead: int = 0,
    n_no_photons: int = 0,
    n_noisy: int = 0,
    n_deviant: int = 0,
    empty_cells: tuple[int, ...] = (),
    invalid_fraction: float = 0.0,
) -> XrayRun:
    """Generate a fluorescence run of one ASIC.

    Parameters
    ----------
    seed : random seed (the run is a deterministic function of all arguments).
    n_cells, n_trains : memory cells and trains (frames per cell).
    rate, offset, noise, spacing : uniform ranges of the per-(cell, pixel) truth (photons per
        frame, ADU, ADU, ADU per photon).
    sigma_fano : extra width per photon, ADU.
    n_dead, n_no_photons, n_noisy, n_deviant : number of broken (cell, pixel) of each kind.
    empty_cells : cells without any valid frame.
    invalid_fraction : fraction of the remaining frames marked invalid (garbage content).
    """
    rng = np.random.default_rng(seed)
    shape = (n_cells, 64, 64)
    truth_offset = rng.uniform(*offset, shape)
    truth_noise = rng.uniform(*noise, shape)
    truth_spacing = rng.uniform(*spacing, shape)
    truth_rate = rng.uniform(*rate, shape)

    counts = {"dead": n_dead, "no_photons": n_no_photons, "noisy": n_noisy, "deviant": n_deviant}
    usable = np.flatnonzero(~np.isin(np.arange(n_cells), empty_cells))
    candidates = (usable[:, None] * 4096 + np.arange(4096)).reshape(-1)
    chosen = rng.choice(candidates, size=sum(counts.values()), replace=False)
    broken: dict[str, np.ndarray] = {}
    expected = np.zeros(shape, BAD_PIXEL_DTYPE)
    expected[list(empty_cells)] = BadPixels.FF_NO_ENTRIES
    dead = np.zeros(shape, bool)
    pos = 0
    for kind, n in counts.items():
        flat = np.sort(chosen[pos : pos + n])
        pos += n
        cell, pix = np.divmod(flat, 4096)
        coords = np.stack([cell, pix // 64, pix % 64], axis=1).astype(np.int64)
        broken[kind] = coords
        idx = (coords[:, 0], coords[:, 1], coords[:, 2])
        expected[idx] = BROKEN_KINDS[kind]
        if kind == "dead":
            dead[idx] = True
        elif kind == "no_photons":
            truth_rate[idx] = 0.0
        elif kind == "noisy":
            truth_noise[idx] *= 6.0
        else:
            truth_spacing[idx] *= 1.8

    valid = rng.random((n_trains, n_cells)) >= invalid_fraction
    valid[:, list(empty_cells)] = False
    analog = np.empty((n_trains, n_cells, 64, 64), np.uint16)
    n_photons = np.zeros((3, *shape), np.int64)
    for c in range(n_cells):
        photons = rng.poisson(truth_rate[c], (n_trains, 64, 64))
        width = np.sqrt(truth_noise[c] ** 2 + photons * sigma_fano**2)
        value = (
            truth_offset[c]
            + photons * truth_spacing[c]
            + width * rng.standard_normal((n_trains, 64, 64))
        )
        value = np.where(dead[c], np.rint(truth_offset[c]), np.rint(value))
        analog[:, c] = np.clip(value, 0, 65535).astype(np.uint16)
        garbage = rng.integers(0, 65536, (n_trains, 64, 64), dtype=np.uint16)
        analog[~valid[:, c], c] = garbage[~valid[:, c]]
        ok = valid[:, c, None, None]
        for k in range(3):
            hit = (photons == k) if k < 2 else (photons >= 2)
            n_photons[k, c] = np.count_nonzero(hit & ok, axis=0)
    return XrayRun(
        analog=analog,
        valid=valid,
        offset=truth_offset,
        noise=truth_noise,
        spacing=truth_spacing,
        rate=truth_rate,
        sigma_fano=float(sigma_fano),
        n_photons=n_photons,
        expected_bits=expected,
        broken=broken,
    )


def occupancy_rate(occupancy: float) -> tuple[float, float]:
    """Range of the per-pixel mean photon number of an occupancy: +-5 % around it."""
    return (0.95 * occupancy, 1.05 * occupancy)


def occupancy_run(seed: int, occupancy: float, n_cells: int, n_trains: int | None = None,
                  noise: tuple[float, float] = (5.0, 15.0)) -> XrayRun:
    """A clean run at one occupancy (mean photons per frame, see :data:`OCCUPANCIES`);
    ``n_trains`` defaults to :data:`OCCUPANCY_TRAINS`."""
    if n_trains is None:
        n_trains = OCCUPANCY_TRAINS[occupancy]
    return make_xray_run(seed, n_cells, n_trains, rate=occupancy_rate(occupancy), noise=noise)
