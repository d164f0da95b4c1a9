"""Private framework names live in yt8m_search.compat only, and still exist in the installed versions."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from yt8m_search import compat

PACKAGE = Path(__file__).resolve().parents[1] / "yt8m_search"


def test_every_private_name_still_exists() -> None:
    missing = compat.missing_private_names()
    assert not missing, "an upgrade removed private names yt8m_search relies on:\n" + "\n".join(missing)


def test_private_names_appear_only_in_compat() -> None:
    # plus the private attributes the project stopped using (study._storage, searcher._sampler)
    names = sorted({path.rsplit(".", 1)[-1] for _, path in compat.PRIVATE_NAMES} | {"_storage", "_sampler"})
    pattern = re.compile(r"\b(" + "|".join(re.escape(n) for n in names) + r")\b")
    sites = [f"{path.relative_to(PACKAGE.parent)}:{i}" for path in PACKAGE.rglob("*.py") if path.name != "compat.py"
             for i, line in enumerate(path.read_text().splitlines(), 1) if pattern.search(line)]
    assert sites == []


def test_a_removed_name_is_reported_in_words(monkeypatch) -> None:
    monkeypatch.setattr(compat, "PRIVATE_NAMES", (*compat.PRIVATE_NAMES, ("torch", "_no_such_kernel")))
    missing = compat.missing_private_names()
    assert len(missing) == 1 and missing[0].startswith("torch._no_such_kernel is gone") and "compat" in missing[0]


def test_foreach_norm_matches_the_plain_norms() -> None:
    import torch

    tensors = [torch.arange(6.0).reshape(2, 3), torch.ones(4)]
    assert [float(n) for n in compat.foreach_norm(tensors)] == [float(t.norm()) for t in tensors]
    compat.foreach_mul_(tensors, [torch.tensor(2.0), torch.tensor(0.5)])
    assert tensors[1].tolist() == [0.5] * 4


def test_keep_idle_workers_leaves_a_users_setting_alone(monkeypatch) -> None:
    monkeypatch.setenv(f"RAY_{compat.RAY_IDLE_WORKERS_CONFIG}", "3")
    compat.keep_idle_workers(12)
    assert os.environ[f"RAY_{compat.RAY_IDLE_WORKERS_CONFIG}"] == "3"
    assert compat.idle_workers_kept(2) == 8 and compat.idle_workers_kept(64) == 16


_REUSE = """
import os, sys, time
from yt8m_search import compat
compat.keep_idle_workers(int(sys.argv[1]))
import ray
ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)

@ray.remote(num_cpus=1.5)
class Holder:  # a trial holding CPUs, as in a local sweep: 0.5 CPU free
    def ready(self):
        return True

@ray.remote(num_cpus=0)
class Barrier:  # four tasks at once: four processes, however slowly each starts
    def __init__(self):
        self.arrived = 0
    def arrive(self):
        self.arrived += 1
    def count(self):
        return self.arrived

@ray.remote(num_cpus=0.125)
def pid(barrier, everyone):
    ray.get(barrier.arrive.remote())
    deadline = time.monotonic() + 120
    while ray.get(barrier.count.remote()) < everyone and time.monotonic() < deadline:
        time.sleep(0.05)
    return os.getpid()

barrier = Barrier.remote()
if sys.argv[2] == "prestart":  # as run.py does while Tune starts: the processes the first reads take
    from yt8m_search.data import loading
    first = set(ray.get(loading.prestart_readers(4)))
    holder = Holder.remote()
else:
    holder = Holder.remote()
    ray.get(holder.ready.remote())
    first = set(ray.get([pid.remote(barrier, 4) for _ in range(4)]))
ray.get(holder.ready.remote())
time.sleep(3)  # idle for longer than Ray's 1 s
second = set(ray.get([pid.remote(barrier, 8 if sys.argv[2] != "prestart" else 4) for _ in range(4)]))
print(len(first), len(first & second))
"""


def _reuse(kept: int, first: str) -> tuple[int, int]:
    """The processes of four tasks (``first``: "tasks", or "prestart": ``loading.prestart_readers``),
    and how many of them four more tasks run in after 3 s idle."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    out = subprocess.run([sys.executable, "-c", _REUSE, str(kept), first], capture_output=True, text=True, env=env,
                         timeout=300)  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]
    started, reused = map(int, out.stdout.split()[-2:])
    return started, reused


@pytest.mark.slow
def test_a_ray_told_to_keep_idle_workers_reuses_them_after_an_idle_spell() -> None:
    """The raylet honours the config ``keep_idle_workers`` sets: four read-sized tasks beside a trial
    holding most CPUs run again in the same processes after 3 s idle (Ray's default keeps at most one
    idle worker per free CPU, here none, and kills the rest after 1 s)."""
    assert _reuse(8, "tasks") == (4, 4)


@pytest.mark.slow
def test_prestarted_readers_are_the_processes_the_first_reads_run_in() -> None:
    """``loading.prestart_readers`` (run.py, as the local Ray starts) leaves four processes that the
    read-sized tasks submitted later run in, however many CPUs a trial holds by then."""
    assert _reuse(8, "prestart") == (4, 4)
