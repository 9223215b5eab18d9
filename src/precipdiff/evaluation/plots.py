"""Verification figures (matplotlib, Agg backend), each written atomically as a PNG.

Every function takes the data, a target ``path`` and keyword options, writes one PNG of a
fixed size, closes the figure and returns the path. Rain maps use a logarithmic colour scale
from 0.1 mm h⁻¹ with dry pixels white and missing pixels grey, so light and heavy rain are both
readable; every colour bar and axis names its quantity and unit, every map title says which
member (or the ensemble mean, or the truth) it shows.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path

import matplotlib
import matplotlib.ticker

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import xarray as xr  # noqa: E402
from matplotlib.colors import LogNorm  # noqa: E402

from precipdiff.atomic import atomic_path  # noqa: E402

__all__ = [
    "ensemble_maps",
    "error_violins",
    "four_panel_maps",
    "fss_curves",
    "intensity_histograms",
    "psd_curves",
    "rank_histogram_plot",
    "sequence_gif",
    "sequence_strip",
]

log = logging.getLogger(__name__)

RAIN_MIN = 0.1  # mm/h, lower end of the colour scale; below is "dry"
RATE = "mm h⁻¹"  # unit of every rain-rate axis and colour bar
DPI = 110


def _rain_cmap() -> matplotlib.colors.Colormap:
    return matplotlib.colormaps["viridis"].with_extremes(under="white", bad="0.75")


def _save(fig: plt.Figure, path: str | Path) -> Path:
    target = Path(path)
    with atomic_path(target) as tmp:
        fig.savefig(tmp, format="png", dpi=DPI, bbox_inches="tight")
    plt.close(fig)
    log.info("wrote %s", target)
    return target


def _extent(da: xr.DataArray) -> list[float] | None:
    if {"lat", "lon"} <= set(da.coords):
        lat, lon = da["lat"].values, da["lon"].values
        dlat = (lat[-1] - lat[0]) / max(lat.size - 1, 1) / 2
        dlon = (lon[-1] - lon[0]) / max(lon.size - 1, 1) / 2
        return [lon[0] - dlon, lon[-1] + dlon, lat[0] - dlat, lat[-1] + dlat]
    return None


def _rain_image(ax: plt.Axes, da: xr.DataArray, norm: LogNorm, title: str):
    ax.set_title(title, fontsize=10)
    v = np.asarray(da.values, dtype=float)
    # LogNorm masks 0 (log 0); map dry values below the scale so they show as "under" (white)
    v = np.where(np.isfinite(v) & (v < norm.vmin), norm.vmin / 2, v)
    ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(4))
    return ax.imshow(v, origin="lower", extent=_extent(da), cmap=_rain_cmap(), norm=norm,
                     interpolation="nearest", aspect="auto")


PANEL_TITLES = ("source (coarse)", "Stage I corrected, member 0 (coarse)",
                "Stage II downscaled, member 0 (fine)", "truth (fine)")


def four_panel_maps(source: xr.DataArray, corrected_lr: xr.DataArray, downscaled: xr.DataArray,
                    truth: xr.DataArray, path: str | Path, *, title: str = "",
                    units: str = RATE, panel_titles: Sequence[str] = PANEL_TITLES) -> Path:
    """Source, corrected LR, downscaled and truth (2-D lat/lon fields) on one log colour scale.

    ``panel_titles`` name what each panel shows (which member, or the ensemble mean).
    """
    fields = [source, corrected_lr, downscaled, truth]
    vmax = max(float(np.nanmax(f.values)) if np.isfinite(f.values).any() else 1.0
               for f in fields)
    norm = LogNorm(vmin=RAIN_MIN, vmax=max(vmax, 10 * RAIN_MIN))
    fig, axes = plt.subplots(1, 4, figsize=(16, 4.4), sharex=True, sharey=True,
                             constrained_layout=True)
    for ax, da, name in zip(axes, fields, panel_titles, strict=True):
        im = _rain_image(ax, da, norm, name)
        ax.set_xlabel("longitude (°E)")
    axes[0].set_ylabel("latitude (°N)")
    fig.colorbar(im, ax=axes, shrink=0.9, label=f"precipitation rate ({units})", extend="both")
    if title:
        fig.suptitle(title)
    return _save(fig, path)


def error_violins(errors: Mapping[str, np.ndarray | xr.DataArray], path: str | Path, *,
                  title: str = "pixel errors (prediction - truth)", units: str = RATE,
                  max_points: int = 200_000, seed: int = 0) -> Path:
    """Violin plot of pixel errors per method (finite values; subsampled to ``max_points``)."""
    rng = np.random.default_rng(seed)
    data = []
    for values in errors.values():
        v = np.asarray(values, dtype=float).ravel()
        v = v[np.isfinite(v)]
        data.append(rng.choice(v, max_points, replace=False) if v.size > max_points else v)
    fig, ax = plt.subplots(figsize=(max(4, 1.6 * len(data) + 2), 4.5), constrained_layout=True)
    parts = ax.violinplot(data, showmedians=True, showextrema=False)
    for body in parts["bodies"]:
        body.set_alpha(0.6)
    ax.axhline(0, color="k", lw=0.8)
    ax.set_xticks(range(1, len(data) + 1), list(errors), rotation=20)
    ax.set_yscale("symlog", linthresh=1.0)
    ax.set_ylabel(f"error ({units}, symlog)")
    ax.set_title(title)
    return _save(fig, path)


def psd_curves(psds: Mapping[str, xr.DataArray], path: str | Path, *,
               dx_km: float = 1.0, title: str = "radially averaged power spectrum",
               units: str = RATE) -> Path:
    """Log-log RAPSD curves (outputs of :func:`spectra.rapsd`) against wavelength in km."""
    fig, ax = plt.subplots(figsize=(6.5, 4.5), constrained_layout=True)
    for name, psd in psds.items():
        f = np.asarray(psd["freq"], dtype=float)
        ok = f > 0
        ax.loglog(f[ok] / dx_km, np.asarray(psd)[ok], label=name,
                  lw=2.2 if name.lower().startswith("truth") else 1.4,
                  color="k" if name.lower().startswith("truth") else None)
    ax.set_xlabel("wavenumber (cycles / km)")
    ax.set_ylabel(f"power (({units})²)")
    sec = ax.secondary_xaxis("top", functions=(lambda k: 1 / np.maximum(k, 1e-12),
                                               lambda w: 1 / np.maximum(w, 1e-12)))
    sec.set_xlabel("wavelength (km)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    ax.set_title(title)
    return _save(fig, path)


def intensity_histograms(fields: Mapping[str, np.ndarray | xr.DataArray], path: str | Path, *,
                         bins: int = 60, vmin: float = RAIN_MIN, units: str = RATE) -> Path:
    """Log-log frequency of rain intensities ``>= vmin`` per method (density per mm/h)."""
    values = {k: np.asarray(v, dtype=float).ravel() for k, v in fields.items()}
    vmax = max(float(np.nanmax(v)) if np.isfinite(v).any() else vmin * 10 for v in values.values())
    edges = np.logspace(np.log10(vmin), np.log10(max(vmax, vmin * 10)), bins + 1)
    fig, ax = plt.subplots(figsize=(6.5, 4.5), constrained_layout=True)
    wet = False
    for name, v in values.items():
        v = v[np.isfinite(v)]
        counts, _ = np.histogram(v, edges)
        wet = wet or bool(counts.any())
        dens = counts / max(v.size, 1) / np.diff(edges)
        centres = np.sqrt(edges[:-1] * edges[1:])
        is_truth = name.lower().startswith("truth")
        ax.step(centres, np.where(dens > 0, dens, np.nan), where="mid", label=name,
                lw=2.2 if is_truth else 1.4, color="k" if is_truth else None)
    ax.set_xscale("log")
    if wet:  # a log axis needs one positive density: a dry scene keeps a linear one
        ax.set_yscale("log")
    else:
        ax.text(0.5, 0.5, f"no intensity >= {vmin:g} {units}", transform=ax.transAxes,
                ha="center", va="center")
    ax.set_xlabel(f"intensity ({units})")
    ax.set_ylabel(f"frequency density (per {units})")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    ax.set_title("intensity distribution")
    return _save(fig, path)


def ensemble_maps(ensemble: xr.DataArray, path: str | Path, *, threshold: float = 1.0,
                  member_dim: str = "member", truth: xr.DataArray | None = None,
                  units: str = RATE) -> Path:
    """Ensemble mean, spread (member std) and ``P(x >= threshold)`` maps of a 2-D ensemble."""
    mean = ensemble.mean(member_dim)
    spread = ensemble.std(member_dim, ddof=1)
    prob = (ensemble >= threshold).mean(member_dim).where(ensemble.notnull().all(member_dim))
    n = 4 if truth is not None else 3
    fig, axes = plt.subplots(1, n, figsize=(4.2 * n, 4.4), sharex=True, sharey=True,
                             constrained_layout=True)
    vmax = float(np.nanmax(ensemble.values))
    norm = LogNorm(vmin=RAIN_MIN, vmax=max(vmax, 10 * RAIN_MIN))
    im = _rain_image(axes[0], mean, norm, f"ensemble mean ({ensemble.sizes[member_dim]} members)")
    fig.colorbar(im, ax=axes[0], shrink=0.8, label=f"precipitation rate ({units})",
                 extend="both")
    snorm = LogNorm(vmin=RAIN_MIN / 10, vmax=max(float(np.nanmax(spread.values)), RAIN_MIN))
    im = _rain_image(axes[1], spread, snorm, "ensemble spread (member std)")
    fig.colorbar(im, ax=axes[1], shrink=0.8, label=f"standard deviation ({units})", extend="both")
    cmap = matplotlib.colormaps["Blues"].with_extremes(bad="0.75")
    axes[2].set_title(f"P(rain >= {threshold:g} {units})", fontsize=10)
    im = axes[2].imshow(prob.values, origin="lower", extent=_extent(prob), cmap=cmap, vmin=0,
                        vmax=1, interpolation="nearest", aspect="auto")
    fig.colorbar(im, ax=axes[2], shrink=0.8, label="fraction of members")
    if truth is not None:
        im = _rain_image(axes[3], truth, norm, f"truth (red: ≥ {threshold:g} {units})")
        fig.colorbar(im, ax=axes[3], shrink=0.8, label=f"precipitation rate ({units})",
                     extend="both")
        axes[3].contour(np.asarray(truth.values >= threshold, float), levels=[0.5],
                        colors="r", linewidths=0.6, origin="lower", extent=_extent(truth))
    return _save(fig, path)


def rank_histogram_plot(hists: Mapping[str, np.ndarray | xr.DataArray], path: str | Path, *,
                        title: str = "rank histogram") -> Path:
    """Bar chart(s) of relative rank frequencies with the flat (reliable) line."""
    fig, ax = plt.subplots(figsize=(6.5, 4.2), constrained_layout=True)
    width = 0.8 / max(len(hists), 1)
    for i, (name, h) in enumerate(hists.items()):
        h = np.asarray(h, dtype=float)
        h = h / h.sum()
        ax.bar(np.arange(h.size) + (i - (len(hists) - 1) / 2) * width, h, width, label=name)
        ax.axhline(1.0 / h.size, color="k", ls="--", lw=1)
    ax.set_xlabel("rank of the observation among the members")
    ax.set_ylabel("relative frequency")
    ax.set_title(title + " (dashed: perfectly reliable)")
    ax.legend()
    return _save(fig, path)


def fss_curves(fss: Mapping[str, Mapping[int, float]], path: str | Path, *, threshold: float,
               dx_km: float = 1.0, base_rate: float | None = None, units: str = RATE) -> Path:
    """FSS against neighbourhood size per method; optional ``0.5 + f0/2`` usefulness line."""
    fig, ax = plt.subplots(figsize=(6.5, 4.5), constrained_layout=True)
    for name, curve in fss.items():
        scales: Sequence[int] = sorted(curve)
        ax.plot(np.array(scales) * dx_km, [curve[s] for s in scales], marker="o", label=name)
    if base_rate is not None:
        ax.axhline(0.5 + base_rate / 2, color="k", ls="--", lw=1,
                   label=f"useful (0.5 + f0/2 = {0.5 + base_rate / 2:.2f})")
    ax.set_xscale("log", base=2)
    ax.xaxis.set_major_formatter(matplotlib.ticker.ScalarFormatter())
    ax.set_ylim(0, 1)
    ax.set_xlabel("neighbourhood size (km)")
    ax.set_ylabel("FSS")
    ax.set_title(f"fractions skill score, rain >= {threshold:g} {units}")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    return _save(fig, path)


def sequence_strip(rows: Mapping[str, np.ndarray], path: str | Path, *,
                   times: Sequence[str] | None = None, every: int = 1,
                   title: str = "") -> Path:
    """Rows of rain maps over time (e.g. truth, a temporal member, a per-frame member).

    ``rows`` maps a row label to a ``(time, y, x)`` array in mm/h; every ``every``-th frame is a
    column, titled by ``times``. One colour scale for the whole figure.
    """
    labels = list(rows)
    n = next(iter(rows.values())).shape[0]
    cols = list(range(0, n, max(1, every)))
    vmax = max(float(np.nanmax(r[cols])) for r in rows.values())
    norm = LogNorm(vmin=RAIN_MIN, vmax=max(vmax, 1.0))
    fig, axes = plt.subplots(len(labels), len(cols), figsize=(1.9 * len(cols) + 1.0,
                                                             1.9 * len(labels) + 0.6),
                             squeeze=False)
    im = None
    for i, label in enumerate(labels):
        for j, t in enumerate(cols):
            ax = axes[i][j]
            head = times[t] if times is not None else f"frame {t}"
            im = _rain_image(ax, xr.DataArray(rows[label][t]), norm, head if i == 0 else "")
            ax.set_xticks([])
            ax.set_yticks([])
            if j == 0:
                ax.set_ylabel(label, fontsize=9)
    fig.colorbar(im, ax=axes, shrink=0.8, label=f"rain rate ({RATE})", extend="both")
    if title:
        fig.suptitle(title, fontsize=11)
    return _save(fig, path)


def sequence_gif(rows: Mapping[str, np.ndarray], path: str | Path, *,
                 times: Sequence[str] | None = None, fps: float = 3.0, title: str = "") -> Path:
    """An animated GIF of ``rows`` side by side (one panel per row label, one frame per time),
    written atomically with Pillow."""
    from matplotlib.animation import FuncAnimation, PillowWriter

    labels = list(rows)
    n = next(iter(rows.values())).shape[0]
    vmax = max(float(np.nanmax(r)) for r in rows.values())
    norm = LogNorm(vmin=RAIN_MIN, vmax=max(vmax, 1.0))
    fig, axes = plt.subplots(1, len(labels), figsize=(2.6 * len(labels) + 0.8, 3.0),
                             squeeze=False)
    images = []
    for ax, label in zip(axes[0], labels, strict=True):
        images.append(_rain_image(ax, xr.DataArray(rows[label][0]), norm, label))
        ax.set_xticks([])
        ax.set_yticks([])
    fig.colorbar(images[0], ax=axes, shrink=0.8, label=f"rain rate ({RATE})", extend="both")
    heading = fig.suptitle("", fontsize=10)

    def frame(t: int):
        for im, label in zip(images, labels, strict=True):
            v = np.asarray(rows[label][t], float)
            im.set_data(np.where(np.isfinite(v) & (v < norm.vmin), norm.vmin / 2, v))
        heading.set_text(f"{title} {times[t] if times is not None else t}".strip())
        return images

    anim = FuncAnimation(fig, frame, frames=n, blit=False)
    target = Path(path)
    with atomic_path(target) as tmp:
        named = Path(f"{tmp}.gif")  # Pillow picks the format from the suffix
        try:
            anim.save(str(named), writer=PillowWriter(fps=fps), dpi=72)
            named.replace(tmp)
        finally:
            named.unlink(missing_ok=True)
    plt.close(fig)
    log.info("wrote %s", target)
    return target
