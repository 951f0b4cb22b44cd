"""The status service's HTTP endpoints: the page, the JSON views, ``/metrics``, health.

The JSON views are rendered once per polling round (:mod:`status_api.cluster`); requests only
pick the cached bytes (gzip when the client accepts it, decided by :mod:`servicekit.encoding` as
for the exporter) and answer 304 to a matching ETag, so a wall of browsers costs next to nothing.
Errors are JSON ``{"error": "..."}``; tracebacks stay in the log.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import yaml
from flask import Flask, Response, request
from werkzeug.exceptions import HTTPException

from servicekit.encoding import VARY, accepts_gzip
from servicekit.metricsformat import negotiate
from servicekit.responses import JSON, json_error_body
from status_api.cluster import Cluster, View
from status_api.engine import EngineError
from status_api.metrics import exposition, make_registry
from status_api.userhistory import (
    DEFAULT_DAYS,
    MAX_DAYS,
    UnknownUser,
    UserHistory,
    no_engine_document,
    valid_name,
)

STATIC = Path(__file__).resolve().parent / "static"
# The one description of the API: shipped as YAML, served as JSON.
OPENAPI = Path(__file__).resolve().parent / "openapi.yaml"
MAX_BODY_BYTES = 4096  # nothing here reads a body; legacy clients may still send a small one

# The page loads only its own files and talks only to this service.
_PAGE_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)


def _json_error(status: int, message: str) -> Response:
    return Response(json_error_body(message), status=status, mimetype=JSON)


def _gzip_requested() -> bool:
    return accepts_gzip(request.headers.get("Accept-Encoding"))


def _serve_view(view: View) -> Response:
    if request.if_none_match.contains(view.etag):
        response = Response(status=304)
    else:
        gzip_ok = _gzip_requested()
        response = Response(view.gzipped if gzip_ok else view.body, mimetype=JSON)
        if gzip_ok:
            response.headers["Content-Encoding"] = "gzip"
    response.set_etag(view.etag)
    response.headers[VARY[0]] = VARY[1]
    response.headers["Cache-Control"] = "no-cache"
    return response


def _days() -> int | None:
    """The ``days`` parameter, 1 to MAX_DAYS; None when it is anything else."""
    text = request.args.get("days", str(DEFAULT_DAYS))
    if not text.isdigit() or len(text) > 3 or not 1 <= int(text) <= MAX_DAYS:
        return None
    return int(text)


def create_app(
    cluster: Cluster, *, static_dir: Path = STATIC, user_history: UserHistory | None = None
) -> Flask:
    """Build the Flask app over a cluster whose views the poller keeps up to date; with
    ``user_history`` (a query engine), users' last days too."""
    app = Flask(__name__, static_folder=str(static_dir), static_url_path="/static")
    app.config["MAX_CONTENT_LENGTH"] = MAX_BODY_BYTES
    registry = make_registry(cluster)

    @app.before_request
    def refuse_big_bodies() -> Response | None:
        # Nothing here reads a body, so Flask would never notice one over the limit itself.
        if (request.content_length or 0) > MAX_BODY_BYTES:
            return _json_error(413, f"request body over {MAX_BODY_BYTES} bytes")
        return None

    @app.after_request
    def security_headers(response: Response) -> Response:
        response.headers.setdefault("X-Content-Type-Options", "nosniff")
        response.headers.setdefault("Referrer-Policy", "no-referrer")
        if response.mimetype == "text/html":
            response.headers["Content-Security-Policy"] = _PAGE_POLICY
            response.headers["X-Frame-Options"] = "DENY"
        return response

    @app.get("/")
    def page() -> Response:
        response = app.send_static_file("index.html")
        response.headers["Cache-Control"] = "no-cache"
        return response

    @app.get("/api/v1/cluster")
    def cluster_json() -> Response:
        return _serve_view(cluster.views.cluster)

    @app.get("/api/v1/users")
    def users_json() -> Response:
        return _serve_view(cluster.views.users)

    @app.get("/api/v1/users/<path:name>/history")
    def user_history_json(name: str) -> Response:
        # <path:> so a name with a slash is a 404 here, like any other name that is no user's.
        if not valid_name(name):
            return _json_error(404, "no such user")
        days = _days()
        if days is None:
            return _json_error(400, f"days must be a whole number from 1 to {MAX_DAYS}")
        if user_history is None:
            document = no_engine_document(name, at=time.time())
        else:
            try:
                document = user_history.get(name, days)
            except UnknownUser:
                return _json_error(404, f"no GPU use recorded for {name} in the last {days} days")
            except EngineError as error:
                response = _json_error(503, f"the query engine did not answer: {error}")
                response.headers["Retry-After"] = "30"
                return response
        response = Response(json.dumps(document), mimetype=JSON)
        response.headers["Cache-Control"] = "no-cache"
        return response

    @app.route("/get-status", methods=["GET", "POST"])
    def legacy_json() -> Response:
        return _serve_view(cluster.views.legacy)

    openapi_json = json.dumps(yaml.safe_load(OPENAPI.read_text(encoding="utf-8")))

    @app.get("/api/v1/openapi.json")
    def openapi() -> Response:
        return Response(openapi_json, mimetype=JSON)

    @app.get("/metrics")
    def metrics() -> Response:
        metrics_format = negotiate(
            request.headers.get("Accept"), request.headers.get("Accept-Encoding")
        )
        return Response(
            metrics_format.compress(exposition(registry, openmetrics=metrics_format.openmetrics)),
            content_type=metrics_format.content_type,
            headers=metrics_format.headers(),
        )

    @app.get("/-/healthy")
    def healthy() -> Response:
        return Response("OK\n", mimetype="text/plain")

    @app.get("/-/ready")
    def ready() -> Response:
        if cluster.ready:
            return Response("OK\n", mimetype="text/plain")
        return Response("waiting for the first polling round\n", status=503, mimetype="text/plain")

    @app.errorhandler(HTTPException)
    def http_error(error: HTTPException) -> Response:
        if error.code == 404:
            return _json_error(404, f"no such endpoint: {request.path[:200]}")
        if error.code == 413:
            return _json_error(413, f"request body over {MAX_BODY_BYTES} bytes")
        response = _json_error(error.code or 500, error.description or error.name)
        if error.code == 405 and error.valid_methods:  # type: ignore[attr-defined]
            response.headers["Allow"] = ", ".join(error.valid_methods)  # type: ignore[attr-defined]
        return response

    @app.errorhandler(Exception)
    def unexpected(error: Exception) -> Response:
        app.logger.exception("unhandled error")  # details stay in the log, not the response
        return _json_error(500, "internal error")

    return app
