"""Checking an index spec before anything is built: ``auto``, a named kind, or a FAISS factory string.

FAISS allocates some structures the moment a factory string is built (a PQ codebook of 2^nbits x d floats, one
list per IVF centroid), and trains others later; ``PQ64x24`` at d=128 took 22 s and 8.8 GB just to be
checked. So the parameters that size those structures are read from the string and bounded first, and FAISS
builds the index (to check the rest of the grammar) only once they are known to be small:

- every count in the string (IVF lists, HNSW links, output dimensions) is at most ``MAX_NUMBER``;
- bits per code of PQ / RQ / LSQ / PRQ / PLSQ / IMI quantizers: at most ``MAX_NBITS``;
- inverted lists (``IVF{n}``, ``IMI{m}x{b}`` = 2^(m b) lists): at most ``MAX_LISTS``;
- the codebooks a quantizer trains (PQ: 2^b x d floats, RQ/LSQ: m 2^b x d): at most ``MAX_CODEBOOK_BYTES``;
- ``PQ{m}``: m divides the dimension it applies to (after a PCA / OPQ / RR transform, the transform's output)."""

from __future__ import annotations

import re
from typing import Any

import faiss

from ..errors import InvalidInput
from .vectors import faiss_metric

NAMED_KINDS = ("flat", "hnsw", "ivf_flat", "ivf_pq")
MAX_SPEC_CHARS = 200
MAX_NUMBER = 1 << 20
MAX_NBITS = 16
MAX_LISTS = 1 << 20
MAX_CODEBOOK_BYTES = 512 << 20

# transforms that change the dimension the next component sees: OPQ{m}[_{d}], PCA{d} (PCAW, PCAR, PCAWR), RR{d}
_TRANSFORM = re.compile(r"^(?:OPQ\d+(?:_(\d+))?|PCAW?R?(\d+)|RR(\d+)|ITQ(\d+)?|L2norm)$")
# quantizers with codebooks: PQ{m}[x{b}], RQ{m}x{b}, LSQ{m}x{b}, PRQ{s}x{m}x{b}, PLSQ{s}x{m}x{b}, IMI{m}x{b}
_QUANTIZER = re.compile(r"(?<![A-Za-z])(PQ|RQ|LSQ|PRQ|PLSQ|IMI)(\d+)(?:x(\d+))?(?:x(\d+))?")
_IVF = re.compile(r"(?<![A-Za-z])IVF(\d+)")


def _fail(spec: str, why: str) -> InvalidInput:
    return InvalidInput(f"index {spec!r}: {why}", field="index")


def _components(spec: str) -> list[str]:
    """The comma-separated parts at the top level (commas inside parentheses belong to their part)."""
    parts, depth, start = [], 0, 0
    for i, ch in enumerate(spec):
        depth += (ch == "(") - (ch == ")")
        if ch == "," and depth == 0:
            parts.append(spec[start:i])
            start = i + 1
    return [*parts, spec[start:]]


def _check_quantizer(spec: str, match: re.Match[str], d: int) -> None:
    kind, a, b, c = match.group(1), int(match.group(2)), match.group(3), match.group(4)
    token = match.group(0)
    if kind in ("PRQ", "PLSQ"):   # {splits}x{m}x{bits}
        m, nbits = (int(b), int(c)) if b and c else (1, 8)
        books = m
    else:
        m, nbits = a, int(b) if b else 8
        books = m if kind in ("RQ", "LSQ") else 1   # a residual / additive codebook spans the whole vector
    if not 1 <= nbits <= MAX_NBITS:
        raise _fail(spec, f"{token} uses {nbits} bits per code; at most {MAX_NBITS} (2^{MAX_NBITS} centroids)")
    if kind == "IMI" and m * nbits > MAX_LISTS.bit_length() - 1:
        raise _fail(spec, f"{token} makes 2^{m * nbits} inverted lists; at most {MAX_LISTS:,}")
    if kind == "PQ" and m and d % m:
        raise _fail(spec, f"{token}: {m} sub-quantizers do not divide the dimension {d}")
    size = books * (1 << nbits) * d * 4
    if size > MAX_CODEBOOK_BYTES:
        raise _fail(spec, f"{token} needs {size / 2**20:,.0f} MiB of codebooks at dimension {d}; "
                          f"at most {MAX_CODEBOOK_BYTES >> 20} MiB")


def check_factory_bounds(spec: str, dim: int) -> None:
    """Raise InvalidInput (field ``index``) when the string asks for more than the bounds in the module doc."""
    if len(spec) > MAX_SPEC_CHARS:
        raise _fail(spec[:40] + "...", f"{len(spec)} characters; at most {MAX_SPEC_CHARS}")
    for number in re.findall(r"\d+", spec):
        if int(number) > MAX_NUMBER:
            raise _fail(spec, f"the number {number} is out of range; counts are at most {MAX_NUMBER:,}")
    d = dim
    for part in _components(spec):
        transform = _TRANSFORM.match(part)
        if transform:
            out = next((g for g in transform.groups() if g), None)
            d = int(out) if out else d
            continue
        for ivf in _IVF.finditer(part):
            if int(ivf.group(1)) > MAX_LISTS:
                raise _fail(spec, f"IVF{ivf.group(1)} has {int(ivf.group(1)):,} inverted lists; at most {MAX_LISTS:,}")
        for quantizer in _QUANTIZER.finditer(part):
            _check_quantizer(spec, quantizer, max(d, 1))


def check_index_spec(spec: Any, dim: int, metric: str) -> str:
    """A named kind, 'auto', or a FAISS factory string that FAISS accepts for this dim/metric, checked without
    building anything large (see the module doc)."""
    if not isinstance(spec, str) or not spec:
        raise InvalidInput(f"expected 'auto', one of {', '.join(NAMED_KINDS)} or a FAISS factory string, got {spec!r}",
                           field="index")
    if spec == "auto" or spec in NAMED_KINDS:
        return spec
    check_factory_bounds(spec, dim)
    try:
        faiss.index_factory(dim, spec, faiss_metric(metric))   # small now: checks the rest of the grammar
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()[-1] if str(exc).strip() else "rejected"
        raise InvalidInput(f"FAISS cannot build {spec!r} for dim {dim}: {first}", field="index") from None
    return spec
