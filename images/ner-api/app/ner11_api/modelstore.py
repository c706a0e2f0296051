"""Model directory, manifest and entity extraction for the NER11 API.

Plain Python (standard library only, no FastAPI): unit-tested on the host.

A model directory holds ``manifest.json``::

    {"schema": 1,
     "models": [{"name": "ner11-gazetteer", "version": "1.0.0",
                 "files": [{"path": "ner11-gazetteer/model.json",
                            "sha256": "...", "size": 1234}]}]}

and the files it lists. ``load_models(dir)`` verifies every file's size and sha256,
parses each model's ``model.json`` (a gazetteer + regex model) and compiles it.
Any missing or corrupt file makes the whole load fail with a one-line error: the API
then reports ``models_loaded: false`` and keeps serving.

CLI (used at image build time and by tests)::

    python3 -m ner11_api.modelstore write-manifest DIR   # (re)write DIR/manifest.json
    python3 -m ner11_api.modelstore verify DIR           # exit 1 with the error
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import sys
import time

MANIFEST = "manifest.json"
MODEL_FILE = "model.json"
SCHEMA = 1

log = logging.getLogger("ner11.models")


class ModelError(Exception):
    """A model directory, manifest or model file is missing, corrupt or invalid."""


def sha256_file(path, chunk=1 << 20):
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(chunk), b""):
            digest.update(block)
    return digest.hexdigest()


def _safe_join(root, rel):
    if not isinstance(rel, str) or not rel or os.path.isabs(rel) or ".." in rel.replace("\\", "/").split("/"):
        raise ModelError("manifest path %r must be relative and stay inside the model directory" % (rel,))
    return os.path.join(root, rel)


def build_manifest(root):
    """Return the manifest for every model directory (one holding model.json) under root."""
    models = []
    for entry in sorted(os.listdir(root)):
        model_dir = os.path.join(root, entry)
        model_path = os.path.join(model_dir, MODEL_FILE)
        if not os.path.isfile(model_path):
            continue
        with open(model_path, encoding="utf-8") as handle:
            spec = json.load(handle)
        files = []
        for dirpath, dirnames, filenames in os.walk(model_dir):
            dirnames[:] = sorted(d for d in dirnames if d != "__pycache__")
            for name in sorted(filenames):
                if name.endswith(".pyc"):
                    continue
                full = os.path.join(dirpath, name)
                files.append(
                    {
                        "path": os.path.relpath(full, root).replace(os.sep, "/"),
                        "sha256": sha256_file(full),
                        "size": os.path.getsize(full),
                    }
                )
        models.append({"name": spec.get("name", entry), "version": str(spec.get("version", "0")), "files": files})
    return {"schema": SCHEMA, "models": models}


def write_manifest(root):
    manifest = build_manifest(root)
    tmp = os.path.join(root, MANIFEST + ".tmp")
    with open(tmp, "w", encoding="utf-8") as handle:
        json.dump(manifest, handle, indent=2, sort_keys=True)
        handle.write("\n")
    os.replace(tmp, os.path.join(root, MANIFEST))
    return manifest


def read_manifest(root):
    path = os.path.join(root, MANIFEST)
    try:
        with open(path, encoding="utf-8") as handle:
            manifest = json.load(handle)
    except FileNotFoundError:
        raise ModelError("%s not found" % path) from None
    except (OSError, ValueError) as exc:
        raise ModelError("%s is unreadable: %s" % (path, exc)) from None
    if not isinstance(manifest, dict) or manifest.get("schema") != SCHEMA:
        raise ModelError("%s: unsupported schema %r (expected %d)" % (path, manifest.get("schema") if isinstance(manifest, dict) else None, SCHEMA))
    models = manifest.get("models")
    if not isinstance(models, list) or not models:
        raise ModelError("%s lists no models" % path)
    for model in models:
        if not isinstance(model, dict) or not model.get("name") or not isinstance(model.get("files"), list):
            raise ModelError("%s: every model needs a name and a files list" % path)
    return manifest


def verify_files(root, model):
    """Check size and sha256 of every file of one manifest entry."""
    for item in model["files"]:
        if not isinstance(item, dict):
            raise ModelError("model %s: bad file entry %r" % (model["name"], item))
        path = _safe_join(root, item.get("path"))
        if not os.path.isfile(path):
            raise ModelError("model %s: file %s is missing" % (model["name"], item["path"]))
        size = os.path.getsize(path)
        if size != item.get("size"):
            raise ModelError(
                "model %s: file %s has %d bytes, manifest says %s" % (model["name"], item["path"], size, item.get("size"))
            )
        digest = sha256_file(path)
        if digest != item.get("sha256"):
            raise ModelError("model %s: file %s fails its sha256 check" % (model["name"], item["path"]))


class GazetteerModel:
    """Longest-match gazetteer + regex entity extractor."""

    def __init__(self, spec, name=None):
        if not isinstance(spec, dict):
            raise ModelError("model definition must be a JSON object")
        self.name = name or spec.get("name") or "unnamed"
        self.version = str(spec.get("version", "0"))
        flags = 0 if spec.get("case_sensitive") else re.IGNORECASE
        self._patterns = []  # (label, compiled regex)
        gazetteer = spec.get("gazetteer") or {}
        patterns = spec.get("patterns") or {}
        if not isinstance(gazetteer, dict) or not isinstance(patterns, dict):
            raise ModelError("model %s: gazetteer and patterns must be objects" % self.name)
        for label, terms in sorted(gazetteer.items()):
            if not isinstance(terms, list) or not all(isinstance(t, str) and t.strip() for t in terms):
                raise ModelError("model %s: gazetteer %s must be a list of non-empty strings" % (self.name, label))
            alternatives = [
                r"\s+".join(re.escape(word) for word in term.split())
                for term in sorted(set(terms), key=lambda t: (-len(t), t))
            ]
            regex = r"(?<!\w)(?:%s)(?!\w)" % "|".join(alternatives)
            self._patterns.append((label, re.compile(regex, flags)))
        for label, regex in sorted(patterns.items()):
            try:
                self._patterns.append((label, re.compile(regex, flags)))
            except (re.error, TypeError) as exc:
                raise ModelError("model %s: pattern %s does not compile: %s" % (self.name, label, exc)) from None
        if not self._patterns:
            raise ModelError("model %s defines no gazetteer entries or patterns" % self.name)
        self.labels = sorted({label for label, _ in self._patterns})

    @property
    def pattern_count(self):
        return len(self._patterns)

    def extract(self, text):
        """Entities as dicts {label, text, start, end}, non-overlapping, in text order.

        Overlaps are resolved by preferring the longest match, then the earliest.
        """
        candidates = []
        for label, regex in self._patterns:
            for match in regex.finditer(text):
                if match.end() > match.start():
                    candidates.append((match.start(), match.end(), label))
        candidates.sort(key=lambda c: (-(c[1] - c[0]), c[0], c[2]))
        taken = []
        for start, end, label in candidates:
            if all(end <= s or start >= e for s, e, _ in taken):
                taken.append((start, end, label))
        taken.sort()
        return [{"label": label, "text": text[start:end], "start": start, "end": end} for start, end, label in taken]


class ModelSet:
    """The result of loading a model directory (possibly failed)."""

    def __init__(self, models=None, error=None, load_time_seconds=0.0, directory=""):
        self.models = models or []
        self.error = error
        self.load_time_seconds = load_time_seconds
        self.directory = directory

    @property
    def loaded(self):
        return bool(self.models) and self.error is None

    @property
    def names(self):
        return [m.name for m in self.models]

    def extract(self, text):
        if not self.loaded:
            raise ModelError(self.error or "no model loaded")
        entities = []
        for model in self.models:
            entities.extend(model.extract(text))
        entities.sort(key=lambda e: (e["start"], e["end"]))
        return entities


def load_models(root):
    """Load every model of the manifest in root; never raises."""
    started = time.monotonic()
    models = []
    error = None
    try:
        manifest = read_manifest(root)
        for entry in manifest["models"]:
            log.info("Loading model %s", entry["name"])
            verify_files(root, entry)
            spec_files = [f["path"] for f in entry["files"] if f["path"].rsplit("/", 1)[-1] == MODEL_FILE]
            if len(spec_files) != 1:
                raise ModelError("model %s: the manifest must list exactly one %s" % (entry["name"], MODEL_FILE))
            try:
                with open(_safe_join(root, spec_files[0]), encoding="utf-8") as handle:
                    spec = json.load(handle)
            except (OSError, ValueError) as exc:
                raise ModelError("model %s: %s is not valid JSON: %s" % (entry["name"], spec_files[0], exc)) from None
            model = GazetteerModel(spec, name=entry["name"])
            models.append(model)
            log.info(
                "Model loaded %s (version %s, %d patterns, labels %s)",
                model.name, model.version, model.pattern_count, ",".join(model.labels),
            )
    except ModelError as exc:
        error = str(exc)
    except Exception as exc:  # noqa: BLE001 - any surprise must not stop the API
        error = "unexpected %s: %s" % (type(exc).__name__, exc)
    elapsed = round(time.monotonic() - started, 4)
    if error:
        log.error("Model loading failed: %s", error)
        return ModelSet([], error, elapsed, root)
    return ModelSet(models, None, elapsed, root)


def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    if len(argv) != 2 or argv[0] not in ("write-manifest", "verify"):
        print("usage: python3 -m ner11_api.modelstore {write-manifest|verify} DIR", file=sys.stderr)
        return 2
    command, root = argv
    if command == "write-manifest":
        manifest = write_manifest(root)
        print("wrote %s (%d models)" % (os.path.join(root, MANIFEST), len(manifest["models"])))
        return 0
    result = load_models(root)
    if not result.loaded:
        print("error: %s" % result.error, file=sys.stderr)
        return 1
    print("ok: %s" % ", ".join(result.names))
    return 0


if __name__ == "__main__":
    sys.exit(main())
