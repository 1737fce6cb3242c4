"""Interactive API documentation at `/api/docs`: Swagger UI served by our own Apache, no CDN.

The Swagger UI files come from npm (`web/vendor/swagger-ui/`, served by Apache under
`/vendor/swagger-ui/`); this module serves the page and its start-up script as a file of its
own, because the site's Content-Security-Policy forbids inline scripts.
"""

from __future__ import annotations

from fastapi import FastAPI
from fastapi.responses import Response

SWAGGER_UI_ROOT = "/vendor/swagger-ui"
# Pages are served fresh so a new release shows its operations at once; they are tiny.
_NO_CACHE = {"Cache-Control": "no-cache"}


def docs_page(prefix: str) -> str:
    """Return the HTML page that loads Swagger UI and its start-up script."""
    return f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>RoadWatch API</title>
<link rel="icon" href="/favicon.svg" type="image/svg+xml">
<link rel="stylesheet" href="{SWAGGER_UI_ROOT}/swagger-ui.css">
</head>
<body>
<noscript>The interactive documentation needs JavaScript; the OpenAPI document is at
<a href="{prefix}/openapi.json">{prefix}/openapi.json</a>.</noscript>
<div id="swagger-ui"></div>
<script src="{SWAGGER_UI_ROOT}/swagger-ui-bundle.js"></script>
<script src="{prefix}/docs/init.js"></script>
</body>
</html>
"""


def docs_script(openapi_url: str) -> str:
    """Return the script that starts Swagger UI on the OpenAPI document of this API."""
    return f"""// Starts Swagger UI on the RoadWatch OpenAPI document.
"use strict";
window.roadwatchApiDocs = window.SwaggerUIBundle({{
  url: "{openapi_url}",
  dom_id: "#swagger-ui",
  deepLinking: true,
  // No call to the public validator service: the page must work without internet.
  validatorUrl: null,
  // A bearer token typed into "Authorize" stays in this tab only, never in localStorage.
  persistAuthorization: false,
  presets: [window.SwaggerUIBundle.presets.apis],
  layout: "BaseLayout",
}});
"""


def install_docs_routes(app: FastAPI, prefix: str, openapi_url: str) -> None:
    """Serve the documentation page at `{prefix}/docs` and its script beside it."""
    page = docs_page(prefix).encode()
    script = docs_script(openapi_url).encode()

    @app.get(f"{prefix}/docs", include_in_schema=False)
    def api_docs() -> Response:
        """Show the interactive documentation of the API."""
        return Response(page, media_type="text/html; charset=utf-8", headers=_NO_CACHE)

    @app.get(f"{prefix}/docs/init.js", include_in_schema=False)
    def api_docs_script() -> Response:
        """Start Swagger UI in the documentation page."""
        return Response(script, media_type="text/javascript; charset=utf-8", headers=_NO_CACHE)
