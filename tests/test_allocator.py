"""The allocator policy: applied on glibc unless the user chose one."""

from __future__ import annotations

import os
import platform
import subprocess
import sys

import pytest

from precipdiff.allocator import user_chose_policy

glibc = pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="glibc only")


@pytest.mark.parametrize("env,chose", [({}, False), ({"PRECIPDIFF_MALLOC": "default"}, True),
                                       ({"GLIBC_TUNABLES": "glibc.malloc.hugetlb=1"}, True),
                                       ({"MALLOC_ARENA_MAX": "2"}, True),
                                       ({"PRECIPDIFF_MALLOC": "keep"}, False)])
def test_user_choice_is_respected(env, chose) -> None:
    assert user_chose_policy(env) is chose


def _applied(extra: dict[str, str]) -> str:
    """Whether keep_freed_memory applies in a fresh process, and whether freed large blocks
    then stay mapped (the resident set after freeing a 256 MB block)."""
    code = ("import resource, numpy as np\nfrom precipdiff.allocator import keep_freed_memory\n"
            "ok = keep_freed_memory()\n"
            "def rss():\n    return int(open('/proc/self/statm').read().split()[1]) * 4096\n"
            "before = rss()\na = np.ones(2**25)\ndel a\n"
            "print(ok, (rss() - before) > 2**27)")
    env = {k: v for k, v in os.environ.items()
           if k != "GLIBC_TUNABLES" and not k.startswith("MALLOC_")
           and k != "PRECIPDIFF_MALLOC"}
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env={**env, **extra}, timeout=120, check=True)
    return res.stdout.strip()


@glibc
def test_freed_memory_is_kept_only_when_applied() -> None:
    assert _applied({}) == "True True"  # the 256 MB block stays mapped for reuse
    assert _applied({"PRECIPDIFF_MALLOC": "default"}) == "False False"  # given back
