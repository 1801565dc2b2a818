"""``calib-mpi export`` (pycalibration/CalCat layout) and ``calib-mpi plot`` (PNG pictures).

Fake dark result files are written directly with h5py (native layout of README "Output"),
so no MPI run is needed.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path

import h5py
import matplotlib
import matplotlib.image as mimage
import numpy as np
import pytest

from calib_mpi import export, layout, plot
from calib_mpi.config import parse_config
from calib_mpi.errors import ConfigError
from calib_mpi.geometry import xfel_to_agipd_frame

N_CELLS = 4
CONDITIONS = {"Sensor Bias Voltage": 300, "Memory cells": 4, "Acquisition rate": 4.5,
              "Gain setting": 0, "Gain mode": 0, "Integration time": 12, "Pixels X": 512,
              "Pixels Y": 128}
SS, FS = 512, 128
BAD_SS, BAD_FS = slice(100, 140), slice(10, 30)  # bad block (raw frame), cell 1, medium gain


def write_fake(path: Path, module: int, n_cells: int = N_CELLS, seed: int = 0) -> dict:
    """A dark result file: offset = ss + 1000 g + 100 c, random other planes, one bad block."""
    rng = np.random.default_rng(seed + module)
    g, c, ss, fs = np.meshgrid(np.arange(3), np.arange(n_cells), np.arange(SS), np.arange(FS),
                               indexing="ij")
    d = {
        "offset": (ss + 1000 * g + 100 * c).astype(np.float32),
        "noise": rng.uniform(1, 10, (3, n_cells, SS, FS)).astype(np.float32),
        "gain_level": rng.uniform(4000, 9000, (3, n_cells, SS, FS)).astype(np.float32),
        "gain_level_std": rng.uniform(1, 5, (3, n_cells, SS, FS)).astype(np.float32),
        "threshold": rng.uniform(5000, 8000, (2, n_cells, SS, FS)).astype(np.float32),
        "bad_pixels": np.zeros((3, n_cells, SS, FS), np.uint32),
    }
    d["bad_pixels"][1, 1, BAD_SS, BAD_FS] = 1 << 13
    d["bad_pixels"][2, 0, 5, 6] = 1 << 0
    with h5py.File(path, "w") as f:
        for k, v in d.items():
            f[k] = v
        f.attrs.update({"module": module, "n_cells": n_cells, "measurement": "dark",
                        "runs": np.array([1, 2, 3]), "calib_mpi_version": "test",
                        "conditions": json.dumps(CONDITIONS)})
    return d


@pytest.fixture
def fake(tmp_path):
    """Result files of modules 3 (wing 1, Q1M4) and 12 (wing 2, Q4M1) and their arrays."""
    files = {}
    for m in (3, 12):
        p = tmp_path / f"dark_AGIPD{m:02d}_xfel.h5"
        files[m] = (p, write_fake(p, m))
    return files


# ---------------------------------------------------------------------------- export

def test_export_layout_and_values(fake, tmp_path):
    path, d = fake[3]
    written = export.export_module(path, tmp_path / "exp", "Q1M4")
    names = sorted(p.name for p in written)
    assert names == sorted(f"{c}_AGIPD03_Q1M4.h5"
                           for c in ("Offset", "Noise", "ThresholdsDark", "BadPixelsDark"))
    expected = {
        "Offset": (d["offset"], np.float32, 3),
        "Noise": (d["noise"], np.float32, 3),
        "BadPixelsDark": (d["bad_pixels"], np.uint32, 3),
        "ThresholdsDark": (np.concatenate([d["threshold"], d["gain_level"]]), np.float32, 5),
    }
    for const, (native, dtype, k) in expected.items():
        with h5py.File(tmp_path / "exp" / f"{const}_AGIPD03_Q1M4.h5", "r") as f:
            ds = f[f"/Q1M4/{const}/0/data"]
            assert ds.shape == (FS, SS, N_CELLS, k)
            assert ds.dtype == dtype
            assert list(ds.attrs["dims"]) == ["fast_scan", "slow_scan", "cell", "gain"]
            data = ds[()]
            assert np.array_equal(data, native.transpose(3, 2, 1, 0))
            # one element by hand: pyc[fs, ss, c, g] == native[g, c, ss, fs]
            assert data[70, 300, 1, 2] == native[2, 1, 300, 70]
            assert f.attrs["Memory cells"] == N_CELLS
            assert (f.attrs["Pixels X"], f.attrs["Pixels Y"]) == (512, 128)
            assert "Gain mode" not in f.attrs and "Integration time" not in f.attrs
            assert f.attrs["source_file"] == str(path.resolve())
            assert f.attrs["data_set_name"] == f"/Q1M4/{const}/0"
    with h5py.File(tmp_path / "exp" / "ThresholdsDark_AGIPD03_Q1M4.h5", "r") as f:
        t = f["/Q1M4/ThresholdsDark/0/data"]
        assert t[7, 9, 0, 1] == d["threshold"][1, 0, 9, 7]  # t12
        assert t[7, 9, 0, 4] == d["gain_level"][2, 0, 9, 7]  # low-gain level
    with h5py.File(tmp_path / "exp" / "BadPixelsDark_AGIPD03_Q1M4.h5", "r") as f:
        bp = f["/Q1M4/BadPixelsDark/0/data"][()]
        assert np.all(bp[BAD_FS, BAD_SS, 1, 1] == 1 << 13)
        assert np.count_nonzero(bp) == 40 * 20 + 1


def test_export_cli_pdu_overwrite_and_errors(fake, tmp_path, capsys):
    out = tmp_path / "exp"
    (p3, d3), (p12, _) = fake[3], fake[12]
    assert export.main([str(p3), str(p12), "--out", str(out), "--pdu", "PDU_A", "PDU_B"]) == 0
    with h5py.File(out / "Offset_AGIPD12_PDU_B.h5", "r") as f:
        assert f.attrs["quadrant"] == "Q4M1"
        assert f["/PDU_B/Offset/0/data"].shape == (FS, SS, N_CELLS, 3)
    with h5py.File(out / "Noise_AGIPD03_PDU_A.h5", "r") as f:
        assert np.array_equal(f["/PDU_A/Noise/0/data"][()], d3["noise"].transpose(3, 2, 1, 0))
    assert export.main([str(p3), "--out", str(out), "--pdu", "PDU_A"]) == 2
    assert "exists" in capsys.readouterr().err
    assert export.main([str(p3), "--out", str(out), "--pdu", "PDU_A", "--overwrite"]) == 0
    with pytest.raises(SystemExit):  # two files, one PDU name
        export.main([str(p3), str(p12), "--out", str(out), "--pdu", "X"])
    assert export.main([str(tmp_path / "missing.h5"), "--out", str(out), "--pdu", "X"]) == 2
    with pytest.raises(export.ExportError, match="no physical detector unit"):
        export.export_module(p3, out, None, overwrite=True)
    odd = tmp_path / "odd.h5"
    write_fake(odd, 5, n_cells=3)
    with pytest.warns(UserWarning, match="the condition Memory cells is 4"):
        export.export_module(odd, out, "PDU_C")


# ---------------------------------------------------------------------------- plot

def png_size(path: Path) -> tuple[int, int]:
    """(width, height) from the IHDR chunk; asserts the PNG signature."""
    head = path.read_bytes()[:24]
    assert head[:8] == b"\x89PNG\r\n\x1a\n", f"{path} is not a PNG"
    assert head[12:16] == b"IHDR"
    return struct.unpack(">II", head[16:24])


def viridis_index(rgba: np.ndarray) -> np.ndarray:
    """Invert the 256-colour viridis map: nearest entry of each pixel's RGB."""
    lut = matplotlib.colormaps["viridis"](np.arange(256))[:, :3]
    d = ((rgba[..., None, :3] - lut[None, None]) ** 2).sum(-1)
    return d.argmin(-1)


def test_module_view_matches_geometry():
    a = np.arange(SS * FS).reshape(SS, FS)
    for m in (3, 12):
        assert np.array_equal(plot.module_view(m, a), xfel_to_agipd_frame(m, a))
    v = plot.module_view(3, a)  # formats.md 3.3, wing 1: row = fs, col = 511 - ss
    assert v[70, 511 - 100] == a[100, 70]
    v = plot.module_view(12, a)  # wing 2: row = 127 - fs, col = ss
    assert v[127 - 70, 100] == a[100, 70]
    for m in (3, 12):  # imshow extent (origin "upper"): pixel centres sit at their raw ss, fs
        left, right, bottom, top = plot._view_extent(m)
        x = left + (np.arange(SS) + 0.5) * (right - left) / SS
        y = top + (np.arange(FS) + 0.5) * (bottom - top) / FS
        v = plot.module_view(m, a)
        ss, fs = np.rint(x).astype(int), np.rint(y).astype(int)
        assert np.array_equal(v, a[ss[None, :], fs[:, None]])


def test_plot_files_maps_and_bad_block(fake, tmp_path):
    out = tmp_path / "png"
    files = plot.plot_results([fake[3][0], fake[12][0]], out, cell=1, raw=True)
    assert len(files) == len(set(files))
    sizes = {p.relative_to(out).as_posix(): png_size(p) for p in files if p.suffix == ".png"}
    for label in ("AGIPD03_Q1M4", "AGIPD12_Q4M1"):
        assert sizes[f"{label}_offset_c1.png"] == (1200, 960)
        assert sizes[f"{label}_noise_c1.png"] == (1200, 960)
        assert sizes[f"{label}_threshold_c1.png"] == (1200, 640)
        assert sizes[f"{label}_badpixels_c1.png"] == (1200, 320)
        assert sizes[f"{label}_hist.png"] == (1200, 450)
        for g in range(3):
            assert sizes[f"raw/{label}_offset_{g}_c1.png"] == (512, 128)
        assert sizes[f"raw/{label}_badpixels_c1.png"] == (512, 128)
        assert sizes[f"{label}_badpixels_bit13_c1.png"] == (1200, 320)  # the bad block
        assert f"{label}_badpixels_bit00_c1.png" not in sizes  # bit 0 only at cell 0
    assert sizes["detector_offset_c1.png"] == (2100, 700)
    assert sizes["detector_threshold_c1.png"] == (1400, 700)
    assert sizes["detector_badpixels_c1.png"] == (700, 700)

    # offset = ss (+ constants): colour index follows the documented 1-99 % colour limits
    lo, hi = np.percentile(np.arange(SS) + 1100.0, [1, 99])
    want = np.clip(np.floor((np.arange(SS) + 1100.0 - lo) / (hi - lo) * 256), 0, 255)
    for m, label in ((3, "AGIPD03_Q1M4"), (12, "AGIPD12_Q4M1")):
        idx = viridis_index(mimage.imread(out / f"raw/{label}_offset_1_c1.png"))
        assert idx.shape == (FS, SS)
        assert np.all(idx == idx[:1])  # no dependence on fs
        ss_of_col = 511 - np.arange(SS) if m == 3 else np.arange(SS)  # wing 1 mirrored
        assert np.abs(idx[0] - want[ss_of_col]).max() <= 1

        bad = mimage.imread(out / f"raw/{label}_badpixels_c1.png")
        red = (bad[..., 0] > 0.7) & (bad[..., 1] < 0.3)
        good = np.abs(bad[..., :3] - plot.BAD_CMAP(0)[:3]).max(-1) < 0.01
        expect = np.zeros((SS, FS), bool)
        expect[BAD_SS, BAD_FS] = True
        expect = plot.module_view(m, expect)
        assert np.array_equal(red, expect)
        assert np.array_equal(good, ~expect)
        rows, cols = np.nonzero(red)
        if m == 3:  # rows = fs, cols = 511 - ss
            assert (rows.min(), rows.max(), cols.min(), cols.max()) == (10, 29, 372, 411)
        else:  # rows = 127 - fs, cols = ss
            assert (rows.min(), rows.max(), cols.min(), cols.max()) == (98, 117, 100, 139)

    # the detector picture shows the red block; nothing red without bad pixels at cell 1
    det = mimage.imread(out / "detector_badpixels_c1.png")
    assert np.count_nonzero((det[..., 0] > 0.7) & (det[..., 1] < 0.3) & (det[..., 2] < 0.3)) > 20


def test_plot_gain_selection_and_cli(fake, tmp_path, capsys):
    out = tmp_path / "png"
    assert plot.main([str(fake[3][0]), "--out", str(out), "--cell", "0", "--gain", "2"]) == 0
    names = {p.name for p in out.iterdir()}
    assert names == {"AGIPD03_Q1M4_offset_c0_g2.png", "AGIPD03_Q1M4_noise_c0_g2.png",
                     "AGIPD03_Q1M4_threshold_c0_g2.png", "AGIPD03_Q1M4_badpixels_c0_g2.png",
                     "AGIPD03_Q1M4_hist_g2.png", "AGIPD03_Q1M4_badpixels_bits_g2.txt",
                     "AGIPD03_Q1M4_badpixels_bit00_c0_g2.png"}  # bit 0: gain 2, cell 0
    assert png_size(out / "AGIPD03_Q1M4_offset_c0_g2.png") == (1200, 320)
    assert png_size(out / "AGIPD03_Q1M4_threshold_c0_g2.png") == (1200, 320)  # t12 only
    assert plot.main([str(fake[3][0]), "--out", str(out), "--cell", str(N_CELLS)]) == 2
    assert "--cell" in capsys.readouterr().err
    assert plot.main([str(fake[3][0]), str(fake[3][0]), "--out", str(out)]) == 2


def test_detector_image_pixels_sit_where_extra_geom_puts_them():
    """Every pixel of the assembled default-geometry image is drawn (image pixel centre on
    the plot axes) within half a pixel of EXtra-geom's own position for it, once."""
    lay = layout.detector_layout(detector="SPB_DET_AGIPD1M-1")
    assert "SPB default quadrant positions" in lay.name
    index = np.arange(16 * SS * FS, dtype=np.float64).reshape(16, SS, FS)
    img = lay.assemble({m: index[m] for m in range(16)})
    rows, cols = np.nonzero(np.isfinite(img))
    m, ss, fs = np.unravel_index(img[rows, cols].astype(np.int64), (16, SS, FS))
    assert len(m) == 16 * SS * FS and len(np.unique(img[rows, cols])) == len(m)
    x, y = lay.to_axes(rows, cols)
    truth = lay.geom.get_pixel_positions()[..., :2] / lay.geom.pixel_size
    assert np.abs(x - truth[m, ss, fs, 0]).max() <= 0.5 + 1e-9
    assert np.abs(y - truth[m, ss, fs, 1]).max() <= 0.5 + 1e-9
    # the same geometry EXtra-geom documents: quadrant positions round-trip
    assert np.allclose(lay.geom.quad_positions(), layout.EXAMPLE_QUAD_POS)
    # mm axes: the same image, 0.2 mm per pixel
    mm = layout.detector_layout(units="mm")
    assert np.allclose(np.array(mm.extent), np.array(lay.extent) * 0.2)


def test_quad_pos_geom_file_and_errors(tmp_path):
    q = [-520, 620, -545, -15, 515, -165, 540, 470]
    lay = layout.detector_layout(quad_pos=q)
    assert np.allclose(lay.geom.quad_positions(), np.reshape(q, (4, 2)))
    geom_file = tmp_path / "agipd.geom"
    lay.geom.write_crystfel_geom(str(geom_file))
    from_file = layout.detector_layout(geom_file=geom_file)
    assert "agipd.geom" in from_file.name
    assert np.allclose(from_file.geom.get_pixel_positions(), lay.geom.get_pixel_positions(),
                       atol=1e-6)
    mid = layout.detector_layout(detector="MID_DET_AGIPD1M-1")
    assert "no MID default" in mid.name
    with pytest.raises(layout.LayoutError, match="expected 8 numbers"):
        layout.detector_layout(quad_pos=q[:6])
    bad = tmp_path / "bad.geom"
    bad.write_text("nonsense\n")
    with pytest.raises(layout.LayoutError, match="bad.geom"):
        layout.detector_layout(geom_file=bad)


def test_bad_pixel_bit_table(fake, tmp_path):
    out = tmp_path / "png"
    plot.plot_results([fake[3][0]], out, cell=0)
    text = (out / "AGIPD03_Q1M4_badpixels_bits.txt").read_text().splitlines()
    rows = {int(line.split()[0]): line.split() for line in text[2:]}
    assert set(rows) == {0, 13}
    n_block = 40 * 20
    # bit, value, name, entries, % entries, pixels (any cell), at cell 0
    assert rows[0][1:4] == ["1", "OFFSET_OUT_OF_THRESHOLD", "1"]
    assert rows[0][5:] == ["1", "1"]
    assert rows[13][1:4] == ["8192", "GAIN_THRESHOLDING_ERROR", str(n_block)]
    assert rows[13][5:] == [str(n_block), "0"]
    total = 3 * N_CELLS * SS * FS
    assert float(rows[13][4]) == pytest.approx(100 * n_block / total, abs=1e-4)
    assert (out / "AGIPD03_Q1M4_badpixels_bit00_c0.png").is_file()
    assert not (out / "AGIPD03_Q1M4_badpixels_bit13_c0.png").exists()


def test_picture_config_keys(tmp_path):
    base = tmp_path / "run.conf"
    base.write_text(f"input_dir = {tmp_path}\nruns = 1 2 3\nmodules = 0\n"
                    f"output_dir = {tmp_path / 'out'}\n")
    cfg = parse_config([str(base)])
    assert (cfg.geometry, cfg.quad_pos, cfg.plot_units) == (None, None, "px")
    q = "-520 620 -545 -15 515 -165 540 470"
    cfg = parse_config([str(base), "--quad_pos", *q.split(), "--plot_units", "mm"])
    assert cfg.quad_pos == tuple(float(v) for v in q.split()) and cfg.plot_units == "mm"
    geom = tmp_path / "agipd.geom"
    with pytest.raises(ConfigError, match="agipd.geom not found"):
        parse_config([str(base), "--geometry", str(geom)])
    geom.write_text("")
    assert parse_config([str(base), "--geometry", str(geom)]).geometry == geom
    with pytest.raises(ConfigError, match="give one of them"):
        parse_config([str(base), "--geometry", str(geom), "--quad_pos", *q.split()])
    with pytest.raises(ConfigError, match="quad_pos: .* expected 8 numbers"):
        parse_config([str(base), "--quad_pos", "1", "2"])
