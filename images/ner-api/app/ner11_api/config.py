"""Configuration from the environment (plain Python)."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field

log = logging.getLogger("ner11.config")

# Module id -> module name, as listed in the runbooks (a.7).
MODULES = {
    "vendor-equipment": "Phase B2 - Vendor Equipment",
    "threat-intelligence": "Phase B3 - Threat Intelligence",
    "compliance": "Phase B4 - Compliance",
    "economic-impact": "E10 - Economic Impact",
    "demographics": "E11 - Demographics",
    "prioritization": "E12 - Prioritization",
}


def _int(env, name, default, low=0, high=10000):
    raw = env.get(name, "")
    if raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        log.warning("%s=%r is not an integer; using %d", name, raw, default)
        return default
    if not low <= value <= high:
        log.warning("%s=%d is outside %d..%d; using %d", name, value, low, high, default)
        return default
    return value


def _secret(env, name):
    path = env.get(name + "_FILE", "")
    if path:
        try:
            with open(path, encoding="utf-8") as handle:
                return handle.read().rstrip("\r\n")
        except OSError as exc:
            log.error("%s_FILE=%s cannot be read: %s", name, path, exc)
            return ""
    return env.get(name, "")


def _modules(env):
    raw = env.get("NER11_MODULES", "").strip()
    if raw in ("", "all"):
        return list(MODULES)
    if raw == "none":
        return []
    wanted = []
    for item in raw.split(","):
        item = item.strip()
        if not item:
            continue
        if item not in MODULES:
            log.warning("NER11_MODULES: unknown module %r ignored (known: %s)", item, ", ".join(MODULES))
            continue
        if item not in wanted:
            wanted.append(item)
    return wanted


@dataclass
class Settings:
    db_host: str = "postgres"
    db_port: int = 5432
    db_name: str = "ner11_db"
    db_user: str = "postgres"
    db_password: str = field(default="", repr=False)
    pool_size: int = 10
    max_overflow: int = 20
    models_dir: str = "/app/models"
    version: str = "1.0.0"
    modules: list = field(default_factory=lambda: list(MODULES))
    db_check_interval: float = 2.0
    migration_deadline: int = 60

    @classmethod
    def from_env(cls, env=None):
        env = os.environ if env is None else env
        return cls(
            db_host=env.get("POSTGRES_HOST") or "postgres",
            db_port=_int(env, "POSTGRES_PORT", 5432, 1, 65535),
            db_name=env.get("POSTGRES_DB") or "ner11_db",
            db_user=env.get("POSTGRES_USER") or "postgres",
            db_password=_secret(env, "POSTGRES_PASSWORD"),
            pool_size=_int(env, "DATABASE_POOL_SIZE", 10, 1, 1000),
            max_overflow=_int(env, "DATABASE_MAX_OVERFLOW", 20, 0, 1000),
            models_dir=env.get("NER11_MODELS_DIR") or "/app/models",
            version=env.get("NER11_VERSION") or "1.0.0",
            modules=_modules(env),
            migration_deadline=_int(env, "NER11_MIGRATION_DEADLINE", 60, 1, 86400),
        )
