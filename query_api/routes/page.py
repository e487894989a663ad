"""The analyst page: a static page (query_api/static/) that reads the query API in the
browser with a read key the user types in. The key stays in the page's memory: never sent
here, stored, or put in a URL.

Served by exact paths, not a directory mount, so nothing but these files can be asked
for. The chart library is vendored at setup (query_api/static/build.sh); without it the
page says so instead of drawing.
"""

from __future__ import annotations

from importlib import resources

from fastapi import APIRouter, HTTPException
from fastapi.responses import Response

router = APIRouter(tags=["analyst page"], include_in_schema=False)

# The page loads only its own files and calls only this origin.
CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:;"
    " connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
FILES = {
    "/app": ("index.html", "text/html; charset=utf-8"),
    "/app/app.js": ("app.js", "text/javascript; charset=utf-8"),
    "/app/app.css": ("app.css", "text/css; charset=utf-8"),
    "/app/vendor/uplot.min.js": ("vendor/uplot.min.js", "text/javascript; charset=utf-8"),
    "/app/vendor/uplot.min.css": ("vendor/uplot.min.css", "text/css; charset=utf-8"),
}


def _read(name: str) -> bytes:
    path = resources.files("query_api") / "static" / name
    try:
        return path.read_bytes()
    except FileNotFoundError as e:
        raise HTTPException(
            404,
            {
                "error": "not_installed",
                "field": "path",
                "message": f"{name} is missing: run scripts/setup.sh (query_api/static/build.sh)",
            },
        ) from e


def _serve(name: str, media_type: str) -> Response:
    headers = {
        "Content-Security-Policy": CSP,
        "X-Content-Type-Options": "nosniff",
        "Referrer-Policy": "no-referrer",
        "Cache-Control": "no-cache",
    }
    return Response(_read(name), media_type=media_type, headers=headers)


def _route(url: str, name: str, media_type: str) -> None:
    async def serve() -> Response:
        return _serve(name, media_type)

    serve.__name__ = f"page_{name.replace('/', '_').replace('.', '_')}"
    router.add_api_route(url, serve, methods=["GET"], response_class=Response)


for url, (file_name, kind) in FILES.items():
    _route(url, file_name, kind)
