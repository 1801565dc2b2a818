"""Synthetic current-source (drscs) scans with known truth.

Signal model per series (one (cell, pixel)) and current ``c`` at scan step ``t`` with
``x = scaled_x(t)`` (``t`` up to 200, then ×10 per step):

- high gain ``a = o0 + s0·x`` until the first step ``b1`` where it reaches ``A01`` (~12500);
- medium gain ``a = o1 + s1·x`` (``s1 = s0/r01``, ``r01`` ~ 30) from ``b1`` until it reaches
  ``A12`` (~12000) at ``b2``; the analog drops by ``D1`` (4000-5000 ADU) at the switch;
- low gain ``a = min(o2 + s2·x, plateau)`` (``s2 = s1/r12``, ``r12`` ~ 4.5) from ``b2``, drop
  ``D2`` (2500-3500 ADU); plateau 12500-13500 (flat-run saturation) for 3/4 of the series,
  14300-15000 (saturation by the 14000 ADU threshold) for the rest;
- ``s0 = k·c`` (``k`` ~ 9 ADU per x unit and current unit): a higher current switches earlier;
  the offsets do not depend on the current (the switches happen at fixed charges);
- digital levels ``~5000``, ``+1300..1700``, ``+1300..1700`` ADU; Gaussian noise (analog
  ``analog_noise``, digital ``digital_noise``), rounded to integers;
- a fraction of switches has a transition sample (intermediate analog and digital) at ``b``.

With the default currents (60, 80, 100) every normal series succeeds with the default
``DrscsParams``: high gain lasts 9-17 steps, low gain rises by >= 34 ADU per step.
Series 1-7 (when ``inject_failures``) carry one failure each (``KIND_*``,
``EXPECTED_ERROR``). Lost samples have ``valid == False`` and analog = digital = 0.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from calib_mpi.process.drscs import scaled_x

__all__ = [
    "DrscsScans",
    "DrscsTruth",
    "EXPECTED_ERROR",
    "KIND_ALL_LOST",
    "KIND_EXTRA_STAGE",
    "KIND_FAILS_ONE_CURRENT",
    "KIND_NAMES",
    "KIND_NOISY",
    "KIND_NORMAL",
    "KIND_NO_ANALOG_DROP",
    "KIND_NO_SWITCH",
    "KIND_SATURATED",
    "make_drscs_scans",
]

KIND_NORMAL = 0
KIND_NO_SWITCH = 1
KIND_SATURATED = 2
KIND_NOISY = 3
KIND_FAILS_ONE_CURRENT = 4
KIND_NO_ANALOG_DROP = 5
KIND_EXTRA_STAGE = 6
KIND_ALL_LOST = 7

KIND_NAMES: dict[int, str] = {
    KIND_NORMAL: "normal",
    KIND_NO_SWITCH: "never switches (stays in high gain)",
    KIND_SATURATED: "saturates at the switch to low gain (empty low stage)",
    KIND_NOISY: "very noisy analog (sigma 1000 ADU)",
    KIND_FAILS_ONE_CURRENT: "never reaches low gain in the current `fail_current` only",
    KIND_NO_ANALOG_DROP: "digital switches to low gain without an analog drop",
    KIND_EXTRA_STAGE: "digital jumps a third time in low gain",
    KIND_ALL_LOST: "every sample lost",
}

#: error code expected from ``process_scan`` per kind (KIND_FAILS_ONE_CURRENT: in that current)
EXPECTED_ERROR: dict[int, int] = {
    KIND_NORMAL: 0,
    KIND_NO_SWITCH: 3,
    KIND_SATURATED: 7,
    KIND_NOISY: 8,
    KIND_FAILS_ONE_CURRENT: 3,
    KIND_NO_ANALOG_DROP: 9,
    KIND_EXTRA_STAGE: 2,
    KIND_ALL_LOST: 10,
}

ADC_MAX = 16383


@dataclass(frozen=True)
class DrscsTruth:
    """Ground truth; ``C`` currents, ``P`` series (flattened ``shape``), T steps.

    Attributes
    ----------
    currents : (C,) current values (arbitrary units; slopes are proportional).
    slope : (C, 3, P) ADU per x unit, per gain (high, medium, low).
    offset : (3, P) ADU, line value at x = 0 (independent of the current).
    gain_level : (3, P) mean digital value per gain (ADU).
    switch_step : (C, 2, P) first step of medium and of low gain (T: never).
    saturation_start : (C, P) first saturated step (T: none within the scan).
    transition : (C, 2, P) bool, the first step of the new gain is a transition sample.
    analog_sigma : (P,) analog noise (ADU) before rounding.
    kind : (P,) int, ``KIND_*``.
    expected_error : (C, P) int16, error code ``process_scan`` must return.
    """

    currents: np.ndarray
    slope: np.ndarray
    offset: np.ndarray
    gain_level: np.ndarray
    switch_step: np.ndarray
    saturation_start: np.ndarray
    transition: np.ndarray
    analog_sigma: np.ndarray
    kind: np.ndarray
    expected_error: np.ndarray


@dataclass(frozen=True)
class DrscsScans:
    """Scans per current: ``analog``, ``digital`` (C, T, P) uint16, ``valid`` (C, T, P) bool."""

    analog: np.ndarray
    digital: np.ndarray
    valid: np.ndarray
    truth: DrscsTruth
    shape: tuple[int, ...]


def _first_at_least(values: np.ndarray, limit: np.ndarray, from_step: np.ndarray) -> np.ndarray:
    """First step ``t >= from_step`` with ``values[t] >= limit`` per series; T when none."""
    t = np.arange(values.shape[0])[:, None]
    hit = (values >= limit) & (t >= from_step)
    return np.where(hit.any(axis=0), np.argmax(hit, axis=0), values.shape[0])


def make_drscs_scans(
    seed: int = 0,
    n_steps: int = 300,
    shape: tuple[int, ...] = (256,),
    currents: tuple[float, ...] = (60.0, 80.0, 100.0),
    analog_noise: float = 5.0,
    digital_noise: float = 10.0,
    transition_fraction: float = 0.3,
    loss_fraction: float = 0.0,
    inject_failures: bool = True,
    fail_current: int = 1,
    saturation_threshold: float = 14000.0,
    extra_failures: dict[int, int] | None = None,
) -> DrscsScans:
    """Generate current-source scans for ``prod(shape)`` series and each current.

    Parameters
    ----------
    seed : random seed (results are a pure function of all arguments).
    n_steps : scan steps T (> 200 to exercise the ×10 step length).
    shape : series shape, e.g. ``(n,)`` or ``(cells, 64, 64)``; flattened to P in the output.
    currents : injection currents; slopes scale linearly with them.
    analog_noise, digital_noise : Gaussian noise sigma (ADU).
    transition_fraction : probability of a transition sample at each switch.
    loss_fraction : probability of a lost sample (valid False, values 0), normal series only.
    inject_failures : put the ``KIND_*`` failures at series 1..7 (needs P >= 8).
    fail_current : index of the current in which series ``KIND_FAILS_ONE_CURRENT`` fails.
    saturation_threshold : ADU, defines the true saturation start above it.
    extra_failures : series -> current index: that (normal) series never reaches low gain in
        that current only, like ``KIND_FAILS_ONE_CURRENT`` (expected error 3 there); for
        building merge cases where each current fails somewhere else.
    """
    rng = np.random.default_rng(seed)
    n_series = int(np.prod(shape))
    n_cur = len(currents)
    t = np.arange(n_steps)
    x = scaled_x(t)[:, None]

    def uni(lo: float, hi: float) -> np.ndarray:
        return rng.uniform(lo, hi, n_series)

    o0, a01, r01, d1 = uni(3800, 4200), uni(12300, 12700), uni(28, 32), uni(4000, 5000)
    a12, r12, d2 = uni(11800, 12200), uni(4.2, 4.8), uni(2500, 3500)
    plateau = np.where(rng.random(n_series) < 0.75, uni(12500, 13500), uni(14300, 15000))
    k_slope = uni(8.5, 9.5)
    level0 = rng.normal(5000, 150, n_series)
    levels = np.stack([level0, level0 + uni(1300, 1700)])
    levels = np.concatenate([levels, levels[1:] + uni(1300, 1700)[None]])
    sigma = np.full(n_series, analog_noise)
    kind = np.zeros(n_series, dtype=np.int8)
    if any(j < 8 * inject_failures or j >= n_series or not 0 <= c < n_cur
           for j, c in (extra_failures or {}).items()):
        raise ValueError(f"extra_failures {extra_failures}: series must be normal ones (>= 8 "
                         "with inject_failures) and currents indices")
    if inject_failures:
        if n_series < 8:
            raise ValueError("inject_failures needs at least 8 series")
        kind[1:8] = np.arange(1, 8)
        d2[KIND_NO_ANALOG_DROP] = -300.0
        sigma[KIND_NOISY] = 1000.0
        plateau[KIND_NO_SWITCH] = 14500.0
    o1 = a01 - d1 - (a01 - o0) / r01
    o2 = a12 - d2 - (a12 - o1) / r12
    offset = np.stack([o0, o1, o2])

    expected_of_kind = np.array([EXPECTED_ERROR[k] for k in sorted(EXPECTED_ERROR)], np.int16)
    shape3 = (n_cur, n_steps, n_series)
    analog = np.empty(shape3, dtype=np.uint16)
    digital = np.empty(shape3, dtype=np.uint16)
    valid = np.ones(shape3, dtype=bool)
    slopes = np.empty((n_cur, 3, n_series))
    switch_step = np.empty((n_cur, 2, n_series), dtype=np.int64)
    sat_start = np.empty((n_cur, n_series), dtype=np.int64)
    transition = np.empty((n_cur, 2, n_series), dtype=bool)
    expected = np.zeros((n_cur, n_series), dtype=np.int16)
    for c, current in enumerate(currents):
        s0 = k_slope * current
        s = np.stack([s0, s0 / r01, s0 / r01 / r12])
        slopes[c] = s
        lines = offset[:, None, :] + s[:, None, :] * x[None]
        b1 = _first_at_least(lines[0], a01, np.zeros(n_series))
        b2 = _first_at_least(lines[1], a12, b1 + 1)
        top = plateau.copy()
        if inject_failures:
            b1[KIND_NO_SWITCH] = n_steps
            b2[KIND_NO_SWITCH] = n_steps
            top[KIND_SATURATED] = lines[2, min(b2[KIND_SATURATED], n_steps - 1), KIND_SATURATED]
            if 0 <= fail_current < n_cur and c == fail_current:
                b2[KIND_FAILS_ONE_CURRENT] = n_steps
        broken = [j for j, cc in (extra_failures or {}).items() if cc == c]
        b2[broken] = n_steps
        gain = (t[:, None] >= b1).astype(np.int64) + (t[:, None] >= b2)
        clean = np.take_along_axis(lines, gain[None], axis=0)[0]
        ceiling = np.where(gain == 2, top, 14500.0)
        clean = np.minimum(clean, ceiling)
        dig = np.take_along_axis(levels[:, None, :], gain[None], axis=0)[0]
        sat_limit = np.minimum(top, saturation_threshold)
        sat_start[c] = np.where(
            b2 < n_steps, _first_at_least(np.where(gain == 2, clean, 0.0), sat_limit, b2), n_steps
        )
        if inject_failures:
            jump = np.minimum(b2[KIND_EXTRA_STAGE] + 15, n_steps - 1)
            dig[jump:, KIND_EXTRA_STAGE] += 1500.0
        for j, b in enumerate((b1, b2)):
            has_tr = (rng.random(n_series) < transition_fraction) & (b < n_steps) & (kind == 0)
            transition[c, j] = has_tr
            cols = np.nonzero(has_tr)[0]
            frac = rng.uniform(0.2, 0.8, cols.size)
            row = b[cols]
            old = np.minimum(lines[j, row, cols], 14500.0)
            clean[row, cols] = (1 - frac) * old + frac * clean[row, cols]
            dig[row, cols] = (1 - frac) * levels[j, cols] + frac * levels[j + 1, cols]
        a = clean + rng.normal(0.0, 1.0, clean.shape) * sigma
        dg = dig + rng.normal(0.0, digital_noise, dig.shape)
        analog[c] = np.clip(np.rint(a), 0, ADC_MAX)
        digital[c] = np.clip(np.rint(dg), 0, ADC_MAX)
        lost = (rng.random((n_steps, n_series)) < loss_fraction) & (kind == 0)
        if inject_failures:
            lost[:, KIND_ALL_LOST] = True
        valid[c] = ~lost
        analog[c][lost] = 0
        digital[c][lost] = 0
        switch_step[c] = np.stack([b1, b2])
        expected[c] = expected_of_kind[kind]
        if inject_failures and c != fail_current:
            expected[c, KIND_FAILS_ONE_CURRENT] = 0
        expected[c, broken] = EXPECTED_ERROR[KIND_FAILS_ONE_CURRENT]
    truth = DrscsTruth(
        currents=np.asarray(currents, dtype=np.float64),
        slope=slopes,
        offset=offset,
        gain_level=levels,
        switch_step=switch_step,
        saturation_start=sat_start,
        transition=transition,
        analog_sigma=sigma,
        kind=kind,
        expected_error=expected,
    )
    return DrscsScans(analog=analog, digital=digital, valid=valid, truth=truth, shape=shape)
