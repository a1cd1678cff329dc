"""The benchmark (`make bench`) runs end to end, and the kernel prestart seam it measures holds.

No timing is asserted anywhere here: the benchmark's numbers are in bench/RESULTS.md.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path

import pytest
from nbproject import run_pytest, write_notebook, write_pyproject

from nbgate.kernels import Kernel, KernelKey, KernelPool, kernel_environment, prestart_depth

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))  # `bench` is a top-level package of the checkout, not installed

from bench.report import Comparison  # noqa: E402
from bench.timing import Deadlines, Samples, interleaved  # noqa: E402
from bench.variants import Command, Variant  # noqa: E402
from bench.workspace import notebook_as_script  # noqa: E402

# -- the benchmark itself -------------------------------------------------------------------

SMOKE_ROWS = (
    "1 small notebooks: nbgate / 1 papermill CLI runs",
    "1 small notebooks: nbgate / pytest --nbmake",
    "1 small notebooks: nbgate with MLflow tracking (the default) / without",
    "training example: nbgate / papermill CLI",
    "training example: nbgate / plain script (no kernel)",
    "collecting 6 cases / bare pytest --collect-only",
    "-n 2 speedup, 2 small notebooks (serial / -n 2)",
    "-n 2 speedup, 2 training copies (serial / -n 2)",
)
RATIO_ROW = re.compile(
    r"^\| (?P<label>[^|]+) \| (?P<median>\d+\.\d\d) \| (?P<min>\d+\.\d\d) \| [^|]+ \| "
    r"(?P<verdict>holds|MISSED|info) \|$"
)


def test_smoke_run_writes_a_report_with_every_row(tmp_path: Path) -> None:
    out = tmp_path / "RESULTS.md"
    result = subprocess.run(
        [sys.executable, "-m", "bench", "--smoke", "--work", str(tmp_path / "work"),
         "--out", str(out)],
        cwd=REPO, capture_output=True, text=True, timeout=900,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    report = out.read_text(encoding="utf-8")
    assert report in result.stdout  # printed as well as written
    rows = {m["label"]: m for m in map(RATIO_ROW.match, report.splitlines()) if m}
    assert set(SMOKE_ROWS) <= set(rows), sorted(rows)
    assert "| heavy modules imported while collecting 6 cases | none |" in report
    for section in ("## Timings (s)", "## Machine", "- cores: ", "## Versions", "- papermill: "):
        assert section in report


def test_script_variant_sets_parameters_right_after_the_parameters_cell(tmp_path: Path) -> None:
    notebook = write_notebook(tmp_path / "nb.ipynb", ["print(n_trials)"], parameters="n_trials = 1")
    script = notebook_as_script(notebook, {"n_trials": 7})
    assert script.index("n_trials = 1") < script.index("n_trials = 7") < script.index("print")


def test_verdicts_follow_the_direction_of_each_budget() -> None:
    samples = {"a": Samples((1.0, 2.0, 9.0)), "b": Samples((4.0, 4.0, 4.0))}
    cost = Comparison("cost", "a", "b", budget=0.6)
    speedup = Comparison("speedup", "b", "a", budget=1.3, at_least=True)
    assert cost.ratio(samples) == (0.5, 0.25)  # medians 2 / 4, minimums 1 / 4
    assert cost.ratio({**samples, "b": Samples(())}) is None  # skipped at the time limit
    assert cost.verdict(0.5) == "holds" and cost.verdict(0.7) == "MISSED"
    assert speedup.verdict(2.0) == "holds" and speedup.verdict(1.0) == "MISSED"
    assert Comparison("info", "a", "b").verdict(99) == "info"


def _alive(pid: int) -> bool:
    """Running, that is: a killed orphan stays a zombie until init reaps it, which can be never."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state != "Z"


def test_time_limit_stops_a_run_with_everything_it_started_and_counts_no_sample(
    tmp_path: Path,
) -> None:
    pid_file = tmp_path / "grandchild.pid"
    slow = (sys.executable, "-c", "import subprocess, sys, time; "
            "p = subprocess.Popen(['sleep', '60']); open(sys.argv[1], 'w').write(str(p.pid)); "
            "time.sleep(60)", str(pid_file))
    quick = (sys.executable, "-c", "pass")
    variants = [Variant("quick", "quick", (Command(quick, tmp_path),)),
                Variant("slow", "slow", (Command(slow, tmp_path),))]
    now = time.monotonic()
    samples = interleaved(variants, os.environ, tmp_path / "logs", repeats=1, warmup=False,
                          deadlines=Deadlines(soft=now + 30, hard=now + 3))
    assert len(samples["quick"].seconds) == 1
    assert not samples["slow"].measured  # stopped at the hard limit, not counted
    assert not _alive(int(pid_file.read_text()))  # nor is anything it started left running
    # Past the soft limit nothing new starts.
    late = Deadlines(soft=time.monotonic() - 1, hard=time.monotonic() + 30)
    samples = interleaved(variants[:1], os.environ, tmp_path / "logs", 1, False, late)
    assert not samples["quick"].measured


# -- the prestart seam: kernels started ahead are the ones the next cases use -------------
# (it lives here because the benchmark is what depends on it; nbgate.kernels / nbgate.plugin)


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
    assert not [pid for pid in pool.pids if _alive(pid)]


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
    assert not [pid for pid in pool.pids if _alive(pid)]


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
from nbgate.kernels import KernelPool

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
