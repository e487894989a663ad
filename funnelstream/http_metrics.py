"""Responses counted by route kind and status class, for the 5xx alerts
(deploy/prometheus/rules.yml). The outermost middleware, so refusals made by the others
(429, 413) and errors nobody caught are counted too. Status classes, not codes, and the
route kinds of funnelstream/request_limits.py: a bounded set of series."""

from __future__ import annotations

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from funnelstream import metrics
from funnelstream.request_limits import Policies


def status_class(status: int) -> str:
    return f"{status // 100}xx" if 100 <= status < 600 else "other"


class ResponseCounter:
    def __init__(self, app: ASGIApp, policies: Policies) -> None:
        self.app = app
        self.policies = policies

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        kind = self.policies.policy_for(scope["path"]).kind
        started: list[int] = []

        async def counting_send(message: Message) -> None:
            if message["type"] == "http.response.start":
                started.append(int(message["status"]))
                metrics.HTTP_RESPONSES.labels(kind, status_class(started[0])).inc()
            await send(message)

        try:
            await self.app(scope, receive, counting_send)
        except BaseException:
            if not started:  # answered 500 by the server's error handler, outside us
                metrics.HTTP_RESPONSES.labels(kind, "5xx").inc()
            raise
