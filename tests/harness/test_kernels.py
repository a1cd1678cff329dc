"""The kernel pool's prestart seam: kernels started ahead are the ones the next cases use,
a kernel started for another environment is never used, and none outlives the pool."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

import pytest

from nbgate.running.kernels import Kernel, KernelKey, KernelPool, kernel_environment, prestart_depth
from tests.support.nbproject import process_alive, run_pytest, write_notebook, write_pyproject


class CountingPool(KernelPool):
    """A real pool that remembers every kernel process it started, and for which environment."""

    def __init__(self) -> None:
        super().__init__()
        self.started: list[tuple[str | None, int]] = []

    @property
    def pids(self) -> list[int]:
        return [pid for _, pid in self.started]

    async def _start(self, cwd: Path, env: Mapping[str, str]) -> Kernel:
        kernel = await super()._start(cwd, env)
        pid = kernel.manager.provisioner.process.pid
        self.started.append((env.get("NBGATE_BENCH_TEST"), pid))
        return kernel


def test_prestarted_kernels_serve_the_next_cases_and_none_outlives_the_pool(
    tmp_path: Path,
) -> None:
    env = kernel_environment(os.environ, 1, 2)
    pool = CountingPool()
    try:
        pool.prestart(tmp_path, env, ahead=2)
        pool.prestart(tmp_path, env, ahead=2)  # already two on the way: nothing more
        first, second = pool.acquire(tmp_path, env), pool.acquire(tmp_path, env)
        assert len(pool.pids) == 2
        third = pool.acquire(tmp_path, env)  # none left ahead: started on demand
        assert len(pool.pids) == 3
        for kernel in (first, second, third):
            pool.release(kernel)
        pool.prestart(tmp_path, env)  # a spare nobody takes is killed at close
    finally:
        pool.close()
    assert len(pool.pids) == 4
    assert not [pid for pid in pool.pids if process_alive(pid)]


def test_a_kernel_started_for_another_environment_is_killed_not_used(tmp_path: Path) -> None:
    env = kernel_environment(os.environ, 1, 2)
    pool = CountingPool()
    try:
        pool.prestart(tmp_path, {**env, "NBGATE_BENCH_TEST": "a"})
        kernel = pool.acquire(tmp_path, {**env, "NBGATE_BENCH_TEST": "b"})
        assert ("b", kernel.manager.provisioner.process.pid) in pool.started
        pool.release(kernel)
    finally:
        pool.close()  # waits for the unused "a" kernel to come up, then kills it
    assert sorted(marker for marker, _ in pool.started) == ["a", "b"]
    assert not [pid for pid in pool.pids if process_alive(pid)]


def test_kernel_key_ignores_the_test_pytest_is_running() -> None:
    # A kernel is started during one case for the next; pytest renames the running test between.
    before = kernel_environment({"PATH": "/bin", "PYTEST_CURRENT_TEST": "a.py::t (call)"}, 1, 2)
    after = kernel_environment({"PATH": "/bin", "PYTEST_CURRENT_TEST": "b.py::u (setup)"}, 1, 2)
    assert KernelKey.of(Path("/r"), before) == KernelKey.of(Path("/r"), after)


@pytest.mark.parametrize(
    ("workers", "cores", "depth"), [(1, 1, 1), (1, 2, 2), (2, 2, 1), (4, 2, 1), (1, 16, 2)]
)
def test_prestart_depth_is_one_kernel_per_core_this_process_may_use(
    workers: int, cores: int, depth: int
) -> None:
    assert prestart_depth(workers, cores) == depth


COUNTING_CONFTEST = """
import os
from nbgate.running.kernels import KernelPool

_start = KernelPool._start

async def _counting_start(self, cwd, env):
    kernel = await _start(self, cwd, env)
    with open(os.environ["KERNEL_LOG"], "a") as log:
        log.write("started\\n")
    return kernel

KernelPool._start = _counting_start
"""


PIPELINES = """
[tool.nbgate.runners.cpu]
[tool.nbgate.runners.gpu]
gpu = true
""" + "".join(
    f'[[tool.nbgate.pipelines]]\nnotebook = "notebooks/{name}.ipynb"\nkind = "train"\n'
    f'runners = ["{runner}"]\n'
    for name, runner in (("nb_a", "cpu"), ("nb_b", "cpu"), ("u_c", "cpu"), ("zz_gpu", "gpu"))
)


@pytest.mark.parametrize("extra", [[], ["-n", "2"]], ids=["serial", "xdist"])
def test_a_session_starts_exactly_one_kernel_per_notebook_it_runs(
    tmp_path: Path, extra: list[str]
) -> None:
    # In name order: two notebooks, a plain test, a notebook, then a GPU case that is skipped.
    for name in ("nb_a", "nb_b", "u_c", "zz_gpu"):
        write_notebook(tmp_path / "notebooks" / f"{name}.ipynb", ["y = x"])
    (tmp_path / "notebooks" / "test_plain.py").write_text("def test_plain():\n    pass\n")
    write_pyproject(tmp_path, PIPELINES)
    (tmp_path / "conftest.py").write_text(COUNTING_CONFTEST)
    log = tmp_path / "kernels.log"
    result = run_pytest(
        tmp_path, "-p", "no:nbgate-tracking", *extra,
        env={"KERNEL_LOG": str(log), "CUDA_VISIBLE_DEVICES": ""},
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "4 passed, 1 skipped" in result.stdout
    # Three notebooks ran: no kernel for the skipped GPU case, none started twice or wasted.
    assert log.read_text().count("started") == 3
