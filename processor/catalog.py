"""The funnels the processor advances, per project; replaced whole when definitions change.

Stored definitions that no longer load (invalid under today's rules) are kept out and
listed as quarantined, so one bad row never stops start-up or the catalog refresh. So is
a definition that fails while the processor runs it (`quarantine`): it stays out until it
is replaced by another definition, and every other funnel and event goes on.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

from funnelstream import metrics
from schemas.funnels import FunnelDefinition

log = logging.getLogger(__name__)


# The funnels an event of (partition, project, visitor key) advances, live or re-folded.
FunnelsFor = Callable[[int, str, str], list[FunnelDefinition]]


@dataclass(frozen=True, slots=True)
class QuarantinedFunnel:
    """A stored definition left out of the catalog, and why (`code` is stable)."""

    project: str
    funnel_id: str
    code: str
    reason: str


class FunnelCatalog:
    def __init__(
        self,
        funnels: Iterable[FunnelDefinition] = (),
        quarantined: Iterable[QuarantinedFunnel] = (),
        versions: Mapping[tuple[str, str], int] | None = None,
    ) -> None:
        self._by_project: dict[str, list[FunnelDefinition]] = {}
        # (project, funnel id) -> the stored version of an API funnel (config ones: none).
        self._versions: dict[tuple[str, str], int] = {}
        self._defined: list[FunnelDefinition] = []
        self._quarantined: tuple[QuarantinedFunnel, ...] = ()
        # Definitions that failed at run time, with why: out until the definition changes.
        self._failed: dict[tuple[str, str], tuple[FunnelDefinition, QuarantinedFunnel]] = {}
        # Bumped on every change, so the processor notices funnels to backfill.
        self.version = 0
        self.replace(funnels, quarantined, versions or {})

    def replace(
        self,
        funnels: Iterable[FunnelDefinition],
        quarantined: Iterable[QuarantinedFunnel] | None = None,
        versions: Mapping[tuple[str, str], int] | None = None,
    ) -> None:
        """`quarantined`: the stored definitions left out; `versions`: the stored version
        of each API funnel (query_api/funnel_store.py). None keeps the current ones."""
        defined_now = list(funnels)
        versions_before = self._versions
        if versions is not None:
            self._versions = dict(versions)
        # The same definitions again (the catalog refresh, every few seconds): keep the
        # objects, whose compiled forms are cached by identity (funnel/compiled.py).
        self._defined = self._defined if defined_now == self._defined else defined_now
        defined = {(f.project, f.id): f for f in self._defined}
        # A run-time failure ends when its definition is replaced (or deleted).
        self._failed = {k: v for k, v in self._failed.items() if defined.get(k) == v[0]}
        by_project: dict[str, list[FunnelDefinition]] = {}
        for f in self._defined:
            if (f.project, f.id) not in self._failed:
                by_project.setdefault(f.project, []).append(f)
        # A new version with the same definition changes the live state key (state_key).
        if by_project != self._by_project or self._versions != versions_before:
            self.version += 1
        self._by_project = by_project
        if quarantined is not None:
            self._set_quarantined(tuple(quarantined))

    def _set_quarantined(self, quarantined: tuple[QuarantinedFunnel, ...]) -> None:
        if quarantined == self._quarantined:
            return  # refreshed every few seconds: log and count a change once
        for q in set(quarantined) - set(self._quarantined):
            log.warning(
                "stored funnel %s/%s quarantined (%s): %s", q.project, q.funnel_id, q.code, q.reason
            )
        self._quarantined = quarantined
        self._export()

    def _export(self) -> None:
        metrics.FUNNELS_QUARANTINED.clear()
        for q in self._quarantined + tuple(q for _, q in self._failed.values()):
            metrics.FUNNELS_QUARANTINED.labels(q.project, q.funnel_id, q.code).set(1)

    def quarantine(self, funnel: FunnelDefinition, error: Exception, doing: str) -> None:
        """Take a definition whose rule raised while the processor was `doing` something
        (folding an event, a backfill, a user rebuild, a re-fold) out of the catalog,
        logged with its traceback and shown with why."""
        key = (funnel.project, funnel.id)
        if key in self._failed:
            return
        reason = f"{type(error).__name__}: {error}"
        log.error(
            "funnel %s/%s failed %s, quarantined: %s",
            funnel.project,
            funnel.id,
            doing,
            reason,
            exc_info=error,
        )
        self._failed[key] = (
            funnel,
            QuarantinedFunnel(funnel.project, funnel.id, "runtime_error", reason[:1000]),
        )
        self.replace(self._defined, None)
        self._export()

    def upsert(self, funnel: FunnelDefinition, version: int | None = None) -> None:
        """`version`: the stored version saved (None: a funnel without versions)."""
        key = (funnel.project, funnel.id)
        versions = {k: v for k, v in self._versions.items() if k != key}
        if version is not None:
            versions[key] = version
        self.replace(
            [f for f in self._defined if (f.project, f.id) != key] + [funnel],
            # A good definition saved under a quarantined id replaces the bad row.
            [q for q in self._quarantined if (q.project, q.funnel_id) != key],
            versions,
        )

    def remove(self, project: str, funnel_id: str) -> None:
        key = (project, funnel_id)
        self.replace(
            [f for f in self._defined if (f.project, f.id) != key],
            [q for q in self._quarantined if (q.project, q.funnel_id) != key],
            {k: v for k, v in self._versions.items() if k != key},
        )

    def version_of(self, project: str, funnel_id: str) -> int | None:
        """The stored version of an API funnel; None for a config-file one."""
        return self._versions.get((project, funnel_id))

    def for_project(self, project: str) -> list[FunnelDefinition]:
        return self._by_project.get(project, [])

    def quarantined(self, project: str) -> list[QuarantinedFunnel]:
        failed = [q for _, q in self._failed.values()]
        return [q for q in (*self._quarantined, *failed) if q.project == project]

    def get(self, project: str, funnel_id: str) -> FunnelDefinition | None:
        return next((f for f in self.for_project(project) if f.id == funnel_id), None)

    def all(self) -> list[FunnelDefinition]:
        return [f for fs in self._by_project.values() for f in fs]

    def step_counts(self, project: str) -> dict[str, int]:
        return {f.id: len(f.steps) for f in self.for_project(project)}
