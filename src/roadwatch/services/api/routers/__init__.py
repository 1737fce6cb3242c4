"""The routes of the REST API, one router per resource; `app.create_app` includes them all."""

# Every route lives under this prefix, the one path Apache proxies to the API.
PREFIX = "/api"
