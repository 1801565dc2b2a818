"""``find_shoulder``: the 1-photon peak on the noise peak's flank, and no peak where there is
none. Histograms drawn from known Gaussians (unit bins, Poisson counts per bin), box sums as in
``XrayAccumulator._evaluate`` (11 bins).

- a 1-photon peak of 300 entries 4.3 widths above a noise peak of 3000 (a mean photon number of
  ~0.1): ``find_peaks`` misses it in a large share of the rows (a shoulder, not a significant
  maximum), ``find_shoulder`` finds it in every row, within one width of the truth;
- pure Gaussian noise (no photons, widths 5-30 bins) and merged peaks (1-photon peak 2.2 widths
  above the noise peak, which a Gaussian fit of the noise leaves as an upper tail): no shoulder
  in any row (2000 rows each).
"""

import numpy as np
from scipy.special import ndtr

from calib_mpi.process.xray_peaks import box_sums, cumulative_counts, find_peaks
from calib_mpi.process.xray_shoulder import find_shoulder

N_BINS = 512
SMOOTH_HALF = 5


def draw(rng, n_rows, peaks):
    """Poisson histograms ``(n_rows, N_BINS)`` of a sum of Gaussians ``(entries, mean, sigma)``
    (each may be an array per row)."""
    edges = np.arange(N_BINS + 1) - 0.5
    expected = np.zeros((n_rows, N_BINS))
    for n, mu, sigma in peaks:
        n, mu, sigma = (np.broadcast_to(np.asarray(v, float), (n_rows,))[:, None]
                        for v in (n, mu, sigma))
        expected += n * np.diff(ndtr((edges[None, :] - mu) / sigma), axis=1)
    return rng.poisson(expected)


def test_shoulder_found_where_maxima_miss_it():
    rng = np.random.default_rng(5)
    n_rows, sigma = 400, 12.0
    mu1 = 100.0 + 4.3 * np.hypot(sigma, 3.0)
    counts = draw(rng, n_rows, [(3000, 100.0, sigma), (300, mu1, np.hypot(sigma, 3.0))])
    cum = cumulative_counts(counts)
    peaks = find_peaks(box_sums(cum, SMOOTH_HALF), SMOOTH_HALF, 10.0, 3.5, 30.0)
    assert np.all(np.abs(peaks[:, 0] - 100) <= 3)
    missed = peaks[:, 1] < 0
    assert missed.mean() > 0.1, missed.mean()
    p1 = find_shoulder(cum, peaks[:, 0], 10.0)
    assert np.all(np.abs(p1 - mu1) <= sigma), np.abs(p1 - mu1).max()


def test_no_shoulder_on_noise_or_merged_peaks():
    rng = np.random.default_rng(6)
    n_rows = 2000
    sigma = rng.uniform(5.0, 30.0, n_rows)
    cases = {
        "noise": [(3000, 150.0, sigma)],
        "merged": [(3000, 150.0, sigma), (600, 150.0 + 2.2 * sigma, sigma)],
    }
    for name, peaks in cases.items():
        cum = cumulative_counts(draw(rng, n_rows, peaks))
        p0 = np.argmax(box_sums(cum, SMOOTH_HALF), axis=1)
        found = find_shoulder(cum, p0, 10.0) >= 0
        assert not found.any(), (name, found.sum())
