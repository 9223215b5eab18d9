"""prepare_store / open_store: layout, pairing, grids, splits, resume, bad input."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import xarray as xr
import yaml
import zarr

from precipdiff.data.prepare import (
    PrepareConfig,
    load_prepare_config,
    make_splits,
    open_store,
    prepare_store,
    recipe_emulated,
    recipe_real_pairs,
)
from precipdiff.errors import ConfigError, GridError, InputFileError, StoreError
from precipdiff.grid import coarsen

REPO = Path(__file__).resolve().parents[2]


def _cfg(refs, srcs, **kw) -> PrepareConfig:
    return PrepareConfig(reference=[str(p) for p in refs], source=[str(p) for p in srcs], **kw)


def test_store_layout_and_values(S, pair_files, tmp_path):
    ref, refs, srcs = pair_files
    seen = []
    out = prepare_store(_cfg(refs, srcs, split="space"), tmp_path / "s.zarr",
                        progress=lambda d, t: seen.append((d, t)))
    assert seen[0] == (0, 12) and seen[-1] == (12, 12)  # 8 files scanned + 4 frames written
    assert [d for d, _ in seen] == sorted(d for d, _ in seen)
    assert not (tmp_path / "s.zarr.partial").exists()
    h = open_store(out)
    a = h.attrs
    assert a["precipdiff_store"] == 1 and a["complete"] is True and a["factor"] == 10
    assert a["pooling"] == "max" and {"source", "reference", "created", "version"} <= set(a)
    assert set(a["transform"]) == {"kind", "scale", "sigma"}
    assert h["ref_hr"].shape == (4, 120, 240) and h["src_lr"].shape == (4, 12, 24)
    for name in ("src_lr", "ref_lr", "ref_hr"):
        assert h[name].dtype == np.float32 and h[name].chunks[0] == 1
    assert h["time"].dtype == np.int64
    np.testing.assert_array_equal(h["time"][:], ref["time"].values.astype("datetime64[s]")
                                  .astype(np.int64))
    np.testing.assert_allclose(h["ref_hr"][:], ref.values)
    np.testing.assert_allclose(h["ref_lr"][:], coarsen(ref, 10, method="max").values)
    np.testing.assert_allclose(h["src_lr"][:], S.biased_source(ref).values, rtol=1e-6)
    np.testing.assert_allclose(h["lat_lr"][:], ref["lat"].values.reshape(-1, 10).mean(1))
    assert h.grid_lr.is_close(h.grid_hr.coarsen(10))
    bands = [s["x_lr"] for s in h.splits.values()]
    assert bands == [[0, 19], [19, 22], [22, 24]]
    ds = xr.open_zarr(out, consolidated=False)  # self-describing for xarray users
    assert ds["ref_hr"].dims == ("time", "lat_hr", "lon_hr")


def test_time_split_fit_and_mean_pooling(pair_files, tmp_path):
    ref, refs, srcs = pair_files
    cfg = _cfg(refs, srcs, pooling="mean", fractions={"train": 2, "val": 1, "test": 1},
               transform_scale=0.5)
    h = open_store(prepare_store(cfg, tmp_path / "s.zarr"))
    assert h.splits == {"train": {"time": [0, 1], "x_lr": [0, 24]},
                        "val": {"time": [2], "x_lr": [0, 24]},
                        "test": {"time": [3], "x_lr": [0, 24]}}
    np.testing.assert_allclose(h["ref_lr"][:], coarsen(ref, 10, method="mean").values, rtol=1e-6)
    x = ref.values[:2]
    sigma = np.std(np.log1p(x[np.isfinite(x)] / 0.5))
    assert h.transform.scale == 0.5 and h.transform.sigma == pytest.approx(sigma, rel=1e-4)


def test_make_splits_disjoint_with_gap():
    s = make_splits("space", {"train": 0.7, "val": 0.15, "test": 0.15}, 5, 100, gap=2)
    assert [v["x_lr"] for v in s.values()] == [[0, 67], [69, 84], [86, 100]]
    with pytest.raises(ConfigError, match="split: space"):
        make_splits("time", {"train": 0.8, "val": 0.1, "test": 0.1}, 1, 50)


def test_fine_source_is_pooled_and_bbox_trims(S, tmp_path):
    ref = S.scene(n_time=2)
    src = (ref * np.float32(0.8)).assign_coords(time=ref["time"].values)
    refs, srcs = S.write_frames(ref, tmp_path, "r"), S.write_frames(src, tmp_path, "s")
    bbox = (-100.9, 35.04, -98.9, 36.1)  # starts mid-block: trimmed onto the 0.1 deg lattice
    h = open_store(prepare_store(_cfg(refs, srcs, bbox=bbox, split="space",
                                      source_pooling="mean"), tmp_path / "s.zarr"))
    assert h.grid_hr.lat0 == pytest.approx(35.105) and h.grid_hr.lon0 == pytest.approx(-100.895)
    assert h["ref_hr"].shape[1:] == (100, 200)
    sub = src.sel(lat=slice(35.1, 36.1), lon=slice(-100.9, -98.9))
    np.testing.assert_allclose(h["src_lr"][:], coarsen(sub, 10, method="mean").values, rtol=1e-6)


def test_regrid_offset_source(S, tmp_path):
    ref = S.scene(n_time=2)
    src = S.biased_source(ref)
    src = src.assign_coords(lat=src["lat"] + 0.05, lon=src["lon"] + 0.05)
    refs, srcs = S.write_frames(ref, tmp_path, "r"), S.write_frames(src, tmp_path, "s")
    with pytest.raises(GridError, match="do not nest"):
        prepare_store(_cfg(refs, srcs, split="space"), tmp_path / "a.zarr")
    h = open_store(prepare_store(_cfg(refs, srcs, split="space", regrid="bilinear"),
                                 tmp_path / "b.zarr"))
    assert np.isfinite(h["src_lr"][0]).mean() > 0.8


@pytest.mark.slow
def test_workers_match_serial(pair_files, tmp_path):
    _, refs, srcs = pair_files
    cfg = _cfg(refs[:3], srcs[:3], split="space")
    a = open_store(prepare_store(cfg, tmp_path / "a.zarr"))
    b = open_store(prepare_store(cfg, tmp_path / "b.zarr", workers=2))
    for name in ("src_lr", "ref_lr", "ref_hr"):
        np.testing.assert_array_equal(a[name][:], b[name][:])
    assert a.attrs["transform"] == b.attrs["transform"]


@pytest.mark.slow
def test_existing_dask_cluster_matches_serial(pair_files, tmp_path):
    """prepare on a scheduler given by address (what --scheduler does): the same store."""
    distributed = pytest.importorskip("distributed")
    _, refs, srcs = pair_files
    cfg = _cfg(refs[:2], srcs[:2], split="space")
    a = open_store(prepare_store(cfg, tmp_path / "a.zarr"))
    with distributed.LocalCluster(n_workers=1, threads_per_worker=1, processes=True,
                                  dashboard_address=":0") as cluster:
        b = open_store(prepare_store(cfg, tmp_path / "b.zarr", scheduler=cluster.scheduler_address))
    for name in ("src_lr", "ref_lr", "ref_hr"):
        np.testing.assert_array_equal(a[name][:], b[name][:])


def test_accumulation_converted_to_rate(S, tmp_path):
    ref = S.scene(n_time=2, step_minutes=30.0)
    amount = (ref * np.float32(0.5)).assign_attrs(units="mm", accumulation="30min")
    src = S.biased_source(ref, shift_s=0)
    refs, srcs = S.write_frames(amount, tmp_path, "r"), S.write_frames(src, tmp_path, "s")
    h = open_store(prepare_store(_cfg(refs, srcs, split="space"), tmp_path / "s.zarr"))
    np.testing.assert_allclose(h["ref_hr"][:], ref.values, rtol=1e-6)  # 0.5 mm / 0.5 h
    with pytest.raises(InputFileError, match="accumulation='error'"):
        prepare_store(_cfg(refs, srcs, split="space", accumulation="error"), tmp_path / "e.zarr")


def test_emulated_recipe(S, tmp_path):
    pytest.importorskip("precipdiff.data.emulate")
    ref = S.scene(n_time=3)
    refs = S.write_frames(ref, tmp_path, "r")
    cfg = recipe_emulated([str(p) for p in refs], seed=7)
    a = open_store(prepare_store(cfg, tmp_path / "a.zarr"))
    b = open_store(prepare_store(cfg, tmp_path / "b.zarr"))
    np.testing.assert_array_equal(a["src_lr"][:], b["src_lr"][:])  # seeded per frame
    assert a["src_lr"].shape == (3, 12, 24) and np.isfinite(a["src_lr"][:]).any()
    assert "emulated" in a.attrs["source"]


# ----------------------------------------------------------------------------- bad input


def _truncate(p: Path, dst: Path) -> Path:
    dst.write_bytes(p.read_bytes()[: p.stat().st_size // 3])
    return dst


def _bad_case(S, name: str, tmp: Path, refs: list[Path], srcs: list[Path], ref: xr.DataArray):
    """(config kwargs, expected error type, text in the message, file named) per bad input."""
    if name == "missing":
        return dict(reference=[str(tmp / "nope.nc")], source=srcs), InputFileError, \
            "does not exist", "nope.nc"
    if name == "truncated":
        bad = _truncate(refs[1], tmp / "trunc.nc")
        return dict(reference=[refs[0], bad], source=srcs), InputFileError, "", "trunc.nc"
    if name == "variable":
        return dict(reference=refs, source=srcs, reference_variable="rainfall"), \
            InputFileError, "rainfall", refs[0].name
    if name in ("all_nan", "negative", "units"):
        da = ref.isel(time=[0]).copy()
        if name == "all_nan":
            da[:] = np.nan
        elif name == "negative":
            da[0, 5, 5] = -2.0
        else:
            da.attrs["units"] = "furlongs/fortnight"
        (bad,) = S.write_frames(da, tmp / name, "bad")
        return dict(reference=[bad], source=srcs), InputFileError, \
            {"all_nan": "missing", "negative": "negative", "units": "units"}[name], bad.name
    if name == "not_nested":
        src = S.biased_source(ref)
        src = src.assign_coords(lat=src["lat"] + 0.03)
        bad = S.write_frames(src, tmp / name, "src")
        return dict(reference=refs, source=bad), GridError, "do not nest", "src_00.nc"
    if name == "factor":
        src = coarsen(ref, 4, method="mean")  # 0.04 deg: 10 is no multiple of 4
        bad = S.write_frames(src, tmp / name, "src")
        return dict(reference=refs, source=bad), GridError, "not divisible", "src_00.nc"
    if name == "duplicate":
        dup = tmp / "dup.nc"
        shutil.copy(refs[0], dup)
        return dict(reference=[*refs, dup], source=srcs), InputFileError, "duplicate", "ref_00"
    if name == "overlap":
        amount = ref.assign_attrs(units="mm", accumulation="1h")  # frames 2 min apart
        bad = S.write_frames(amount, tmp / name, "acc")
        return dict(reference=bad, source=srcs), InputFileError, "overlaps", "acc_0"
    if name == "no_match":
        late = S.biased_source(ref, shift_s=3600)
        bad = S.write_frames(late, tmp / name, "late")
        return dict(reference=refs, source=bad), InputFileError, "no source time", "late_"
    raise AssertionError(name)


BAD = ["missing", "truncated", "variable", "all_nan", "negative", "units", "not_nested",
       "factor", "duplicate", "overlap", "no_match"]


@pytest.mark.parametrize("name", BAD)
def test_bad_input_one_line_error(S, name, pair_files, tmp_path):
    ref, refs, srcs = pair_files
    kw, err, text, fname = _bad_case(S, name, tmp_path, refs, srcs, ref)
    kw = {k: [str(p) for p in v] if isinstance(v, list) else v for k, v in kw.items()}
    with pytest.raises(err) as info:
        prepare_store(PrepareConfig(split="space", **kw), tmp_path / "s.zarr")
    msg = str(info.value)
    assert "\n" not in msg and text in msg and fname in msg, msg
    assert not (tmp_path / "s.zarr").exists()


def test_config_validation_and_yaml(tmp_path):
    with pytest.raises(ConfigError, match="unknown key"):
        PrepareConfig.from_dict({"reference": "a.nc", "emulate": True, "facter": 4})
    with pytest.raises(ConfigError, match="exactly one"):
        PrepareConfig.from_dict({"reference": "a.nc"})
    with pytest.raises(ConfigError, match="pooling"):
        recipe_real_pairs("a.nc", "b.nc", pooling="median")
    p = tmp_path / "c.yaml"
    p.write_text(yaml.safe_dump({"reference": ["r/*.nc"], "source": "s/*.nc", "factor": 10}))
    cfg = load_prepare_config(p, ["factor=5", "bbox=[-101, 35, -99, 36]", "fractions.val=0.3"])
    assert cfg.factor == 5 and cfg.bbox == (-101.0, 35.0, -99.0, 36.0)
    assert cfg.fractions["val"] == 0.3 and cfg.source == ("s/*.nc",)
    assert PrepareConfig.from_dict(cfg.to_dict()) == cfg


@pytest.mark.parametrize("name", ["prepare_mrms_downscale.yaml", "prepare_mrms_emulated.yaml"])
def test_example_configs_load(name):
    pytest.importorskip("precipdiff.data.emulate")
    cfg = load_prepare_config(REPO / "configs" / name)
    assert cfg.split == "space" and cfg.factor == 10


def test_open_store_rejects(small_store, tmp_path):
    with pytest.raises(StoreError, match="does not exist"):
        open_store(tmp_path / "none.zarr")
    zarr.open_group(str(tmp_path / "foreign.zarr"), mode="w")
    with pytest.raises(StoreError, match="not a precipdiff store"):
        open_store(tmp_path / "foreign.zarr")
    for attrs, text in (({"complete": False}, "incomplete"), ({"precipdiff_store": 99}, "format")):
        copy = tmp_path / f"copy{len(text)}.zarr"
        shutil.copytree(small_store, copy)
        zarr.open_group(str(copy), mode="r+").attrs.update(attrs)
        with pytest.raises(StoreError, match=text):
            open_store(copy)


# ----------------------------------------------------------------------------- crash + resume

KILL_SCRIPT = """
import sys, time
from precipdiff.data.prepare import PrepareConfig, prepare_store
cfg = PrepareConfig.from_dict({cfg!r})
prepare_store(cfg, {out!r}, progress=lambda done, total: time.sleep(0.25))
"""


def test_kill_mid_run_then_resume(S, tmp_path, caplog):
    ref = S.scene(n_time=6, shape=(40, 80))
    refs = S.write_frames(ref, tmp_path, "r")
    srcs = S.write_frames(S.biased_source(ref), tmp_path, "s")
    cfg = _cfg(refs, srcs, split="space")
    out, partial = tmp_path / "s.zarr", tmp_path / "s.zarr.partial"
    script = KILL_SCRIPT.format(cfg=cfg.to_dict(), out=str(out))
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    proc = subprocess.Popen([sys.executable, "-c", textwrap.dedent(script)], env=env)
    deadline = time.monotonic() + 40
    while time.monotonic() < deadline and proc.poll() is None:
        done = partial / "_done"
        if done.is_dir() and len(os.listdir(done)) >= 2:
            break
        time.sleep(0.05)
    assert proc.poll() is None, "prepare finished before it could be killed"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not out.exists() and partial.is_dir()
    written = sorted(int(n) for n in os.listdir(partial / "_done"))
    assert 2 <= len(written) < 6
    plan = json.loads((partial / "_plan.json").read_text())
    assert len(plan["frames"]) == 6
    chunk = partial / "ref_hr" / "c" / str(written[0]) / "0" / "0"
    mtime = chunk.stat().st_mtime_ns
    with caplog.at_level("INFO", logger="precipdiff.data.prepare"):
        prepare_store(cfg, out)
    assert f"{len(written)} of 6 frames already written" in caplog.text
    assert not partial.exists()
    h = open_store(out)
    assert (out / "ref_hr" / "c" / str(written[0]) / "0" / "0").stat().st_mtime_ns == mtime
    np.testing.assert_allclose(h["ref_hr"][:], ref.values)
    assert not (out / "_done").exists() and not (out / "_plan.json").exists()


# ----------------------------------------------------------------------------- real data


@pytest.mark.realdata
def test_real_radar_to_gauge_pair(shared_data, tmp_path):
    d = shared_data / "mrms" / "2021-07-06"
    cfg = recipe_real_pairs(str(d / "MultiSensor_QPE_01H_Pass2_00.00_20210706-000000.grib2"),
                            str(d / "RadarOnly_QPE_01H_00.00_20210706-000000.grib2"),
                            bbox=(-80.0, 43.5, -78.5, 44.5), reference_reader="mrms",
                            source_reader="mrms")
    h = open_store(prepare_store(cfg, tmp_path / "pair.zarr"))
    assert h["ref_hr"].shape == (1, 100, 150) and h["src_lr"].shape == (1, 10, 15)
    assert h.grid_lr.lat0 == pytest.approx(43.55, abs=1e-5)
    assert [s["x_lr"] for s in h.splits.values()] == [[0, 12], [12, 14], [14, 15]]
    src, ref = h["src_lr"][0], h["ref_lr"][0]
    ok = np.isfinite(src) & np.isfinite(ref)
    assert ok.mean() > 0.9 and np.nanmax(ref) > 1.0  # mm/h after the 1-h conversion
    assert np.corrcoef(src[ok], ref[ok])[0, 1] > 0.5  # a real but biased pair


# ----------------------------------------------------------------------------- the CLI's edges


def _cli(*args: str, **kw) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO / "src")}
    return subprocess.Popen([sys.executable, "-m", "precipdiff", "-q", "prepare", *args],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            text=True, **kw)


def _one_line(proc: subprocess.Popen, code: int, timeout: float = 120) -> str:
    _, err = proc.communicate(timeout=timeout)
    lines = err.strip().splitlines()
    assert proc.returncode == code and len(lines) == 1, (proc.returncode, err)
    assert lines[0].startswith("error: ")
    return lines[0]


def _write_config(path: Path, **cfg) -> Path:
    path.write_text(yaml.safe_dump({k: [str(p) for p in v] if isinstance(v, list) else v
                                    for k, v in cfg.items()}))
    return path


def _signal_mid_run(S, tmp_path, sizes, shape, ready, sig, signal_running, signal_defaults,
                    timeout: float):
    """Run prepare on a scene of ``n_time`` frames (the first of ``sizes``) and send ``sig``
    once ``ready(out)`` holds, while it still runs; a run that ended before it could be
    signalled is repeated with the next size. Returns ``(proc, out, cfg, ref)``."""
    for attempt, n_time in enumerate(sizes):
        root = tmp_path / str(attempt)
        ref = S.scene(n_time=n_time, shape=shape)
        refs = S.write_frames(ref, root / "in", "r")
        srcs = S.write_frames(S.biased_source(ref), root / "in", "s")
        cfg = _write_config(root / "c.yaml", reference=refs, source=srcs, split="space")
        out = root / "out" / "s.zarr"
        proc = _cli("--config", str(cfg), "--output", str(out), preexec_fn=signal_defaults)
        deadline = time.monotonic() + timeout
        while not ready(out):
            assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
            time.sleep(0.01)
        if signal_running(proc, sig):
            return proc, out, cfg, ref
        proc.communicate()
    pytest.fail(f"prepare finished before it could be signalled, {len(sizes)} times")


@pytest.mark.parametrize(("sig", "code"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_signal_while_scanning_leaves_nothing(S, sig, code, tmp_path, signal_running,
                                              signal_defaults):
    """Interrupted before its plan exists, prepare has nothing to resume: no .partial is left.
    (The signal comes when the first file has been scanned; a run that ended before it could be
    signalled is repeated with more files.)"""
    def scanned(out: Path) -> bool:
        staged = out.with_name("s.zarr.partial") / "_staged"
        return staged.is_dir() and bool(list(staged.glob("*.npz")))

    proc, out, _, _ = _signal_mid_run(S, tmp_path, (40, 160), (40, 80), scanned, sig,
                                      signal_running, signal_defaults, timeout=120)
    assert ("interrupted" if sig == signal.SIGINT else "SIGTERM") in _one_line(proc, code)
    assert not out.parent.exists() or not list(out.parent.iterdir())


def test_interrupt_mid_frames_keeps_partial_then_resumes(S, tmp_path, signal_running,
                                                          signal_defaults):
    """Ctrl-C while frames are written: exit 130, one line, no temp files; the .partial is kept
    and the same command resumes it. (A run that ended before it could be signalled is repeated
    with more frames.)"""
    def written(out: Path) -> bool:
        done = out.with_name("s.zarr.partial") / "_done"
        return done.is_dir() and bool(os.listdir(done))

    proc, out, cfg, ref = _signal_mid_run(S, tmp_path, (40, 120), (100, 200), written,
                                          signal.SIGINT, signal_running, signal_defaults,
                                          timeout=180)
    partial = out.with_name("s.zarr.partial")
    assert "interrupted" in _one_line(proc, 130)
    assert sorted(p.name for p in out.parent.iterdir()) == ["s.zarr.partial"]
    assert not [p for p in partial.rglob("*") if ".tmp-" in p.name]
    done = len(os.listdir(partial / "_done"))
    assert 1 <= done < ref.sizes["time"]
    proc = _cli("--config", str(cfg), "--output", str(out))
    _, err = proc.communicate(timeout=180)
    assert proc.returncode == 0, err
    assert sorted(p.name for p in out.parent.iterdir()) == ["s.zarr"]
    np.testing.assert_allclose(open_store(out)["ref_hr"][:], ref.values)


def test_error_found_after_scanning_leaves_no_partial(pair_files, tmp_path):
    """A split that cannot be made is found only after every file was scanned: one line,
    exit 2, and no .partial (a rerun could never succeed)."""
    _, refs, srcs = pair_files
    cfg = _write_config(tmp_path / "c.yaml", reference=refs, source=srcs, split="space",
                        fractions={"train": 1.0, "val": 0.001})
    out = tmp_path / "out" / "s.zarr"
    assert "gets no coarse columns" in _one_line(_cli("--config", str(cfg), "--output", str(out)),
                                                 2)
    assert not out.parent.exists() or not list(out.parent.iterdir())


def test_yaml_alias_bomb_refused(tmp_path):
    """A "billion laughs" config is refused before it is expanded (address space capped at
    2 GiB, so a regression fails fast instead of exhausting the machine)."""
    lines = ['a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    for prev, name in zip("abcdefgh", "bcdefghi", strict=True):
        lines.append(f"{name}: &{name} [{','.join([f'*{prev}'] * 9)}]")
    bomb = tmp_path / "bomb.yaml"
    bomb.write_text("\n".join(lines) + "\nreference: r.nc\nemulate: true\n")

    def limit() -> None:
        import resource

        resource.setrlimit(resource.RLIMIT_AS, (2 * 2**30, 2 * 2**30))

    start = time.monotonic()
    proc = _cli("--config", str(bomb), "--output", str(tmp_path / "s.zarr"), preexec_fn=limit)
    assert "more than 100000 nodes" in _one_line(proc, 2, timeout=60)
    assert time.monotonic() - start < 60
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bomb.yaml"]


def test_yaml_anchors_still_allowed(tmp_path):
    from precipdiff.yamlfile import read_yaml_mapping

    p = tmp_path / "c.yaml"
    p.write_text("base: &b {factor: 10}\nother: *b\nlist: [&x 1, *x]\n")
    assert read_yaml_mapping(p, "config") == {"base": {"factor": 10}, "other": {"factor": 10},
                                               "list": [1, 1]}
    p.write_text("x: &x [*x]\n")
    with pytest.raises(ConfigError, match="refers to the node that contains it"):
        read_yaml_mapping(p, "config")


@pytest.mark.parametrize("kw", [{"time_tolerance_s": float("nan")},
                                {"transform_scale": float("inf")},
                                {"fractions": {"train": float("inf"), "val": 1.0}},
                                {"fractions": {"train": 1.0, "val": float("nan")}}])
def test_non_finite_config_values_refused(kw):
    """NaN/inf numbers would pass ``< 0`` checks and fail (or pair nothing) much later."""
    with pytest.raises(ConfigError, match="finite"):
        PrepareConfig.from_dict({"reference": "a.nc", "emulate": True, **kw})
