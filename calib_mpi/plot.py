"""Pictures of calib-mpi results: per-module maps, histograms and bad-pixel bit tables,
full-detector images placed by EXtra-geom.

``calib-mpi plot RESULT.h5 [more.h5 ...] --out DIR [--cell C] [--gain G] [--geom FILE |
--quad-pos X1 Y1 .. X4 Y4] [--detector NAME] [--units px|mm] [--raw]``

Per module (``<label>`` = ``AGIPD<MM>_<QxMy>``, ``<tag>`` = ``c<C>`` or ``c<C>_g<G>``):

- ``<label>_{offset,noise}_<tag>.png``: maps (ADU) per gain stage for memory cell ``C``;
- ``<label>_threshold_<tag>.png``: the digital thresholds t01, t12 (with ``G``: those bounding
  stage ``G``);
- ``<label>_badpixels_<tag>.png``: pixels with any bad-pixel bit, in any stage (or in ``G``);
- ``<label>_badpixels_bits.txt`` (``_bits_g<G>.txt``): per bit that occurs, its name and how
  often it is set - (gain, cell, pixel) entries, pixels in any cell, pixels at cell ``C``;
- ``<label>_badpixels_bit<NN>_<tag>.png``: where bit ``NN`` is set at cell ``C``, one picture
  per bit that occurs there;
- ``<label>_hist.png`` (``_hist_g<G>``): offset and noise per gain stage, all cells and pixels.

With several modules also ``detector_{offset,noise,threshold,badpixels}_<tag>.png``: the same
maps in the AGIPD-1M plane, assembled by EXtra-geom (:mod:`calib_mpi.layout`: a CrystFEL
``--geom`` file, ``--quad-pos``, or the instrument's default quadrant positions), axes in
pixels or mm with the beam at (0, 0).
Colour limits of maps are the 1st and 99th percentiles of the shown values.

Orientation: every picture shows the detector as seen along the beam (EXtra-geom's "front
view"), so a module appears as its AGIPD frame ``(128, 512)``: wing 1 (modules 0-7) rows =
``fast_scan``, columns = ``511 - slow_scan``; wing 2 is that rotated by 180 degrees
(``shared/spec/formats.md`` 3.1, 3.3). Module maps label their axes with the raw
``slow_scan``/``fast_scan`` pixel indices.

With ``--raw`` the maps are also written pixel for pixel (``raw/*.png``, one image pixel per
detector pixel, same orientation, same colour limits, no axes) for zooming and checks.
Figures are rendered with matplotlib's Agg canvas (no pyplot, no display needed).
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import h5py
import matplotlib
import matplotlib.colors as mcolors
import numpy as np
from matplotlib.figure import Figure

from .badpixels import BadPixels
from .geometry import XFEL_FRAME, quadrant_name, wing
from .layout import UNITS, DetectorLayout, LayoutError, detector_layout

__all__ = ["module_view", "plot_results", "main", "DPI"]

DPI = 100
MAP_WIDTH = 12.0  # inches; a module map panel is 12 x 3.2 in, i.e. 1200 x 320 px per panel
MAP_PANEL_HEIGHT = 3.2
HIST_FIGSIZE = (12.0, 4.5)
DETECTOR_PANEL = (7.0, 7.0)
CMAP = "viridis"
MAX_MARKS = 500  # bad pixels are circled when there are at most this many
BAD_CMAP = mcolors.ListedColormap(["#dce6f0", "#d62728"])  # good (light blue), bad (red)
MISSING = "0.75"  # NaN / no module
GAIN_NAMES = ("high", "medium", "low")
THRESHOLD_NAMES = ("t01 (high/medium)", "t12 (medium/low)")


class PlotError(Exception):
    """A result file that cannot be plotted; the message names the file and the problem."""


# --------------------------------------------------------------------------- geometry

def module_view(module: int, frame: np.ndarray) -> np.ndarray:
    """``(..., slow_scan, fast_scan) = (..., 512, 128)`` -> front view ``(..., 128, 512)``.

    Wing 1: ``view[fs, 511 - ss]``; wing 2: ``view[127 - fs, ss]`` (formats.md 3.3).
    """
    a = np.asarray(frame)
    if wing(module) == 1:
        return np.swapaxes(a[..., ::-1, :], -1, -2)
    return np.swapaxes(a[..., :, ::-1], -1, -2)


def _view_extent(module: int) -> tuple[float, float, float, float]:
    """imshow extent of :func:`module_view` so that axis ticks are raw slow/fast scan indices."""
    ss, fs = XFEL_FRAME
    if wing(module) == 1:
        return (ss - 0.5, -0.5, fs - 0.5, -0.5)
    return (-0.5, ss - 0.5, -0.5, fs - 0.5)


# --------------------------------------------------------------------------- data

@dataclass
class ModuleResult:
    """The planes of one module result file needed for the pictures (native axis order)."""

    path: Path
    module: int
    n_cells: int
    maps: dict[str, np.ndarray]  # name -> (k, 512, 128) at the chosen cell
    bad: np.ndarray | None  # (3, 512, 128) uint32 at the chosen cell

    @property
    def label(self) -> str:
        return f"AGIPD{self.module:02d}_{quadrant_name(self.module)}"


QUANTITIES = {  # dataset -> (panel names, unit)
    "offset": (GAIN_NAMES, "ADU"),
    "noise": (GAIN_NAMES, "ADU"),
    "threshold": (THRESHOLD_NAMES, "digital ADU"),
}


def _selected(name: str, gain: int | None) -> list[int]:
    """Panel indices of ``name`` to draw for gain stage ``gain`` (None: all)."""
    n = len(QUANTITIES[name][0])
    if gain is None:
        return list(range(n))
    if name == "threshold":  # the thresholds bounding that stage
        return [t for t in (gain - 1, gain) if 0 <= t < n]
    return [gain]


def _load(path: Path, cell: int) -> ModuleResult:
    try:
        f = h5py.File(path, "r")
    except OSError as e:
        raise PlotError(f"{path}: cannot open as HDF5 ({e})") from e
    with f:
        if "module" not in f.attrs:
            raise PlotError(f"{path}: root attribute 'module' is missing")
        module = int(f.attrs["module"])
        present = [n for n in QUANTITIES if n in f]
        if not present and "bad_pixels" not in f:
            raise PlotError(f"{path}: none of {', '.join(QUANTITIES)}, bad_pixels found")
        first = f[present[0] if present else "bad_pixels"]
        n_cells = int(first.shape[1])
        if not 0 <= cell < n_cells:
            raise PlotError(f"{path}: --cell {cell} outside 0..{n_cells - 1}")
        maps = {}
        for n in present:
            if f[n].shape[2:] != XFEL_FRAME:
                raise PlotError(f"{path}: {n} has shape {f[n].shape}, "
                                "expected (k, cells, 512, 128)")
            maps[n] = f[n][:, cell].astype(np.float32)
        bad = f["bad_pixels"][:, cell] if "bad_pixels" in f else None
    return ModuleResult(path, module, n_cells, maps, bad)


def _limits(values: np.ndarray, lo: float = 1.0, hi: float = 99.0) -> tuple[float, float]:
    """Robust colour limits: percentiles ``lo``/``hi`` of the finite values."""
    v = np.asarray(values, np.float64)
    v = v[np.isfinite(v)]
    if v.size == 0:
        return 0.0, 1.0
    step = max(1, v.size // 2_000_000)
    a, b = np.percentile(v[::step], [lo, hi])
    if not b > a:
        a, b = a - 0.5, b + 0.5
    return float(a), float(b)


def _bad_plane(r: ModuleResult, gain: int | None) -> np.ndarray:
    """1.0 where any bad-pixel bit is set (in ``gain``, or in any stage), else 0.0; (512, 128)."""
    b = r.bad if gain is None else r.bad[gain:gain + 1]
    return (np.bitwise_or.reduce(b, axis=0) != 0).astype(np.float32)


def _histograms(path: Path, name: str, gains: list[int], bins: int = 200):
    """Per gain: (counts, edges, n_nonfinite) of ``name`` over all cells and pixels."""
    out = []
    with h5py.File(path, "r") as f:
        for g in gains:
            v = f[name][g].ravel()
            fin = np.isfinite(v)
            lo, hi = _limits(v[fin], 0.1, 99.9)
            counts, edges = np.histogram(v[fin], bins=bins, range=(lo, hi))
            out.append((counts, edges, int(v.size - fin.sum())))
    return out


@dataclass(frozen=True)
class BitCount:
    """How often one bad-pixel bit is set in a result file.

    Attributes
    ----------
    bit : bit number (value ``1 << bit``).
    name : the European XFEL name (``BadPixels``), or ``bit N`` for an unnamed one.
    entries : (gain, cell, pixel) entries with the bit, over the whole file.
    pixels : pixels with the bit in any gain stage and cell.
    at_cell : pixels with the bit at the chosen cell (in the chosen gain stage, or in any).
    """

    bit: int
    name: str
    entries: int
    pixels: int
    at_cell: int


def bit_counts(r: ModuleResult, gain: int | None = None,
               cells_per_read: int = 32) -> tuple[list[BitCount], int]:
    """Per-bit counts of ``bad_pixels`` of result ``r`` (the bits that occur, in bit order)
    and the number of (gain, cell, pixel) entries. Reads ``cells_per_read`` cells at a time."""
    names = {f.bit_length() - 1: f.name for f in BadPixels}
    entries = np.zeros(32, np.int64)
    anywhere = np.zeros((32, *XFEL_FRAME), bool)
    with h5py.File(r.path, "r") as f:
        ds = f["bad_pixels"]
        n_gain, n_cells = ds.shape[:2]
        for g in range(n_gain):
            for c0 in range(0, n_cells, cells_per_read):
                block = ds[g, c0:c0 + cells_per_read]
                present = int(np.bitwise_or.reduce(block, axis=None))
                for bit in (b for b in range(32) if present >> b & 1):
                    hit = (block & np.uint32(1 << bit)) != 0
                    entries[bit] += np.count_nonzero(hit)
                    anywhere[bit] |= hit.any(axis=0)
        total = int(np.prod(ds.shape))
    counts = [BitCount(b, names.get(b, f"bit {b}"), int(entries[b]),
                       int(np.count_nonzero(anywhere[b])),
                       int(np.count_nonzero(_bit_plane(r, gain, b))))
              for b in range(32) if entries[b]]
    return counts, total


def _bit_plane(r: ModuleResult, gain: int | None, bit: int) -> np.ndarray:
    """1.0 where ``bit`` is set at the chosen cell (in ``gain``, or in any stage); (512, 128)."""
    b = r.bad if gain is None else r.bad[gain:gain + 1]
    return ((b & np.uint32(1 << bit)) != 0).any(axis=0).astype(np.float32)


def _bit_table(r: ModuleResult, counts: list[BitCount], total: int, cell: int,
               gain: int | None) -> str:
    """The per-bit summary of ``r`` as a text table."""
    which = "any gain stage" if gain is None else f"{GAIN_NAMES[gain]} gain"
    head = (f"{r.label} bad-pixel bits in {r.path.name}: {total} (gain, cell, pixel) entries, "
            f"{r.n_cells} cells\n"
            f"{'bit':>3} {'value':>8}  {'name':<26} {'entries':>10} {'% entries':>10} "
            f"{'pixels':>7} {f'at cell {cell} ({which})':>24}\n")
    rows = [f"{c.bit:>3} {1 << c.bit:>8}  {c.name:<26} {c.entries:>10} "
            f"{100 * c.entries / total:>10.4f} {c.pixels:>7} {c.at_cell:>24}\n" for c in counts]
    return head + ("".join(rows) or "(no bad-pixel bit set)\n")


# --------------------------------------------------------------------------- drawing

def _wide_range(counts: Sequence[np.ndarray]) -> bool:
    """True if the non-zero histogram counts span more than two decades (log axis then)."""
    c = np.concatenate([np.ravel(x) for x in counts])
    c = c[c > 0]
    return bool(c.size) and c.max() > 100 * c.min()


def _cmap(name) -> mcolors.Colormap:
    cm = matplotlib.colormaps[name] if isinstance(name, str) else name
    return cm.with_extremes(bad=MISSING)


def _save_raw(path: Path, image: np.ndarray, vmin: float, vmax: float, cmap) -> Path:
    """One image pixel per array element: ``cmap((image - vmin) / (vmax - vmin))``, clipped."""
    import matplotlib.image as mimage

    path.parent.mkdir(parents=True, exist_ok=True)
    norm = mcolors.Normalize(vmin=vmin, vmax=vmax, clip=True)
    rgba = _cmap(cmap)(norm(np.ma.masked_invalid(image)), bytes=True)
    mimage.imsave(path, rgba)
    return path


def _map_figure(path: Path, title: str, panels: list[tuple[str, np.ndarray]], module: int,
                unit: str, cmap=CMAP, limits: tuple[float, float] | None = None,
                colorbar: bool = True, marks: np.ndarray | None = None) -> Path:
    """Stacked module maps (front view, raw ss/fs on the axes), one colour bar each.

    ``marks``: (n, 2) raw ``(ss, fs)`` pixels to circle (few isolated bad pixels stay visible).
    """
    height = MAP_PANEL_HEIGHT * len(panels)
    fig = Figure(figsize=(MAP_WIDTH, height), dpi=DPI)
    fig.subplots_adjust(left=0.07, right=0.97, top=1 - 0.7 / height, bottom=0.5 / height,
                        hspace=0.5)
    axes = fig.subplots(len(panels), 1, squeeze=False)[:, 0]
    for ax, (name, plane) in zip(axes, panels, strict=True):
        vmin, vmax = limits or _limits(plane)
        im = ax.imshow(module_view(module, plane), cmap=_cmap(cmap), vmin=vmin, vmax=vmax,
                       interpolation="nearest", extent=_view_extent(module), aspect="equal")
        ax.set_title(name, fontsize=10)
        ax.set_xlabel("slow_scan")
        ax.set_ylabel("fast_scan")
        if colorbar:
            fig.colorbar(im, ax=ax, label=unit, fraction=0.04, pad=0.02)
        if marks is not None and len(marks):
            ax.scatter(marks[:, 0], marks[:, 1], s=40, facecolors="none", edgecolors="#d62728",
                       linewidths=0.8)
    fig.suptitle(title)
    fig.savefig(path)
    return path


def _tag(cell: int, gain: int | None) -> str:
    """File name part: ``c<cell>``, plus ``_g<gain>`` when restricted to one gain stage."""
    return f"c{cell}" if gain is None else f"c{cell}_g{gain}"


def _module_pictures(r: ModuleResult, out: Path, cell: int, gain: int | None,
                     raw: bool) -> list[Path]:
    files = []
    view = f"cell {cell}, front view (along the beam)"
    tag = _tag(cell, gain)
    for name, plane_all in r.maps.items():
        names, unit = QUANTITIES[name]
        panels = [(f"{names[i]}: median {np.nanmedian(plane_all[i]):.1f} {unit}", plane_all[i])
                  for i in _selected(name, gain)]
        p = out / f"{r.label}_{name}_{tag}.png"
        files.append(_map_figure(p, f"{r.label} {name}, {view}", panels, r.module, unit))
        if raw:
            for i in _selected(name, gain):
                lo, hi = _limits(plane_all[i])
                files.append(_save_raw(out / "raw" / f"{r.label}_{name}_{i}_{tag}.png",
                                       module_view(r.module, plane_all[i]), lo, hi, CMAP))
    if r.bad is not None:
        plane = _bad_plane(r, gain)
        which = "any gain stage" if gain is None else f"{GAIN_NAMES[gain]} gain"
        p = out / f"{r.label}_badpixels_{tag}.png"
        files.append(_map_figure(
            p, f"{r.label} bad pixels (any bit, {which}), {view}",
            [(f"{int(plane.sum())} of {plane.size} pixels bad (red)", plane)], r.module, "",
            cmap=BAD_CMAP, limits=(0.0, 1.0), colorbar=False,
            marks=np.argwhere(plane) if plane.sum() <= MAX_MARKS else None))
        if raw:
            files.append(_save_raw(out / "raw" / f"{r.label}_badpixels_{tag}.png",
                                   module_view(r.module, plane), 0.0, 1.0, BAD_CMAP))
        files += _bit_pictures(r, out, cell, gain, view)
    hist_names = [n for n in ("offset", "noise") if n in r.maps]
    if hist_names:
        fig = Figure(figsize=HIST_FIGSIZE, dpi=DPI)
        fig.subplots_adjust(left=0.07, right=0.98, top=0.88, bottom=0.12, wspace=0.2)
        axes = fig.subplots(1, len(hist_names), squeeze=False)[0]
        gains = _selected("offset", gain)
        for ax, name in zip(axes, hist_names, strict=True):
            hists = _histograms(r.path, name, gains)
            for g, (counts, edges, n_bad) in zip(gains, hists, strict=True):
                extra = f", {n_bad} not finite" if n_bad else ""
                ax.stairs(counts, edges, color=f"C{g}", label=f"{GAIN_NAMES[g]}{extra}")
            if _wide_range([h[0] for h in hists]):
                ax.set_yscale("log")
            ax.set_xlabel(f"{name} (ADU; 0.1-99.9 percentile range)")
            ax.set_ylabel("pixels x cells")
            ax.legend(fontsize=8)
        fig.suptitle(f"{r.label}: {', '.join(hist_names)} per gain stage, all {r.n_cells} cells")
        p = out / (f"{r.label}_hist.png" if gain is None else f"{r.label}_hist_g{gain}.png")
        fig.savefig(p)
        files.append(p)
    return files


def _bit_pictures(r: ModuleResult, out: Path, cell: int, gain: int | None,
                  view: str) -> list[Path]:
    """``<label>_badpixels_bits.txt`` (the per-bit table) and one map per bit set at ``cell``:
    ``<label>_badpixels_bit<NN>_<tag>.png``."""
    counts, total = bit_counts(r, gain)
    table = out / (f"{r.label}_badpixels_bits.txt" if gain is None
                   else f"{r.label}_badpixels_bits_g{gain}.txt")
    table.write_text(_bit_table(r, counts, total, cell, gain))
    files = [table]
    which = "any gain stage" if gain is None else f"{GAIN_NAMES[gain]} gain"
    for c in (c for c in counts if c.at_cell):
        plane = _bit_plane(r, gain, c.bit)
        p = out / f"{r.label}_badpixels_bit{c.bit:02d}_{_tag(cell, gain)}.png"
        files.append(_map_figure(
            p, f"{r.label} bit {c.bit} {c.name} ({which}), {view}",
            [(f"{c.at_cell} of {plane.size} pixels (red); all cells: {c.pixels} pixels, "
              f"{c.entries} entries", plane)], r.module, "", cmap=BAD_CMAP,
            limits=(0.0, 1.0), colorbar=False,
            marks=np.argwhere(plane) if c.at_cell <= MAX_MARKS else None))
    return files


def _detector_figure(path: Path, title: str, panels: list[tuple[str, np.ndarray]],
                     layout: DetectorLayout, present: Sequence[int], unit: str, cmap=CMAP,
                     limits: tuple[float, float] | None = None, mark: bool = False) -> Path:
    """Assembled images side by side in the detector plane (front view, axes in the layout's
    units, beam at (0, 0) marked +); modules without data grey, gaps white, QxMy labels.

    ``mark``: circle the pixels equal to 1 when there are at most ``MAX_MARKS`` (bad pixels).
    """
    w, h = DETECTOR_PANEL
    fig = Figure(figsize=(w * len(panels), h), dpi=DPI, layout="constrained")
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    exists = np.where(np.isfinite(layout.assemble(
        {m: np.ones(XFEL_FRAME, np.float32) for m in range(16)})), 1.0, np.nan)
    background = mcolors.ListedColormap([MISSING]).with_extremes(bad=(0, 0, 0, 0))
    clear = _cmap(cmap).with_extremes(bad=(0, 0, 0, 0))
    draw = {"origin": "lower", "extent": layout.extent, "interpolation": "nearest"}
    for ax, (name, img) in zip(axes, panels, strict=True):
        vmin, vmax = limits or _limits(img)
        ax.imshow(exists, cmap=background, **draw)
        im = ax.imshow(img, cmap=clear, vmin=vmin, vmax=vmax, **draw)
        ax.invert_xaxis()  # front view: x grows to the left
        for m, (x, y) in enumerate(layout.module_centres):
            ax.text(x, y, quadrant_name(m), ha="center", va="center", fontsize=7,
                    color="black" if m in present else "0.35",
                    bbox={"facecolor": "white", "alpha": 0.6, "pad": 1, "linewidth": 0}
                    if m in present else None)
        ax.plot([0], [0], "+", color="black", markersize=10)
        hits = np.argwhere(img == 1.0) if mark else np.empty((0, 2))
        if 0 < len(hits) <= MAX_MARKS:
            x, y = layout.to_axes(hits[:, 0], hits[:, 1])
            ax.scatter(x, y, s=30, facecolors="none", edgecolors="#d62728", linewidths=0.8)
        ax.set_title(name, fontsize=10)
        ax.set_xlabel(f"x ({layout.axis_label})")
        ax.set_ylabel(f"y ({layout.axis_label})")
        if limits is None:
            fig.colorbar(im, ax=ax, label=unit, fraction=0.046, pad=0.02)
    fig.suptitle(title, fontsize=11)
    fig.savefig(path)
    return path


def _detector_pictures(results: list[ModuleResult], out: Path, cell: int, gain: int | None,
                       layout: DetectorLayout) -> list[Path]:
    files = []
    tag = _tag(cell, gain)
    present = [r.module for r in results]
    names = [n for n in QUANTITIES if all(n in r.maps for r in results)]
    for name in names:
        labels, unit = QUANTITIES[name]
        panels = [(labels[i], layout.assemble({r.module: r.maps[name][i] for r in results}))
                  for i in _selected(name, gain)]
        p = out / f"detector_{name}_{tag}.png"
        files.append(_detector_figure(p, f"{name}, cell {cell}, front view\n{layout.name}",
                                      panels, layout, present, unit))
    if all(r.bad is not None for r in results):
        img = layout.assemble({r.module: _bad_plane(r, gain) for r in results})
        which = "any gain stage" if gain is None else f"{GAIN_NAMES[gain]} gain"
        p = out / f"detector_badpixels_{tag}.png"
        files.append(_detector_figure(
            p, f"bad pixels (red; any bit, {which}), cell {cell}\n{layout.name}",
            [(f"{int(np.nansum(img))} bad pixels", img)], layout, present, "",
            cmap=BAD_CMAP, limits=(0.0, 1.0), mark=True))
    return files


def plot_results(paths: Sequence[str | os.PathLike], out_dir: str | os.PathLike,
                 cell: int = 0, gain: int | None = None, *, raw: bool = False,
                 geom_file: str | os.PathLike | None = None,
                 quad_pos: Sequence[float] | None = None, detector: str | None = None,
                 units: str = "px") -> list[Path]:
    """Write the pictures of module result files ``paths`` to ``out_dir``; returns the files.

    ``cell``: memory cell of the maps; ``gain``: 0/1/2 restricts maps and histograms to that
    stage (None: all). Full-detector pictures (two or more modules) are placed by EXtra-geom:
    ``geom_file`` (CrystFEL), else ``quad_pos`` (8 numbers, pixels), else the default
    quadrant positions of ``detector``'s instrument; axes in ``units`` (``px`` or ``mm``).
    """
    if gain is not None and gain not in (0, 1, 2):
        raise PlotError(f"--gain {gain}: expected 0 (high), 1 (medium) or 2 (low)")
    results = [_load(Path(p), cell) for p in paths]
    seen: dict[int, Path] = {}
    for r in results:
        if r.module in seen:
            raise PlotError(f"{r.path}: module {r.module} also in {seen[r.module]}")
        seen[r.module] = r.path
    try:
        layout = detector_layout(geom_file, quad_pos, detector, units) \
            if len(results) > 1 or geom_file is not None or quad_pos is not None else None
    except LayoutError as e:
        raise PlotError(str(e)) from e
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    files = []
    for r in results:
        files += _module_pictures(r, out, cell, gain, raw)
    if len(results) > 1:
        files += _detector_pictures(results, out, cell, gain, layout)
    return files


def main(argv: Sequence[str] | None = None) -> int:
    """``calib-mpi plot``: exit code 0, or 2 with one message on a bad input."""
    p = argparse.ArgumentParser(
        prog="calib-mpi plot",
        description="PNG maps, histograms and bad-pixel tables of calib-mpi results; for "
                    "several modules a full-detector image placed by EXtra-geom.")
    p.add_argument("results", nargs="+", type=Path, help="per-module result files")
    p.add_argument("--out", required=True, type=Path, help="output directory")
    p.add_argument("--cell", type=int, default=0, help="memory cell of the maps (default 0)")
    p.add_argument("--gain", type=int, choices=(0, 1, 2),
                   help="only this gain stage (0 high, 1 medium, 2 low; default all)")
    p.add_argument("--geom", type=Path, help="CrystFEL .geom file for the detector image "
                   "(default: quadrant positions)")
    p.add_argument("--quad-pos", "--quad_pos", type=float, nargs=8, metavar="XY",
                   help="x y of the first pixel of quadrants 1-4 (modules 0, 4, 8, 12), in "
                   "pixels, x to the left and y up along the beam (default: the instrument's)")
    p.add_argument("--detector", default="SPB_DET_AGIPD1M-1",
                   help="detector name; its instrument picks the default quadrant positions "
                   "(default: %(default)s)")
    p.add_argument("--units", choices=UNITS, default="px",
                   help="axis units of the detector image (default: %(default)s)")
    p.add_argument("--raw", action="store_true",
                   help="also write the maps pixel for pixel to <out>/raw/")
    args = p.parse_args(argv)
    try:
        for f in plot_results(args.results, args.out, args.cell, args.gain, raw=args.raw,
                              geom_file=args.geom, quad_pos=args.quad_pos,
                              detector=args.detector, units=args.units):
            print(f"wrote {f}")
    except PlotError as e:
        print(f"calib-mpi plot: error: {e}", file=sys.stderr)
        return 2
    return 0
