"""What aiohttp knows of the route a request matched, for spans, metrics and access rules."""

from __future__ import annotations

from aiohttp import web


def route_template(request: web.Request) -> str:
    """The matched route's template (``/v2/models/{model}/infer``): low-cardinality, unlike the
    path. A request that matched no route (aiohttp's 404/405 handlers) has its path instead."""
    resource = request.match_info.route.resource
    return resource.canonical if resource is not None else request.path
