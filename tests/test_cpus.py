"""How many CPUs a process may use (conveyor.cpus): the container's CPU limit caps the count that
parser and TextRank pools default to."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from conveyor.cpus import cgroup_cpu_quota, usable_cpus
from conveyor.settings import Settings


def _v2(root: Path, text: str) -> Path:
    (root / "cpu.max").write_text(text)
    return root


def _v1(root: Path, quota: str, period: str) -> Path:
    (root / "cpu").mkdir()
    (root / "cpu" / "cpu.cfs_quota_us").write_text(quota)
    (root / "cpu" / "cpu.cfs_period_us").write_text(period)
    return root


@pytest.mark.parametrize(("text", "quota"), [("max 100000\n", None), ("100000 100000\n", 1.0),
                                             ("150000 100000\n", 1.5), ("50000 100000", 0.5), ("garbage", None),
                                             ("", None)])
def test_the_cgroup_v2_quota_is_read_from_cpu_max(tmp_path: Path, text: str, quota: float | None) -> None:
    assert cgroup_cpu_quota(_v2(tmp_path, text)) == quota


def test_the_cgroup_v1_quota_is_read_and_minus_one_means_no_limit(tmp_path: Path) -> None:
    limited, unlimited = tmp_path / "limited", tmp_path / "unlimited"
    limited.mkdir()
    unlimited.mkdir()
    assert cgroup_cpu_quota(_v1(limited, "200000", "100000")) == 2.0
    assert cgroup_cpu_quota(_v1(unlimited, "-1", "100000")) is None


def test_no_cgroup_files_means_no_limit(tmp_path: Path) -> None:
    assert cgroup_cpu_quota(tmp_path) is None
    assert usable_cpus(tmp_path) == len(os.sched_getaffinity(0))


def test_a_limit_caps_the_count_rounded_up_and_never_below_one(tmp_path: Path) -> None:
    affinity = len(os.sched_getaffinity(0))
    assert usable_cpus(_v2(tmp_path, "150000 100000")) == min(affinity, 2)
    assert usable_cpus(_v2(tmp_path, "10000 100000")) == 1
    assert usable_cpus(_v2(tmp_path, f"{100000 * (affinity + 8)} 100000")) == affinity  # affinity caps too


def test_pools_default_to_the_usable_cpus_and_an_explicit_count_wins() -> None:
    assert Settings().resolved_parse_processes() == usable_cpus()
    assert Settings().resolved_textrank_processes() == usable_cpus()
    assert Settings(parse_processes=3, textrank_processes=5).resolved_parse_processes() == 3
    assert Settings(parse_processes=3, textrank_processes=5).resolved_textrank_processes() == 5
