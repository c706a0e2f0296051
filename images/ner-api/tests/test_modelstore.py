"""Unit tests of the pure model/extraction module (no FastAPI needed).

Run: .venv/bin/python -m pytest images/ner-api/tests
"""

import json
import os
import shutil
import sys

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "app"))

from ner11_api import modelstore  # noqa: E402

DEFAULTS = os.path.join(HERE, "..", "models-default")


@pytest.fixture()
def model_dir(tmp_path):
    root = tmp_path / "models"
    shutil.copytree(DEFAULTS, root)
    modelstore.write_manifest(str(root))
    return root


def test_modelstore_imports_no_fastapi():
    assert "fastapi" not in sys.modules


def test_manifest_shape(model_dir):
    manifest = json.loads((model_dir / "manifest.json").read_text())
    assert manifest["schema"] == 1
    (model,) = manifest["models"]
    assert model["name"] == "ner11-gazetteer"
    (entry,) = model["files"]
    assert entry["path"] == "ner11-gazetteer/model.json"
    assert entry["size"] == (model_dir / entry["path"]).stat().st_size
    assert entry["sha256"] == modelstore.sha256_file(str(model_dir / entry["path"]))


def test_load_and_extract(model_dir):
    result = modelstore.load_models(str(model_dir))
    assert result.loaded, result.error
    assert result.names == ["ner11-gazetteer"]
    text = (
        "Siemens and Schneider Electric PLCs speaking Modbus/TCP and OPC UA at 10.0.0.15 were hit by "
        "Industroyer2 exploiting CVE-2022-38465; see IEC 62443 and NIST CSF. Not an IP: 1.2.3.4.5 or 999.1.1.1."
    )
    ents = result.extract(text)
    got = [(e["label"], e["text"]) for e in ents]
    assert got == [
        ("VENDOR", "Siemens"),
        ("VENDOR", "Schneider Electric"),
        ("PROTOCOL", "Modbus/TCP"),
        ("PROTOCOL", "OPC UA"),
        ("IPV4", "10.0.0.15"),
        ("MALWARE", "Industroyer2"),
        ("CVE", "CVE-2022-38465"),
        ("STANDARD", "IEC 62443"),
        ("STANDARD", "NIST CSF"),
    ]
    for e in ents:
        assert text[e["start"]:e["end"]] == e["text"]


def test_case_insensitive_and_word_boundaries(model_dir):
    result = modelstore.load_models(str(model_dir))
    ents = result.extract("stuxnet hit an abb drive; ABBOTT and Ciscoworks are not vendors")
    assert [(e["label"], e["text"]) for e in ents] == [("MALWARE", "stuxnet"), ("VENDOR", "abb")]


@pytest.mark.parametrize(
    "corrupt, message",
    [
        (lambda d: (d / "ner11-gazetteer" / "model.json").write_text("{}"), "bytes"),
        (lambda d: open(d / "ner11-gazetteer" / "model.json", "r+b").write(b"X"), "sha256"),
        (lambda d: (d / "ner11-gazetteer" / "model.json").unlink(), "missing"),
        (lambda d: (d / "manifest.json").unlink(), "not found"),
        (lambda d: (d / "manifest.json").write_text("not json"), "unreadable"),
    ],
)
def test_corrupt_models_fail_cleanly(model_dir, corrupt, message):
    corrupt(model_dir)
    result = modelstore.load_models(str(model_dir))
    assert not result.loaded
    assert message in result.error
    assert result.names == []
    with pytest.raises(modelstore.ModelError):
        result.extract("Siemens")


def test_manifest_path_escape_rejected(model_dir):
    manifest = json.loads((model_dir / "manifest.json").read_text())
    manifest["models"][0]["files"][0]["path"] = "../etc/passwd"
    (model_dir / "manifest.json").write_text(json.dumps(manifest))
    result = modelstore.load_models(str(model_dir))
    assert not result.loaded and "relative" in result.error


def test_cli(model_dir, capsys):
    assert modelstore.main(["verify", str(model_dir)]) == 0
    assert modelstore.main(["write-manifest", str(model_dir)]) == 0
    (model_dir / "ner11-gazetteer" / "model.json").write_text("{}")
    assert modelstore.main(["verify", str(model_dir)]) == 1
    assert modelstore.main(["bogus"]) == 2
