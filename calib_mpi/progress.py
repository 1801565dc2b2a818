"""Progress of long steps, shown by rank 0: a live bar (tqdm) on a terminal, periodic log
lines otherwise (batch jobs), with trains/s and GB/s."""

from __future__ import annotations

import logging
import sys
import time

log = logging.getLogger("calib_mpi")

try:
    from tqdm import tqdm
except ImportError:  # pragma: no cover - tqdm is installed by the set-up script
    tqdm = None


class Progress:
    """Progress over ``total_bytes`` of raw frames holding ``total_trains`` trains.

    Parameters
    ----------
    label : what is being done, e.g. ``"run 819"``.
    enabled : False on ranks other than 0 and with ``--quiet``.
    interval : seconds between log lines when not on a terminal.
    """

    def __init__(self, label: str, total_bytes: int, total_trains: int, enabled: bool,
                 interval: float = 10.0):
        self.label, self.total_bytes, self.total_trains = label, total_bytes, total_trains
        self.enabled, self.interval = enabled, interval
        self.t0 = self.last = time.monotonic()
        self.done = 0
        self.bar = None
        if enabled and tqdm is not None and sys.stderr.isatty():
            self.bar = tqdm(total=total_bytes, unit="B", unit_scale=True, desc=label,
                            leave=False, dynamic_ncols=True)

    def update(self, done_bytes: int) -> None:
        """All ranks together have now read ``done_bytes``."""
        if not self.enabled:
            return
        step, self.done = done_bytes - self.done, done_bytes
        now = time.monotonic()
        dt = max(now - self.t0, 1e-9)
        frac = done_bytes / max(self.total_bytes, 1)
        trains_s = frac * self.total_trains / dt
        if self.bar is not None:
            self.bar.update(step)
            self.bar.set_postfix_str(f"{trains_s:.1f} trains/s")
        elif now - self.last >= self.interval:
            log.info("%s: %3.0f %%, %.1f trains/s, %.2f GB/s", self.label, 100 * frac, trains_s,
                     done_bytes / dt / 1e9)
            self.last = now

    def close(self) -> None:
        """Final line: how long it took and how fast."""
        if not self.enabled:
            return
        if self.bar is not None:
            self.bar.close()
        dt = max(time.monotonic() - self.t0, 1e-9)
        log.info("%s: %d trains, %.2f GB in %.1f s (%.1f trains/s, %.2f GB/s)", self.label,
                 self.total_trains, self.done / 1e9, dt, self.total_trains / dt,
                 self.done / dt / 1e9)
