"""The funnels the processor advances, per project; replaced whole when definitions change."""

from __future__ import annotations

from collections.abc import Iterable

from schemas.funnels import FunnelDefinition


class FunnelCatalog:
    def __init__(self, funnels: Iterable[FunnelDefinition] = ()) -> None:
        self._by_project: dict[str, list[FunnelDefinition]] = {}
        # Bumped on every change, so the processor notices funnels to backfill.
        self.version = 0
        self.replace(funnels)

    def replace(self, funnels: Iterable[FunnelDefinition]) -> None:
        by_project: dict[str, list[FunnelDefinition]] = {}
        for f in funnels:
            by_project.setdefault(f.project, []).append(f)
        if by_project != self._by_project:
            self.version += 1
        self._by_project = by_project

    def upsert(self, funnel: FunnelDefinition) -> None:
        self.replace(
            [f for f in self.all() if (f.project, f.id) != (funnel.project, funnel.id)] + [funnel]
        )

    def remove(self, project: str, funnel_id: str) -> None:
        self.replace([f for f in self.all() if (f.project, f.id) != (project, funnel_id)])

    def for_project(self, project: str) -> list[FunnelDefinition]:
        return self._by_project.get(project, [])

    def get(self, project: str, funnel_id: str) -> FunnelDefinition | None:
        return next((f for f in self.for_project(project) if f.id == funnel_id), None)

    def all(self) -> list[FunnelDefinition]:
        return [f for fs in self._by_project.values() for f in fs]

    def step_counts(self, project: str) -> dict[str, int]:
        return {f.id: len(f.steps) for f in self.for_project(project)}
