"""A run's parts from its config: the store and datasets, the conditioning channels, the frozen
regression mean of ``train.mean_from``, and the release weights (:mod:`precipdiff.release`)."""

from __future__ import annotations

import dataclasses
import json
import logging
from typing import Any

import torch
from torch import nn

from precipdiff import __version__
from precipdiff.errors import CheckpointError, ConfigError
from precipdiff.release import InputSemantics, Release
from precipdiff.training.config import RunConfig
from precipdiff.training.objective import network_labels

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class CorpusView:
    """A corpus store (:mod:`precipdiff.data.corpus`) seen as a run's store: the attributes the
    run and its release read (``path``, ``factor``, ``pooling``, ``attrs["transform"]``,
    ``extra_names``, ``splits``). Corpus samples carry no extras; ``splits`` names the splits
    that at least one network has (whole events: ``train``, ``test``, optionally ``val``);
    ``network_splits`` each network's."""

    path: Any
    factor: int
    pooling: str
    attrs: dict[str, Any]
    networks: tuple[str, ...]
    network_splits: dict[str, tuple[str, ...]]
    extra_names: tuple[str, ...] = ()

    @classmethod
    def open(cls, path: Any) -> CorpusView:
        from precipdiff.data.corpus import open_corpus

        corpus = open_corpus(path)
        attrs = {"transform": dict(corpus.attrs["transform"]), "extra_stats": {},
                 "event_ids": corpus.event_ids, "frames": dict(corpus.attrs.get("frames", {}))}
        return cls(path=corpus.path, factor=corpus.factor, pooling=corpus.pooling, attrs=attrs,
                   networks=tuple(corpus.networks),
                   network_splits={n: tuple(per) for n, per in corpus.splits.items()})

    def splits_of(self, networks: Any) -> tuple[str, ...]:
        """The splits that at least one of ``networks`` has."""
        return tuple(sorted({s for n in networks for s in self.network_splits[n]}))

    @property
    def splits(self) -> tuple[str, ...]:
        return self.splits_of(self.networks)


def open_store_or_corpus(path: Any) -> Any:
    """The paired store (:func:`precipdiff.data.store.open_store`) or a :class:`CorpusView`
    when ``path`` is a corpus store; StoreError for a missing/foreign/incomplete one."""
    from precipdiff.data.corpus import is_corpus
    from precipdiff.data.store import open_store

    return CorpusView.open(path) if is_corpus(path) else open_store(path)


def open_data(cfg: RunConfig) -> tuple[Any, Any, dict[str, Any] | None, Any]:
    """``(store, train_ds, val_args, source_map)``; StoreError for a missing/foreign/incomplete
    store.

    ``data.store`` may be a paired store (:class:`~precipdiff.data.dataset.PatchDataset`) or a
    corpus store (:class:`~precipdiff.data.corpus_dataset.CorpusPatchDataset` across its
    networks, drawn with ``data.weighting``; the store is then a :class:`CorpusView`).
    Either way the train split trains and the ``val`` split (whole events) validates; the
    corpus's held-out ``test`` events are never touched. ``val_args`` are the keyword arguments
    of :func:`validation_patches` (``None`` without validation); ``source_map`` is
    :func:`fit_source_map`'s mapping (or None), fitted once here for the datasets and the
    release metadata.
    """
    from precipdiff.data.corpus_dataset import CorpusPatchDataset
    from precipdiff.data.dataset import PatchDataset

    store = open_store_or_corpus(cfg.data.store)
    d = cfg.data
    corpus = isinstance(store, CorpusView)
    if corpus and d.source_map is not None:
        raise ConfigError(f"data.source_map: {d.source_map!r} is fitted on one paired store; "
                          f"{store.path} is a corpus of {len(store.networks)} networks "
                          "(set data.source_map: null)")
    if not corpus and d.networks is not None:
        raise ConfigError(f"data.networks: {list(d.networks)} selects networks of a corpus "
                          f"store; {store.path} is a paired store (remove data.networks)")
    qm = fit_source_map(cfg, store)
    source_map = qm.apply_values if qm is not None else None
    common = {"split": "train", "stage": cfg.train.stage, "patch": d.patch,
              "samples_per_epoch": d.samples_per_epoch, "rain_weighted": d.rain_weighted,
              "augment": d.augment, "seed": cfg.train.seed}
    if corpus:
        train_ds = CorpusPatchDataset(store.path, weighting=d.weighting, networks=d.networks,
                                      **common)
        log.info("corpus %s: networks %s (weighting %s), factor %d, pooling %s", store.path,
                 ", ".join(train_ds.chosen), d.weighting, store.factor, store.pooling)
    else:
        train_ds = PatchDataset(store.path, source_map=source_map, **common)
    val = None
    splits = store.splits_of(train_ds.chosen) if corpus else store.splits
    if d.val_patches and "val" in splits:
        val = {"store": store.path, "split": "val", "stage": cfg.train.stage, "n": d.val_patches,
               "patch": d.patch, "seed": cfg.train.seed, "rain_weighted": d.rain_weighted}
        val.update({"weighting": d.weighting, "networks": d.networks} if corpus
                   else {"source_map": source_map})
    elif d.val_patches:
        log.warning("%s has no 'val' split: no validation", store.path)
    return store, train_ds, val, qm


def validation_patches(**val_args: Any) -> dict[str, torch.Tensor]:
    """The fixed validation patches of ``open_data``'s ``val_args``: ``data.dataset.val_patches``
    on a paired store, ``data.corpus_dataset.corpus_val_patches`` on a corpus."""
    from precipdiff.data.corpus import is_corpus
    from precipdiff.data.corpus_dataset import corpus_val_patches
    from precipdiff.data.dataset import val_patches

    fn = corpus_val_patches if is_corpus(val_args["store"]) else val_patches
    return fn(**val_args)


def fit_source_map(cfg: RunConfig, store: Any) -> Any:
    """The ``data.source_map`` of a Stage-I run, fitted on the store's train split, or None.

    Pooled EQM (:class:`precipdiff.baselines.QuantileMapping`) from every train time step of
    ``src_lr`` to ``ref_lr`` over the train column band: deterministic for a given store, so the
    loop, ``--resume`` and ``export`` refit the same mapping.
    """
    if cfg.data.source_map is None:
        return None
    import numpy as np
    import xarray as xr

    from precipdiff.baselines import QuantileMapping

    split = store.splits["train"]
    t = np.asarray(split["time"], dtype=np.int64)
    x0, x1 = (int(v) for v in split["x_lr"])
    dims = ("time", "lat", "lon")
    src = xr.DataArray(np.asarray(store["src_lr"].oindex[t, :, x0:x1], np.float32), dims=dims)
    ref = xr.DataArray(np.asarray(store["ref_lr"].oindex[t, :, x0:x1], np.float32), dims=dims)
    qm = QuantileMapping(method="eqm", pooled=True, n_quantiles=cfg.data.source_map_quantiles,
                         seed=cfg.train.seed).fit(src, ref)
    log.info("data.source_map: pooled EQM with %d levels fitted on %d train steps of %s",
             cfg.data.source_map_quantiles, t.size, store.path)
    return qm


def resolve_channels(cfg: RunConfig, train_ds: Any, store: Any) -> RunConfig:
    """Fill ``model.cond_channels`` from the samples; ConfigError when it disagrees."""
    sample = train_ds[0]
    channels, patch = int(sample["cond"].shape[0]), int(sample["target"].shape[-1])
    if patch != cfg.data.patch:
        raise ConfigError(f"data.patch: {cfg.data.patch}, but the dataset yields {patch}")
    if cfg.model.cond_channels not in (None, channels):
        raise ConfigError(f"model.cond_channels: {cfg.model.cond_channels}, but {store.path} "
                          f"gives {channels} for stage {cfg.train.stage!r} "
                          f"(extras {list(store.extra_names)})")
    model = dataclasses.replace(cfg.model, cond_channels=channels)
    return dataclasses.replace(cfg, model=model)


def _store_transform(store: Any) -> Any:
    from precipdiff.data.transforms import PrecipTransform

    return PrecipTransform.from_dict(dict(store.attrs["transform"]))


def load_mean_net(cfg: RunConfig, store: Any, device: torch.device) -> nn.Module:
    """The frozen regression net of ``train.mean_from``; CheckpointError if it does not fit."""
    path = cfg.train.mean_from
    release = Release.load(path)
    if release.stage != "regression":
        raise CheckpointError(f"{path}: train.mean_from needs regression weights, got stage "
                              f"{release.stage!r}")
    differ = [name for name, ours, theirs in (
        ("factor", release.factor, int(store.factor)),
        ("pooling", release.pooling, str(store.pooling)),
        ("transform", release.transform, _store_transform(store))) if ours != theirs]
    if differ:
        raise CheckpointError(f"{path}: regression weights were trained on another store "
                              f"({', '.join(differ)} differ from {store.path})")
    if release.model.cond_channels != cfg.model.cond_channels:
        raise CheckpointError(f"{path}: regression net takes {release.model.cond_channels} "
                              f"conditioning channels, the store gives {cfg.model.cond_channels}")
    return release.build_net().to(device)


def init_from_release(cfg: RunConfig, net: nn.Module, store: Any) -> None:
    """Start ``net`` from the release weights of ``train.init_from`` (fine-tuning).

    The weights must be of the same stage, network configuration and kind of precipitation
    transform; the store may differ (a new region or period is the point of fine-tuning), so the
    transform's data-derived scale may differ too: that is logged, and the run's release carries
    the new store's transform. CheckpointError otherwise, naming the file and what differs.
    """
    path = cfg.train.init_from
    release = Release.load(path)
    if release.stage != cfg.train.stage:
        raise CheckpointError(f"{path}: train.init_from holds stage {release.stage!r} "
                              f"weights, this run trains {cfg.train.stage!r}")
    theirs, ours = dataclasses.asdict(release.model), dataclasses.asdict(net.cfg)
    new_products = not theirs.get("products") and bool(ours["products"])
    differ = sorted(k for k in ours if theirs.get(k) != ours[k]
                    and not (k == "products" and new_products))
    if differ:
        raise CheckpointError(f"{path}: train.init_from network differs in "
                              + ", ".join(f"{k} ({theirs.get(k)} vs {ours[k]})" for k in differ))
    new_t = _store_transform(store)
    if release.transform != new_t:
        log.warning("train.init_from: transform parameters differ (%s -> %s); the network adapts "
                    "while fine-tuning", release.transform.to_dict(), new_t.to_dict())
    result = net.load_state_dict(dict(release.state), strict=not new_products)
    if new_products:  # the product embedding starts at zero: the net starts as the release
        missing = [k for k in result.missing_keys if not k.startswith("product_embed.")]
        if missing or result.unexpected_keys:
            raise CheckpointError(f"{path}: train.init_from state does not fit: missing "
                                  f"{missing[:4]}, unexpected {result.unexpected_keys[:4]}")
        log.info("product embedding for %s starts at zero", list(net.cfg.products))
    log.info("initialised from %s", path)


def product_lookup(cfg: RunConfig, net: nn.Module, store: Any) -> torch.Tensor | None:
    """Product label of each network of a corpus store (0, "any product", for a network not in
    ``model.products``); None for a net without products. ConfigError for a single store."""
    if not cfg.model.products:
        return None
    if not isinstance(store, CorpusView):
        raise ConfigError(f"model.products: {store.path} is not a corpus store; product "
                          "conditioning learns one embedding per network of a corpus")
    unknown = [n for n in store.networks if n not in cfg.model.products]
    if unknown:
        log.warning("networks %s are not in model.products: they train as 'any product'", unknown)
    return network_labels(net, store.networks)


def _coarse_spacing(store: Any) -> dict[str, Any] | None:
    """``{"y", "x", "units"}`` of a single-grid store's coarse grid (degrees, or metres for a
    projected store); None for a corpus of several grids (inference then uses factor x the fine
    grid, :func:`precipdiff.pipeline.inputs.model_spacing`)."""
    if isinstance(store, CorpusView) or getattr(store, "grid_lr", None) is None:
        return None
    grid = store.grid_lr
    return {"y": abs(grid.dlat), "x": abs(grid.dlon),
            "units": "m" if getattr(store, "crs", None) else "degrees"}


def make_release(cfg: RunConfig, ema_state: dict[str, torch.Tensor], store: Any,
                 mean_net: nn.Module | None, source_map: Any,
                 notes: dict[str, str] | None = None) -> Release:
    """The run's :class:`~precipdiff.release.Release` from its EMA state and store;
    ``source_map`` is the run's fitted :func:`fit_source_map` (None without one)."""
    pooling = str(store.pooling)
    notes = dict(notes or {})
    spacing = _coarse_spacing(store)
    if spacing is not None:  # what inference checks the input's grid spacing against
        notes.setdefault("coarse_spacing", json.dumps(spacing, sort_keys=True))
    if isinstance(store, CorpusView):
        notes.setdefault("training_corpus", json.dumps(
            {"networks": list(cfg.data.networks or store.networks),
             "frames": {n: f for n, f in store.attrs["frames"].items()
                        if cfg.data.networks is None or n in cfg.data.networks},
             "weighting": cfg.data.weighting}, sort_keys=True))
    return Release(
        stage=cfg.train.stage, model=cfg.model.unet_config(), state=ema_state,
        transform=_store_transform(store), factor=int(store.factor), pooling=pooling,
        semantics=InputSemantics.for_pooling(pooling), sigma_data=cfg.diffusion.sigma_data,
        patch=cfg.data.patch, extra_names=tuple(store.extra_names),
        extra_stats=dict(store.attrs.get("extra_stats", {})), source_map=source_map,
        mean_model=mean_net.cfg if mean_net is not None else None,
        mean_state=mean_net.state_dict() if mean_net is not None else None,
        config=cfg.to_dict(), version=__version__, notes=notes)
