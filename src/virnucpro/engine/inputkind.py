"""Does the input suit the model? DNABERT-S refuses proteins; ESM-2 warns on DNA (seqtype.py).

The result goes to run.json as ``input_check`` (letters, A/C/G/T/N fraction, trailing stops
stripped, warnings).
"""

from __future__ import annotations

import logging

from virnucpro.io.seqtype import refusal, scan_store
from virnucpro.models.base import EmbedderSpec

log = logging.getLogger("virnucpro.engine")


def check_input_kind(index, spec: EmbedderSpec) -> dict:
    """Raise InputError for a protein record given to DNABERT-S; return the report section."""
    comp = scan_store(index.root)
    if spec.family == "dnabert_s" and comp.not_nucleotide:
        p = comp.first_not_nucleotide
        path = index.files[int(index.file_index[p])].path
        raise refusal(path, index.ids[p], f"line {int(index.lines[p])}")
    warnings = []
    if spec.family == "esm2" and comp.dna_like:
        warnings.append(
            f"the input looks like DNA/RNA ({comp.acgtn_fraction:.0%} of its letters are A, C, "
            f"G, T or N) but {spec.name} is a protein model: the vectors are those of "
            "nonsense proteins. For nucleotides use a DNABERT-S model or `virnucpro predict`"
        )
    for warning in warnings:
        log.warning("%s", warning)
    return {
        "letters": comp.letters,
        "acgtn_fraction": round(comp.acgtn_fraction, 6),
        "trailing_stops_stripped": comp.trailing_stops if spec.family == "esm2" else 0,
        "warnings": warnings,
    }
