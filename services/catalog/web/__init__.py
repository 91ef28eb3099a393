"""The catalog over HTTP: a JSON API and the timeline pages, served by the catalog process.

    server = await start_http(index, "127.0.0.1", 8080)   # port 0: any free port
    ...
    await server.stop()

See `docs/timeline.md` for the routes, the error format and what the pages draw.
"""

from services.catalog.web.server import HttpServer, make_app, start_http

__all__ = ["HttpServer", "make_app", "start_http"]
