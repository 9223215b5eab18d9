"""Clips: consecutive frames at the network's cadence, inside one event, split by event."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import xarray as xr

from precipdiff.data.clips import ClipDataset, CorpusClipDataset, clip_starts, collate_clips
from precipdiff.data.corpus import open_corpus, prepare_corpus
from precipdiff.data.corpus_config import CorpusConfig
from precipdiff.data.dataset import PatchDataset, PatchLocation, dihedral
from precipdiff.data.synth import synthetic_rain
from precipdiff.errors import ConfigError

LAEA = "+proj=laea +lat_0=55 +lon_0=10 +x_0=1950000 +y_0=-2100000 +ellps=WGS84 +units=m"
T0 = np.datetime64("2020-03-01T10:00", "ns")


def _files(folder: Path, times: list, *, projected: bool, seed: int) -> None:
    shape = (40, 60) if projected else (30, 50)
    rain = synthetic_rain(len(times), *shape, rng=np.random.default_rng(seed),
                          wet_fraction=0.4).astype(np.float32)
    folder.mkdir(parents=True, exist_ok=True)
    for k, t in enumerate(times):
        if projected:
            ds = xr.Dataset(
                {"rainrate": (("time", "y", "x"), rain[k:k + 1],
                              {"units": "mm/h", "grid_mapping": "crs"}),
                 "crs": ((), np.int32(0), {"grid_mapping_name": "lambert_azimuthal_equal_area",
                                           "proj4": LAEA})},
                coords={"time": [t], "x": ("x", -499500.0 + 1000.0 * np.arange(shape[1])),
                        "y": ("y", 200500.0 + 1000.0 * np.arange(shape[0]))})
        else:
            ds = xr.Dataset({"precip": (("time", "lat", "lon"), rain[k:k + 1],
                                        {"units": "mm/h"})},
                            coords={"time": [t], "lat": 35.005 + 0.01 * np.arange(shape[0]),
                                    "lon": -100.995 + 0.01 * np.arange(shape[1])})
        ds.to_netcdf(folder / f"f{k:02d}.nc")


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    """``radar`` (5 min; train events a with a gap and b, test event c), ``fast`` (2 min,
    one train event, one test frame) and ``hourly`` (1 h)."""
    d = tmp_path_factory.mktemp("clips")
    m5, m2, h1 = (np.timedelta64(v, u) for v, u in ((5, "m"), (2, "m"), (1, "h")))
    _files(d / "radar", [T0 + k * m5 for k in (0, 1, 2, 4, 5, 20, 21, 22, 23, 40, 41, 42)],
           projected=True, seed=1)
    fast = [T0 + np.timedelta64(1, "D") + k * m2 for k in range(5)]
    _files(d / "fast", fast + [T0 + np.timedelta64(3, "D")], projected=False, seed=2)
    _files(d / "hourly", [T0 + k * h1 for k in range(4)] + [T0 + np.timedelta64(4, "D")],
           projected=False, seed=3)
    day = "2020-03-01"
    cfg = CorpusConfig.from_dict({
        "factor": 5, "pooling": "mean", "seed": 7,
        "sources": [
            {"network": "radar", "files": str(d / "radar" / "*.nc"),
             "events": {"a": [f"{day}T10:00", f"{day}T10:25"],
                        "b": [f"{day}T11:40", f"{day}T11:55"],
                        "c": [f"{day}T13:20", f"{day}T13:35"]}, "held_out": "c"},
            {"network": "fast", "files": str(d / "fast" / "*.nc"),
             "held_out": "2020-03-04T10:00"},
            {"network": "hourly", "files": str(d / "hourly" / "*.nc"),
             "held_out": "2020-03-05T10:00"}]})
    return prepare_corpus(cfg, d / "c.zarr")


def test_clip_starts_never_cross_events_or_gaps():
    t = np.array([0, 300, 600, 900, 1200, 1800, 2100, 2400, 2700])
    e = np.array([0, 0, 0, 1, 1, 1, 1, 1, 1])  # event 1 starts right after event 0
    starts, step = clip_starts(t, e, 3)
    assert step == 300
    assert starts.tolist() == [0, 5, 6]  # not 1 (crosses the event), not 2..4 (gap 1200->1800)
    assert clip_starts(t, e, 1)[0].tolist() == list(range(9))
    assert clip_starts(t, e, 3, step_s=600)[0].size == 0
    assert clip_starts(t[:2], e[:2], 3)[0].size == 0


def test_clip_frames_are_consecutive_and_match_the_patch_dataset(corpus):
    path = open_corpus(corpus).network_path("radar")
    ds = ClipDataset(path, split="train", stage="downscale", patch=10, samples_per_epoch=16,
                     frames=3, seed=4)
    assert ds.step_s == 300 and ds.n_clips == 3  # a: (0,1,2); b: (20,21,22), (21,22,23)
    frames = PatchDataset(path, split="train", stage="downscale", patch=10,
                          samples_per_epoch=1, augment=False)
    frames.locate(0)  # opens the store in this process
    for i in range(len(ds)):
        item, loc = ds[i], ds.locate(i)
        assert item["target"].shape == (3, 1, 10, 10) and item["mask"].dtype == torch.bool
        assert item["time_offsets"].tolist() == [0.0, 300.0, 600.0]
        assert np.all(np.diff(item["time"].numpy()) == 300)
        for j, pos in enumerate(loc.positions):  # each frame is the frame dataset's patch
            ref = frames._fine(PatchLocation(int(ds.times[pos]), pos, loc.y0, loc.x0, 0))[1]
            ref = torch.where(torch.isfinite(ref), ref, 0.0)
            torch.testing.assert_close(item["target"][j], dihedral(ref, loc.k))
    again = ClipDataset(path, split="train", stage="downscale", patch=10, samples_per_epoch=16,
                        frames=3, seed=4)
    torch.testing.assert_close(again[5]["cond"], ds[5]["cond"])  # a function of the index


def test_corpus_clips_split_by_event_and_skip_hourly_networks(corpus):
    ds = CorpusClipDataset(corpus, split="train", stage="downscale", patch=10,
                           samples_per_epoch=24, frames=3, seed=1)
    assert ds.part_names == ["radar", "fast"]  # hourly: cadence 3600 s > 600 s
    assert ds.parts[1].step_s == 120
    events = {ds.event_ids[int(ds[i]["event"])] for i in range(len(ds))}
    assert events <= {"radar/a", "radar/b", "fast/2020-03-02T10:00"} and len(events) >= 2
    batch = collate_clips([ds[0], ds[1]])
    assert batch["cond"].shape == (2, 3, 1, 10, 10) and batch["time_offsets"].shape == (2, 3)
    test = CorpusClipDataset(corpus, split="test", stage="downscale", patch=10,
                             samples_per_epoch=4, frames=3)
    assert test.part_names == ["radar"]  # event c; fast's test event is one frame
    assert {test.event_ids[int(test[i]["event"])] for i in range(4)} == {"radar/c"}
    train_times = {int(t) for i in range(len(ds)) for t in ds[i]["time"]}
    assert not train_times & {int(t) for i in range(4) for t in test[i]["time"]}


def test_errors(corpus):
    with pytest.raises(ConfigError, match="no 6 consecutive frames"):
        ClipDataset(open_corpus(corpus).network_path("radar"), split="train",
                    stage="downscale", patch=10, samples_per_epoch=2, frames=6)
    with pytest.raises(ConfigError, match="no network has 5-frame clips"):
        CorpusClipDataset(corpus, split="test", stage="downscale", patch=10,
                          samples_per_epoch=2, frames=5)
    with pytest.raises(ConfigError, match="no network"):
        CorpusClipDataset(corpus, split="train", stage="downscale", patch=10,
                          samples_per_epoch=2, frames=3, networks=["nowhere"])
    ds = CorpusClipDataset(corpus, split="train", stage="downscale", patch=10,
                           samples_per_epoch=2, frames=3)
    with pytest.raises(IndexError, match="negative"):
        ds.part_of(-1)


@pytest.mark.realdata
def test_real_meteoswiss_clips(shared_data, tmp_path):
    """Five 5-min MeteoSwiss frames of two events: clips follow the radar's cadence and the
    held-out event's frames never enter a train clip."""
    files = [str(p) for day in ("20150515", "20160711")
             for p in sorted((shared_data / "radar" / "mch" / day).glob("*.gif"))[:5]]
    if len(files) < 10:
        pytest.skip("MeteoSwiss files missing")
    cfg = CorpusConfig.from_dict({
        "factor": 10, "pooling": "mean",
        "sources": [{"network": "mch", "files": files,
                     "region": [600000.0, 100000.0, 760000.0, 260000.0],
                     "events": {"spring": ["2015-05-15T15:00", "2015-05-15T20:00"],
                                "summer-night": ["2016-07-11T20:00", "2016-07-12T01:00"]},
                     "held_out": "summer-night"}]})
    corpus = prepare_corpus(cfg, tmp_path / "mch.zarr")
    train = CorpusClipDataset(corpus, split="train", stage="downscale", patch=40,
                              samples_per_epoch=6, frames=4)
    test = CorpusClipDataset(corpus, split="test", stage="downscale", patch=40,
                             samples_per_epoch=6, frames=4)
    assert train.parts[0].step_s == 300 and train.parts[0].n_clips == 2
    for ds, event in ((train, "mch/spring"), (test, "mch/summer-night")):
        for i in range(len(ds)):
            item = ds[i]
            assert ds.event_ids[int(item["event"])] == event
            assert item["time_offsets"].tolist() == [0.0, 300.0, 600.0, 900.0]
            assert item["mask"].float().mean() > 0.5
