"""Apply: decoded events → visitor states and the batch's rows (sessionize + fold).

The fold's contract is `fold_visitor` (processor/visitor_fold.py, pure): one visitor's
events as columns and its state in. This step groups the polled events by visitor (log
order kept), finds each visitor's state, hands it the project's funnels, and notes what
changed in the batch. A funnel whose rule raised on an event is quarantined here, once
per batch.
"""

from __future__ import annotations

import time

from processor.batch import Batch
from processor.catalog import FunnelCatalog, FunnelsFor
from processor.dedupe import Delivery, Position
from processor.state import HeldStates, visitor_key
from processor.transform import Timing
from processor.visitor_fold import VisitorEvents, fold_visitor


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
        grouped: dict[tuple[int, str], VisitorEvents] = {}
        for message in deliveries:
            event = message.event
            key = visitor_key(event.project_id, event.visitor_id)
            columns = grouped.get((message.partition, key))
            if columns is None:
                columns = grouped[(message.partition, key)] = VisitorEvents(
                    event.project_id, event.visitor_id, message.partition
                )
            columns.append(message.offset, event, message.position in resends)
        for (partition, key), columns in grouped.items():
            state = self._states.get_or_create(partition, columns.project_id, columns.visitor_id)
            result = fold_visitor(
                state,
                columns,
                funnels=self._funnels_for(partition, columns.project_id, key),
                timing=self._timing,
                processed_at_ms=now_ms,
                out=batch.outputs,
            )
            if result.state is not state:
                self._states.put(partition, key, result.state)
            if result.absorbed:
                batch.dirty[key] = (partition, result.state)
                batch.received_ms.extend(columns.events[i].received_at_ms for i in result.absorbed)
        for funnel, error in batch.outputs.failed.values():
            self._catalog.quarantine(funnel, error, "on an event")
        batch.outputs.failed.clear()
