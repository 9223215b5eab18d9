"""Noise schedules: EDM Eq. 5 and the log-linear limit."""

from __future__ import annotations

import pytest
import torch

from precipdiff.diffusion import karras_sigmas, loglinear_sigmas


def test_karras_sigmas_eq5():
    s = karras_sigmas(5, 0.002, 80.0, 7.0, dtype=torch.float64)
    assert s.shape == (6,) and s[-1] == 0
    assert s[0].item() == pytest.approx(80.0) and s[-2].item() == pytest.approx(0.002)
    mid = (80 ** (1 / 7) + 0.5 * (0.002 ** (1 / 7) - 80 ** (1 / 7))) ** 7
    assert s[2].item() == pytest.approx(mid)
    assert torch.all(s[1:] < s[:-1])
    assert karras_sigmas(1).tolist() == [80.0, 0.0]


def test_loglinear_sigmas():
    s = loglinear_sigmas(4, 0.01, 10.0, dtype=torch.float64)
    ratios = (s[:-2] / s[1:-1]).tolist()  # 10 / 0.01 = 1000 = 10^3 in 3 equal log steps
    assert ratios == pytest.approx([10.0] * 3)
    assert s[-1] == 0
