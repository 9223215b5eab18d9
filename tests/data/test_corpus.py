"""Corpus store: several networks on their own grids, event splits, one file at a time, resume,
samples with network/event, config errors, the CLI, and the five real networks."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import xarray as xr
import yaml

import precipdiff.io as pio
from precipdiff.data import corpus
from precipdiff.data.corpus import open_corpus, prepare_corpus
from precipdiff.data.corpus_config import CorpusConfig, load_corpus_config
from precipdiff.data.corpus_dataset import CorpusPatchDataset, corpus_val_patches
from precipdiff.data.dataset import PatchDataset
from precipdiff.data.store import open_store
from precipdiff.data.synth import synthetic_rain, synthetic_scene
from precipdiff.errors import ConfigError, GridError, InputFileError, StoreError
from precipdiff.grid import coarsen
from precipdiff.io import write_netcdf

REPO = Path(__file__).resolve().parents[2]
LAEA = ("+proj=laea +lat_0=55 +lon_0=10 +x_0=1950000 +y_0=-2100000 +ellps=WGS84 +units=m "
        "+no_defs")
T0 = np.datetime64("2020-03-01T10:00", "ns")
MIN5 = np.timedelta64(5, "m")


def projected_files(folder: Path, *, n_time: int = 6, shape=(40, 60), seed: int = 1,
                    times=None, x0: float = -499500.0, y0: float = 200500.0) -> list[Path]:
    """One CF NetCDF per frame on a 1-km LAEA grid (x/y metres, a grid_mapping variable)."""
    folder.mkdir(parents=True, exist_ok=True)
    rain = synthetic_rain(n_time, *shape, rng=np.random.default_rng(seed)).astype(np.float32)
    times = times if times is not None else [T0 + k * MIN5 for k in range(n_time)]
    x = x0 + 1000.0 * np.arange(shape[1])
    y = y0 + 1000.0 * np.arange(shape[0])[::-1]  # north row first, as radar files store it
    out = []
    for k, t in enumerate(times):
        ds = xr.Dataset(
            {"rainrate": (("time", "y", "x"), rain[k:k + 1, ::-1],
                          {"units": "mm/h", "grid_mapping": "crs"}),
             "crs": ((), np.int32(0), {"grid_mapping_name": "lambert_azimuthal_equal_area",
                                       "proj4": LAEA})},
            coords={"time": [t], "x": ("x", x, {"units": "m"}), "y": ("y", y, {"units": "m"})})
        p = folder / f"frame_{k:02d}.nc"
        ds.to_netcdf(p)
        out.append(p)
    return out


def latlon_files(folder: Path, *, n_time: int = 4, seed: int = 2, times=None) -> list[Path]:
    """One CF NetCDF per frame on a 0.01 deg grid (2-min steps from 2019-06-10)."""
    folder.mkdir(parents=True, exist_ok=True)
    da = synthetic_scene(rng=np.random.default_rng(seed), n_time=n_time, shape=(30, 50),
                         lat0=35.005, lon0=-100.995).astype(np.float32)
    if times is not None:
        da = da.assign_coords(time=times)
    out = []
    for k in range(n_time):
        frame = da.isel(time=[k]).rename("precip")
        frame.attrs["units"] = "mm/h"
        out.append(write_netcdf(frame, folder / f"ll_{k:02d}.nc"))
    return out


def config(tmp_path: Path, **over) -> dict:
    """Two networks: 'alpha' (projected, two events 25 min apart) and 'beta' (lat/lon)."""
    times = [T0 + k * MIN5 for k in (0, 1, 2, 8, 9, 10)]
    projected_files(tmp_path / "alpha", times=times)
    beta_times = [np.datetime64("2019-06-10T00:00", "ns") + k * np.timedelta64(2, "m")
                  for k in range(4)] + [np.datetime64("2019-06-11T00:00", "ns")]
    latlon_files(tmp_path / "beta", n_time=5, times=beta_times)
    d = {"factor": 5, "pooling": "mean", "seed": 7,
         "sources": [
             {"network": "alpha", "files": str(tmp_path / "alpha" / "*.nc"),
              "events": {"early": ["2020-03-01T10:00", "2020-03-01T10:10"],
                         "late": ["2020-03-01T10:40", "2020-03-01T10:50"]},
              "held_out": "late"},
             {"network": "beta", "files": str(tmp_path / "beta" / "*.nc"),
              "held_out": "2019-06-11T00:00"}]}
    d.update(over)
    return d


@pytest.fixture
def built(tmp_path):
    cfg = CorpusConfig.from_dict(config(tmp_path))
    return cfg, prepare_corpus(cfg, tmp_path / "c.zarr")


def test_layout_grids_and_event_splits(built, tmp_path):
    cfg, out = built
    c = open_corpus(out)
    assert c.networks == ["alpha", "beta"] and c.factor == 5 and c.pooling == "mean"
    assert c.events == {"alpha": ["early", "late"],
                        "beta": ["2019-06-10T00:00", "2019-06-11T00:00"]}
    assert c.splits == {"alpha": {"train": ["early"], "test": ["late"]},
                        "beta": {"train": ["2019-06-10T00:00"], "test": ["2019-06-11T00:00"]}}
    a, b = c.open("alpha"), c.open("beta")
    # projected network: y/x in metres, ascending, blocks on the 5-km lattice, CRS kept
    assert a["ref_hr"].shape == (6, 40, 60) and a["src_lr"].shape == (6, 8, 12)
    assert a.crs == LAEA and "lat_hr" not in a.group
    np.testing.assert_allclose(a["x_hr"][:3], [-499500.0, -498500.0, -497500.0])
    assert a.grid_hr.dlat == 1000.0 and a.grid_lr.dlon == 5000.0
    np.testing.assert_allclose(a["y_lr"][0] - 2000.0 - 500.0, 200000.0)  # SW block edge on 5 km
    assert b.crs is None and b["ref_hr"].shape == (5, 30, 50) and "lat_hr" in b.group
    # values: the reference as written (north-first rows flipped), pooled by block mean
    src = xr.open_dataset(tmp_path / "alpha" / "frame_03.nc")["rainrate"].values[0, ::-1]
    np.testing.assert_allclose(a["ref_hr"][3], src, rtol=1e-6)
    da = xr.DataArray(a["ref_hr"][:], dims=("time", "y", "x"))
    np.testing.assert_allclose(a["ref_lr"][:], coarsen(da, 5, method="mean").values, rtol=1e-5)
    assert np.isfinite(a["src_lr"][:]).all() and not np.array_equal(a["src_lr"][:],
                                                                     a["ref_lr"][:])
    # event splits: whole events, never a held-out frame in train
    for h, held in ((a, 1), (b, 1)):
        ev = h["event"][:]
        assert set(ev[h.splits["train"]["time"]]) == {0} and set(ev[h.splits["test"]["time"]]) \
            == {held}
        assert sorted(h.splits["train"]["time"] + h.splits["test"]["time"]) == list(range(ev.size))
    # one transform, fitted once, in the root and in every network's store
    assert a.attrs["transform"] == b.attrs["transform"] == c.attrs["transform"]
    assert a.attrs["input_semantics"]["units"] == "mm/h"
    assert not (out / "_ledger").exists() and not out.with_name("c.zarr.partial").exists()
    with pytest.raises(StoreError, match="corpus store of several networks"):
        open_store(out)
    assert xr.open_zarr(out / "networks" / "alpha", consolidated=False)["ref_hr"].dims == \
        ("time", "y_hr", "x_hr")


def test_reader_called_once_per_file_one_file_at_a_time(tmp_path, monkeypatch):
    cfg = CorpusConfig.from_dict(config(tmp_path))
    calls, real = [], pio.read

    def counting(path, **kw):
        calls.append(Path(path).name)
        da = real(path, **kw)
        assert da.sizes["time"] == 1
        return da

    monkeypatch.setattr(pio, "read", counting)
    prepare_corpus(cfg, tmp_path / "c.zarr")
    assert sorted(calls) == sorted(f"frame_{k:02d}.nc" for k in range(6)) + \
        sorted(f"ll_{k:02d}.nc" for k in range(5))


def test_resume_after_crash_does_not_rewrite_frames(tmp_path, monkeypatch):
    cfg = CorpusConfig.from_dict(config(tmp_path))
    out, partial = tmp_path / "c.zarr", tmp_path / "c.zarr.partial"
    real, written = corpus._write_frame, []

    def crashing(g, index, *a, **kw):
        if len(written) == 4:
            raise KeyboardInterrupt("killed")
        real(g, index, *a, **kw)
        written.append((g.attrs["network"], index))

    monkeypatch.setattr(corpus, "_write_frame", crashing)
    with pytest.raises(KeyboardInterrupt):
        prepare_corpus(cfg, out)
    assert not out.exists() and partial.is_dir()
    chunk = partial / "networks" / "alpha" / "ref_hr" / "c" / "2" / "0" / "0"
    mtime = chunk.stat().st_mtime_ns
    again = []
    monkeypatch.setattr(corpus, "_write_frame",
                        lambda g, index, *a, **kw: (again.append((g.attrs["network"], index)),
                                                    real(g, index, *a, **kw)))
    prepare_corpus(cfg, out)
    assert written == [("alpha", i) for i in range(4)]
    assert again == [("alpha", 4), ("alpha", 5)] + [("beta", i) for i in range(5)]
    assert (out / "networks" / "alpha" / "ref_hr" / "c" / "2" / "0" / "0").stat().st_mtime_ns \
        == mtime
    clean = prepare_corpus(cfg, tmp_path / "clean.zarr")
    for net in ("alpha", "beta"):
        for name in ("src_lr", "ref_lr", "ref_hr", "time", "event"):
            np.testing.assert_array_equal(open_store(out / "networks" / net)[name][:],
                                          open_store(clean / "networks" / net)[name][:])


KILL_SCRIPT = """
import json, sys, time
from precipdiff.data.corpus import CorpusConfig, prepare_corpus
cfg = CorpusConfig.from_dict(json.loads(sys.argv[1]))
prepare_corpus(cfg, sys.argv[2], progress=lambda done, total: time.sleep(0.4))
"""


def test_sigkill_then_resume(tmp_path, caplog):
    d = config(tmp_path)
    out, partial = tmp_path / "c.zarr", tmp_path / "c.zarr.partial"
    env = {**os.environ, "PYTHONPATH": str(REPO / "src"), "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-c", KILL_SCRIPT, json.dumps(d), str(out)],
                            env=env)
    ledger = partial / "_ledger" / "alpha"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        if ledger.is_dir() and len(list(ledger.glob("*.json"))) >= 2:
            break
        time.sleep(0.05)
    assert proc.poll() is None, "prepare finished before it could be killed"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not out.exists() and partial.is_dir()
    done = len(list(ledger.glob("*.json")))
    real, again = corpus._write_frame, []
    corpus._write_frame = lambda g, index, *a, **kw: (again.append(g.attrs["network"]),
                                                      real(g, index, *a, **kw))
    try:
        prepare_corpus(CorpusConfig.from_dict(d), out)
    finally:
        corpus._write_frame = real
    assert again.count("alpha") <= 6 - done + 1 and again.count("beta") == 5
    clean = prepare_corpus(CorpusConfig.from_dict(d), tmp_path / "clean.zarr")
    for name in ("ref_hr", "src_lr", "time", "event"):
        np.testing.assert_array_equal(open_store(out / "networks" / "alpha")[name][:],
                                      open_store(clean / "networks" / "alpha")[name][:])


def test_damaged_group_after_a_crash_is_written_again(tmp_path, monkeypatch, caplog):
    cfg = CorpusConfig.from_dict(config(tmp_path))
    out, partial = tmp_path / "c.zarr", tmp_path / "c.zarr.partial"
    real, n = corpus._write_frame, []

    def crashing(g, index, *a, **kw):
        if len(n) == 3:
            raise KeyboardInterrupt("killed")
        real(g, index, *a, **kw)
        n.append(index)

    monkeypatch.setattr(corpus, "_write_frame", crashing)
    with pytest.raises(KeyboardInterrupt):
        prepare_corpus(cfg, out)
    (partial / "networks" / "alpha" / "ref_hr" / "zarr.json").write_text('{"zarr_fo')
    monkeypatch.setattr(corpus, "_write_frame", real)
    with caplog.at_level("WARNING", logger="precipdiff.data.corpus"):
        prepare_corpus(cfg, out)
    assert "unreadable" in caplog.text
    assert open_store(out / "networks" / "alpha")["ref_hr"].shape == (6, 40, 60)


def test_transform_fit_holds_one_frame_at_a_time(tmp_path, monkeypatch):
    """The fit keeps a sample of each train frame, never the frames themselves."""
    import tracemalloc

    projected_files(tmp_path / "big", n_time=12, shape=(200, 200))
    cfg = CorpusConfig.from_dict({"factor": 10, "sources": [
        {"network": "big", "files": str(tmp_path / "big" / "*.nc"),
         "events": {"a": ["2020-03-01T10:00", "2020-03-01T10:30"],
                    "b": ["2020-03-01T10:35", "2020-03-01T11:00"]}, "held_out": "b"}]})
    monkeypatch.setattr(corpus, "FIT_VALUES", 1000)
    real, peaks = corpus._finish, []

    def traced(partial, c):
        tracemalloc.start()
        try:
            return real(partial, c)
        finally:
            peaks.append(tracemalloc.get_traced_memory()[1])
            tracemalloc.stop()

    monkeypatch.setattr(corpus, "_finish", traced)
    prepare_corpus(cfg, tmp_path / "c.zarr")
    frame = 200 * 200 * 4
    assert open_corpus(tmp_path / "c.zarr").attrs["frames"]["big"] == {"train": 7, "test": 5}
    assert peaks[0] < 5 * frame, peaks  # 7 train frames kept whole would be > 7 frames


def test_changing_the_held_out_event_keeps_written_frames(tmp_path, monkeypatch):
    d = config(tmp_path)
    calls = []
    real = corpus._finish

    def crash_in_finish(partial, cfg):
        calls.append(1)
        raise KeyboardInterrupt("killed before publishing")

    monkeypatch.setattr(corpus, "_finish", crash_in_finish)
    with pytest.raises(KeyboardInterrupt):
        prepare_corpus(CorpusConfig.from_dict(d), tmp_path / "c.zarr")
    monkeypatch.setattr(corpus, "_finish", real)
    monkeypatch.setattr(corpus, "_write_frame", lambda *a, **k: pytest.fail("frame rewritten"))
    d["sources"][0]["held_out"] = "early"
    c = open_corpus(prepare_corpus(CorpusConfig.from_dict(d), tmp_path / "c.zarr"))
    assert c.splits["alpha"] == {"train": ["late"], "test": ["early"]} and calls == [1]


def test_samples_carry_network_and_event(built):
    _, out = built
    c = open_corpus(out)
    ds = CorpusPatchDataset(out, split="train", stage="downscale", patch=16,
                            samples_per_epoch=60, seed=3, weighting="equal")
    seen = set()
    for i in range(60):
        s = ds[i]
        assert set(s) == {"cond", "target", "base", "mask", "network", "event"}
        assert s["cond"].shape == (1, 16, 16) and s["mask"].dtype == torch.bool
        net, ev = c.networks[int(s["network"])], c.event_ids[int(s["event"])]
        assert ev.split("/")[0] == net and ev in ("alpha/early", "beta/2019-06-10T00:00")
        seen.add(net)
    assert seen == {"alpha", "beta"}
    assert ds[7]["target"].equal(ds[7]["target"])  # a pure function of (seed, epoch, index)
    test = CorpusPatchDataset(out, split="test", stage="correct", patch=4, samples_per_epoch=20)
    assert {c.event_ids[int(test[i]["event"])] for i in range(20)} <= {
        "alpha/late", "beta/2019-06-11T00:00"}
    # weighting by frames: 3 alpha train frames vs 4 beta ones
    assert CorpusPatchDataset(out, split="train", stage="correct", patch=4,
                              samples_per_epoch=4).weights.tolist() == pytest.approx([3 / 7, 4 / 7])
    loader = torch.utils.data.DataLoader(ds, batch_size=30, num_workers=1)
    first = next(iter(loader))
    assert first["network"].tolist() == [int(ds[i]["network"]) for i in range(30)]
    batch = corpus_val_patches(out, "train", "downscale", n=6, patch=16)
    assert batch["cond"].shape == (6, 1, 16, 16) and batch["network"].shape == (6,)
    # one network's store works with the plain PatchDataset
    assert PatchDataset(c.network_path("alpha"), split="train", stage="downscale", patch=16,
                        samples_per_epoch=2)[0]["target"].shape == (1, 16, 16)
    with pytest.raises(ConfigError, match="no network"):
        CorpusPatchDataset(out, split="val", stage="correct", patch=4, samples_per_epoch=2)


@pytest.mark.parametrize("change, match", [
    ({"sources": []}, "non-empty list"),
    ({"factor": 0}, "factor must be a positive integer"),
    ({"pooling": "median"}, "pooling must be one of"),
    ({"emulator": {"nois": 1}}, "unknown emulator parameter"),
    ({"colour": 1}, "unknown key"),
    ({"sources": [{"network": "A B", "files": "x", "held_out": "e"}]}, "network names"),
    ({"sources": [{"network": "a", "files": "x"}]}, "needs 'held_out'"),
    ({"sources": [{"network": "a", "files": "x", "held_out": "e", "events": {"f": ["2020-01-01",
                                                                                "2020-01-02"]}}]},
     "unknown event"),
    ({"sources": [{"network": "a", "files": "x", "held_out": "e",
                   "events": {"e": ["2020-01-01T10:00", "2020-01-01T09:00"]}}]}, "ends before"),
    ({"sources": [{"network": "a", "files": "x", "held_out": "e",
                   "events": {"e": ["2020-01-01", "2020-01-03"], "f": ["2020-01-02",
                                                                       "2020-01-04"]}}]},
     "overlap"),
    ({"sources": [{"network": "a", "files": "x", "held_out": "e", "region": [1, 2, 0, 3]}]},
     "region must be"),
    ({"sources": [{"network": "a", "files": "x", "held_out": "e", "colour": 1}]}, "unknown key"),
    ({"sources": [{"network": "a", "files": "x", "held_out": "e"},
                  {"network": "a", "files": "y", "held_out": "e"}]}, "unique"),
])
def test_bad_config_one_line(change, match):
    d = {"sources": [{"network": "a", "files": "x", "held_out": "e"}], **change}
    with pytest.raises(ConfigError, match=match) as exc:
        CorpusConfig.from_dict(d)
    assert "\n" not in str(exc.value)


def test_bad_inputs_name_the_file(tmp_path):
    d = config(tmp_path)
    d["sources"][1]["held_out"] = "no-such-event"
    with pytest.raises(ConfigError, match=r"unknown event\(s\) \['no-such-event'\]; the "
                                          r"network's events are \['2019-06-10T00:00'"):
        prepare_corpus(CorpusConfig.from_dict(d), tmp_path / "c.zarr")
    assert not (tmp_path / "c.zarr").exists()
    d = config(tmp_path)
    (tmp_path / "alpha" / "frame_05.nc").unlink()
    projected_files(tmp_path / "alpha2", n_time=1, shape=(40, 50), times=[T0 + 10 * MIN5])
    os.replace(tmp_path / "alpha2" / "frame_00.nc", tmp_path / "alpha" / "frame_05.nc")
    with pytest.raises(GridError, match="frame_05.nc: grid .* does not hold the network's"):
        prepare_corpus(CorpusConfig.from_dict(d), tmp_path / "d.zarr")
    d["sources"][0]["options"] = {"colour": "red"}
    with pytest.raises(ConfigError, match="reader 'netcdf' has no option"):
        prepare_corpus(CorpusConfig.from_dict(d), tmp_path / "e.zarr")
    d["sources"][0]["options"] = {}
    d["sources"][0]["files"] = [str(tmp_path / "nowhere" / "*.nc")]
    with pytest.raises(InputFileError, match="nowhere/\\*.nc: no network 'alpha' file"):
        prepare_corpus(CorpusConfig.from_dict(d), tmp_path / "g.zarr")
    d = config(tmp_path / "dup")
    beta = tmp_path / "dup" / "beta"
    (beta / "zz_copy.nc").write_bytes((beta / "ll_01.nc").read_bytes())
    with pytest.raises(InputFileError, match="zz_copy.nc: network 'beta': duplicate valid time "
                                             "2019-06-10T00:02:00 \\(also in .*ll_01.nc\\)"):
        prepare_corpus(CorpusConfig.from_dict(d), tmp_path / "h.zarr")
    assert not (tmp_path / "h.zarr").exists()
    d = config(tmp_path)
    (tmp_path / "beta" / "ll_02.nc").write_bytes(b"CDF\x01 truncated")
    d["sources"][0]["files"] = str(tmp_path / "beta" / "*.nc")
    with pytest.raises(InputFileError, match="ll_02.nc"):
        prepare_corpus(CorpusConfig.from_dict(d), tmp_path / "f.zarr")


def test_yaml_and_overrides(tmp_path):
    p = tmp_path / "corpus.yaml"
    p.write_text(yaml.safe_dump(config(tmp_path)))
    cfg = load_corpus_config(p, ["factor=10", "emulator.noise_sigma=0.2"])
    assert cfg.factor == 10 and cfg.emulator == {"noise_sigma": 0.2}
    assert CorpusConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ConfigError, match=r"corpus.yaml: corpus config: pooling"):
        load_corpus_config(p, ["pooling=median"])


def test_shipped_corpus_config_loads():
    cfg = load_corpus_config(REPO / "configs" / "prepare_corpus.yaml")
    assert [s.network for s in cfg.sources] == ["mrms", "radolan", "mch", "fmi", "opera"]
    assert all(s.held_out for s in cfg.sources)


# ----------------------------------------------------------------------------- CLI


def _cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO / "src"), "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "precipdiff", *args], capture_output=True,
                          text=True, cwd=cwd, env=env, timeout=300)


def test_cli_prepares_a_corpus_and_refuses_a_bad_one(tmp_path):
    p = tmp_path / "corpus.yaml"
    p.write_text(yaml.safe_dump(config(tmp_path)))
    r = _cli("prepare", "--config", str(p), "--output", "c.zarr", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert open_corpus(tmp_path / "c.zarr").networks == ["alpha", "beta"]
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({**config(tmp_path), "pooling": "median"}))
    r = _cli("prepare", "--config", str(bad), "--output", "bad.zarr", cwd=tmp_path)
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "pooling must be one of" in lines[0]
    assert not list(tmp_path.glob("bad.zarr*"))


# ----------------------------------------------------------------------------- real data


REAL_FILES = {  # two or three files per network, at least one in a train and a test event
    "mrms": ["mrms/2019-06-10/PrecipRate_00.00_20190610-000000.grib2",
             "mrms/2021-07-06/PrecipRate_00.00_20210706-000000.grib2"],
    "radolan": ["radolan/RW-20221018.tar.gz"],
    "mch": ["radar/mch/20150515/AQC151351545F_00005.801.gif",
            "radar/mch/20160711/AQC161932045V_00005.801.gif",
            "radar/mch/20170131/*.gif"],
    "fmi": ["radar/fmi/20170509/201705091045_*.pgm.gz",
            "radar/fmi/20170509/201705091400_*.pgm.gz"],
    "opera": ["radar/opera-cirrus/20241126/T_PABV21_C_EUOC_20241126010000.hdf",
              "radar/opera-cirrus/20241126/T_PABV21_C_EUOC_20241126015000.hdf"],
}
REAL_REGIONS = {"mrms": [-84.0, 26.0, -80.0, 30.0], "fmi": [22.0, 60.0, 28.0, 64.0],
                "opera": [1500000.0, -3000000.0, 2500000.0, -2000000.0]}


@pytest.mark.slow
@pytest.mark.realdata
def test_real_five_networks(shared_data, tmp_path):
    """The shipped config on a few files per network (small regions): one corpus holds MRMS,
    RADOLAN, MeteoSwiss, FMI and OPERA CIRRUS, each on its native grid, split by event."""
    d = yaml.safe_load((REPO / "configs" / "prepare_corpus.yaml").read_text())
    for s in d["sources"]:
        s["files"] = [str(shared_data / f) for f in REAL_FILES[s["network"]]]
        if s["network"] in REAL_REGIONS:
            s["region"] = REAL_REGIONS[s["network"]]
        if s["network"] == "mch":
            s["files"][2] = sorted(map(str, shared_data.glob(REAL_FILES["mch"][2])))[0]
    c = open_corpus(prepare_corpus(CorpusConfig.from_dict(d), tmp_path / "real.zarr"))
    assert c.networks == ["mrms", "radolan", "mch", "fmi", "opera"]
    grids = {}
    for net in c.networks:
        h = c.open(net)
        assert np.isfinite(h["ref_hr"][0]).mean() > 0.1, net
        assert set(h.splits) == {"train", "test"}, net
        assert np.nanmax(h["ref_hr"][:]) > 1.0, net  # mm/h after any accumulation conversion
        grids[net] = (h.crs, h.grid_hr.dlat)
    assert grids["mrms"] == (None, pytest.approx(0.01))
    for net in ("radolan", "mch", "fmi", "opera"):
        assert grids[net][0] and grids[net][1] == pytest.approx(1000.0, rel=0.01), net
    assert c.open("radolan").attrs["input_semantics"]["accumulation"] == "1h"
    assert c.open("mch").attrs["input_semantics"]["accumulation"] == "5min"
    assert c.splits["mch"] == {"train": ["spring", "winter"], "test": ["summer-night"]}
    assert c.open("radolan")["ref_hr"].shape[0] == 23  # 24 hours less the 11:50 gap
    fmi = c.open("fmi")  # a lon/lat region on a projected grid: the rows/columns holding it
    assert 200 < fmi["ref_hr"].shape[1] < 700 and 200 < fmi["ref_hr"].shape[2] < 500


@pytest.mark.slow
@pytest.mark.realdata
def test_real_cli_exit_status_zero(shared_data, tmp_path):
    """ecCodes (MRMS) and the projected readers in one process: exit status 0 on success."""
    d = yaml.safe_load((REPO / "configs" / "prepare_corpus.yaml").read_text())
    d["sources"] = [s for s in d["sources"] if s["network"] in ("mrms", "fmi")]
    for s in d["sources"]:
        s["files"] = [str(shared_data / f) for f in REAL_FILES[s["network"]]]
    d["sources"][0]["region"] = REAL_REGIONS["mrms"]
    p = tmp_path / "corpus.yaml"
    p.write_text(yaml.safe_dump(d))
    r = _cli("prepare", "--config", str(p), "--output", "real.zarr", cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-2000:]
    assert open_corpus(tmp_path / "real.zarr").networks == ["mrms", "fmi"]
