"""Every figure renders to a valid PNG on synthetic data (also a script to look at them)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from eval_helpers import as_field, rain

from precipdiff.baselines import interpolate
from precipdiff.evaluation import Accumulator, plots, spectra
from precipdiff.grid import coarsen

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def make_all(out: Path, rng: np.random.Generator) -> list[Path]:
    truth = as_field(rain(rng, (2, 128, 128), wet=0.35, smooth=4.0)).astype("float32")
    lr = coarsen(truth, 8, method="mean")
    source = lr * 0.6
    nearest = interpolate(lr, 8, method="nearest")
    bilinear = interpolate(lr, 8, method="bilinear")
    ens = (bilinear.expand_dims(member=6) * rng.lognormal(0, 0.5, (6, *truth.shape))).clip(0)
    ens = ens.where(ens > 0.3, 0.0)
    methods = {"bilinear": bilinear, "nearest": nearest, "ensemble": ens}
    t0 = {k: v.isel(time=0) for k, v in methods.items()}
    paths = [
        plots.four_panel_maps(source.isel(time=0), lr.isel(time=0), ens.isel(member=0, time=0),
                              truth.isel(time=0), out / "maps.png", title="synthetic case"),
        plots.error_violins({k: (v - truth) for k, v in methods.items()}, out / "violins.png"),
        plots.psd_curves({"truth": spectra.rapsd(truth),
                          **{k: spectra.rapsd(v) for k, v in methods.items()}},
                         out / "psd.png"),
        plots.intensity_histograms({"truth": truth, **methods}, out / "hist.png"),
        plots.ensemble_maps(ens.isel(time=0), out / "ensemble.png", threshold=1.0,
                            truth=truth.isel(time=0)),
    ]
    acc = Accumulator(thresholds=(1.0,), scales_px=(1,))
    acc.accumulate(ens, truth)
    paths.append(plots.rank_histogram_plot({"ensemble": acc.rank_histogram()}, out / "rank.png"))
    from precipdiff.evaluation.spatial import fss

    scales = (1, 2, 4, 8, 16, 32)
    curves = {k: {s: float(fss(v, truth, threshold=1.0, scale=s)) for s in scales}
              for k, v in methods.items()}
    paths.append(plots.fss_curves(curves, out / "fss.png", threshold=1.0,
                                  base_rate=float((truth >= 1).mean())))
    assert len(t0) == 3
    return paths


def test_all_figures_render(tmp_path, rng):
    paths = make_all(tmp_path, rng)
    assert len(paths) == 7
    for p in paths:
        assert p.read_bytes()[:8] == PNG_MAGIC and p.stat().st_size > 5000
    assert not list(tmp_path.glob(".*tmp*"))  # atomic writes leave no temp files


if __name__ == "__main__":  # python tests/evaluation/test_plots.py /tmp/figs
    import sys

    for p in make_all(Path(sys.argv[1]), np.random.default_rng(0)):
        print(p)


def _texts(fig) -> dict[str, list[str]]:
    """Titles and axis labels of every axes of a figure (colour bars are axes too)."""
    return {
        "titles": [ax.get_title() for ax in fig.axes],
        "labels": [ax.get_ylabel() for ax in fig.axes] + [ax.get_xlabel() for ax in fig.axes],
    }


def test_maps_name_members_and_units(tmp_path, rng, monkeypatch):
    seen = []
    real_save = plots._save

    def save(fig, path):
        seen.append(_texts(fig))
        return real_save(fig, path)

    monkeypatch.setattr(plots, "_save", save)
    make_all(tmp_path, rng)
    maps, ensemble = seen[0], seen[4]
    assert any("member 0" in t for t in maps["titles"]) and "truth (fine)" in maps["titles"]
    assert "precipitation rate (mm h⁻¹)" in maps["labels"]
    assert any(t.startswith("ensemble mean (6 members)") for t in ensemble["titles"])
    assert any(t.startswith("truth") for t in ensemble["titles"])
    units = [lab for lab in ensemble["labels"] if "mm h⁻¹" in lab]
    assert len(units) >= 3  # mean, spread and truth colour bars
    assert all("mm/h" not in lab for fig in seen for lab in fig["labels"] + fig["titles"])


def test_dry_scene_renders(tmp_path):
    """No rain anywhere (a dry real scene): every figure still renders, none raises."""
    dry = as_field(np.zeros((1, 32, 32)))
    ens = as_field(np.zeros((3, 1, 32, 32)), member=True)
    paths = [
        plots.intensity_histograms({"truth": dry, "ensemble": ens}, tmp_path / "hist.png"),
        plots.psd_curves({"truth": spectra.rapsd(dry), "ensemble": spectra.rapsd(ens)},
                         tmp_path / "psd.png"),
        plots.ensemble_maps(ens.isel(time=0), tmp_path / "ens.png", truth=dry.isel(time=0)),
    ]
    assert all(p.read_bytes()[:8] == PNG_MAGIC for p in paths)


def test_sequence_strip_and_gif(tmp_path, rng):
    from PIL import Image

    from precipdiff.evaluation.plots import sequence_gif, sequence_strip

    rows = {"truth": rng.gamma(0.5, 2.0, (4, 12, 12)),
            "member 0": np.zeros((4, 12, 12))}  # a dry row renders too
    times = [f"10:{5 * t:02d}" for t in range(4)]
    png = sequence_strip(rows, tmp_path / "s.png", times=times, every=2, title="t")
    assert png.stat().st_size > 0 and Image.open(png).format == "PNG"
    gif = sequence_gif(rows, tmp_path / "s.gif", times=times)
    with Image.open(gif) as im:
        assert im.format == "GIF" and im.n_frames == 4
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.gif", "s.png"]
