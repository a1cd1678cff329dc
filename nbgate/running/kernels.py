"""Kernel processes: started ahead of need, shut down without waiting.

A kernel takes about half a second to become ready and its shutdown can stall for seconds, so
for a run of small notebooks most of the wall time is spent waiting on kernels. The pool owns
one asyncio loop in a background thread; every kernel manager and client lives on that loop, so
the next case's kernel can start while the current case's cells run, and finished kernels are
killed in the background instead of on the critical path.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
import threading
import time
from collections import deque
from collections.abc import Coroutine, Mapping
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path
from queue import Empty
from typing import TYPE_CHECKING, Any, TypeVar

if TYPE_CHECKING:
    from jupyter_client import AsyncKernelClient, AsyncKernelManager

T = TypeVar("T")
THREAD_VARIABLES = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")
STARTUP_TIMEOUT = 60.0
MAX_AHEAD = 2  # kernels booting ahead of need; each idle one holds ~50 MB (see prestart_depth)


def kernel_environment(
    base: Mapping[str, str], parallel_workers: int, cores: int
) -> dict[str, str]:
    """The environment every kernel starts with.

    Under pytest-xdist several kernels run at once, and OpenMP pools (xgboost, BLAS) that each
    claim every core spin against each other: 4 training notebooks took 2-5x longer under
    ``-n 2`` than serially. Each kernel gets its fair share unless the user set a limit.
    """
    env = dict(base)
    # pytest rewrites PYTEST_CURRENT_TEST for every test phase. A kernel started ahead for the
    # next case would carry the current case's value, and since a pooled kernel is reused only
    # for an identical environment (KernelKey), keeping it made every prestarted kernel a
    # mismatch: each case then booted a second kernel and threw the first away.
    env.pop("PYTEST_CURRENT_TEST", None)
    env.setdefault("PYDEVD_DISABLE_FILE_VALIDATION", "1")  # silences a debugpy warning per kernel
    if parallel_workers > 1:
        share = str(max(1, cores // parallel_workers))
        for name in THREAD_VARIABLES:
            env.setdefault(name, share)
    return env


def prestart_depth(parallel_workers: int, cores: int) -> int:
    """How many kernels a pytest process boots ahead of need: one per core it may use.

    A kernel start-up is ~0.4 s of one core's time, most of a small notebook's cost. On 2
    cores, booting 8 kernels one at a time took 0.63-0.94 s per kernel, two at a time
    0.32-0.34 s, three at a time 0.31 s. Under pytest-xdist the workers share the cores, so
    each boots one.
    """
    return max(1, min(MAX_AHEAD, cores // max(1, parallel_workers)))


@dataclass(frozen=True)
class KernelKey:
    """What a started kernel is fixed to: a pooled kernel is reused only for the same key."""

    cwd: str
    env: tuple[tuple[str, str], ...]

    @classmethod
    def of(cls, cwd: Path, env: Mapping[str, str]) -> KernelKey:
        return cls(str(cwd), tuple(sorted(env.items())))


@dataclass
class Kernel:
    manager: AsyncKernelManager
    client: AsyncKernelClient


class KernelStartError(Exception):
    pass


class KernelPool:
    def __init__(self, python: str = sys.executable) -> None:
        self.python = python
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._loop.run_forever, name="nbgate-kernels", daemon=True
        )
        self._thread.start()
        # Kernels started ahead of need, oldest first; any of them serves any case of its key.
        self._spares: deque[tuple[KernelKey, Future[Kernel]]] = deque()
        self._stopping: set[Future[None]] = set()
        self._closed = False

    # -- running coroutines on the pool's loop -------------------------------------------
    def submit(self, coro: Coroutine[Any, Any, T]) -> Future[T]:
        return asyncio.run_coroutine_threadsafe(coro, self._loop)

    def call(self, coro: Coroutine[Any, Any, T], timeout: float | None = None) -> T:
        future = self.submit(coro)
        try:
            return future.result(timeout)
        except BaseException:
            future.cancel()
            raise

    # -- kernels ---------------------------------------------------------------------------
    def acquire(self, cwd: Path, env: Mapping[str, str]) -> Kernel:
        """A ready kernel for ``cwd``/``env``: the oldest spare of that key, else a new one."""
        key = KernelKey.of(cwd, env)
        self._drop_spares_except(key)
        while self._spares:
            _, future = self._spares.popleft()
            try:
                return future.result(STARTUP_TIMEOUT + 5)
            except Exception:
                pass  # a failed spare is no reason to fail the case; try the next, or start one
        return self.call(self._start(cwd, env), STARTUP_TIMEOUT + 5)

    def prestart(self, cwd: Path, env: Mapping[str, str], ahead: int = 1) -> None:
        """Have ``ahead`` kernels for ``cwd``/``env`` starting or ready for the coming cases.

        They boot while the current case runs; ``ahead`` > 1 boots several at once, which on
        a machine with idle cores turns a run of small notebooks from one kernel start-up per
        case into a fraction of one (see ``prestart_depth``).
        """
        if self._closed:
            return
        key = KernelKey.of(cwd, env)
        self._drop_spares_except(key)
        for _ in range(ahead - len(self._spares)):
            self._spares.append((key, self.submit(self._start(cwd, env))))

    def release(self, kernel: Kernel) -> None:
        """Kill the kernel in the background; nothing waits for it until close()."""
        self._track(self.submit(self._stop(kernel)))

    def _drop_spares_except(self, key: KernelKey) -> None:
        # A spare for another key (the environment changed, e.g. a test set a variable) would
        # never be used: kill it once it is up.
        for spare in [s for s in self._spares if s[0] != key]:
            self._spares.remove(spare)
            self._track(self.submit(self._stop_when_started(spare[1])))

    def _track(self, stopping: Future[None]) -> None:
        self._stopping.add(stopping)
        stopping.add_done_callback(self._stopping.discard)

    def close(self, timeout: float = 10.0) -> None:
        """Stop the spares and every kernel still shutting down, then the loop."""
        if self._closed:
            return
        self._closed = True
        while self._spares:
            _, starting = self._spares.popleft()
            self._track(self.submit(self._stop_when_started(starting)))
        for stopping in list(self._stopping):
            # A spare may still be booting: it is killed once up, not left behind.
            with contextlib.suppress(Exception):
                stopping.result(STARTUP_TIMEOUT + timeout)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout)

    async def _start(self, cwd: Path, env: Mapping[str, str]) -> Kernel:
        from jupyter_client import AsyncKernelManager

        manager = AsyncKernelManager(kernel_spec_manager=_same_interpreter_specs(self.python))
        manager.kernel_name = "python3"
        try:
            await manager.start_kernel(cwd=str(cwd), env=dict(env))
            client = manager.client()
            client.start_channels()
            await wait_until_ready(client, STARTUP_TIMEOUT)
        except Exception as exc:
            with contextlib.suppress(Exception):
                await manager.shutdown_kernel(now=True)
            raise KernelStartError(
                f"the Python kernel ({self.python}) did not start: {exc}"
            ) from exc
        client.allow_stdin = False
        return Kernel(manager, client)

    async def _stop_when_started(self, starting: Future[Kernel]) -> None:
        with contextlib.suppress(Exception):
            await self._stop(await asyncio.wrap_future(starting))

    @staticmethod
    async def _stop(kernel: Kernel) -> None:
        # "now" kills the process: a graceful shutdown request stalls ~3.4 s in a few percent
        # of runs with ipykernel 7, and a finished notebook has nothing left to save.
        with contextlib.suppress(Exception):
            kernel.client.stop_channels()
        with contextlib.suppress(Exception):
            await _kill_and_reap(kernel.manager)
        with contextlib.suppress(Exception):
            await kernel.manager.shutdown_kernel(now=True)  # cleanup; the process is gone


async def _kill_and_reap(manager: AsyncKernelManager) -> None:
    """SIGKILL the kernel and wait, in short steps, until it is reaped.

    jupyter_client checks a killed kernel every 0.1 s, so the last kernel of a session held
    pytest's exit that long; a killed process is gone within milliseconds.
    """
    provisioner = manager.provisioner
    if provisioner is None:
        return
    await provisioner.kill()
    deadline = time.monotonic() + 2.0  # past it, shutdown_kernel's own wait takes over
    while await provisioner.poll() is None and time.monotonic() < deadline:
        await asyncio.sleep(0.005)


async def wait_until_ready(client: AsyncKernelClient, timeout: float) -> None:
    """Return once the kernel answers on shell and its IOPub messages reach us.

    jupyter_client's ``wait_for_ready`` ends by draining IOPub until it has been quiet for
    0.2 s: a fixed wait on every kernel start, a third of a small notebook's start-up. Seeing
    IOPub carry the status of our own kernel_info request proves the subscription is live
    just as well, and the executor reads only replies to its own requests, so nothing needs
    draining.
    """
    deadline = time.monotonic() + timeout
    while True:
        request = client.kernel_info()
        if await _reply_arrives(client, request, deadline) and await _iopub_carries(
            client, request
        ):
            return
        if not await client.is_alive():
            raise RuntimeError("the kernel died before replying to kernel_info")
        if time.monotonic() > deadline:
            raise RuntimeError(f"the kernel did not answer within {timeout:g} s")


async def _reply_arrives(client: AsyncKernelClient, request: str, deadline: float) -> bool:
    while time.monotonic() < deadline:
        try:
            msg = await client.get_shell_msg(timeout=1)
        except Empty:
            return False  # no reply for a second: is the kernel still alive?
        if msg["parent_header"].get("msg_id") == request:
            return True
    return False


async def _iopub_carries(client: AsyncKernelClient, request: str) -> bool:
    """Does IOPub deliver the kernel's status for ``request``? If the subscription was not
    connected when the kernel published it, the caller asks again (as jupyter_client does)."""
    while True:
        try:
            msg = await client.get_iopub_msg(timeout=0.2)
        except Empty:
            return False
        if msg["parent_header"].get("msg_id") == request:
            return True


def _same_interpreter_specs(python: str) -> Any:
    """A kernel spec manager whose python3 kernel is this interpreter, whatever is installed."""
    from jupyter_client.kernelspec import KernelSpec, KernelSpecManager

    class SameInterpreter(KernelSpecManager):  # type: ignore[misc]
        def get_kernel_spec(self, kernel_name: str) -> KernelSpec:
            return KernelSpec(
                # ERROR level drops the "running over TCP without encryption" warning that
                # every loopback kernel prints; real errors still reach stderr.
                argv=[
                    python,
                    "-m",
                    "ipykernel_launcher",
                    "-f",
                    "{connection_file}",
                    "--IPKernelApp.log_level=ERROR",
                ],
                display_name=f"Python ({python})",
                language="python",
                resource_dir=os.path.dirname(python),
            )

    return SameInterpreter()
