"""The NER11 API (FastAPI): health, DB health, model status, metrics, modules, NER."""

from __future__ import annotations

import logging
import socket
import sys
import time
from datetime import UTC, datetime

import psycopg2
import psycopg2.errors
import psycopg2.extensions
import psycopg2.extras
from fastapi import APIRouter, FastAPI, HTTPException
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel

from .config import MODULES, Settings
from .db import Database, DatabaseUnavailable, one_line
from .metrics import CONTENT_TYPE, Registry
from .modelstore import ModelSet, load_models

MAX_TEXT_CHARS = 100_000


# ---- logging: the same shape as uvicorn's lines ("INFO:     message") ----------------
class _Formatter(logging.Formatter):
    def format(self, record):
        prefix = (record.levelname + ":").ljust(10)
        return "%s%s" % (prefix, super().format(record))


def _setup_logging():
    logger = logging.getLogger("ner11")
    if not logger.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(_Formatter("%(message)s"))
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
        logger.propagate = False

    class _DropHealthcheck(logging.Filter):
        # The container healthcheck polls /health every 2 s: keep it out of the access log.
        def filter(self, record):
            args = record.args if isinstance(record.args, tuple) else ()
            return not (len(args) >= 3 and str(args[0]).startswith("127.0.0.1:") and args[2] == "/health")

    logging.getLogger("uvicorn.access").addFilter(_DropHealthcheck())


_setup_logging()
log = logging.getLogger("ner11.api")

settings = Settings.from_env()
db = Database(settings)
registry = Registry()
STARTED = time.monotonic()
INSTANCE_ID = socket.gethostname()
state = {"models": ModelSet(error="models not loaded yet")}

registry.counter("ner11_entities_extracted_total", "Entities extracted by POST /api/v1/ner.")
registry.counter("ner11_documents_processed_total", "Documents processed by POST /api/v1/ner.")
registry.gauge("ner11_db_pool_size", "Configured database pool size (DATABASE_POOL_SIZE).", lambda: db.pool_size)
registry.gauge(
    "ner11_db_pool_active_connections",
    "Database connections held by this instance's pool (in use + idle).",
    lambda: db.pool_stats()["open"],
)
registry.gauge(
    "ner11_db_pool_in_use_connections", "Database connections checked out right now.", lambda: db.pool_stats()["in_use"]
)
registry.gauge("ner11_db_up", "1 when the last database check succeeded.", lambda: int(db.connected))
registry.gauge("ner11_models_loaded", "1 when every model of the manifest loaded.", lambda: int(state["models"].loaded))
registry.gauge("ner11_uptime_seconds", "Seconds since the API started.", lambda: round(time.monotonic() - STARTED, 3))
registry.gauge("ner11_info", "Build information.", lambda: ({"version": settings.version, "instance": INSTANCE_ID}, 1))


app = FastAPI(
    title="NER11 Gold Model API",
    version=settings.version,
    description="Named-entity recognition for industrial-control-system security text.",
)


# ---- metrics middleware (pure ASGI) ---------------------------------------------------
class MetricsMiddleware:
    def __init__(self, app):  # starlette passes app=...
        self.app = app
        self._paths = None

    def _route_path(self, scope):
        route = scope.get("route")
        if route is not None and getattr(route, "path", None):
            return route.path
        if self._paths is None:
            self._paths = {r.endpoint: r.path for r in _APP.routes if getattr(r, "endpoint", None)}
        endpoint = scope.get("endpoint")
        return self._paths.get(endpoint, "<unmatched>") if endpoint is not None else "<unmatched>"

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = [500]

        async def send_wrapper(message):
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            registry.observe_request(scope["method"], self._route_path(scope), status[0], time.perf_counter() - started)


_APP = app
app.add_middleware(MetricsMiddleware)


# ---- lifecycle ------------------------------------------------------------------------
@app.on_event("startup")
def _startup():
    log.info(
        "NER11 API %s starting (instance %s, database %s:%s/%s as %s, pool %d+%d, models %s, modules %s)",
        settings.version, INSTANCE_ID, settings.db_host, settings.db_port, settings.db_name, settings.db_user,
        settings.pool_size, settings.max_overflow, settings.models_dir, ",".join(settings.modules) or "none",
    )
    if not settings.db_password:
        log.warning("POSTGRES_PASSWORD / POSTGRES_PASSWORD_FILE not set; connecting without a password")
    state["models"] = load_models(settings.models_dir)
    # One quick attempt now (so a ready database is migrated before "startup complete"),
    # then the monitor thread keeps retrying; a database that is down never blocks start.
    if db.ping():
        try:
            db.migrate()
        except psycopg2.Error as exc:
            log.warning("migration failed (will retry): %s", one_line(exc))
    else:
        log.warning("database not reachable yet (%s); the API starts anyway and retries", db.last_error)
    db.start()


@app.on_event("shutdown")
def _shutdown():
    db.stop()
    log.info("NER11 API stopped")


# ---- helpers --------------------------------------------------------------------------
def _now():
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _health_body():
    models = state["models"]
    db_ok = db.connected
    healthy = db_ok and db.migrated and models.loaded
    return {
        "status": "healthy" if healthy else "degraded",
        "timestamp": _now(),
        "version": settings.version,
        "uptime_seconds": round(time.monotonic() - STARTED, 3),
        "instance_id": INSTANCE_ID,
        "checks": {
            "database": "connected" if db_ok else "disconnected",
            "migrations": "applied" if db.migrated else "pending",
            "models_loaded": models.loaded,
        },
    }


def _db_error(exc):
    """Map a database failure to an HTTPException (503 when it is the database's state)."""
    if isinstance(exc, DatabaseUnavailable):
        return HTTPException(503, "database unavailable: %s" % exc)
    if isinstance(exc, psycopg2.errors.UndefinedTable):
        return HTTPException(503, "database schema not ready (migrations pending)")
    if isinstance(exc, psycopg2.extensions.QueryCanceledError):
        return HTTPException(503, "database query timed out")
    if isinstance(exc, psycopg2.OperationalError):
        return HTTPException(503, "database unavailable: %s" % one_line(exc))
    log.error("database error: %s", one_line(exc))
    return HTTPException(500, "database error: %s" % one_line(exc))


def _query(sql, params=None):
    try:
        with db.connection() as conn, conn.cursor(cursor_factory=psycopg2.extras.RealDictCursor) as cur:
            cur.execute(sql, params)
            return cur.fetchall()
    except (DatabaseUnavailable, psycopg2.Error) as exc:
        raise _db_error(exc) from None


def _jsonable(rows):
    out = []
    for row in rows:
        out.append({k: (v.isoformat() if hasattr(v, "isoformat") else v) for k, v in row.items()})
    return out


# ---- health ---------------------------------------------------------------------------
@app.get("/health", tags=["health"])
def health():
    return _health_body()


@app.get("/api/v1/health", tags=["health"])
def api_health():
    return _health_body()


@app.get("/api/v1/db/health", tags=["health"])
def db_health():
    status, body = db.health()
    return JSONResponse(body, status_code=status)


@app.get("/api/v1/models/status", tags=["models"])
def models_status():
    models = state["models"]
    return {
        "models_loaded": models.loaded,
        "available_models": models.names,
        "load_time_seconds": models.load_time_seconds,
        "models_dir": settings.models_dir,
        "error": models.error,
    }


@app.get("/metrics", tags=["metrics"])
def metrics():
    return Response(registry.render(), media_type=CONTENT_TYPE)


# ---- NER ------------------------------------------------------------------------------
class NerRequest(BaseModel):
    text: str


@app.post("/api/v1/ner", tags=["ner"])
def ner(request: NerRequest):
    text = request.text
    if not text.strip():
        raise HTTPException(422, "text must not be empty")
    if len(text) > MAX_TEXT_CHARS:
        raise HTTPException(422, "text is longer than %d characters" % MAX_TEXT_CHARS)
    models = state["models"]
    if not models.loaded:
        raise HTTPException(503, "models not loaded: %s" % models.error)
    entities = models.extract(text)
    try:
        with db.connection() as conn, conn.cursor() as cur:
            cur.execute("INSERT INTO ner_documents (text) VALUES (%s) RETURNING id", (text,))
            document_id = cur.fetchone()[0]
            if entities:
                psycopg2.extras.execute_values(
                    cur,
                    "INSERT INTO ner_entities (document_id, label, text, start_char, end_char) VALUES %s",
                    [(document_id, e["label"], e["text"], e["start"], e["end"]) for e in entities],
                )
    except (DatabaseUnavailable, psycopg2.Error) as exc:
        raise _db_error(exc) from None
    registry.inc("ner11_documents_processed_total")
    registry.inc("ner11_entities_extracted_total", len(entities))
    return {"document_id": document_id, "entities": entities, "models": models.names}


@app.get("/api/v1/ner/documents/count", tags=["ner"])
def ner_count():
    row = _query(
        "SELECT (SELECT count(*) FROM ner_documents) AS documents, (SELECT count(*) FROM ner_entities) AS entities"
    )[0]
    return {"documents": int(row["documents"]), "entities": int(row["entities"])}


# ---- modules: a disabled module's paths answer 404 -----------------------------------
LISTINGS = {
    "vendor-equipment": "SELECT id, vendor, model, category, created_at FROM vendor_equipment ORDER BY id LIMIT 100",
    "threat-intelligence": "SELECT id, indicator, kind, severity, created_at FROM threat_intelligence ORDER BY id LIMIT 100",
    "compliance": "SELECT id, name, version, created_at FROM compliance_frameworks ORDER BY id LIMIT 100",
}


def _module_router(module_id: str, module_name: str) -> APIRouter:
    router = APIRouter(prefix="/api/v1/%s" % module_id, tags=[module_id])

    def module_health():
        return {"status": "healthy", "module": module_name}

    module_health.__name__ = "health_%s" % module_id.replace("-", "_")
    router.add_api_route("/health", module_health, methods=["GET"])

    sql: str | None = LISTINGS.get(module_id)
    if sql:

        def listing():
            items = _jsonable(_query(sql))
            return {"items": items, "count": len(items)}

        listing.__name__ = "list_%s" % module_id.replace("-", "_")
        router.add_api_route("/", listing, methods=["GET"])
        router.add_api_route("", listing, methods=["GET"], include_in_schema=False)
    return router


for _module_id in settings.modules:
    app.include_router(_module_router(_module_id, MODULES[_module_id]))
