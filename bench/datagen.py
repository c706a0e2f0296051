"""Generated benchmark data in the bench stack's ``ner11_db``.

* pgbench tables: ``pgbench -i -s <scale>`` inside the postgres container (its own
  binary, local socket). One scale unit is ≈15 MB with indexes.
* NER tables (created by the API image's migration): ``ner_documents`` gets
  ``DOCS_PER_SCALE * scale`` documents of ~85 words of domain vocabulary plus an md5
  reference (text that compresses like prose, not like repeated rows: every document
  is one of 2000 random sentences, far more than gzip's 32 kB window), and
  ``ner_entities`` 4 entities per document.

scale 5 ≈ 110 MB and scale 50 ≈ 1.1 GB in total (``pg_database_size``).
"""

from __future__ import annotations

from benchlib import psql, sh

DOCS_PER_SCALE = 5000
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


def generate(stack, scale, log=print):
    """Fill ner11_db; returns {"scale", "db_bytes", "rows": {...}}."""
    container = stack.container("postgres")
    db = stack.model["db_name"]
    log("datagen: pgbench -i -s %d" % scale)
    sh("docker exec -u postgres %s pgbench -i -q -s %d %s" % (container, scale, db), timeout=3600)
    ndocs = DOCS_PER_SCALE * scale
    log("datagen: %d NER documents, %d entities" % (ndocs, 4 * ndocs))
    psql(stack, ner_sql(ndocs))
    psql(stack, "CHECKPOINT;")
    return describe(stack, scale)


def describe(stack, scale=None, db=None):
    counts = psql(
        stack,
        "SELECT pg_database_size(current_database()), (SELECT count(*) FROM pgbench_accounts), "
        "(SELECT count(*) FROM ner_documents), (SELECT count(*) FROM ner_entities);",
        db=db,
    ).split("|")
    return {
        "scale": scale,
        "db_bytes": int(counts[0]),
        "rows": {"pgbench_accounts": int(counts[1]), "ner_documents": int(counts[2]), "ner_entities": int(counts[3])},
    }
