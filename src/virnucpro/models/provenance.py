"""What identifies a loaded feature model in a trained classifier: name, revision, checksum."""

from __future__ import annotations

from virnucpro.models.base import EmbedderSpec


def describe(spec: EmbedderSpec) -> dict:
    """``{family, name, revision, sha256}`` of a resolved model (sha256 of its weight files)."""
    return {
        "family": spec.family,
        "name": spec.name,
        "revision": spec.revision,
        "sha256": spec.checksum,
    }


def same_weights(recorded: dict, spec: EmbedderSpec) -> bool:
    """True when ``spec`` has the weights ``recorded`` names (by checksum)."""
    return bool(recorded.get("sha256")) and recorded.get("sha256") == spec.checksum


def label(recorded: dict) -> str:
    """``name (revision R, sha256 S)`` for messages."""
    parts = [f"sha256 {str(recorded.get('sha256'))[:12]}"]
    if recorded.get("revision"):
        parts.insert(0, f"revision {recorded['revision']}")
    return f"{recorded.get('name')} ({', '.join(parts)})"
