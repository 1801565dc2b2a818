"""Compare dark constants with the ground truth of a synthetic run set.

``python -m calib_mpi.synthetic.check RESULTS_DIR TRUTH_H5`` prints, per module, the largest
deviation from the statistics of the frames actually written (should be float32 rounding),
the deviation from the generating parameters in units of the expected statistical error, and
how the bad-pixel map compares with the injected defects.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import h5py
import numpy as np


def compare_module(result: Path, truth: h5py.Group) -> dict[str, float]:
    """Metrics for one module file against its truth group."""
    out: dict[str, float] = {}
    with h5py.File(result, "r") as f:
        n = truth["frames_used"][()][:, :, None, None].astype(np.float64)
        true_bad = truth["bad_pixels"][()]
        good = true_bad == 0
        for key, sample in (("offset", "sample_offset"), ("noise", "sample_noise"),
                            ("gain_level", "sample_gain_level")):
            got = f[key][()].astype(np.float64)
            ref = truth[sample][()]
            out[f"{key}_max_abs_diff_to_sample"] = float(np.nanmax(np.abs(got - ref)))
        # offset vs generating mean: error of a mean of n samples, incl. rounding (1/12 ADU^2)
        sigma = np.sqrt(truth["noise"][()] ** 2 + 1 / 12)
        z = np.abs(f["offset"][()] - truth["offset"][()]) / (sigma / np.sqrt(n))
        out["offset_max_z"] = float(np.nanmax(np.where(good, z, 0)))
        bad = f["bad_pixels"][()]
        missing = (true_bad & ~bad) != 0
        extra = (bad != 0) & good
        out["injected_defects_missed"] = int(missing.sum())
        out["good_pixels_flagged_fraction"] = float(extra.mean())
        out["trains_used"] = f["metadata/trains_used"][()].tolist()
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("results", help="output_dir of calib-mpi")
    ap.add_argument("truth", help="truth.h5 written with the synthetic runs")
    a = ap.parse_args(argv)
    ok = True
    with h5py.File(a.truth, "r") as t:
        for name in sorted(t):
            m = int(name.split("_")[1])
            path = Path(a.results) / "dark" / f"dark_AGIPD{m:02d}_xfel.h5"
            r = compare_module(path, t[name])
            print(f"  module {m:2d}: |offset - sample mean| <= "
                  f"{r['offset_max_abs_diff_to_sample']:.2g} ADU, |noise - sample std| <= "
                  f"{r['noise_max_abs_diff_to_sample']:.2g} ADU; offset vs true mean: max "
                  f"{r['offset_max_z']:.1f} standard errors; injected defects missed: "
                  f"{r['injected_defects_missed']}, good pixel-cells flagged: "
                  f"{100 * r['good_pixels_flagged_fraction']:.4f} %; trains used "
                  f"{r['trains_used']} (truth {t[name]['trains_used'][()].tolist()})")
            ok &= r["injected_defects_missed"] == 0 and r["offset_max_z"] < 6
    print("  result:", "matches the ground truth" if ok else "DOES NOT match the ground truth")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
