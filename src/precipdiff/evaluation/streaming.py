"""Streaming verification: ``init() / accumulate(pred, obs) / compute()`` (pysteps style).

Every score is reduced to additive sums, so an archive streams through one time step (or
chunk) at a time and the result equals the all-at-once value:

- moments of the ensemble mean ``f`` and the truth ``o`` -> RMSE, MAE, biases, Pearson;
- summed pointwise CRPS (ecdf and fair), member variance and squared error of the mean
  (spread-skill ratio), rank counts (random tie-breaking from a seeded generator);
- FSS sums per threshold and scale, contingency counts per threshold;
- summed RAPSD of every field, autocorrelation sums (lags 1..max_lag);
- distributions (EMD, percentiles) and Spearman ranks keep only the **non-zero** values
  plus a count of zeros; zeros dominate rain fields, so this stays small and exact.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np
import scipy.stats
import xarray as xr

from .distribution import DEFAULT_PERCENTILES, autocorrelation_from_sums, autocorrelation_sums
from .metrics import crps_ensemble_pointwise, rank_counts
from .spatial import fss_from_sums, fss_sums, scores_from_table
from .spectra import log_spectral_distance, psd_of_field, spectral_slope

__all__ = ["Accumulator"]

log = logging.getLogger(__name__)

_MOMENTS = ("n", "f", "o", "ff", "oo", "fo", "abs")


def _ranks_with_zero_block(values: np.ndarray, n_zero: int) -> tuple[np.ndarray, float]:
    """Average ranks of ``values`` among themselves plus ``n_zero`` zeros; the zeros' rank."""
    r = scipy.stats.rankdata(values) if values.size else np.zeros(0)
    shifted = r + np.where(values > 0, n_zero, np.where(values == 0, n_zero / 2.0, 0.0))
    below, ties = int((values < 0).sum()), int((values == 0).sum())
    return shifted, below + (ties + n_zero + 1) / 2.0


class Accumulator:
    """Accumulates all precipdiff verification scores over many (pred, obs) chunks.

    ``pred``: DataArray ``(member?, ..., lat, lon)``; ``obs``: the same without ``member``.
    Deterministic and categorical scores use the ensemble mean; ensemble scores (CRPS,
    spread-skill, rank histogram) are computed only when there is more than one member;
    FSS uses the member fraction of events (ensemble FSS; the field itself for one member);
    spectra, autocorrelation and intensity distributions pool all members.
    """

    def __init__(self, *, thresholds: Sequence[float] = (1.0, 5.0),
                 scales_px: Sequence[int] = (1, 2, 4, 8, 16, 32), member_dim: str = "member",
                 spatial_dims: tuple[str, str] = ("lat", "lon"), max_lag: int = 8,
                 percentiles: Sequence[float] = DEFAULT_PERCENTILES, seed: int = 0):
        self.thresholds = tuple(float(t) for t in thresholds)
        self.scales_px = tuple(int(s) for s in scales_px)
        self.member_dim = member_dim
        self.spatial_dims = tuple(spatial_dims)
        self.max_lag = max_lag
        self.percentiles = tuple(percentiles)
        self.seed = seed
        self.init()

    # -------------------------------------------------------------------------- state
    def init(self) -> None:
        """Reset all sums (also called by the constructor)."""
        self.moments = dict.fromkeys(_MOMENTS, 0.0)
        self.members: int | None = None
        self.crps = {"ecdf": 0.0, "fair": 0.0, "n": 0}
        self.spread = {"var": 0.0, "err2": 0.0, "n": 0}
        self.ranks: np.ndarray | None = None
        self.rng = np.random.default_rng(self.seed)
        self.fss = {(t, s): np.zeros(3) for t in self.thresholds for s in self.scales_px}
        self.table = {t: np.zeros(4, dtype=np.int64) for t in self.thresholds}
        self.psd = {"pred": None, "obs": None, "n_pred": 0, "n_obs": 0}
        self.acf = {"pred": np.zeros((self.max_lag, 6)), "obs": np.zeros((self.max_lag, 6))}
        self.wet = {"pred": [], "obs": [], "n0_pred": 0, "n0_obs": 0}
        self.pairs: list[np.ndarray] = []
        self.n_zero_pairs = 0

    def _arrays(self, pred: xr.DataArray, obs: xr.DataArray) -> tuple[np.ndarray, np.ndarray]:
        if self.member_dim not in pred.dims:
            pred = pred.expand_dims({self.member_dim: 1})
        lead = [d for d in obs.dims if d not in self.spatial_dims]
        obs = obs.transpose(*lead, *self.spatial_dims)
        pred = pred.transpose(self.member_dim, *lead, *self.spatial_dims)
        if pred.shape[1:] != obs.shape:
            raise ValueError(f"pred shape {pred.shape[1:]} != obs shape {obs.shape}")
        p = pred.values.astype(np.float64).reshape(pred.shape[0], -1, *pred.shape[-2:])
        return p, obs.values.astype(np.float64).reshape(-1, *obs.shape[-2:])

    def accumulate(self, pred: xr.DataArray, obs: xr.DataArray) -> None:
        """Add one chunk (one or more time steps) to the sums."""
        p, o = self._arrays(pred, obs)
        m = p.shape[0]
        if self.members is None:
            self.members = m
        elif m != self.members:
            raise ValueError(f"member count changed from {self.members} to {m}")
        mean = p.mean(0)
        valid = np.isfinite(mean) & np.isfinite(o)
        f, y = mean[valid], o[valid]
        for key, val in zip(_MOMENTS, (f.size, f.sum(), y.sum(), (f * f).sum(), (y * y).sum(),
                                       (f * y).sum(), np.abs(f - y).sum()), strict=True):
            self.moments[key] += float(val)
        if m > 1:
            ens = p[:, valid]
            for est in ("ecdf", "fair"):
                self.crps[est] += float(crps_ensemble_pointwise(ens, y, estimator=est).sum())
            self.crps["n"] += y.size
            self.spread["var"] += float(ens.var(0, ddof=1).sum())
            self.spread["err2"] += float(((f - y) ** 2).sum())
            self.spread["n"] += y.size
            counts = rank_counts(ens, y, rng=self.rng, axis=0)
            self.ranks = counts if self.ranks is None else self.ranks + counts
        for t in self.thresholds:
            ef, eo = (mean >= t) & valid, (o >= t) & valid
            self.table[t] += [(ef & eo).sum(), (~ef & eo).sum(), (ef & ~eo).sum(),
                              (valid & ~ef & ~eo).sum()]
            for s in self.scales_px:
                self.fss[(t, s)] += fss_sums(p, o, threshold=t, scale=s, member_axis=0).sum(0)
        self._accumulate_structure(p, o)
        self._accumulate_values(p, o, f, y)

    def _accumulate_structure(self, p: np.ndarray, o: np.ndarray) -> None:
        for key, arr in (("pred", p.reshape(-1, *p.shape[-2:])), ("obs", o)):
            psd = psd_of_field(np.nan_to_num(arr, nan=0.0))
            total = psd.sum(0)
            self.psd[key] = total if self.psd[key] is None else self.psd[key] + total
            self.psd[f"n_{key}"] += psd.shape[0]
            self.psd["size"] = max(arr.shape[-2:])
            self.acf[key] += autocorrelation_sums(arr, max_lag=self.max_lag)

    def _accumulate_values(self, p: np.ndarray, o: np.ndarray, f: np.ndarray,
                           y: np.ndarray) -> None:
        for key, arr in (("pred", p), ("obs", o)):
            vals = arr[np.isfinite(arr)]
            self.wet[key].append(vals[vals != 0].astype(np.float32))
            self.wet[f"n0_{key}"] += int((vals == 0).sum())
        keep = (f != 0) | (y != 0)
        self.pairs.append(np.stack([f[keep], y[keep]]).astype(np.float32))
        self.n_zero_pairs += int((~keep).sum())

    # -------------------------------------------------------------------------- results
    def compute(self) -> dict[str, float]:
        """All scores as a flat ``{name: float}`` dict (see :mod:`precipdiff.evaluation.report`)."""
        mo = self.moments
        n = mo["n"]
        out: dict[str, float] = {}
        if n == 0:
            log.warning("Accumulator.compute: no valid pixel pairs were accumulated")
            return out
        mf, mob = mo["f"] / n, mo["o"] / n
        cov = mo["fo"] / n - mf * mob
        out["rmse"] = float(np.sqrt(max(mo["ff"] - 2 * mo["fo"] + mo["oo"], 0.0) / n))
        out["mae"] = mo["abs"] / n
        out["mean_bias"] = mf - mob
        out["multiplicative_bias"] = mf / mob if mob != 0 else float("nan")
        var_f, var_o = mo["ff"] / n - mf**2, mo["oo"] / n - mob**2
        out["pearson"] = cov / np.sqrt(var_f * var_o) if var_f > 0 and var_o > 0 else np.nan
        out["spearman"] = self._spearman()
        if self.crps["n"]:
            out["crps_ecdf"] = self.crps["ecdf"] / self.crps["n"]
            out["crps_fair"] = self.crps["fair"] / self.crps["n"]
            m, err2 = self.members, self.spread["err2"]
            # undefined (NaN) for an error-free ensemble mean, e.g. members copying the truth
            out["spread_skill_ratio"] = (
                float(np.sqrt((m + 1) / m) * np.sqrt(self.spread["var"] / err2))
                if err2 > 0 else float("nan"))
            hist = self.ranks / self.ranks.sum()
            out["rank_histogram_deviation"] = float(np.abs(hist - 1.0 / (m + 1)).sum())
        for t, counts in self.table.items():
            keys = ("hits", "misses", "false_alarms", "correct_negatives")
            scores = scores_from_table(dict(zip(keys, counts, strict=True)))
            for name, val in scores.items():
                out[f"{name}@{t:g}"] = float(val)
        for (t, s), sums in self.fss.items():
            out[f"FSS@{t:g}/{s}px"] = float(fss_from_sums(sums))
        out.update(self._structure())
        out.update(self._distribution())
        return {k: float(v) for k, v in out.items()}

    def rank_histogram(self) -> np.ndarray | None:
        """Relative rank frequencies (length M + 1), or None without an ensemble."""
        return None if self.ranks is None else self.ranks / self.ranks.sum()

    def mean_psd(self) -> dict[str, np.ndarray]:
        """Mean RAPSD of the predicted fields (all members) and of the truth."""
        return {k: self.psd[k] / self.psd[f"n_{k}"] for k in ("pred", "obs")}

    def _structure(self) -> dict[str, float]:
        psd = self.mean_psd()
        freq = np.fft.fftfreq(self.psd["size"])[: psd["obs"].size]
        slope = {k: spectral_slope(xr.DataArray(v, dims="freq", coords={"freq": freq}))
                 for k, v in psd.items()}
        acf_p, acf_o = (autocorrelation_from_sums(self.acf[k]) for k in ("pred", "obs"))
        return {
            "log_spectral_distance_db": log_spectral_distance(psd["pred"], psd["obs"]),
            "spectral_slope_error": slope["pred"] - slope["obs"],
            "spatial_autocorrelation_error": float(np.nanmean(np.abs(acf_p - acf_o))),
        }

    def _distribution(self) -> dict[str, float]:
        wet = {k: np.concatenate(self.wet[k]).astype(np.float64) for k in ("pred", "obs")}
        n0 = {k: self.wet[f"n0_{k}"] for k in ("pred", "obs")}
        out = {}
        if min(wet[k].size + n0[k] for k in wet) == 0:
            return out
        vals = {k: np.concatenate([[0.0], np.sort(wet[k])]) for k in wet}  # sorted once
        wts = {k: np.concatenate([[n0[k]], np.ones(wet[k].size)]) for k in wet}
        out["emd"] = float(scipy.stats.wasserstein_distance(vals["pred"], vals["obs"],
                                                            wts["pred"], wts["obs"]))
        for p in self.percentiles:
            qp, qo = (_weighted_percentile(vals[k], wts[k], p) for k in ("pred", "obs"))
            out[f"p{p:g}_error"] = qp - qo
        return out

    def _spearman(self) -> float:
        pairs = np.concatenate(self.pairs, axis=1).astype(np.float64)
        nz = self.n_zero_pairs
        rf, r0f = _ranks_with_zero_block(pairs[0], nz)
        ro, r0o = _ranks_with_zero_block(pairs[1], nz)
        n = rf.size + nz
        sf, so = rf.sum() + nz * r0f, ro.sum() + nz * r0o
        sff, soo = (rf**2).sum() + nz * r0f**2, (ro**2).sum() + nz * r0o**2
        sfo = (rf * ro).sum() + nz * r0f * r0o
        cov = sfo / n - sf * so / n**2
        var = (sff / n - (sf / n) ** 2) * (soo / n - (so / n) ** 2)
        return float(cov / np.sqrt(var)) if var > 0 else float("nan")


def _weighted_percentile(values: np.ndarray, weights: np.ndarray, q: float) -> float:
    """``np.percentile(np.repeat(values, weights), q)`` (linear) without materialising it."""
    if np.any(np.diff(values) < 0):
        order = np.argsort(values, kind="stable")
        values, weights = values[order], weights[order]
    v, w = values, weights
    keep = w > 0
    v, w = v[keep], w[keep]
    total = w.sum()
    pos = q / 100.0 * (total - 1)
    cum = np.cumsum(w)
    lo = int(np.searchsorted(cum, np.floor(pos) + 1))
    hi = int(np.searchsorted(cum, np.floor(pos) + 2))
    hi = min(hi, v.size - 1)
    frac = pos - np.floor(pos)
    return float(v[lo] + frac * (v[hi] - v[lo]))
