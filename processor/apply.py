"""Apply: decoded events → visitor states and the batch's rows (sessionize + fold).

The per-event logic is `apply_event` (processor/transform.py, pure); this step finds each
event's visitor state, hands it the project's funnels, and notes what changed in the
batch. A funnel whose rule raised on an event is quarantined here, once per batch.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from processor.batch import Batch
from processor.catalog import FunnelCatalog
from processor.dedupe import Delivery, Position
from processor.state import HeldStates, visitor_key
from processor.transform import Timing, apply_event
from schemas.funnels import FunnelDefinition

log = logging.getLogger(__name__)

# The funnels an event of (partition, project, visitor key) advances live.
FunnelsFor = Callable[[int, str, str], list[FunnelDefinition]]


class Applier:
    def __init__(
        self,
        states: HeldStates,
        catalog: FunnelCatalog,
        timing: Timing,
        funnels_for: FunnelsFor | None = None,
    ) -> None:
        self._states = states
        self._catalog = catalog
        self._timing = timing
        self._funnels_for = funnels_for or (lambda _p, project, _k: catalog.for_project(project))

    def apply(self, deliveries: list[Delivery], resends: set[Position], batch: Batch) -> None:
        now_ms = int(time.time() * 1000)
        for message in deliveries:
            event = message.event
            state = self._states.get_or_create(
                message.partition, event.project_id, event.visitor_id
            )
            key = visitor_key(event.project_id, event.visitor_id)
            before = state.applied_offset
            apply_event(
                state,
                event,
                partition=message.partition,
                offset=message.offset,
                funnels=self._funnels_for(message.partition, event.project_id, key),
                timing=self._timing,
                processed_at_ms=now_ms,
                out=batch.outputs,
                duplicate=message.position in resends,
            )
            if state.applied_offset != before:
                batch.dirty[key] = (message.partition, state)
                batch.received_ms.append(event.received_at_ms)
        for funnel, error in batch.outputs.failed.values():
            log.error("funnel %s/%s failed on an event", funnel.project, funnel.id, exc_info=error)
            self._catalog.quarantine(funnel, f"{type(error).__name__}: {error}")
        batch.outputs.failed.clear()
