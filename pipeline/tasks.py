"""Background tasks with an owner: each :class:`TaskSet` names its tasks, keeps a reference
until they finish, logs their failures and cancels what is left when its owner closes.
Cancellation is re-raised, never swallowed, when it is aimed at the waiting task itself."""

import asyncio
import logging
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, TypeVar

log = logging.getLogger("roomscribe.tasks")

T = TypeVar("T")

# how long one stage of a shutdown may take before the shutdown goes on without it
STOP_STAGE_S = 60.0
# how long a cancelled task may run on before it is cancelled again
RECANCEL_S = 1.0


class TaskSet:
    """Owns the tasks it starts until they finish; :meth:`aclose` cancels what is left."""

    def __init__(self, owner: str) -> None:
        self.owner = owner
        self._tasks: set[asyncio.Task[Any]] = set()

    def spawn(self, coro: Coroutine[Any, Any, T], name: str) -> asyncio.Task[T]:
        task = asyncio.get_running_loop().create_task(coro, name=f"{self.owner}:{name}")
        self._tasks.add(task)
        task.add_done_callback(self._finished)
        return task

    def _finished(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if task.cancelled():
            return
        error = task.exception()
        if error is not None:
            log.error("task %s failed", task.get_name(), exc_info=error)

    def __len__(self) -> int:
        return len(self._tasks)

    async def aclose(self) -> None:
        current = asyncio.current_task()
        pending = [task for task in self._tasks if task is not current]
        for task in pending:
            await cancel_and_wait(task)


async def cancel_and_wait(task: asyncio.Task[Any]) -> None:
    """Cancel ``task`` and wait for it; its failure was logged by its owner. A task that
    lives on past a cancellation is cancelled again every :data:`RECANCEL_S`: on 3.11,
    ``asyncio.wait_for`` and nats-py's flush can swallow one, and the owner would wait forever."""
    while not task.done():
        task.cancel()
        await asyncio.wait({task}, timeout=RECANCEL_S)
        if not task.done():
            log.warning("task %s outlived a cancellation; cancelling it again", task.get_name())
    try:
        task.result()
    except asyncio.CancelledError:
        pass
    except Exception:  # noqa: S110 - logged by the TaskSet that spawned it
        pass


async def stop_within(
    name: str, stop: Callable[[], Awaitable[None]], within_s: float | None = None
) -> None:
    """Run one stage of a shutdown for at most ``within_s`` (default :data:`STOP_STAGE_S`): a
    stage that hangs (even one that ignores cancellation) is logged by ``name`` and left
    behind, so the next stages still run and the process still exits."""
    if within_s is None:
        within_s = STOP_STAGE_S
    task = asyncio.ensure_future(stop())
    try:
        done, _ = await asyncio.wait({task}, timeout=within_s)
    except asyncio.CancelledError:
        task.cancel()
        raise
    if not done:
        log.error("%s did not stop within %.0f s; the shutdown goes on without it", name, within_s)
        task.cancel()
        return
    task.result()
