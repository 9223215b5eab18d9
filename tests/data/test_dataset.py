"""PatchDataset / val_patches: sample contract, residual identity, masks, splits, determinism."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import xarray as xr
from torch.utils.data import DataLoader

from precipdiff.data.dataset import (
    FixedPatches,
    PartsDataset,
    PatchDataset,
    dihedral,
    epoch_index,
    val_patches,
)
from precipdiff.data.store import open_store
from precipdiff.errors import ConfigError
from precipdiff.grid import upsample_tensor

PATCH = {"correct": 8, "downscale": 32, "regression": 32}


def _undo(x: torch.Tensor, k: int) -> torch.Tensor:
    if k >= 4:
        x = torch.flip(x, dims=(-1,))
    return torch.rot90(x, -(k % 4), dims=(-2, -1))


def _expected(h, ds: PatchDataset, loc) -> tuple[np.ndarray, np.ndarray]:
    """T(reference) and the base at the patch, computed from whole arrays (no windows)."""
    T, p, f = h.transform, ds.patch, h.factor
    x0, x1 = ds.x_lr
    if ds.stage == "correct":
        ref = h["ref_lr"][loc.time_index, loc.y0:loc.y0 + p, loc.x0:loc.x0 + p]
        src = h["src_lr"][loc.time_index, loc.y0:loc.y0 + p, loc.x0:loc.x0 + p]
        return T.forward(ref), T.forward(src)
    band = torch.from_numpy(T.forward(h["ref_lr"][loc.time_index, :, x0:x1]))[None, None]
    up = upsample_tensor(band, f, "bilinear")[0, 0].numpy()
    bx = loc.x0 - x0 * f
    ref = h["ref_hr"][loc.time_index, loc.y0:loc.y0 + p, loc.x0:loc.x0 + p]
    return T.forward(ref), up[loc.y0:loc.y0 + p, bx:bx + p]


@pytest.mark.parametrize("stage", ["correct", "downscale", "regression"])
def test_sample_contract_and_residual_identity(small_store, stage):
    h = open_store(small_store)
    ds = PatchDataset(small_store, split="train", stage=stage, patch=PATCH[stage],
                      samples_per_epoch=40, seed=5)
    p = PATCH[stage]
    for i in range(40):
        s, loc = ds[i], ds.locate(i)
        assert set(s) == {"cond", "target", "base", "mask"}
        for name in ("cond", "target", "base"):
            assert s[name].dtype == torch.float32 and s[name].shape == (1, p, p)
        assert s["mask"].dtype == torch.bool and s["mask"].shape == (1, p, p)
        ref_t, base = _expected(h, ds, loc)
        mask = _undo(s["mask"], loc.k)[0].numpy()
        np.testing.assert_array_equal(mask, np.isfinite(ref_t) & np.isfinite(base))
        got = (_undo(s["base"], loc.k) + _undo(s["target"], loc.k))[0].numpy()
        np.testing.assert_allclose(got[mask], ref_t[mask], atol=1e-5)
        np.testing.assert_allclose(_undo(s["base"], loc.k)[0].numpy()[mask], base[mask],
                                   atol=1e-5)
        for name in ("cond", "target", "base"):
            assert torch.all(s[name][~s["mask"].expand_as(s[name])] == 0)
            assert torch.isfinite(s[name]).all()
        assert torch.equal(s["cond"], s["base"])


def test_mask_excludes_missing_corner(small_store):
    ds = PatchDataset(small_store, split="train", stage="downscale", patch=32,
                      samples_per_epoch=400, augment=False, rain_weighted=0.0, seed=1)
    hits = [i for i in range(400) if ds.locate(i).y0 < 7 and ds.locate(i).x0 < 13]
    assert hits, "no patch over the missing corner"
    s, loc = ds[hits[0]], ds.locate(hits[0])
    assert not s["mask"][0, : 7 - loc.y0, : 13 - loc.x0].any()
    assert s["mask"].any()


def test_splits_are_disjoint_bands(small_store):
    h = open_store(small_store)
    f, used = h.factor, {}
    for split in ("train", "val", "test"):
        for stage, p in (("correct", 2), ("downscale", 16)):
            ds = PatchDataset(small_store, split=split, stage=stage, patch=p,
                              samples_per_epoch=200, seed=2)
            scale = 1 if stage == "correct" else f
            lo, hi = (v * scale for v in h.splits[split]["x_lr"])
            xs = [ds.locate(i).x0 for i in range(200)]
            assert min(xs) >= lo and max(xs) + p <= hi
            used.setdefault(stage, []).append((lo, hi))
    for bands in used.values():
        bands.sort()
        assert all(a[1] <= b[0] for a, b in zip(bands, bands[1:], strict=False))


def test_augmentation_covers_dihedral_group(small_store):
    ds = PatchDataset(small_store, split="train", stage="downscale", patch=16,
                      samples_per_epoch=64, seed=0)
    assert {ds.locate(i).k for i in range(64)} == set(range(8))
    x = torch.arange(9.0).reshape(1, 3, 3)
    assert {tuple(dihedral(x, k).flatten().tolist()) for k in range(8)}.__len__() == 8
    plain = PatchDataset(small_store, split="train", stage="downscale", patch=16,
                         samples_per_epoch=64, seed=0, augment=False)
    assert {plain.locate(i).k for i in range(64)} == {0}


def test_determinism_and_epochs(small_store):
    kw = dict(split="train", stage="downscale", patch=16, samples_per_epoch=10, seed=9)
    a, b = PatchDataset(small_store, **kw), PatchDataset(small_store, **kw)
    for i in (0, 3, 9):
        assert all(torch.equal(a[i][k], b[i][k]) for k in a[i])
    a.set_epoch(1)
    assert not torch.equal(a[3]["target"], b[3]["target"])
    b.set_epoch(1)
    assert torch.equal(a[3]["target"], b[3]["target"])
    c = PatchDataset(small_store, **kw)  # global sample numbers carry their epoch
    assert torch.equal(c[1 * 10 + 3]["target"], a[3]["target"]) and c.epoch == 0


def test_rain_weighting_finds_rain(small_store):
    h = open_store(small_store)
    T = h.transform

    def wet_fraction(rw: float) -> float:
        ds = PatchDataset(small_store, split="train", stage="correct", patch=4,
                          samples_per_epoch=200, seed=3, rain_weighted=rw, augment=False)
        return float(np.mean([(T.inverse(ds[i]["base"] + ds[i]["target"]) > 0.1).float()
                              .mean() for i in range(200)]))

    assert wet_fraction(1.0) > wet_fraction(0.0)


def test_dataloader_two_workers(small_store):
    ds = PatchDataset(small_store, split="val", stage="downscale", patch=16,
                      samples_per_epoch=8, seed=4)
    ds.set_epoch(2)
    batches = list(DataLoader(ds, batch_size=4, num_workers=2))
    assert len(batches) == 2 and batches[0]["cond"].shape == (4, 1, 16, 16)
    direct = ds[5]
    assert torch.equal(batches[1]["target"][1], direct["target"])


def test_val_patches_fixed(small_store):
    a = val_patches(small_store, "val", "downscale", 6, 16, seed=1)
    b = val_patches(small_store, "val", "downscale", 6, 16, seed=1)
    assert a["cond"].shape == (6, 1, 16, 16) and a["mask"].dtype == torch.bool
    assert all(torch.equal(a[k], b[k]) for k in a)
    fixed = FixedPatches(small_store, split="val", stage="correct", n=3, patch=2)
    first = fixed[0]["target"]
    fixed.set_epoch(5)
    assert torch.equal(fixed[0]["target"], first)


def test_bad_arguments(small_store):
    with pytest.raises(ConfigError, match="split"):
        PatchDataset(small_store, split="holdout", stage="correct", patch=2, samples_per_epoch=1)
    with pytest.raises(ConfigError, match="stage"):
        PatchDataset(small_store, split="train", stage="super", patch=2, samples_per_epoch=1)
    with pytest.raises(ConfigError, match="larger"):
        PatchDataset(small_store, split="val", stage="correct", patch=8, samples_per_epoch=1)


def test_extras_become_cond_channels(S, tmp_path):
    from precipdiff.data.prepare import PrepareConfig, prepare_store
    from precipdiff.grid import coarsen

    ref = S.scene(n_time=2)
    prior = coarsen(ref, 5, method="mean")  # a 0.05 deg field: regridded onto the fine grid
    refs, srcs = S.write_frames(ref, tmp_path, "r"), S.write_frames(S.biased_source(ref),
                                                                    tmp_path, "s")
    pri = S.write_frames(prior, tmp_path, "prior")
    # ERA5-like pressure levels on a 0.25 deg grid (0..360 lon), two variables x two levels
    lat, lon = np.arange(34.5, 36.8, 0.25), np.arange(258.5, 261.6, 0.25)
    shape, gen = (2, 2, lat.size, lon.size), np.random.default_rng(0)
    era = xr.Dataset(
        {"t": (("time", "pressure_level", "lat", "lon"), 250 + gen.random(shape)),
         "u": (("time", "pressure_level", "lat", "lon"), gen.random(shape))},
        coords={"time": ref["time"].values, "pressure_level": [850, 500], "lat": lat,
                "lon": lon})
    era.to_netcdf(tmp_path / "era5.nc")
    cfg = PrepareConfig(reference=[str(p) for p in refs], source=[str(p) for p in srcs],
                        split="space", extras=[
                            {"name": "prior", "files": [str(p) for p in pri]},
                            {"name": "era5", "files": str(tmp_path / "era5.nc"),
                             "variables": ["t", "u"], "levels": [850, 500]}])
    out = prepare_store(cfg, tmp_path / "x.zarr")
    h = open_store(out)
    assert h.extra_names == ("prior", "t850", "t500", "u850", "u500")
    assert h["extra_hr"].shape == (2, 5, 120, 240) and np.isfinite(h["extra_hr"][:]).all()
    assert set(h.attrs["extra_stats"]["prior"]) == {"mean", "std"}
    assert 250 < h.attrs["extra_stats"]["t500"]["mean"] < 251
    ds = PatchDataset(out, split="train", stage="downscale", patch=16, samples_per_epoch=4)
    assert ds.cond_channels == 6 and ds[0]["cond"].shape == (6, 16, 16)
    assert ds[0]["cond"][1:].abs().max() < 10  # standardised
    lr = PatchDataset(out, split="train", stage="correct", patch=4, samples_per_epoch=4)
    assert lr[0]["cond"].shape == (1, 4, 4)
    no = PatchDataset(out, split="train", stage="downscale", patch=16, samples_per_epoch=4,
                      include_extras=False)
    assert no[0]["cond"].shape == (1, 16, 16)


def test_rain_weighting_looks_at_the_input_not_the_target(small_store):
    """Patches are chosen by the conditioning field only (choosing by the target would bias the
    learnt conditional): with rain_weighted=1 every correct-stage patch holds a wet source cell."""
    h = open_store(small_store)
    T = h.transform
    ds = PatchDataset(small_store, split="train", stage="correct", patch=2,
                      samples_per_epoch=300, seed=3, rain_weighted=1.0, augment=False)
    src_wet = [bool((T.inverse(ds[i]["base"]) > 0.1).any()) for i in range(300)]
    assert all(src_wet)


def test_source_map_changes_the_base_not_the_truth(small_store):
    """``source_map``: base = T(map(src)); base + target is still T(ref) (Stage I only)."""
    kw = dict(split="train", stage="correct", patch=PATCH["correct"], samples_per_epoch=12,
              seed=2)
    h = open_store(small_store)
    plain, mapped = PatchDataset(small_store, **kw), PatchDataset(
        small_store, **kw, source_map=lambda x: 2.0 * x)
    T = h.transform  # noqa: N806 - the paper's transform symbol
    for i in range(12):
        a, b, loc = plain[i], mapped[i], plain.locate(i)
        assert loc == mapped.locate(i)
        m = a["mask"] & b["mask"]
        want = T.forward(2.0 * T.inverse(_undo(a["base"], loc.k)[0].numpy()))
        np.testing.assert_allclose(_undo(b["base"], loc.k)[0].numpy()[m[0]], want[m[0]],
                                   rtol=1e-4, atol=1e-4)
        np.testing.assert_allclose((b["base"] + b["target"])[m], (a["base"] + a["target"])[m],
                                   atol=1e-5)
    with pytest.raises(ConfigError, match="correct"):
        PatchDataset(small_store, split="train", stage="downscale", patch=16,
                     samples_per_epoch=4, source_map=np.sqrt)


class _Toy(PartsDataset):
    network_stream = 7

    def __init__(self, weights, samples_per_epoch=50, seed=3):
        self.parts = [object() for _ in weights]
        self.weights = np.asarray(weights, float) / np.sum(weights)
        self.seed, self.samples_per_epoch, self.epoch = seed, samples_per_epoch, 0


def test_parts_dataset_draws_parts_by_weight_per_epoch():
    ds = _Toy([3.0, 1.0], samples_per_epoch=4000)
    share = np.mean([ds.part_of(i) for i in range(len(ds))])
    assert abs(share - 0.25) < 0.03  # part 1 has a quarter of the weight
    first = [ds.part_of(i) for i in range(20)]
    ds.epoch = 1
    assert [ds.part_of(i) for i in range(20)] != first  # another epoch, other draws
    assert [ds.part_of(4000 + i) for i in range(20)] == [ds.part_of(i) for i in range(20)]
    assert _Toy([0.0, 1.0]).part_of(5) == 1
    with pytest.raises(IndexError, match="negative"):
        ds.part_of(-1)


def test_epoch_index_numbers_samples_across_epochs():
    assert epoch_index(3, 2, 10) == (2, 3)  # a sample of the current epoch
    assert epoch_index(23, 0, 10) == (2, 3)  # a global number carries its epoch
    assert epoch_index(10, 5, 10) == (1, 0)
    with pytest.raises(IndexError, match="negative"):
        epoch_index(-1, 0, 10)


def test_masked_patch_is_the_item_before_augmentation(small_store):
    ds = PatchDataset(small_store, split="train", stage="downscale", patch=16,
                      samples_per_epoch=8, seed=2)
    for i in range(8):
        loc = ds.locate(i)
        item, plain = ds[i], ds.masked_patch(loc)
        assert set(plain) == {"cond", "target", "base", "mask"}
        for name, value in plain.items():
            torch.testing.assert_close(item[name], dihedral(value, loc.k) if loc.k else value)
