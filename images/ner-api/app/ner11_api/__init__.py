"""The NER11 reference API (see images/ner-api/README.md)."""

__all__ = ["modelstore"]
