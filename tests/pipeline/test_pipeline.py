"""Pipeline plumbing: shapes, masks, seeds, tiling vs untiled, mass consistency, NetCDF output."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import xarray as xr

from precipdiff.errors import CheckpointError, GridError
from precipdiff.grid import coarsen
from precipdiff.pipeline import Pipeline, PredictOptions, SamplerSettings, Stage
from precipdiff.pipeline.output import predict_to_file
from precipdiff.pipeline.pipeline import mass_consistent

from .conftest import FACTOR, assert_cut_to_the_rain, coarse_field

FAST = SamplerSettings(sampler="dpmpp_2m", steps=3)


def _opts(**kw) -> PredictOptions:
    base = dict(members=3, correct=FAST, downscale=FAST, seed=7, member_batch=2, window=512)
    return PredictOptions(**{**base, **kw})


@pytest.fixture(scope="module")
def pipeline(tiny_weights) -> Pipeline:
    return Pipeline(Stage.load(tiny_weights["correct"]), Stage.load(tiny_weights["downscale"]))


def test_two_stage_shapes_masks_and_coordinates(pipeline: Pipeline) -> None:
    src = coarse_field()
    ds = pipeline.predict(src, _opts())
    assert ds["precip"].shape == (3, 2, 12 * FACTOR, 20 * FACTOR)
    assert ds["corrected_lr"].shape == (3, 2, 12, 20)
    # fine cells nest in the coarse cells: block means of fine coordinates are the coarse ones
    np.testing.assert_allclose(ds["lat"].values.reshape(12, FACTOR).mean(1), src["lat"], atol=1e-9)
    # missing input stays missing, exactly over its fine cells, and nowhere else
    hr = ds["precip"].values
    assert np.isnan(hr[:, :, 2 * FACTOR : 4 * FACTOR, 3 * FACTOR : 6 * FACTOR]).all()
    assert np.isnan(hr).sum() == 3 * 2 * (2 * FACTOR) * (3 * FACTOR)
    assert np.nanmin(hr) >= 0
    # members differ (the ensemble is not collapsed)
    wet = np.isfinite(hr).all(axis=0)
    assert np.std(hr, axis=0)[wet].mean() > 1e-3


def test_same_seed_identical_different_seed_differs(pipeline: Pipeline) -> None:
    src = coarse_field(n_time=1)
    a = pipeline.predict(src, _opts())["precip"].values
    b = pipeline.predict(src, _opts())["precip"].values
    c = pipeline.predict(src, _opts(seed=8))["precip"].values
    np.testing.assert_array_equal(a, b)
    assert np.nanmax(np.abs(a - c)) > 1e-3


def test_member_batch_does_not_change_members(pipeline: Pipeline) -> None:
    src = coarse_field(ny=6, nx=8, n_time=1)
    a = pipeline.predict(src, _opts(member_batch=1))["precip"].values
    b = pipeline.predict(src, _opts(member_batch=3))["precip"].values
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)


def test_windowed_matches_whole_domain(pipeline: Pipeline) -> None:
    """Stage II in small blended windows (bounded memory) agrees with one whole-domain window."""
    src = coarse_field(ny=8, nx=12, n_time=1)
    opts = dict(members=2, member_batch=2, tile_batch=32)
    whole = pipeline.predict(src, _opts(window=1024, tile=128, **opts))["precip"].values
    tiled = pipeline.predict(src, _opts(window=24, halo=4, tile=16, overlap=8, **opts))[
        "precip"
    ].values
    valid = np.isfinite(whole)
    diff = np.abs(tiled - whole)[valid]
    scale = np.nanstd(whole)
    assert np.median(diff) < 0.05 * scale
    # no step at window borders: the jump across a border is no larger than jumps elsewhere
    col = np.nanmean(np.abs(np.diff(tiled[0, 0], axis=1)), axis=0)
    assert col.max() < 4 * np.median(col)


def test_mass_consistency_conserves_every_coarse_cell(pipeline: Pipeline) -> None:
    """Mean-pooled model: each coarse cell's fine mean is the corrected value to 1e-5, after the
    dry rule (trace values zeroed, then rescaled); the volume error is 0 to the same tolerance."""
    assert pipeline.downscale.pooling == "mean"
    src = coarse_field(n_time=2)
    ds = pipeline.predict(src, _opts(mass_consistent=True))
    hr = ds["precip"].rename(lat="lat", lon="lon")
    pooled = coarsen(hr, FACTOR, method="mean", max_missing_fraction=0.0).values
    lr = ds["corrected_lr"].values
    assert np.array_equal(np.isnan(pooled), np.isnan(lr)) and np.nanmax(lr) > 1
    np.testing.assert_allclose(pooled, lr, rtol=1e-5, atol=1e-7)
    assert abs(ds.attrs["volume_error"]) < 1e-5


def test_mass_consistency_of_a_max_pooled_model_keeps_block_maxima(tmp_path) -> None:
    from .conftest import write_tiny_weights

    w = write_tiny_weights(tmp_path / "max.safetensors", "downscale", seed=2, pooling="max")
    pipe = Pipeline(None, Stage.load(w))
    ds = pipe.predict(coarse_field(n_time=1),
                      _opts(mass_consistent=True, input_semantics="block_maximum"))
    pooled = coarsen(ds["precip"], FACTOR, method="max", max_missing_fraction=0.0).values
    np.testing.assert_allclose(pooled, ds["corrected_lr"].values, rtol=1e-5, atol=1e-7)
    assert ds.attrs["volume_error"] < -0.2  # block maxima are not areal means
    assert "not a volume error" in ds.attrs["volume_error_meaning"]


def test_mass_consistency_default_follows_the_weights_pooling(pipeline: Pipeline,
                                                               tmp_path) -> None:
    """None (predict's default) is on for areal-mean weights, off for block-maximum ones;
    True / False force it."""
    from .conftest import write_tiny_weights

    w = write_tiny_weights(tmp_path / "max.safetensors", "downscale", seed=2, pooling="max")
    maxed = Pipeline(None, Stage.load(w))
    assert pipeline.mass_consistent(_opts(mass_consistent=None))
    assert not maxed.mass_consistent(_opts(mass_consistent=None))
    assert maxed.mass_consistent(_opts(mass_consistent=True))
    assert not pipeline.mass_consistent(_opts(mass_consistent=False))
    assert not Pipeline(pipeline.correct, None).mass_consistent(_opts(mass_consistent=None))


def test_volume_error_without_mass_consistency(pipeline: Pipeline, tmp_path) -> None:
    """Reported in the output: fine-grid mean / corrected coarse mean - 1."""
    src = coarse_field(n_time=1)
    path = predict_to_file(pipeline, src, tmp_path / "v.nc", _opts())
    with xr.open_dataset(path) as ds:
        hr, lr = ds["precip"].values, ds["corrected_lr"].values
        expected = np.nansum(hr) / FACTOR**2 / np.nansum(lr) - 1
        assert ds.attrs["volume_error"] == pytest.approx(expected, rel=1e-4, abs=1e-6)
        assert abs(ds.attrs["volume_error"]) > 1e-4  # the tiny random model does not conserve
        assert ds.attrs["volume_error_meaning"].startswith("fine-grid mean divided by")


def test_run_tally_volume() -> None:
    from precipdiff.pipeline.pipeline import RunTally

    tally = RunTally()
    assert tally.volume_error == 0.0
    hr = np.full((1, 4, 4), 2.0, np.float32)
    hr[0, :2, :2] = np.nan  # a missing coarse cell counts in neither sum
    lr = np.array([[[5.0, 1.0], [1.0, 1.0]]], np.float32)
    tally.add_volume(hr, lr, 2)
    assert tally.coarse_sum == 3.0 and tally.volume_error == pytest.approx(1.0)


def test_mass_consistent_mean_pooling() -> None:
    rng = np.random.default_rng(0)
    hr = rng.gamma(0.5, 2.0, (2, 8, 12)).astype(np.float32)
    lr = rng.gamma(0.5, 2.0, (2, 2, 3)).astype(np.float32)
    hr[0, :4, :4] = 0.0  # an empty block with lr > 0 is filled uniformly
    out = mass_consistent(hr, lr, 4, "mean")
    np.testing.assert_allclose(out.reshape(2, 2, 4, 3, 4).mean(axis=(2, 4)), lr, rtol=1e-5)


@pytest.mark.parametrize("pooling", ["mean", "max"])
def test_mass_consistent_after_the_dry_rule_factor_10(pooling: str) -> None:
    """Synthetic members with trace values, dry cells and a wide dynamic range (0.1 to 150 mm/h):
    after the dry rule then the rescaling, every wet cell's block mean (max) equals the corrected
    value to 1e-5 relative, dry cells are exactly 0 and no value is left below the threshold."""
    from precipdiff.pipeline.dry import dry_cells, dry_fine

    rng = np.random.default_rng(3)
    f, trace = 10, 0.1
    lr = rng.lognormal(0.5, 1.5, (3, 6, 7)).clip(max=150).astype(np.float32)
    lr[lr < 0.5] = 0.0  # dry cells (the Stage-I rule leaves 0 or >= trace)
    lr[:, :2, :2] = 0.0
    hr = rng.gamma(0.3, 1.0, (3, 60, 70)).astype(np.float32)  # many values below trace
    hr = dry_fine(hr, dry_cells(lr, trace=trace), f, trace=trace)
    plain = mass_consistent(hr, lr, f, pooling)
    assert ((plain > 0) & (plain < 0.3)).any()  # scaling down makes new light values
    out = mass_consistent(hr, lr, f, pooling, threshold=0.3)  # ... a threshold zeroes them
    assert not ((out > 0) & (out < 0.3)).any()
    blocks = out.reshape(3, 6, f, 7, f).astype(np.float64)
    pooled = blocks.mean(axis=(2, 4)) if pooling == "mean" else blocks.max(axis=(2, 4))
    np.testing.assert_allclose(pooled, lr, rtol=1e-5, atol=0)
    assert (out.reshape(3, 6, f, 7, f)[(lr == 0)[:, :, None, :, None].repeat(f, 2).repeat(f, 4)]
            == 0).all()


def test_light_cells_dried_by_the_threshold_keep_their_rain_on_the_likeliest_pixels() -> None:
    """A cell lighter than the fine threshold whose every pixel the rule dried: its volume goes
    to the pixels the sample ranked highest, each at least the threshold (no trace values); a
    cell lighter than threshold / f² stays dry."""
    f, thr = 4, 0.2
    lr = np.array([[[0.05, 0.5, 0.01]]], np.float32)
    raw = np.zeros((1, 4, 12), np.float32)
    raw[0, 1, 2], raw[0, 3, 0] = 0.15, 0.12  # the likeliest two pixels of the first cell
    raw[0, :, 4:8] = 0.6
    hr = raw.copy()
    hr[hr < thr] = 0.0  # the dry rule at the fine threshold
    out = mass_consistent(hr, lr, f, "mean", threshold=thr, ranking=raw)
    first = out[0, :, :4]
    assert first.mean() == pytest.approx(0.05, rel=1e-6)  # 0.05 x 16 / 0.2: 4 pixels at 0.2
    assert (first > 0).sum() == 4 and first[1, 2] > 0 and first[3, 0] > 0
    assert out[0, :, 4:8].mean() == pytest.approx(0.5, rel=1e-6)
    assert (out[0, :, 8:] == 0).all()  # 0.01 x 16 < 0.2: too light for one wet pixel
    assert not ((out > 0) & (out < thr)).any()


# ---------------------------------------------------------------- bounded Stage I


def test_stage1_explosion_is_bounded(tiny_weights, tmp_path, monkeypatch) -> None:
    """A Stage I that multiplies the rain ~1800x (the demo turned 7 mm/h into 361 mm/h) is clipped
    to max(3 x source neighbourhood max, + 10 mm/h) for a mean-pooled model; the count and the
    bound are in the output's attributes."""
    from precipdiff.pipeline.pipeline import STAGE1_BOUND

    stage = Stage.load(tiny_weights["correct"])
    monkeypatch.setattr(stage, "apply", lambda base, noise, **kw: base + 5.0)
    pipe = Pipeline(stage, Stage.load(tiny_weights["downscale"]))
    src = coarse_field(n_time=1)
    path = predict_to_file(pipe, src, tmp_path / "b.nc", _opts())
    with xr.open_dataset(path) as ds:
        lr, clipped = ds["corrected_lr"].values[:, 0], ds.attrs["stage1_clipped"]
        text = ds.attrs["stage1_bound"]
    ratio, add = STAGE1_BOUND["mean"]
    values = np.nan_to_num(src.values[0])
    nb = np.zeros_like(values)
    for dy in (-1, 0, 1):  # 3 x 3 maximum, edges repeated
        for dx in (-1, 0, 1):
            shifted = np.pad(values, 1, mode="edge")[1 + dy: 1 + dy + values.shape[0],
                                                     1 + dx: 1 + dx + values.shape[1]]
            nb = np.maximum(nb, shifted)
    bound = np.maximum(ratio * nb, nb + add)
    assert np.nanmax(lr - bound[None]) <= 1e-4
    assert clipped > 0.5 * np.isfinite(lr).sum() and text.startswith("max(3 x source")
    assert np.nanmax(lr) <= 3 * np.nanmax(values) + 1e-3  # no 50x jumps


def test_stage1_bound_default_per_pooling_and_from_the_weights(tiny_weights, tmp_path) -> None:
    from .conftest import write_tiny_weights

    down = Stage.load(tiny_weights["downscale"])
    mean = Pipeline(Stage.load(tiny_weights["correct"]), down)
    assert mean.stage1_bound() == (3.0, 10.0)
    w = write_tiny_weights(tmp_path / "cmax.safetensors", "correct", seed=1, pooling="max")
    assert Pipeline(Stage.load(w), down).stage1_bound() == (10.0, 20.0)
    stage = Stage.load(tiny_weights["correct"])
    stage.metadata["stage1_bound"] = '{"ratio": 2, "add_mm_h": 1}'
    pipe = Pipeline(stage, down)
    assert pipe.stage1_bound() == (2.0, 1.0)
    out, n, _ = pipe.bound_corrected(np.full((1, 3, 3), 50.0, np.float32),
                                     np.full((3, 3), 4.0, np.float32), 1)
    assert n == 9 and np.all(out == 8.0)
    stage.metadata["stage1_bound"] = "garbage"
    assert pipe.stage1_bound() == (3.0, 10.0)


def test_single_stage_pipelines(tiny_weights) -> None:
    src = coarse_field(n_time=1)
    only_correct = Pipeline(Stage.load(tiny_weights["correct"]), None).predict(src, _opts())
    assert "precip" not in only_correct and only_correct["corrected_lr"].shape == (3, 1, 12, 20)
    only_down = Pipeline(None, Stage.load(tiny_weights["downscale"])).predict(src, _opts())
    # without Stage I every member starts from the input itself
    lr = only_down["corrected_lr"].values
    np.testing.assert_array_equal(lr[0], lr[2])
    for name in ("corrdiff", "regression"):
        ds = Pipeline(None, Stage.load(tiny_weights[name])).predict(src, _opts())
        assert ds["precip"].shape == (3, 1, 12 * FACTOR, 20 * FACTOR)
    reg = Pipeline(None, Stage.load(tiny_weights["regression"])).predict(src, _opts())["precip"]
    np.testing.assert_array_equal(reg.values[0], reg.values[1])  # deterministic mean


def test_wrong_stage_weights_are_refused(tiny_weights) -> None:
    with pytest.raises(GridError, match="Stage I needs 'correct'"):
        Pipeline(Stage.load(tiny_weights["downscale"]), None)
    with pytest.raises(GridError, match="Stage II needs"):
        Pipeline(None, Stage.load(tiny_weights["correct"]))


def test_corrupt_weights_error(tmp_path) -> None:
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"not a safetensors file at all")
    with pytest.raises(CheckpointError, match="bad.safetensors"):
        Stage.load(bad)


def test_predict_to_file_is_cf_and_matches_in_memory(pipeline: Pipeline, tmp_path) -> None:
    src = coarse_field(ny=6, nx=8, n_time=2)
    path = predict_to_file(pipeline, src, tmp_path / "out.nc", _opts(), thresholds=(1.0, 5.0))
    ds = xr.open_dataset(path)
    assert ds.attrs["Conventions"] == "CF-1.8"
    assert ds.attrs["correct_sampler"] == "dpmpp_2m" and int(ds.attrs["seed"]) == 7
    assert len(ds.attrs["downscale_weights_sha256"]) == 64
    assert ds["precip"].attrs["units"] == "mm h-1"
    assert ds["lat"].attrs["standard_name"] == "latitude"
    mem = pipeline.predict(src, _opts())
    np.testing.assert_allclose(ds["precip"].values, mem["precip"].values, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(
        ds["ensemble_mean"].values, mem["precip"].mean("member").values, rtol=1e-5, atol=1e-6
    )
    prob = ds["exceedance_probability"].sel(threshold=1.0).values
    expect = (mem["precip"].values >= 1.0).mean(axis=0)
    np.testing.assert_allclose(prob[np.isfinite(prob)], expect[np.isfinite(prob)], atol=1e-6)
    assert list(tmp_path.iterdir()) == [path]  # no temporary left behind


def test_extra_channels_are_standardised_and_checked(tmp_path) -> None:
    from .conftest import write_tiny_weights

    w = write_tiny_weights(tmp_path / "x.safetensors", "downscale", seed=5, extras=("t850",))
    pipe = Pipeline(None, Stage.load(w))
    src = coarse_field(ny=6, nx=8, n_time=1)
    fine = np.full((1, 1, 6 * FACTOR, 8 * FACTOR), 285.0, np.float32)
    extras = xr.DataArray(fine, dims=("time", "var", "lat", "lon"))
    ds = pipe.predict(src, _opts(), extras=extras)
    assert np.isfinite(ds["precip"].values).sum() > 0
    # the standardisation uses the training statistics: (285 - 280) / 10
    np.testing.assert_allclose(pipe.downscale.standardise_extras(fine[0]), 0.5)
    with pytest.raises(CheckpointError, match="trained with extras"):
        pipe.predict(src, _opts(), extras=xr.concat([extras, extras], dim="var"))


def test_disk_accumulator_gives_the_same_file(pipeline: Pipeline, tmp_path, monkeypatch) -> None:
    """Large domains blend windows in a temporary zarr array: same numbers as in memory, for
    every time step (the second step's array once collided with the first's)."""
    import precipdiff.pipeline.accumulate as pp

    src = coarse_field(ny=6, nx=8, n_time=2)
    opts = _opts(window=16, halo=4, tile=16, overlap=4)
    in_memory = predict_to_file(pipeline, src, tmp_path / "mem.nc", opts)
    monkeypatch.setattr(pp, "IN_MEMORY_LIMIT", 0)
    on_disk = predict_to_file(pipeline, src, tmp_path / "disk.nc", opts)
    a, b = xr.open_dataset(in_memory)["precip"].values, xr.open_dataset(on_disk)["precip"].values
    assert a.shape[1] == 2
    np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-6)


# ---------------------------------------------------------------- dry stays dry


def _dry_field(ny: int = 8, nx: int = 10) -> xr.DataArray:
    src = coarse_field(ny=ny, nx=nx, n_time=1)
    return src.copy(data=np.zeros_like(src.values))


def test_all_zero_input_gives_all_zero_output(pipeline: Pipeline) -> None:
    """Before the rule, random residual noise left drizzle on most pixels of a dry input."""
    ds = pipeline.predict(_dry_field(), _opts())
    assert np.all(ds["corrected_lr"].values == 0)
    assert np.all(ds["precip"].values == 0)


def test_no_trace_values_and_rain_only_near_wet_cells(pipeline: Pipeline) -> None:
    src = _dry_field(ny=10, nx=10)
    src.values[0, 4:6, 4:6] = 3.0  # one wet 2 x 2 patch of coarse cells
    ds = pipeline.predict(src, _opts(trace_threshold=0.2))
    for name in ("corrected_lr", "precip"):
        v = ds[name].values
        assert not ((v > 0) & (v < 0.2)).any(), name
    # Stage I: only within one coarse cell of the wet source cells
    lr = ds["corrected_lr"].values[:, 0]
    assert lr[:, :3].max() == 0 and lr[:, 7:].max() == 0 and lr[:, :, :3].max() == 0
    # Stage II: only over (or next to) wet corrected cells of the same member
    hr = ds["precip"].values[:, 0]
    for m in range(hr.shape[0]):
        wet_lr = lr[m] >= 0.2
        near = np.zeros_like(wet_lr)
        for dy in (-1, 0, 1):
            for dx in (-1, 0, 1):
                near |= np.roll(np.roll(wet_lr, dy, 0), dx, 1)
        far = ~np.repeat(np.repeat(near, FACTOR, 0), FACTOR, 1)
        assert hr[m][far].max() == 0
    assert ds.attrs["trace_threshold"] == 0.2


def test_trace_threshold_default_and_from_weights(pipeline: Pipeline) -> None:
    from precipdiff.pipeline.dry import AREAL_MEAN_TRACE_MM_H, DEFAULT_TRACE_MM_H

    assert pipeline.trace(_opts()) == DEFAULT_TRACE_MM_H == 0.1
    stage = pipeline.downscale
    # an areal-mean input straight to a mean-pooled Stage II keeps its light cells
    alone = Pipeline(None, stage)
    expected = AREAL_MEAN_TRACE_MM_H if stage.pooling == "mean" else DEFAULT_TRACE_MM_H
    assert alone.trace(_opts()) == expected and AREAL_MEAN_TRACE_MM_H == 0.02
    if "fine_threshold" not in stage.metadata:  # ... at the coarse grid only
        assert alone.fine_threshold(_opts()) == DEFAULT_TRACE_MM_H
        assert alone.fine_threshold(_opts(trace_threshold=0.05)) == 0.05
    assert Pipeline(pipeline.correct, stage).trace(_opts()) == 0.1  # Stage I's drizzle is noise
    stage.metadata["trace_threshold"] = "0.3"
    try:
        assert pipeline.trace(_opts()) == 0.3
        assert pipeline.trace(_opts(trace_threshold=0.05)) == 0.05
    finally:
        del stage.metadata["trace_threshold"]


def test_dry_rule_functions() -> None:
    from precipdiff.pipeline.dry import dry_cells, dry_coarse, dry_fine

    lr = np.zeros((1, 5, 5), np.float32)
    lr[0, 2, 2] = 1.0
    dry = dry_cells(lr, trace=0.1, halo=1)
    assert not dry[0, 1:4, 1:4].any() and dry[0].sum() == 25 - 9
    assert dry_cells(lr, trace=0.1, halo=0)[0].sum() == 24
    src = np.zeros((5, 5), np.float32)
    src[0, 0] = np.nan
    members = np.full((2, 5, 5), 0.5, np.float32)
    members[:, 0, 0] = np.nan
    out = dry_coarse(members, src, trace=0.1)
    assert np.isnan(out[:, 0, 0]).all() and np.nansum(out) == 0
    hr = np.full((1, 10, 10), 0.05, np.float32)
    hr[0, 4:6, 4:6] = 2.0
    out = dry_fine(hr.copy(), dry, 2, trace=0.1)
    assert out[0, 4:6, 4:6].min() == 2.0 and (out[0] == 0).sum() == 96


def test_fine_threshold_applies_to_the_fine_grid_only(pipeline: Pipeline) -> None:
    src = _dry_field(ny=10, nx=10)
    src.values[0, 3:7, 3:7] = 0.6
    base = pipeline.predict(src, _opts())
    ds = pipeline.predict(src, _opts(fine_threshold=0.5))
    hr, lr = ds["precip"].values, ds["corrected_lr"].values
    assert not ((hr > 0) & (hr < 0.5)).any()
    np.testing.assert_array_equal(lr, base["corrected_lr"].values)  # the coarse grid: as before
    keep = base["precip"].values >= 0.5
    np.testing.assert_array_equal(hr[keep], base["precip"].values[keep])
    assert ds.attrs["fine_threshold"] == 0.5 and ds.attrs["trace_threshold"] == 0.1
    stage = pipeline.downscale
    stage.metadata["fine_threshold"] = "0.3"
    try:
        assert pipeline.fine_threshold(_opts()) == 0.3
        assert pipeline.fine_threshold(_opts(trace_threshold=0.4)) == 0.4  # never below trace
    finally:
        del stage.metadata["fine_threshold"]


# ---------------------------------------------------------------- dry windows are not sampled


def _half_dry(n_time: int = 2) -> xr.DataArray:
    """Rain in the western 6 columns only; the east is dry by a margin wider than the halo."""
    src = coarse_field(ny=6, nx=20, n_time=n_time)
    data = src.values.copy()
    data[..., 6:] = 0.0
    return src.copy(data=data)


def test_dry_windows_are_skipped_with_the_same_output(tiny_weights, monkeypatch) -> None:
    """A window whose coarse cells are all dry (in every member of the batch) is zero after the
    dry rule whatever is sampled there, so it is not sampled: the output is bit for bit the one
    sampled everywhere, and the output says how many blocks were skipped."""
    import precipdiff.pipeline.pipeline as pp

    pipe = Pipeline(None, Stage.load(tiny_weights["downscale"]))
    opts = _opts(window=16, halo=4, tile=16, overlap=4, crop_to_rain=False)
    src = _half_dry()
    skipped = pipe.predict(src, opts)
    assert skipped.attrs["stage2_blocks_dry"] > 0 and skipped.attrs["stage2_blocks_sampled"] > 0
    assert skipped.attrs["stage2_sampled_fraction"] == 1.0
    monkeypatch.setattr(pp, "dry_block", lambda *a, **k: False)
    sampled = pipe.predict(src, opts)
    assert sampled.attrs["stage2_blocks_dry"] == 0
    np.testing.assert_array_equal(skipped["precip"].values, sampled["precip"].values)
    east = skipped["precip"].values[..., 8 * FACTOR :]
    assert np.nanmax(east) == 0.0


def test_wet_box_covers_the_wet_cells_with_context() -> None:
    from precipdiff.pipeline.dry import wet_box
    from precipdiff.pipeline.tiling import Window

    f = 4
    dry = np.ones((2, 10, 10), bool)
    dry[0, 3, 4] = False  # member 0: one wet cell
    dry[1, 5, 6] = False  # member 1: another
    win = Window(0, 40, 0, 40, torch.ones(40, 40))
    box = wet_box(dry, win, f, margin=5)  # 5 px -> 2 whole cells of context
    assert (box.y0, box.y1, box.x0, box.x1) == ((3 - 2) * f, (5 + 3) * f, (4 - 2) * f, (6 + 3) * f)
    assert box.weight.shape == (box.y1 - box.y0, box.x1 - box.x0)
    edge = wet_box(dry, Window(12, 40, 16, 40, torch.ones(28, 24)), f, margin=8)
    assert (edge.y0, edge.x0) == (12, 16)  # clipped to the window
    assert wet_box(np.ones((1, 10, 10), bool), win, f, margin=5) is win


def test_crop_to_rain_samples_only_around_the_rain(tiny_weights) -> None:
    """Windows are cut to their wet cells plus context: less is sampled, dry stays exactly dry
    and the mass-consistent volume is kept as with whole windows."""
    pipe = Pipeline(None, Stage.load(tiny_weights["downscale"]))
    src = _half_dry()
    kw = dict(window=32, halo=4, tile=16, overlap=4, mass_consistent=True)
    cropped = pipe.predict(src, _opts(**kw))
    whole = pipe.predict(src, _opts(**kw, crop_to_rain=False))
    assert_cut_to_the_rain(cropped, whole)
    assert abs(cropped.attrs["volume_error"]) < 1e-5 and abs(whole.attrs["volume_error"]) < 1e-5


def test_windows_cut_to_the_rain_do_not_depend_on_the_member_batch(tiny_weights) -> None:
    """The box is that of all members' wet cells: a member's sample is the same in any member
    batch, also when the members are wet in different places."""
    pipe = Pipeline(None, Stage.load(tiny_weights["downscale"]))
    corrected = np.zeros((3, 6, 20), np.float32)
    corrected[:, :, :4] = 2.0  # every member wet in the west
    corrected[1:, :, 4:9] = 1.0  # members 1 and 2 wet further east too

    def run(batch: int) -> np.ndarray:
        opts = _opts(window=80, halo=4, tile=16, overlap=4, member_batch=batch)
        return np.concatenate([b for _, _, b in pipe.downscale_step(corrected, 0, opts)], 1)

    np.testing.assert_allclose(run(1), run(3), rtol=1e-4, atol=1e-5)


def test_wet_boxes_one_per_group_of_wet_cells() -> None:
    """Rain in two corners of a window gives two boxes, disjoint, holding every wet cell with
    its context; groups closer than their context share one box."""
    from precipdiff.pipeline.dry import wet_boxes
    from precipdiff.pipeline.tiling import Window

    f = 4
    win = Window(0, 80, 0, 80, torch.ones(80, 80))
    dry = np.ones((2, 20, 20), bool)
    dry[0, 1:3, 1:3] = False  # member 0: north-west corner
    dry[1, 16:18, 15:19] = False  # member 1: south-east corner
    boxes = wet_boxes(dry, win, f, margin=8)  # 2 cells of context
    assert [(b.y0, b.y1, b.x0, b.x1) for b in boxes] == [(0, 20, 0, 20), (56, 80, 52, 80)]
    wet = ~dry.all(axis=0)
    covered = np.zeros((20, 20), int)
    for b in boxes:
        covered[b.y0 // f : -(-b.y1 // f), b.x0 // f : -(-b.x1 // f)] += 1
        assert b.weight.shape == (b.y1 - b.y0, b.x1 - b.x0)
    assert covered.max() == 1 and (covered[wet] == 1).all()
    dry[0, 5:7, 5:7] = False  # its box overlaps the north-west one: they share one
    boxes = wet_boxes(dry, win, f, margin=8)
    assert [(b.y0, b.y1, b.x0, b.x1) for b in boxes] == [(0, 36, 0, 36), (56, 80, 52, 80)]
    assert wet_boxes(np.ones((1, 20, 20), bool), win, f, margin=8) == [win]


def test_rain_in_two_corners_is_sampled_over_two_boxes(tiny_weights) -> None:
    """A window wet in two opposite corners samples two small boxes, not their bounding box:
    less is sampled, dry cells stay exactly dry and the volume is kept."""
    pipe = Pipeline(None, Stage.load(tiny_weights["downscale"]))
    data = np.zeros((1, 12, 12), np.float32)
    data[0, :2, :2] = 3.0
    data[0, -2:, -2:] = 2.0
    src = coarse_field(ny=12, nx=12, n_time=1).copy(data=data)
    kw = dict(window=512, halo=4, tile=16, overlap=4, mass_consistent=True, members=2)
    ds = pipe.predict(src, _opts(**kw))
    hr = ds["precip"].values
    # two boxes of 4 x 4 of the 12 x 12 cells (2 wet, 1 of the dry rule's halo, 1 of context);
    # one bounding box would be the whole window
    assert ds.attrs["stage2_sampled_fraction"] == pytest.approx(2 * 16 / 144, abs=1e-4)
    assert np.nanmax(hr[..., 4 * FACTOR : 8 * FACTOR, :]) == 0.0  # the dry middle
    assert (hr[..., : 2 * FACTOR, : 2 * FACTOR] > 0).any()
    assert abs(ds.attrs["volume_error"]) < 1e-5
