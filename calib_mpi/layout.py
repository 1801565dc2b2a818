"""Where the 16 AGIPD-1M modules sit: EXtra-geom's geometry, for the full-detector pictures.

The geometry is EXtra-geom's ``AGIPD_1MGeometry`` made from (first match wins):

1. a CrystFEL ``.geom`` file (``geometry`` in the config, ``--geom`` of ``calib-mpi plot``);
2. quadrant positions (``quad_pos``: x, y of the first pixel of modules 0, 4, 8, 12, in pixels,
   x to the left and y up when looking along the beam), via ``from_quad_positions``;
3. the default quadrant positions of the instrument named by the detector (``SPB_DET_...``).

Images are assembled by EXtra-geom (``position_modules``: pixels snapped to a 2D grid) and
drawn in the detector plane as seen along the beam (EXtra-geom's front view: x grows to the
left, y up, the beam at (0, 0)), with axes in pixels (200 um) or mm.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property

import numpy as np

from .geometry import XFEL_FRAME

__all__ = ["DEFAULT_QUAD_POS", "EXAMPLE_QUAD_POS", "DetectorLayout", "LayoutError",
           "detector_layout"]

#: EXtra-geom's example quadrant positions (pixels), the SPB AGIPD-1M layout of its
#: documentation: typical, not any one experiment's.
EXAMPLE_QUAD_POS = ((-525.0, 625.0), (-550.0, -10.0), (520.0, -160.0), (542.5, 475.0))
#: Default quadrant positions per instrument (the detector name's first word). Only SPB has
#: positions from a public source (EXtra-geom); other instruments use them too, with a note in
#: the picture titles, until a ``geometry`` file or ``quad_pos`` is given.
DEFAULT_QUAD_POS = {"SPB": EXAMPLE_QUAD_POS}
UNITS = ("px", "mm")


class LayoutError(Exception):
    """A geometry that cannot be used; the message names the file or value."""


@dataclass
class DetectorLayout:
    """An EXtra-geom AGIPD-1M geometry with the image grid it assembles into.

    ``units``: axis units of the pictures, ``px`` (detector pixels) or ``mm``.
    """

    geom: object  # extra_geom.AGIPD_1MGeometry
    name: str
    units: str = "px"
    _centre: np.ndarray = field(init=False, repr=False)
    _shape: tuple[int, int] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        if self.units not in UNITS:
            raise LayoutError(f"units {self.units!r}: expected one of {', '.join(UNITS)}")
        img, centre = self.geom.position_modules(np.zeros((16, *XFEL_FRAME), np.float32))
        self._centre = np.asarray(centre, np.float64)  # (row, col) index of the beam
        self._shape = img.shape

    @property
    def scale(self) -> float:
        """Axis units per detector pixel (1 for px, 0.2 for mm)."""
        return 1.0 if self.units == "px" else self.geom.pixel_size * 1e3

    @property
    def axis_label(self) -> str:
        return "pixels (200 um)" if self.units == "px" else "mm"

    def assemble(self, modules: Mapping[int, np.ndarray]) -> np.ndarray:
        """Image ``(rows, cols)`` from ``{module: (512, 128) array}``, NaN where no module has
        data; row ``r`` is at y = (r - centre_row + 0.5) pixels (draw with ``origin='lower'``
        and :attr:`extent`)."""
        data = np.full((16, *XFEL_FRAME), np.nan, np.float32)
        for m, a in modules.items():
            data[m] = a
        img, _ = self.geom.position_modules(data)
        return img

    @property
    def extent(self) -> tuple[float, float, float, float]:
        """imshow extent (left, right, bottom, top) of :meth:`assemble` images, axis units."""
        cy, cx = self._centre
        h, w = self._shape
        return tuple(float(v * self.scale) for v in (-cx, w - cx, -cy, h - cy))

    def to_axes(self, rows: np.ndarray, cols: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(x, y) in axis units of the centres of image pixels ``(rows, cols)``."""
        cy, cx = self._centre
        return ((np.asarray(cols) - cx + 0.5) * self.scale,
                (np.asarray(rows) - cy + 0.5) * self.scale)

    @cached_property
    def module_centres(self) -> np.ndarray:
        """(16, 2): x, y of each module's centre in axis units."""
        pos = self.geom.get_pixel_positions()[..., :2]  # (16, 512, 128, 2) metres
        return pos.mean(axis=(1, 2)) / self.geom.pixel_size * self.scale


def detector_layout(geom_file: str | os.PathLike | None = None,
                    quad_pos: Sequence[float] | None = None, detector: str | None = None,
                    units: str = "px") -> DetectorLayout:
    """The layout from a CrystFEL file, quadrant positions (8 numbers, pixels) or the
    instrument's default quadrant positions (in that order of preference)."""
    from extra_geom import AGIPD_1MGeometry

    if geom_file is not None:
        try:
            geom = AGIPD_1MGeometry.from_crystfel_geom(str(geom_file))
        except Exception as e:  # EXtra-geom / cfelpyutils raise many kinds on bad files
            raise LayoutError(f"geometry {geom_file}: not a usable AGIPD-1M CrystFEL "
                              f"geometry ({e})") from e
        return DetectorLayout(geom, f"CrystFEL geometry {os.path.basename(geom_file)}", units)
    if quad_pos is not None:
        q = [float(v) for v in quad_pos]
        if len(q) != 8:
            raise LayoutError(f"quad_pos: expected 8 numbers (x y of quadrants 1-4, pixels), "
                              f"got {len(q)}")
        pairs = list(zip(q[0::2], q[1::2], strict=True))
        return DetectorLayout(AGIPD_1MGeometry.from_quad_positions(pairs),
                              "quadrant positions " + " ".join(f"({x:g}, {y:g})"
                                                               for x, y in pairs), units)
    instrument = (detector or "SPB").split("_")[0].upper()
    pairs = DEFAULT_QUAD_POS.get(instrument)
    if pairs is None:
        name = f"EXtra-geom example quadrant positions (no {instrument} default; set quad_pos)"
        pairs = EXAMPLE_QUAD_POS
    else:
        name = f"{instrument} default quadrant positions (EXtra-geom example)"
    return DetectorLayout(AGIPD_1MGeometry.from_quad_positions(list(pairs)), name, units)
