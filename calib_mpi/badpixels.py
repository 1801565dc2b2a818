"""European XFEL bad-pixel bit flags (pycalibration's ``BadPixels`` encoding).

Values are uint32 bit masks; 0 means good. The meanings are those of European XFEL's offline
calibration (see ``shared/spec/constants-format.md``, section 5).
"""

from enum import IntFlag

import numpy as np

__all__ = ["BadPixels", "BAD_PIXEL_DTYPE", "bits"]

BAD_PIXEL_DTYPE = np.uint32


class BadPixels(IntFlag):
    """Bad-pixel bits as defined by European XFEL (pycalibration, EXtra, calng)."""

    OFFSET_OUT_OF_THRESHOLD = 1 << 0
    NOISE_OUT_OF_THRESHOLD = 1 << 1
    OFFSET_NOISE_EVAL_ERROR = 1 << 2
    NO_DARK_DATA = 1 << 3
    CI_GAIN_OF_OF_THRESHOLD = 1 << 4  # sic, the published name
    CI_LINEAR_DEVIATION = 1 << 5
    CI_EVAL_ERROR = 1 << 6
    FF_GAIN_EVAL_ERROR = 1 << 7
    FF_GAIN_DEVIATION = 1 << 8
    FF_NO_ENTRIES = 1 << 9
    CI2_EVAL_ERROR = 1 << 10
    VALUE_IS_NAN = 1 << 11
    VALUE_OUT_OF_RANGE = 1 << 12
    GAIN_THRESHOLDING_ERROR = 1 << 13
    DATA_STD_IS_ZERO = 1 << 14
    ASIC_STD_BELOW_NOISE = 1 << 15
    INTERPOLATED = 1 << 16
    NOISY_ADC = 1 << 17
    OVERSCAN = 1 << 18
    NON_SENSITIVE = 1 << 19
    NON_LIN_RESPONSE_REGION = 1 << 20
    WRONG_GAIN_VALUE = 1 << 21
    NON_STANDARD_SIZE = 1 << 22


def bits(*flags: BadPixels) -> np.uint32:
    """The OR of ``flags`` as a numpy uint32 scalar, for ``mask |= bits(...)`` on uint32 arrays."""
    v = 0
    for f in flags:
        v |= int(f)
    return np.uint32(v)
