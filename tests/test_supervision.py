"""The supervisor: a loop that dies is started again after a backoff and counted; stop() ends every loop and
lets it clean up first."""

from __future__ import annotations

import asyncio

from prometheus_client import REGISTRY

from exporter.supervision import Supervisor


def restarts(loop: str) -> float:
    return REGISTRY.get_sample_value("exporter_background_loop_restarts_total", {"loop": loop}) or 0.0


def test_a_loop_that_raises_is_started_again_counted_and_up_once_it_runs() -> None:
    async def scenario() -> None:
        starts = 0
        running = asyncio.Event()
        cleaned_up = asyncio.Event()

        async def flaky() -> None:
            nonlocal starts
            starts += 1
            if starts <= 2:
                raise RuntimeError(f"start {starts} fails")
            running.set()
            try:
                await asyncio.Event().wait()
            finally:
                cleaned_up.set()

        before = restarts("test-flaky")
        async with Supervisor() as supervisor:
            supervisor.add("test-flaky", flaky)
            async with asyncio.timeout(30):
                await running.wait()
            assert supervisor.loops() == {"test-flaky": True}
            assert restarts("test-flaky") - before == 2
            assert REGISTRY.get_sample_value("exporter_background_loop_up", {"loop": "test-flaky"}) == 1
        assert cleaned_up.is_set()  # cancelled, and its finally ran, before the block ended
        assert supervisor.loops() == {}
        assert REGISTRY.get_sample_value("exporter_background_loop_up", {"loop": "test-flaky"}) == 0

    asyncio.run(scenario())


def test_a_loop_waiting_to_be_started_again_is_down_and_stop_soon_ends_only_the_named_ones() -> None:
    async def scenario() -> None:
        died = asyncio.Event()

        async def dies() -> None:
            died.set()  # it raises in the same step, so the supervisor has seen it die when died.wait() returns
            raise ConnectionResetError("gone")

        async def runs() -> None:
            await asyncio.Event().wait()

        async with Supervisor() as supervisor:
            supervisor.add("test-dies", dies)
            supervisor.add("test-runs", runs)
            async with asyncio.timeout(30):
                await died.wait()
            assert supervisor.loops() == {"test-dies": False, "test-runs": True}
            await supervisor.stop(["test-dies"])
            assert supervisor.loops() == {"test-runs": True}

    asyncio.run(scenario())
