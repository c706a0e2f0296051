"""Generated benchmark data in the bench stack's ``ner11_db``.

* pgbench tables: ``pgbench -i -s <scale>`` inside the postgres container (its own
  binary, local socket). One scale unit is ≈15 MB with indexes.
* NER tables (created by the API image's migration): ``ner_documents`` gets
  ``DOCS_PER_SCALE * scale`` documents of ~85 words of domain vocabulary plus an md5
  reference (text that compresses like prose, not like repeated rows: every document
  is one of 2000 random sentences, far more than gzip's 32 kB window), and
  ``ner_entities`` 4 entities per document.

scale 5 ≈ 110 MB and scale 50 ≈ 1.1 GB in total (``pg_database_size``).

Two profiles (``PROFILES``): ``compressible`` is the above (blank-padded pgbench rows and a small
vocabulary compress very well); ``incompressible`` replaces them with log-like rows that compress
like real operational data - timestamps, host names, md5 text, jsonb with random numbers and a
float table (``bench_events``, ``bench_metrics``), about the same ``pg_database_size`` per scale.
"""

from __future__ import annotations

from benchlib import psql, sh

DOCS_PER_SCALE = 5000
EVENTS_PER_SCALE = 110000
METRICS_PER_SCALE = 100000
PROFILES = ("compressible", "incompressible")
_VOCABULARY = (
    "Siemens SIMATIC S7-1500 PLC firmware Modbus TCP DNP3 IEC-61850 Schneider Modicon M580 Rockwell ControlLogix "
    "ABB AC800M Honeywell Experion DCS controller Cisco IE3400 Moxa EDR-G903 firewall VPN engineering workstation "
    "HMI historian OPC-UA vulnerability CVE-2024-3400 exploit ransomware phishing lateral movement credential "
    "the a of in on to and with from by was were is are has have detected reported patched advisory vendor "
    "substation pipeline refinery water treatment plant operator network segment zone conduit NIST CSF IEC-62443 "
    "threat actor campaign indicator hash domain address malware loader backdoor beacon command control"
)
WORDS = _VOCABULARY.split()


def ner_sql(ndocs):
    words = "ARRAY[%s]::text[]" % ",".join("'%s'" % w for w in WORDS)
    # constants and an int only: no injection surface
    return """
TRUNCATE ner_documents, ner_entities RESTART IDENTITY;
CREATE TEMP TABLE bench_sentences AS
  SELECT i, (SELECT string_agg(w[1 + floor(random() * array_length(w, 1))::int + 0 * j], ' ')
             FROM generate_series(1, 85) j WHERE j > 0 * i) AS t
  FROM generate_series(0, 1999) i, (SELECT {words} AS w) x;
INSERT INTO ner_documents (text, created_at)
  SELECT s.t || ' ref ' || md5(g::text), now() - make_interval(secs => g)
  FROM generate_series(1, {n}) g JOIN bench_sentences s ON s.i = (g * 7919) % 2000;
INSERT INTO ner_entities (document_id, label, text, start_char, end_char)
  SELECT d, (ARRAY['VENDOR','EQUIPMENT','THREAT','CVE','PROTOCOL'])[1 + (d + k) % 5],
         'entity ' || substr(md5((d * 10 + k)::text), 1, 12), k * 20, k * 20 + 12
  FROM generate_series(1, {n}) d, generate_series(1, 4) k;
VACUUM ANALYZE ner_documents;
VACUUM ANALYZE ner_entities;
""".format(words=words, n=ndocs)  # noqa: S608


# The incompressible profile's two tables, filled (log-like rows: md5 text, jsonb with random
# numbers, floats); bench/profile_backup_restore.py creates them in a bare PostgreSQL too.
INCOMPRESSIBLE_TABLES_SQL = """
CREATE TABLE bench_events (id bigint PRIMARY KEY, at timestamptz, host text, msg text, payload jsonb);
INSERT INTO bench_events
  SELECT g, now() - make_interval(secs => g * random()), 'host-' || (g % 997) || '.site' || (g % 13) || '.example',
         md5(g::text) || ' ' || md5(random()::text),
         jsonb_build_object('v', random(), 'n', (random() * 1e9)::bigint, 'k', md5((g * 3)::text))
  FROM generate_series(1, {events}) g;
CREATE TABLE bench_metrics (id bigint PRIMARY KEY, a float8, b float8, c float8);
INSERT INTO bench_metrics SELECT g, random(), random() * 1e6, random() - 0.5 FROM generate_series(1, {metrics}) g;
"""


def incompressible_tables_sql(scale):
    # constants and an int only: no injection surface
    return INCOMPRESSIBLE_TABLES_SQL.format(events=EVENTS_PER_SCALE * scale, metrics=METRICS_PER_SCALE * scale)


def incompressible_sql(scale):
    return (
        """
DROP TABLE IF EXISTS pgbench_accounts, pgbench_branches, pgbench_tellers, pgbench_history, bench_events, bench_metrics;
TRUNCATE ner_documents, ner_entities RESTART IDENTITY;"""
        + incompressible_tables_sql(scale)
        + """VACUUM ANALYZE bench_events;
VACUUM ANALYZE bench_metrics;
"""
    )


def generate(stack, scale, log=print, profile="compressible"):
    """Fill ner11_db with ``profile``; returns {"scale", "db_bytes", "rows": {...}}."""
    container = stack.container("postgres")
    db = stack.model["db_name"]
    if profile == "incompressible":
        log("datagen: incompressible profile, scale %d" % scale)
        psql(stack, incompressible_sql(scale))
        psql(stack, "CHECKPOINT;")
        return describe(stack, scale)
    psql(stack, "DROP TABLE IF EXISTS bench_events, bench_metrics;")
    log("datagen: pgbench -i -s %d" % scale)
    sh("docker exec -u postgres %s pgbench -i -q -s %d %s" % (container, scale, db), timeout=3600)
    ndocs = DOCS_PER_SCALE * scale
    log("datagen: %d NER documents, %d entities" % (ndocs, 4 * ndocs))
    psql(stack, ner_sql(ndocs))
    psql(stack, "CHECKPOINT;")
    return describe(stack, scale)


COUNTED = ("pgbench_accounts", "ner_documents", "ner_entities", "bench_events", "bench_metrics")


def describe(stack, scale=None, db=None):
    """Size and row counts of the tables that exist (a restore check compares them)."""
    parts = ", ".join(
        "(SELECT CASE WHEN to_regclass('%s') IS NULL THEN -1 ELSE "  # noqa: S608 - constant table names
        "(xpath('/row/c/text()', query_to_xml('SELECT count(*) AS c FROM %s', false, true, '')))[1]::text::bigint END)" % (t, t)
        for t in COUNTED
    )
    counts = psql(stack, "SELECT pg_database_size(current_database()), %s;" % parts, db=db).split("|")
    rows = {t: int(c) for t, c in zip(COUNTED, counts[1:], strict=True) if int(c) >= 0}
    return {"scale": scale, "db_bytes": int(counts[0]), "rows": rows}
