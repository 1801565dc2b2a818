"""What differs between facilities once the files are scanned: frame shape, ASIC blocks, axis names.

Everything after preprocess (gather, process, join) is the same code for every facility; it
asks this one place for the frame orientation of the input and the output:

- ``xfel``: raw frames ``image.data[i]`` are ``(2, 512, 128)`` = (analog/digital, slow_scan,
  fast_scan); one frame index holds both halves.
- ``cfel``: lab frames are ``(128, 512)`` = (row, col) in the AGIPD frame with analog and
  digital as separate, interleaved frames; the reader pairs them into ``(2, 128, 512)``.

Results keep the input orientation (no transposition on the hot path), so the per-pixel
datasets are ``(k, cell, 512, 128)`` with dims ``slow_scan, fast_scan`` for XFEL and
``(k, cell, 128, 512)`` with dims ``row, col`` for CFEL.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from .geometry import AGIPD_FRAME, XFEL_FRAME, AsicBlock, asic_blocks


@dataclass(frozen=True)
class Facility:
    """The frame layout of one facility's input files.

    Attributes
    ----------
    name : ``xfel`` or ``cfel``.
    frame_shape : (H, W) of one analog (or digital) image.
    pixel_dims : names of the two pixel axes of the output datasets.
    halves_per_read_frame : images per frame index of the raw dataset (2: analog and digital
        in one XFEL frame; 1: one CFEL frame is either analog or digital).
    """

    name: str
    frame_shape: tuple[int, int]
    pixel_dims: tuple[str, str]
    halves_per_read_frame: int

    @property
    def read_frame_elements(self) -> int:
        """2-byte values per frame index of the raw dataset."""
        return self.halves_per_read_frame * self.frame_shape[0] * self.frame_shape[1]

    @property
    def read_frame_bytes(self) -> int:
        return 2 * self.read_frame_elements

    @property
    def pair_shape(self) -> tuple[int, int, int]:
        """Shape of one (analog, digital) frame handed to the processors."""
        return (2,) + tuple(self.frame_shape)

    def blocks(self, module: int = 0) -> list[AsicBlock]:
        """The 16 ASIC blocks of a module frame, in frame order."""
        return asic_blocks(self.frame_shape, module)

    def dims(self, dims: tuple[str, ...]) -> tuple[str, ...]:
        """``dims`` of a dataset with the two pixel axes (named as for XFEL) renamed."""
        names = dict(zip(XFEL.pixel_dims, self.pixel_dims, strict=True))
        return tuple(names.get(d, d) for d in dims)

    def specs(self, specs: list) -> list:
        """A recipe's :class:`~calib_mpi.join.DatasetSpec` list with this facility's dims."""
        return [replace(s, dims=self.dims(s.dims)) for s in specs]


XFEL = Facility("xfel", XFEL_FRAME, ("slow_scan", "fast_scan"), 2)
CFEL = Facility("cfel", AGIPD_FRAME, ("row", "col"), 1)
FACILITY = {"xfel": XFEL, "cfel": CFEL}


def facility(name: str) -> Facility:
    """The :class:`Facility` called ``name``."""
    return FACILITY[name]
