"""The test server's timer guard (tests/timer_guard.py): a message sent just before a timer is
due waits until the timer has fired; one sent well before goes out at once."""

from __future__ import annotations

import uuid
from datetime import timedelta

from temporalio import workflow

from tests.conftest import new_worker, start_time_skipping
from tests.helpers import result_within
from tests.timer_guard import TimerGuard


@workflow.defn(sandboxed=False)
class Ticker:
    """Counts 10-second ticks until signalled to stop; returns the count."""

    def __init__(self) -> None:
        self.stop = False
        self.ticks = 0

    @workflow.run
    async def run(self) -> int:
        while not self.stop:
            try:
                await workflow.wait_condition(lambda: self.stop, timeout=timedelta(seconds=10))
            except TimeoutError:
                self.ticks += 1
        return self.ticks

    @workflow.signal
    def halt(self) -> None:
        self.stop = True


async def test_a_signal_due_near_a_timer_goes_out_after_it_fires() -> None:
    env = await start_time_skipping()
    [guard] = [i for i in env.client.config()["interceptors"] if isinstance(i, TimerGuard)]
    try:
        async with new_worker(env.client, workflows=[Ticker]) as worker:
            early = await env.client.start_workflow(
                Ticker.run, id=f"t-{uuid.uuid4()}", task_queue=worker.task_queue
            )
            await early.signal(Ticker.halt)  # the timer is ~10 s away: no skip
            assert await result_within(early.result()) == 0
            assert guard.skips == 0

            late = await env.client.start_workflow(
                Ticker.run, id=f"t-{uuid.uuid4()}", task_queue=worker.task_queue
            )
            await env.sleep(9.5)  # the first timer is now due within the guard
            await late.signal(Ticker.halt)
            assert guard.skips >= 1
            assert await result_within(late.result()) == 1  # the tick happened, then the stop
    finally:
        await env.shutdown()
