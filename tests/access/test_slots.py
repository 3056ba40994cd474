"""Export slots: the spare ones that parallel COPY takes leave half of them free for other exports."""

from __future__ import annotations

import asyncio

import pytest

from exporter.access.admission import ExportSlots
from exporter.errors import Busy


def test_spare_slots_are_taken_only_while_half_stay_free_and_come_back() -> None:
    async def scenario() -> None:
        slots = ExportSlots(8)
        async with slots.hold(wait=False):
            assert await slots.take_spare(7) == 3  # 7 free: 3 taken, 4 stay free
            assert await slots.take_spare(1) == 0
            async with slots.hold(wait=False), slots.hold(wait=False), slots.hold(wait=False):
                async with slots.hold(wait=False):
                    with pytest.raises(Busy):
                        async with slots.hold(wait=False):
                            pass
            slots.give_back(3)
            assert await slots.take_spare(1) == 1
            slots.give_back(1)
        async with slots.hold(wait=False):
            assert await slots.take_spare(7) == 3

    asyncio.run(scenario())


def test_no_spare_slot_is_taken_while_a_job_waits_for_one() -> None:
    async def scenario() -> None:
        slots = ExportSlots(2)
        async with slots.hold(wait=False), slots.hold(wait=False):
            waiting = asyncio.create_task(slots.hold(wait=True).__aenter__())
            await asyncio.sleep(0)
            assert await slots.take_spare(1) == 0
            waiting.cancel()

    asyncio.run(scenario())
