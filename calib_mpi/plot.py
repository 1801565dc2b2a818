"""Pictures of calib-mpi results: per-module maps and histograms, full-detector images.

``calib-mpi plot RESULT.h5 [more.h5 ...] --out DIR [--cell C] [--gain G] [--geom FILE] [--raw]``

Per module (``<label>`` = ``AGIPD<MM>_<QxMy>``, ``<tag>`` = ``c<C>`` or ``c<C>_g<G>``):

- ``<label>_{offset,noise}_<tag>.png``: maps (ADU) per gain stage for memory cell ``C``;
- ``<label>_threshold_<tag>.png``: the digital thresholds t01, t12 (with ``G``: those bounding
  stage ``G``);
- ``<label>_badpixels_<tag>.png``: pixels with any bad-pixel bit, in any stage (or in ``G``);
- ``<label>_hist.png`` (``_hist_g<G>``): offset and noise per gain stage, all cells and pixels.

With several modules also ``detector_{offset,noise,threshold,badpixels}_<tag>.png``: the same
maps placed in the AGIPD-1M plane, by EXtra-geom when it is installed (its example geometry, or
``--geom`` CrystFEL file), else by the built-in approximate layout (:func:`assemble`).
Colour limits of maps are the 1st and 99th percentiles of the shown values.

Orientation: every picture shows the detector as seen along the beam (EXtra-geom's "front
view"), so a module appears as its AGIPD frame ``(128, 512)``: wing 1 (modules 0-7) rows =
``fast_scan``, columns = ``511 - slow_scan``; wing 2 is that rotated by 180 degrees
(``shared/spec/formats.md`` 3.1, 3.3). Axis labels give the raw ``slow_scan``/``fast_scan``.

With ``--raw`` the maps are also written pixel for pixel (``raw/*.png``, one image pixel per
detector pixel, same orientation, same colour limits, no axes) for zooming and checks.
Figures are rendered with matplotlib's Agg canvas (no pyplot, no display needed).
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import h5py
import matplotlib
import matplotlib.colors as mcolors
import numpy as np
from matplotlib.figure import Figure

from .geometry import XFEL_FRAME, quadrant_name, wing

__all__ = ["assemble", "module_view", "plot_results", "main", "DPI", "QUAD_POS"]

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

#: EXtra-geom's example quadrant positions (first pixel of modules 0, 4, 8, 12; pixels,
#: x to the left and y up when looking along the beam) - typical, not any experiment's.
QUAD_POS = ((-525.0, 625.0), (-550.0, -10.0), (520.0, -160.0), (542.5, 475.0))
ASIC_GAP = 2  # pixels between the 64-pixel tiles along slow_scan
PANEL_GAP = 29  # pixels between modules of a quadrant


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


def _simple_positions() -> tuple[np.ndarray, np.ndarray, tuple[int, int]]:
    """Approximate AGIPD-1M layout: (rows, cols) per (module, ss, fs), and the image shape.

    Approximate: idealised like EXtra-geom's ``AGIPD_1MGeometry.from_quad_positions(QUAD_POS)``
    (same pixels within 1 pixel): 4 quadrants of 4 flat, equally spaced modules, 8 tiles of
    64 x 128 pixels per module with ``ASIC_GAP`` between tiles and ``PANEL_GAP`` between
    modules; real quadrant positions differ per experiment. Front view, image row 0 at the top.
    """
    ss = np.arange(XFEL_FRAME[0])[:, None]
    fs = np.arange(XFEL_FRAME[1])[None, :]
    along = (ss // 64) * (64 + ASIC_GAP) + ss % 64
    rows = np.empty((16, *XFEL_FRAME), np.int64)
    cols = np.empty_like(rows)
    for m in range(16):
        qx, qy = QUAD_POS[m // 4]
        top = -qy + (m % 4) * (XFEL_FRAME[1] + PANEL_GAP)
        if wing(m) == 1:  # slow scan to the left (+x), fast scan down (-y)
            cols[m] = np.floor(-qx - 1 - along)
            rows[m] = np.floor(top + fs)
        else:  # rotated by 180 degrees
            cols[m] = np.floor(-qx + along)
            rows[m] = np.floor(top - 1 - fs)
    rows -= rows.min()
    cols -= cols.min()
    return rows, cols, (int(rows.max()) + 1, int(cols.max()) + 1)


def _extra_geom(geom_file: str | os.PathLike | None):
    """EXtra-geom's AGIPD-1M geometry (``geom_file``: CrystFEL .geom), or None if unavailable."""
    try:
        from extra_geom import AGIPD_1MGeometry
    except ImportError:
        if geom_file is not None:
            raise PlotError(f"--geom {geom_file}: needs EXtra-geom (pip install extra_geom)"
                            ) from None
        return None
    if geom_file is None:
        return AGIPD_1MGeometry.example()
    try:
        return AGIPD_1MGeometry.from_crystfel_geom(str(geom_file))
    except Exception as e:  # EXtra-geom / cfel_fmt raise many kinds on bad files
        raise PlotError(f"--geom {geom_file}: not a usable AGIPD-1M CrystFEL geometry ({e})"
                        ) from e


def assemble(modules: Mapping[int, np.ndarray], geom=None) -> tuple[np.ndarray, str]:
    """Full-detector front-view image from ``{module: (512, 128) array}``; NaN elsewhere.

    ``geom``: an EXtra-geom AGIPD-1M geometry, or None for the built-in approximate layout.
    Returns the float image and a description of the layout used.
    """
    if geom is not None:
        data = np.full((16, *XFEL_FRAME), np.nan, np.float32)
        for m, a in modules.items():
            data[m] = a
        out, _ = geom.position_modules(data)
        name = getattr(geom, "filename", None)
        if not name or name == "No file":
            name = "EXtra-geom example geometry"
        return out[::-1, ::-1], f"layout: {name}"
    rows, cols, shape = _simple_positions()
    img = np.full(shape, np.nan, np.float32)
    for m, a in modules.items():
        img[rows[m], cols[m]] = a
    return img, "layout: approximate (EXtra-geom example quadrant positions)"


def _module_map(geom=None) -> np.ndarray:
    """The :func:`assemble` image holding each pixel's module number (NaN in the gaps)."""
    img, _ = assemble({m: np.full(XFEL_FRAME, m, np.float32) for m in range(16)}, geom)
    return img


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
    fig.subplots_adjust(left=0.07, right=0.97, top=1 - 0.55 / height, bottom=0.5 / height,
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


def _detector_figure(path: Path, title: str, panels: list[tuple[str, np.ndarray]],
                     modmap: np.ndarray, present: Sequence[int], unit: str, cmap=CMAP,
                     limits: tuple[float, float] | None = None, mark: bool = False) -> Path:
    """Assembled images side by side; modules without data grey, gaps white, QxMy labels.

    ``mark``: circle the pixels equal to 1 when there are at most ``MAX_MARKS`` (bad pixels).
    """
    w, h = DETECTOR_PANEL
    fig = Figure(figsize=(w * len(panels), h), dpi=DPI)
    fig.subplots_adjust(left=0.01, right=0.97, top=0.9, bottom=0.02, wspace=0.08)
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    exists = np.where(np.isfinite(modmap), 1.0, np.nan)
    background = mcolors.ListedColormap([MISSING]).with_extremes(bad=(0, 0, 0, 0))
    clear = _cmap(cmap).with_extremes(bad=(0, 0, 0, 0))
    rows, cols = np.indices(modmap.shape)
    for ax, (name, img) in zip(axes, panels, strict=True):
        vmin, vmax = limits or _limits(img)
        ax.imshow(exists, cmap=background, interpolation="nearest")
        im = ax.imshow(img, cmap=clear, vmin=vmin, vmax=vmax, interpolation="nearest")
        for m in range(16):
            sel = modmap == m
            ax.text(cols[sel].mean(), rows[sel].mean(), quadrant_name(m), ha="center",
                    va="center", fontsize=7, color="black" if m in present else "0.35",
                    bbox={"facecolor": "white", "alpha": 0.6, "pad": 1, "linewidth": 0}
                    if m in present else None)
        hits = np.argwhere(img == 1.0) if mark else np.empty((0, 2))
        if 0 < len(hits) <= MAX_MARKS:
            ax.scatter(hits[:, 1], hits[:, 0], s=30, facecolors="none", edgecolors="#d62728",
                       linewidths=0.8)
        ax.set_title(name, fontsize=10)
        ax.set_axis_off()
        if limits is None:
            fig.colorbar(im, ax=ax, label=unit, fraction=0.046, pad=0.02)
    fig.suptitle(title)
    fig.savefig(path)
    return path


def _detector_pictures(results: list[ModuleResult], out: Path, cell: int, gain: int | None,
                       geom) -> list[Path]:
    files = []
    tag = _tag(cell, gain)
    modmap = _module_map(geom)
    present = [r.module for r in results]
    names = [n for n in QUANTITIES if all(n in r.maps for r in results)]
    layout = ""
    for name in names:
        labels, unit = QUANTITIES[name]
        panels = []
        for i in _selected(name, gain):
            img, layout = assemble({r.module: r.maps[name][i] for r in results}, geom)
            panels.append((labels[i], img))
        p = out / f"detector_{name}_{tag}.png"
        files.append(_detector_figure(p, f"{name}, cell {cell}, front view; {layout}", panels,
                                      modmap, present, unit))
    if all(r.bad is not None for r in results):
        img, layout = assemble({r.module: _bad_plane(r, gain) for r in results}, geom)
        which = "any gain stage" if gain is None else f"{GAIN_NAMES[gain]} gain"
        p = out / f"detector_badpixels_{tag}.png"
        files.append(_detector_figure(
            p, f"bad pixels (red; any bit, {which}), cell {cell}; {layout}",
            [(f"{int(np.nansum(img))} bad pixels", img)], modmap, present, "",
            cmap=BAD_CMAP, limits=(0.0, 1.0), mark=True))
    return files


def plot_results(paths: Sequence[str | os.PathLike], out_dir: str | os.PathLike,
                 cell: int = 0, gain: int | None = None, *, raw: bool = False,
                 geom_file: str | os.PathLike | None = None) -> list[Path]:
    """Write the pictures of module result files ``paths`` to ``out_dir``; returns the files.

    ``cell``: memory cell of the maps; ``gain``: 0/1/2 restricts maps and histograms to that
    stage (None: all). Full-detector pictures need two or more modules; they use EXtra-geom
    (``geom_file`` or its example geometry) when installed, else the approximate layout.
    """
    if gain is not None and gain not in (0, 1, 2):
        raise PlotError(f"--gain {gain}: expected 0 (high), 1 (medium) or 2 (low)")
    results = [_load(Path(p), cell) for p in paths]
    seen: dict[int, Path] = {}
    for r in results:
        if r.module in seen:
            raise PlotError(f"{r.path}: module {r.module} also in {seen[r.module]}")
        seen[r.module] = r.path
    geom = _extra_geom(geom_file) if len(results) > 1 or geom_file is not None else None
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    files = []
    for r in results:
        files += _module_pictures(r, out, cell, gain, raw)
    if len(results) > 1:
        files += _detector_pictures(results, out, cell, gain, geom)
    return files


def main(argv: Sequence[str] | None = None) -> int:
    """``calib-mpi plot``: exit code 0, or 2 with one message on a bad input."""
    p = argparse.ArgumentParser(
        prog="calib-mpi plot",
        description="PNG maps and histograms of calib-mpi results; a full-detector image for "
                    "several modules (EXtra-geom if installed, else an approximate layout).")
    p.add_argument("results", nargs="+", type=Path, help="per-module result files")
    p.add_argument("--out", required=True, type=Path, help="output directory")
    p.add_argument("--cell", type=int, default=0, help="memory cell of the maps (default 0)")
    p.add_argument("--gain", type=int, choices=(0, 1, 2),
                   help="only this gain stage (0 high, 1 medium, 2 low; default all)")
    p.add_argument("--geom", type=Path, help="CrystFEL .geom file for the detector image "
                                              "(needs EXtra-geom)")
    p.add_argument("--raw", action="store_true",
                   help="also write the maps pixel for pixel to <out>/raw/")
    args = p.parse_args(argv)
    try:
        for f in plot_results(args.results, args.out, args.cell, args.gain, raw=args.raw,
                              geom_file=args.geom):
            print(f"wrote {f}")
    except PlotError as e:
        print(f"calib-mpi plot: error: {e}", file=sys.stderr)
        return 2
    return 0
