"""Stage-II blocks sampled in worker processes: the same output as in-process sampling, results
in order, bounded in flight, and the rule that decides when workers are started."""

from __future__ import annotations

import numpy as np
import pytest

import precipdiff.pipeline.pipeline as pp
from precipdiff.errors import ConfigError, PrecipdiffError
from precipdiff.pipeline import Pipeline, PredictOptions, SamplerSettings, Stage
from precipdiff.pipeline.blocks import Block, BlockPool, BlockSettings, sample_blocks
from precipdiff.pipeline.dry import dry_cells, wet_boxes
from precipdiff.pipeline.run import PredictRequest
from precipdiff.pipeline.tiling import windows

from .conftest import FACTOR, coarse_field

FAST = SamplerSettings(sampler="dpmpp_2m", steps=3)


def _opts(**kw) -> PredictOptions:
    base = dict(members=3, downscale=FAST, seed=7, member_batch=2, window=40, halo=4,
                tile=16, overlap=4, mass_consistent=True)
    return PredictOptions(**{**base, **kw})


@pytest.fixture(scope="module")
def stage(tiny_weights) -> Stage:
    return Stage.load(tiny_weights["downscale"])


def test_workers_give_the_output_of_one_process(stage, monkeypatch) -> None:
    """Two worker processes sample a multi-window step exactly as this process does (each
    block's noise depends on its position, results are blended in the same order), and the
    run's tallies are the same."""
    monkeypatch.setattr(pp, "POOL_MIN_WORK", 0)
    pipe = Pipeline(None, stage)
    src = coarse_field(ny=12, nx=20, n_time=1)
    here = pipe.predict(src, _opts())
    pooled = pipe.predict(src, _opts(window_workers=2))
    assert here.attrs["stage2_blocks_sampled"] >= 4  # several windows x member batches
    np.testing.assert_array_equal(here["precip"].values, pooled["precip"].values)
    for key in ("stage2_blocks_sampled", "stage2_blocks_dry", "stage2_sampled_fraction",
                "volume_error"):
        assert here.attrs[key] == pooled.attrs[key]


def _blocks(n: int) -> list[tuple[int, Block | None]]:
    rng = np.random.default_rng(0)
    return [(k, None if k % 3 == 1 else
             Block(0, 0, 16 * k, 0, rng.normal(size=(2, 1, 16, 16)).astype(np.float32)))
            for k in range(n)]


class _CountingPool(BlockPool):
    """A real pool that records how many blocks were in flight at each submission."""

    def __init__(self, *a, **kw):
        super().__init__(*a, **kw)
        self.pending: list = []
        self.peak = 0

    def submit(self, block: Block):
        self.pending = [f for f in self.pending if not f.done()]
        fut = super().submit(block)
        self.pending.append(fut)
        self.peak = max(self.peak, len(self.pending))
        return fut


def test_sample_blocks_keeps_order_and_bounds_the_blocks_in_flight(stage) -> None:
    cfg = BlockSettings(FAST, seed=3)
    items = _blocks(9)
    here = list(sample_blocks(stage, items, cfg))
    with _CountingPool(stage, cfg, 2) as pool:
        pooled = list(sample_blocks(stage, iter(items), cfg, pool))
    assert [k for k, _ in pooled] == list(range(9))
    for (_, a), (_, b) in zip(here, pooled, strict=True):
        if a is None:
            assert b is None
        else:
            assert a.shape == (2, 16, 16)
            np.testing.assert_array_equal(a, b)
    assert 1 <= pool.peak <= 4  # 2 x workers


def test_block_workers_starts_processes_only_for_enough_rain_on_a_cpu(stage, monkeypatch
                                                                       ) -> None:
    pipe = Pipeline(None, stage)
    corrected = np.zeros((3, 12, 20), np.float32)
    corrected[:, 2:5, 2:5] = 2.0
    dry = dry_cells(corrected, trace=0.1)
    wins = list(windows(12 * FACTOR, 20 * FACTOR, 40, 4, multiple=FACTOR))
    boxes = [wet_boxes(dry, win, FACTOR, 4) for win in wins]
    monkeypatch.setattr(pp, "POOL_MIN_WORK", 0)
    assert pipe.block_workers(_opts(window_workers=2), dry, wins, boxes) == 2
    assert pipe.block_workers(_opts(window_workers=1), dry, wins, boxes) == 1
    assert pipe.block_workers(_opts(window_workers=2, device="cuda"), dry, wins, boxes) == 1
    monkeypatch.setattr(pp, "POOL_MIN_WORK", 10**9)  # far more than this little rain
    assert pipe.block_workers(_opts(window_workers=2), dry, wins, boxes) == 1
    monkeypatch.setattr(pp, "POOL_MIN_WORK", 0)
    all_dry = np.ones_like(dry)
    assert pipe.block_workers(_opts(window_workers=2), all_dry, wins,
                              [wet_boxes(all_dry, win, FACTOR, 4) for win in wins]) == 1


def test_block_pool_needs_two_workers(stage) -> None:
    with pytest.raises(ValueError, match="at least 2 workers"):
        BlockPool(stage, BlockSettings(FAST, seed=0), 1)


@pytest.mark.parametrize("value", [-1, 1.5, True])
def test_request_refuses_bad_window_workers(tmp_path, value) -> None:
    with pytest.raises(ConfigError, match="--window-workers"):
        PredictRequest(inputs=(tmp_path / "a.nc",), output=tmp_path / "o.nc",
                       window_workers=value)


def test_a_killed_worker_gives_a_clear_error(stage) -> None:
    """A worker that dies (the out-of-memory killer, a signal) ends the run with an error
    that says so, not a hang."""
    import os
    import signal

    cfg = BlockSettings(FAST, seed=3)
    with pytest.raises(PrecipdiffError, match="worker process ended abruptly"), \
            BlockPool(stage, cfg, 2) as pool:
        results = sample_blocks(stage, _blocks(12), cfg, pool)
        next(results)
        for pid in list(pool._executor._processes):
            os.kill(pid, signal.SIGKILL)
        list(results)
