"""The serve process keeps its start-up objects out of full garbage-collector passes."""

from __future__ import annotations

import gc

from agentcast.gateway.server import frozen_startup_heap


def test_start_up_objects_are_frozen_while_serving_and_released_after() -> None:
    assert gc.get_freeze_count() == 0
    with frozen_startup_heap():
        # Every module, class and function of the test process is frozen now.
        assert gc.get_freeze_count() > 10_000
        garbage: list[object] = []
        garbage.append(garbage)  # a cycle made after the freeze is still collected
        del garbage
        assert gc.collect() >= 1
    assert gc.get_freeze_count() == 0
