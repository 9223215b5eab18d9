"""A temporal Stage II in the pipeline: whole records, one trajectory per member, CLI."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import xarray as xr

from precipdiff.errors import CheckpointError, ConfigError
from precipdiff.io import write_netcdf
from precipdiff.models.temporal import TemporalConfig
from precipdiff.pipeline import Pipeline, PredictOptions, SamplerSettings, Stage
from precipdiff.pipeline import record as record_module
from precipdiff.pipeline.output import predict_to_file
from precipdiff.pipeline.record import frame_overlap, sequence_options
from precipdiff.release import Release

from .conftest import (
    FACTOR,
    assert_cut_to_the_rain,
    coarse_field,
    write_temporal,
    write_tiny_weights,
)

FAST = SamplerSettings(sampler="dpmpp_2m", steps=2)
FRAMES = 3


def _opts(**kw) -> PredictOptions:
    # independent noise per frame: the equivalence with the per-frame path holds
    base = dict(members=2, correct=FAST, downscale=FAST, seed=5, member_batch=1, window=512,
                precision="fp32", temporal_noise_correlation=0.0)
    return PredictOptions(**{**base, **kw})


def _record(n: int, ny: int = 6, nx: int = 8) -> xr.DataArray:
    """``n`` coarse fields 30 min apart (each from its own seed)."""
    frames = [coarse_field(ny=ny, nx=nx, n_time=1, seed=s) for s in range(n)]
    src = xr.concat(frames, dim="time")
    t0 = np.datetime64("2019-06-10T00:00", "ns")
    return src.assign_coords(time=t0 + np.arange(n) * np.timedelta64(30, "m"))


@pytest.fixture(scope="module")
def weights(tiny_weights, tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("temporal")
    per_frame = tiny_weights["downscale"]
    return {
        "correct": tiny_weights["correct"],
        "per_frame": per_frame,
        "untrained": write_temporal(per_frame, root / "untrained.safetensors", trained=False,
                                    frames=FRAMES),
        "trained": write_temporal(per_frame, root / "trained.safetensors", trained=True,
                                  frames=FRAMES),
    }


def _stages(weights, *names: str) -> list[Stage | None]:
    return [None if n is None else Stage.load(weights[n]) for n in names]


def test_stage_knows_it_is_temporal(weights) -> None:
    untrained, per_frame = _stages(weights, "untrained", "per_frame")
    assert untrained.temporal == TemporalConfig(frames=FRAMES, head_channels=8)
    assert per_frame.temporal is None
    assert Pipeline(None, untrained).temporal and not Pipeline(None, per_frame).temporal
    seq = sequence_options(untrained, _opts(tile_batch=8))
    assert (seq.window, seq.overlap_frames, seq.seed, seq.steps) == (FRAMES, 1, 6, 2)
    assert (seq.tile, seq.overlap, seq.tile_batch) == (256, 64, 2)  # at most 8 frames a call
    assert frame_overlap(1) == 1 and frame_overlap(6) == 2
    assert seq.windows == "alternate"  # the default: each frame evaluated once a step
    assert sequence_options(untrained, _opts(temporal_windows="overlap")).windows == "overlap"


def test_correlated_noise_is_seeded_and_recorded(weights, tmp_path) -> None:
    src = _record(4)
    pipe = Pipeline(None, Stage.load(weights["trained"]))
    opts = _opts(temporal_noise_correlation=0.5)
    a, b = pipe.predict(src, opts), pipe.predict(src, opts)
    np.testing.assert_array_equal(a["precip"].values, b["precip"].values)
    assert a.attrs["downscale_temporal_noise_correlation"] == 0.5
    independent = pipe.predict(src, _opts())["precip"].values
    assert np.nanmax(np.abs(a["precip"].values - independent)) > 1e-3
    # by default the correlation the weights were trained with (none recorded: 0)
    default = _opts(temporal_noise_correlation=None)
    assert pipe.predict(src, default).attrs["downscale_temporal_noise_correlation"] == 0.0
    rel = Release.load(weights["trained"])
    noted = dataclasses.replace(rel, notes={**rel.notes, "temporal_noise_correlation": "0.5"}
                                ).save(tmp_path / "noted.safetensors")
    out = Pipeline(None, Stage.load(noted)).predict(src, default)
    assert out.attrs["downscale_temporal_noise_correlation"] == 0.5
    np.testing.assert_array_equal(out["precip"].values, a["precip"].values)


def test_noise_moves_with_the_rain_when_asked_or_noted(weights, tmp_path, monkeypatch) -> None:
    first = coarse_field(ny=8, nx=12, n_time=1, seed=3)
    yy, xx = np.mgrid[0:8, 0:12]
    frames = [first.copy(data=(12 * np.exp(-((yy - 4) ** 2 + (xx - 3 - k) ** 2) / 4)
                               * (1 + 0.3 * np.sin(yy + xx - k)))[None].astype(np.float32))
              for k in range(4)]  # a storm one coarse cell further east each frame
    t0 = np.datetime64("2019-06-10T00:00", "ns")
    src = xr.concat(frames, dim="time").assign_coords(
        time=t0 + np.arange(4) * np.timedelta64(10, "m"))
    tracks = []
    real = record_module.rain_drift
    monkeypatch.setattr(record_module, "rain_drift",
                        lambda rates, factor: tracks.append(real(rates, factor)) or tracks[-1])
    pipe = Pipeline(None, Stage.load(weights["trained"]))
    still = pipe.predict(src, _opts(temporal_noise_correlation=0.5))
    assert still.attrs["downscale_temporal_noise_drift"] == 0 and not tracks
    moved = pipe.predict(src, _opts(temporal_noise_correlation=0.5, temporal_noise_drift=True))
    assert moved.attrs["downscale_temporal_noise_drift"] == 1
    # the rain moves one coarse cell east a frame: FACTOR fine pixels
    np.testing.assert_allclose(np.diff(tracks[0], axis=0), [[0, FACTOR]] * 3, atol=0.3 * FACTOR)
    assert np.nanmax(np.abs(moved["precip"].values - still["precip"].values)) > 1e-3
    # weights calibrated with drifting noise say so; independent noise has nothing to move
    rel = Release.load(weights["trained"])
    noted = dataclasses.replace(rel, notes={**rel.notes, "temporal_noise_drift": "1"}
                                ).save(tmp_path / "drift.safetensors")
    again = Pipeline(None, Stage.load(noted)).predict(src, _opts(temporal_noise_correlation=0.5))
    np.testing.assert_array_equal(again["precip"].values, moved["precip"].values)
    independent = Pipeline(None, Stage.load(noted)).predict(src, _opts())
    assert len(tracks) == 2 and independent.attrs["downscale_temporal_noise_drift"] == 0


def test_unknown_temporal_windows_refused(tmp_path) -> None:
    from precipdiff.errors import ConfigError
    from precipdiff.pipeline.run import PredictRequest

    with pytest.raises(ConfigError, match="--temporal-windows must be one of overlap, alternate"):
        PredictRequest(inputs=[tmp_path / "x.nc"], output=tmp_path / "o.nc",
                       temporal_windows="rolling")
    with pytest.raises(ConfigError, match="--temporal-noise-correlation must be in"):
        PredictRequest(inputs=[tmp_path / "x.nc"], output=tmp_path / "o.nc",
                       temporal_noise_correlation=1.0)


@pytest.mark.parametrize(("with_stage1", "tile"), [(False, None), (True, None), (True, 16)])
def test_untrained_temporal_stage_samples_what_the_per_frame_stage_samples(
        weights, with_stage1, tile) -> None:
    """Zero temporal blocks, the same noise: the per-frame output, over windows of 3 frames on
    a 4-step record, from Stage-I members (each member its own corrected sequence) or not, on
    one network tile or on 16-pixel tiles fused at every step (as the per-frame path does)."""
    correct = Stage.load(weights["correct"]) if with_stage1 else None
    src = _record(4)
    opts = _opts(tile=tile, overlap=4 if tile else None)
    temporal = Pipeline(correct, Stage.load(weights["untrained"])).predict(src, opts)
    per_frame = Pipeline(correct, Stage.load(weights["per_frame"])).predict(src, opts)
    a, b = temporal["precip"].values, per_frame["precip"].values
    assert a.shape == (2, 4, 6 * FACTOR, 8 * FACTOR)
    np.testing.assert_array_equal(np.isnan(a), np.isnan(b))
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)
    np.testing.assert_array_equal(temporal["corrected_lr"].values, per_frame["corrected_lr"])
    assert np.std(a, axis=0)[np.isfinite(a).all(axis=0)].mean() > 1e-3  # members differ
    assert temporal.attrs["downscale_temporal_frames"] == FRAMES
    assert temporal.attrs["downscale_temporal_windows"] == "alternate"
    assert temporal.attrs["downscale_temporal_noise_correlation"] == 0.0
    assert "downscale_temporal_frames" not in per_frame.attrs
    assert temporal.attrs["volume_error"] == pytest.approx(per_frame.attrs["volume_error"],
                                                           abs=1e-4)


def test_single_time_step_is_a_clip_of_one_frame(weights) -> None:
    src = _record(1)
    temporal = Pipeline(None, Stage.load(weights["untrained"])).predict(src, _opts())
    per_frame = Pipeline(None, Stage.load(weights["per_frame"])).predict(src, _opts())
    assert temporal["precip"].shape == (2, 1, 6 * FACTOR, 8 * FACTOR)
    np.testing.assert_allclose(temporal["precip"].values, per_frame["precip"].values,
                               rtol=1e-4, atol=1e-4)


def test_extra_channels_reach_the_temporal_net(tmp_path) -> None:
    per_frame = write_tiny_weights(tmp_path / "x.safetensors", "downscale", seed=5,
                                   extras=("t850",))
    temporal = write_temporal(per_frame, tmp_path / "xt.safetensors", trained=False)
    src = _record(2)
    rng = np.random.default_rng(0)
    fine = rng.normal(285.0, 10.0, (2, 1, 6 * FACTOR, 8 * FACTOR)).astype(np.float32)
    extras = xr.DataArray(fine, dims=("time", "var", "lat", "lon"))
    a = Pipeline(None, Stage.load(temporal)).predict(src, _opts(), extras=extras)
    b = Pipeline(None, Stage.load(per_frame)).predict(src, _opts(), extras=extras)
    np.testing.assert_allclose(a["precip"].values, b["precip"].values, rtol=1e-4, atol=1e-4)
    without = Pipeline(None, Stage.load(temporal)).predict(
        src, _opts(), extras=extras.copy(data=np.full_like(fine, 280.0)))
    assert np.nanmax(np.abs(without["precip"].values - a["precip"].values)) > 1e-3
    with pytest.raises(CheckpointError, match="trained with extras"):
        Pipeline(None, Stage.load(temporal)).predict(
            src, _opts(), extras=xr.concat([extras, extras], dim="var"))


def test_stochastic_sampler_and_bf16_are_seeded(weights) -> None:
    src = _record(2)
    pipe = Pipeline(None, Stage.load(weights["trained"]))
    ancestral = _opts(downscale=SamplerSettings(sampler="ancestral", steps=2))
    a, b = (pipe.predict(src, ancestral)["precip"].values for _ in range(2))
    np.testing.assert_array_equal(a, b)
    c = pipe.predict(src, dataclasses.replace(ancestral, seed=6))["precip"].values
    assert np.nanmax(np.abs(a - c)) > 1e-3
    fp32 = pipe.predict(src, _opts())["precip"].values
    bf16 = pipe.predict(src, _opts(precision="bf16"))
    assert bf16.attrs["precision"] == "bf16"
    np.testing.assert_allclose(bf16["precip"].values, fp32, rtol=0.1, atol=0.2)


def test_trained_temporal_blocks_change_members_and_stay_seeded(weights) -> None:
    src = _record(4)
    pipe = Pipeline(*_stages(weights, "correct", "trained"))
    a = pipe.predict(src, _opts(mass_consistent=True))
    b = pipe.predict(src, _opts(mass_consistent=True))
    per_frame = Pipeline(*_stages(weights, "correct", "per_frame")).predict(
        src, _opts(mass_consistent=True))
    hr = a["precip"].values
    np.testing.assert_array_equal(hr, b["precip"].values)
    assert np.nanmax(np.abs(hr - per_frame["precip"].values)) > 1e-3
    assert np.nanmin(hr) >= 0 and np.isfinite(hr).sum() == np.isfinite(
        per_frame["precip"].values).sum()
    assert abs(a.attrs["volume_error"]) < 1e-4  # mass-consistent: block means = corrected


def test_file_output_equals_the_in_memory_result(weights, tmp_path) -> None:
    src = _record(3)
    pipe = Pipeline(*_stages(weights, "correct", "trained"))
    mem = pipe.predict(src, _opts())
    path = predict_to_file(pipe, src, tmp_path / "out.nc", _opts(), thresholds=(1.0,))
    with xr.open_dataset(path) as ds:
        np.testing.assert_array_equal(ds["precip"].values, mem["precip"].values)
        np.testing.assert_array_equal(ds["corrected_lr"].values, mem["corrected_lr"].values)
        mean = mem["precip"].values.mean(axis=0)
        np.testing.assert_allclose(ds["ensemble_mean"].values, mean, rtol=1e-6, atol=1e-6)
        assert ds.attrs["downscale_temporal_frames"] == FRAMES
        assert np.isfinite(ds.attrs["volume_error"])


def test_block_too_large_for_memory_is_refused(weights, monkeypatch) -> None:
    """The limit applies to one block (member batch x chunk x window), not the record: a
    smaller window or chunk gets under it."""
    monkeypatch.setattr(record_module, "SEQUENCE_LIMIT", 2**16)
    pipe = Pipeline(None, Stage.load(weights["untrained"]))
    src = _record(3, ny=12, nx=20)
    with pytest.raises(ConfigError, match="blocks of 1 members x 3 times x 48x80 fine pixels"):
        pipe.predict(src, _opts())
    small = _opts(window=16, halo=4, tile=16, overlap=4, temporal_chunk=2)
    assert record_module.record_bytes(1, 2, 16, 16) < 2**16
    out = pipe.predict(src, small)["precip"].values
    ref = Pipeline(None, Stage.load(weights["per_frame"])).predict(src, small)["precip"].values
    assert out.shape == (2, 3, 48, 80)
    np.testing.assert_array_equal(np.isnan(out), np.isnan(ref))  # missing input cells only


def test_blocks_in_space_time_and_members_are_the_per_frame_windows(weights) -> None:
    """Untrained temporal blocks, records cut into chunks of 2 frames (sharing one), fine
    windows of 16 pixels and member batches of 1: exactly what the per-frame path samples with
    the same windows (each block starts from the record's own noise at its place, and the
    blend weights are normalised)."""
    src = _record(5, ny=6, nx=10)
    opts = _opts(window=16, halo=4, tile=16, overlap=4, temporal_chunk=2)
    temporal = Pipeline(None, Stage.load(weights["untrained"])).predict(src, opts)
    per_frame = Pipeline(None, Stage.load(weights["per_frame"])).predict(src, opts)
    np.testing.assert_allclose(temporal["precip"].values, per_frame["precip"].values,
                               rtol=1e-4, atol=1e-4)
    assert np.nanmean(np.std(temporal["precip"].values, axis=0)) > 1e-3


def test_chunked_record_is_seeded_and_close_to_the_whole_record(weights) -> None:
    """Trained temporal blocks: chunks of 3 frames on a 6-step record give the same members
    twice, differ from one whole-record state only where chunks meet, and keep the volume."""
    src = _record(6)
    pipe = Pipeline(*_stages(weights, "correct", "trained"))
    whole = pipe.predict(src, _opts(mass_consistent=True))
    a = pipe.predict(src, _opts(mass_consistent=True, temporal_chunk=3))
    b = pipe.predict(src, _opts(mass_consistent=True, temporal_chunk=3))
    np.testing.assert_array_equal(a["precip"].values, b["precip"].values)
    diff = np.nanmax(np.abs(a["precip"].values - whole["precip"].values))
    assert 1e-4 < diff < 0.5 * np.nanmax(whole["precip"].values)
    assert abs(a.attrs["volume_error"]) < 1e-4


def test_record_blend_sums_on_disk_give_the_same_file(weights, tmp_path, monkeypatch) -> None:
    import precipdiff.pipeline.accumulate as acc

    src = _record(4)
    pipe = Pipeline(*_stages(weights, "correct", "trained"))
    opts = _opts(window=16, halo=4, tile=16, overlap=4, temporal_chunk=3)
    mem = predict_to_file(pipe, src, tmp_path / "mem.nc", opts)
    monkeypatch.setattr(acc, "IN_MEMORY_LIMIT", 0)
    disk = predict_to_file(pipe, src, tmp_path / "disk.nc", opts)
    with xr.open_dataset(mem) as x, xr.open_dataset(disk) as y:
        np.testing.assert_allclose(x["precip"].values, y["precip"].values, rtol=1e-6,
                                   atol=1e-6)


def test_per_step_sampling_with_a_temporal_stage_is_refused(weights) -> None:
    pipe = Pipeline(None, Stage.load(weights["untrained"]))
    corrected = np.ones((2, 6, 8), np.float32)
    with pytest.raises(CheckpointError, match="samples whole records, not one time step"):
        list(pipe.downscale_step(corrected, 0, _opts()))


def test_cli_predict_with_a_temporal_stage_two(weights, tmp_path) -> None:
    src = write_netcdf(_record(3).rename("precip"), tmp_path / "in.nc")
    out = tmp_path / "out.nc"
    args = ["predict", str(src), "--stages", "downscale", "--weights-downscale",
            str(weights["trained"]), "--members", "2", "--steps", "2", "--device", "cpu",
            "--temporal-noise-correlation", "0.5", "--temporal-noise-drift", "--output", str(out)]
    res = subprocess.run([sys.executable, "-m", "precipdiff", *args], capture_output=True,
                         text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert res.returncode == 0, res.stderr
    with xr.open_dataset(out) as ds:
        assert ds["precip"].dims == ("member", "time", "lat", "lon")
        assert ds["precip"].shape == (2, 3, 6 * FACTOR, 8 * FACTOR)
        assert ds.attrs["downscale_temporal_frames"] == FRAMES
        assert ds.attrs["downscale_temporal_noise_drift"] == 1
        hr = ds["precip"].values
        assert np.nanmin(hr) >= 0 and np.isfinite(hr).any()



def test_xarray_api_samples_the_whole_record(weights) -> None:
    from precipdiff import downscale
    from precipdiff.pipeline.run import file_seed

    src = _record(3)
    kw = dict(stages=("downscale",), weights_downscale=weights["trained"], members=2, steps=2,
              sampler="dpmpp_2m", member_batch=1, precision="fp32", seed=5)
    out = downscale(src, **kw)
    assert out["precip"].dims == ("time", "member", "lat", "lon")
    assert (out["seed"].values == file_seed(5, src)).all()
    pipe = Pipeline(None, Stage.load(weights["trained"]))
    ref = pipe.predict(src, _opts(seed=file_seed(5, src), mass_consistent=None,
                                  temporal_noise_correlation=None))
    np.testing.assert_array_equal(out["precip"].values, ref["precip"].values.swapaxes(0, 1))
    np.testing.assert_allclose(out["ensemble_mean"].values, ref["precip"].values.mean(axis=0),
                               rtol=1e-6)
    with pytest.raises(ConfigError, match="temporal Stage II samples whole records"):
        downscale(src.chunk({"time": 1}), **kw)
    moved = downscale(src, temporal_noise_correlation=0.5, temporal_noise_drift=True, **kw)
    ref = pipe.predict(src, _opts(seed=file_seed(5, src), mass_consistent=None,
                                  temporal_noise_correlation=0.5, temporal_noise_drift=True))
    np.testing.assert_array_equal(moved["precip"].values, ref["precip"].values.swapaxes(0, 1))


def _half_dry_record() -> xr.DataArray:
    """Four frames with rain in the western 6 coarse columns only."""
    src = _record(4, ny=6, nx=20)
    data = src.values.copy()
    data[..., 6:] = 0.0
    return src.copy(data=data)


def test_dry_blocks_of_a_record_are_skipped_with_the_same_output(weights, monkeypatch) -> None:
    """A block (members x chunk x window) whose coarse cells are dry in every frame is not
    sampled; the record is bit for bit the one sampled everywhere."""
    src = _half_dry_record()
    pipe = Pipeline(None, Stage.load(weights["trained"]))
    opts = _opts(window=16, halo=4, tile=16, overlap=4, temporal_chunk=3)
    skipped = pipe.predict(src, opts)
    assert skipped.attrs["stage2_blocks_dry"] > 0 and skipped.attrs["stage2_blocks_sampled"] > 0
    monkeypatch.setattr(record_module, "dry_block", lambda *a, **k: False)
    sampled = pipe.predict(src, opts)
    np.testing.assert_array_equal(skipped["precip"].values, sampled["precip"].values)


def test_open_frames_share_the_in_memory_limit(tmp_path, monkeypatch) -> None:
    """Frames of a chunk are open together: each keeps its blend sums in memory only up to the
    limit divided by their number, the rest on disk (removed when the frame is done)."""
    import precipdiff.pipeline.accumulate as acc

    monkeypatch.setattr(acc, "IN_MEMORY_LIMIT", 1000)
    alone = acc.Accumulator(2, 10, 10, tmp_path / "a")  # 800 bytes: in memory
    shared = acc.Accumulator(2, 10, 10, tmp_path / "b", share=4)  # 800 > 1000 / 4: on disk
    assert alone.folder is None and shared.folder == tmp_path / "b"
    shared.add(0, 0, 0, np.ones((2, 10, 10), np.float32), np.full((10, 10), 0.5, np.float32))
    np.testing.assert_allclose(shared.band(0, 10), 1.0)
    shared.close()
    assert not (tmp_path / "b" / "wsum.zarr").exists()


def test_record_blocks_are_cut_to_the_rain(weights) -> None:
    """A record's blocks are sampled only around the cells wet in some frame of the chunk:
    less is sampled, dry stays exactly dry, as with whole windows."""
    src = _half_dry_record()
    pipe = Pipeline(None, Stage.load(weights["trained"]))
    kw = dict(window=40, halo=4, tile=16, overlap=4, temporal_chunk=3)
    cut = pipe.predict(src, _opts(**kw))
    whole = pipe.predict(src, _opts(**kw, crop_to_rain=False))
    assert_cut_to_the_rain(cut, whole)
