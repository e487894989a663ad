"""Cross-origin rules by route: ingest is open to every page, the query API is not.

The tracking snippet posts from every storefront page, so ingest's routes allow any
origin (without credentials: write keys are public anyway). Read and admin keys must not
be usable from an arbitrary page that got hold of one, so the query API answers
cross-origin requests only from the origins a deployment lists
(`FUNNELSTREAM_QUERY_CORS_ORIGINS`, none by default: same-origin pages and
non-browser clients only).
"""

from __future__ import annotations

from collections.abc import Iterable

from starlette.middleware.cors import CORSMiddleware
from starlette.types import ASGIApp, Receive, Scope, Send

from funnelstream.sdk_paths import SDK_PATHS

# Routes a storefront page calls from its own origin.
PUBLIC_PATHS = frozenset({"/v1/events", "/v1/funnelstream.js"}) | SDK_PATHS
# The snippet reads Retry-After on 429/503 from cross-origin pages.
EXPOSED = ["Retry-After"]


class CorsByRoute:
    def __init__(self, app: ASGIApp, query_origins: Iterable[str] = ()) -> None:
        self._public = CORSMiddleware(
            app,
            allow_origins=["*"],
            allow_credentials=False,
            allow_methods=["GET", "POST", "OPTIONS"],
            allow_headers=["Content-Type", "Authorization", "Content-Encoding"],
            expose_headers=EXPOSED,
            max_age=86400,
        )
        self._query = CORSMiddleware(
            app,
            allow_origins=list(query_origins),
            allow_credentials=False,
            allow_methods=["GET", "POST", "PUT", "DELETE", "OPTIONS"],
            allow_headers=["Content-Type", "Authorization", "Last-Event-ID"],
            expose_headers=EXPOSED,
            max_age=600,
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        public = scope["type"] == "http" and scope["path"] in PUBLIC_PATHS
        await (self._public if public else self._query)(scope, receive, send)
