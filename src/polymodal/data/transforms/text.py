"""Text tokenizers. Byte-level (UTF-8, any language) is the dependency-free default.

Every tokenizer follows the `Tokenizer` protocol: ``encode(text, max_len)`` returns ``bos ... eos`` ids (truncated
so ``eos`` is kept), ``decode`` drops special ids, and ``to_dict()`` / `tokenizer_from_dict` round-trip it through
checkpoint JSON. The ``"kind"`` field names the class explicitly; it is never guessed from the other keys.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from ...errors import ConfigError, InvalidInput, require


@runtime_checkable
class Tokenizer(Protocol):
    """What every text tokenizer provides (and what text encoders may rely on)."""

    pad_id: int
    bos_id: int
    eos_id: int

    @property
    def vocab_size(self) -> int: ...

    def encode(self, text: str, max_len: int | None = None) -> list[int]: ...

    def decode(self, ids: Sequence[int]) -> str: ...

    def to_dict(self) -> dict[str, Any]: ...


def _check_max_len(max_len: int | None) -> None:
    # bos + eos need two positions; a shorter limit cannot produce a well-formed sequence.
    if max_len is not None and max_len < 2:
        raise InvalidInput(f"max_len must be >= 2 (bos + eos), got {max_len}", field="max_len")


def _check_kind(d: dict[str, Any], kind: str) -> None:
    if d.get("kind") != kind:
        raise ConfigError(f"expected kind {kind!r}, got {d.get('kind')!r}", field="tokenizer.kind")


class ByteTokenizer:
    """UTF-8 bytes shifted by the special ids: 0 pad, 1 bos, 2 eos; byte b -> b + 3 (vocab 259).

    Handles every language; a Chinese character costs 3 tokens. Truncation cuts at a character boundary so a
    truncated sequence still decodes to valid text.
    """

    pad_id, bos_id, eos_id = 0, 1, 2
    vocab_size = 259
    _offset = 3

    def encode(self, text: str, max_len: int | None = None) -> list[int]:
        _check_max_len(max_len)
        data = text.encode("utf-8")
        if max_len is not None and len(data) + 2 > max_len:
            cut = max_len - 2
            # 0b10xxxxxx bytes continue a multi-byte character: back off to the character's first byte.
            while cut > 0 and (data[cut] & 0xC0) == 0x80:
                cut -= 1
            data = data[:cut]
        return [self.bos_id] + [b + self._offset for b in data] + [self.eos_id]

    def decode(self, ids: Sequence[int]) -> str:
        raw = bytes(int(i) - self._offset for i in ids if self._offset <= int(i) < self.vocab_size)
        return raw.decode("utf-8", errors="replace")

    def to_dict(self) -> dict[str, Any]:
        return {"kind": "byte"}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ByteTokenizer:
        _check_kind(d, "byte")
        return cls()

    def __eq__(self, other: object) -> bool:
        return isinstance(other, ByteTokenizer)

    def __hash__(self) -> int:
        return hash("byte")

    def __repr__(self) -> str:
        return "ByteTokenizer()"


class CharTokenizer:
    """Character-level tokenizer with a vocabulary fitted from texts.

    Ids: 0 pad, 1 bos, 2 eos, 3 unk, then the characters (most frequent first). A Chinese character is one token
    (a third of its byte length); with ``lowercase=True`` English is lowercased before lookup (Chinese is unaffected).
    """

    pad_id, bos_id, eos_id, unk_id = 0, 1, 2, 3
    _n_special = 4

    def __init__(self, chars: Sequence[str], lowercase: bool = False):
        if any(not isinstance(c, str) or len(c) != 1 for c in chars):
            raise ConfigError("every vocabulary entry must be a single character", field="tokenizer.chars")
        if len(set(chars)) != len(chars):
            raise ConfigError("vocabulary has duplicate characters", field="tokenizer.chars")
        self.chars: tuple[str, ...] = tuple(chars)
        self.lowercase = bool(lowercase)
        self._index = {c: i + self._n_special for i, c in enumerate(self.chars)}

    @classmethod
    def fit(cls, texts: Iterable[str], min_freq: int = 1, max_size: int | None = None,
            lowercase: bool = False) -> CharTokenizer:
        """Vocabulary of characters seen at least ``min_freq`` times, at most ``max_size`` of them (the most
        frequent; ties broken by code point so the result does not depend on input order)."""
        if min_freq < 1:
            raise ConfigError(f"min_freq must be >= 1, got {min_freq}", field="min_freq")
        if max_size is not None and max_size < 0:
            raise ConfigError(f"max_size must be >= 0, got {max_size}", field="max_size")
        counts: Counter[str] = Counter()
        for t in texts:
            counts.update(t.lower() if lowercase else t)
        kept = sorted((c for c, n in counts.items() if n >= min_freq), key=lambda c: (-counts[c], c))
        if max_size is not None:
            kept = kept[:max_size]
        return cls(kept, lowercase=lowercase)

    @property
    def vocab_size(self) -> int:
        return self._n_special + len(self.chars)

    def encode(self, text: str, max_len: int | None = None) -> list[int]:
        _check_max_len(max_len)
        if self.lowercase:
            text = text.lower()
        body = [self._index.get(c, self.unk_id) for c in text]
        if max_len is not None:
            body = body[: max_len - 2]
        return [self.bos_id] + body + [self.eos_id]

    def decode(self, ids: Sequence[int]) -> str:
        out = []
        for i in ids:
            i = int(i)
            if i == self.unk_id:
                out.append("\ufffd")  # same replacement character the byte tokenizer produces
            elif self._n_special <= i < self.vocab_size:
                out.append(self.chars[i - self._n_special])
        return "".join(out)

    def to_dict(self) -> dict[str, Any]:
        return {"kind": "char", "chars": list(self.chars), "lowercase": self.lowercase}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> CharTokenizer:
        _check_kind(d, "char")
        if not isinstance(d.get("chars"), list):
            raise ConfigError("missing list 'chars'", field="tokenizer.chars")
        return cls(d["chars"], lowercase=bool(d.get("lowercase", False)))

    def __eq__(self, other: object) -> bool:
        return isinstance(other, CharTokenizer) and (self.chars, self.lowercase) == (other.chars, other.lowercase)

    def __hash__(self) -> int:
        return hash((self.chars, self.lowercase))

    def __repr__(self) -> str:
        return f"CharTokenizer(<{len(self.chars)} chars>, lowercase={self.lowercase})"


PKG_SCHEME = "pkg://"


def resolve_tokenizer_path(path: str) -> Path:
    """A directory, or ``pkg://<module>/<sub/dir>``: a directory inside an installed package (e.g. the
    packaged MiniLM), found wherever that package is installed. Checkpoints store the marker, not the
    absolute site-packages path, so a run trained on one machine loads on another."""
    if not path.startswith(PKG_SCHEME):
        return Path(path)
    import importlib.util

    module, _, sub = path[len(PKG_SCHEME):].partition("/")
    try:
        spec = importlib.util.find_spec(module) if module else None
    except (ImportError, ValueError):
        spec = None
    roots = list(spec.submodule_search_locations or []) if spec is not None else []
    if not roots:
        raise InvalidInput(f"package {module!r} is not installed", field="tokenizer.path", source=path)
    return Path(roots[0]) / sub


class HFTokenizer:
    """A Hugging Face tokenizer loaded from a local directory (``local_files_only``; never downloads).

    The hook for pretrained text towers: ids are the tokenizer's own (e.g. BERT ``[CLS] ... [SEP]``), so
    bos/eos fall back to cls/sep where a tokenizer has no bos/eos. Needs the ``[hf]`` extra.
    """

    def __init__(self, path: str | Path):
        self.path = str(path)  # kept as given (a ``pkg://`` marker stays one), so checkpoints stay portable
        local = resolve_tokenizer_path(self.path)
        if not local.is_dir():
            raise InvalidInput("tokenizer directory does not exist", field="tokenizer.path", source=str(local))
        transformers = require("transformers", "hf")
        self._tok = transformers.AutoTokenizer.from_pretrained(str(local), local_files_only=True)
        t = self._tok
        self.bos_id = _first_id(t.bos_token_id, t.cls_token_id, default=None)
        self.eos_id = _first_id(t.eos_token_id, t.sep_token_id, default=None)
        self.pad_id = _first_id(t.pad_token_id, self.eos_id, default=0)

    @property
    def vocab_size(self) -> int:
        return len(self._tok)

    def encode(self, text: str, max_len: int | None = None) -> list[int]:
        _check_max_len(max_len)
        # truncation=True with add_special_tokens keeps the closing special token (eos/sep) at the end.
        enc = self._tok(text, add_special_tokens=True, truncation=max_len is not None, max_length=max_len)
        return list(enc["input_ids"])

    def decode(self, ids: Sequence[int]) -> str:
        return str(self._tok.decode([int(i) for i in ids], skip_special_tokens=True))

    def to_dict(self) -> dict[str, Any]:
        return {"kind": "hf", "path": self.path}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> HFTokenizer:
        _check_kind(d, "hf")
        if not isinstance(d.get("path"), str):
            raise ConfigError("missing string 'path'", field="tokenizer.path")
        return cls(d["path"])

    def __eq__(self, other: object) -> bool:
        return isinstance(other, HFTokenizer) and self.path == other.path

    def __hash__(self) -> int:
        return hash(("hf", self.path))

    def __repr__(self) -> str:
        return f"HFTokenizer({self.path!r})"


class OpenClipTokenizer:
    """open_clip's ``SimpleTokenizer`` (the OpenAI CLIP byte-level BPE shipped inside the ``open_clip`` package),
    for OpenCLIP towers. ``encode`` returns open_clip's own ids (``<start_of_text> ... <end_of_text>``, truncated
    with the end token kept) without its zero padding. ``options`` are the model config's ``tokenizer_kwargs``.
    Needs the ``[openclip]`` extra."""

    pad_id = 0  # open_clip pads with zeros

    def __init__(self, context_length: int = 77, options: dict[str, Any] | None = None):
        self.context_length = int(context_length)
        self.options = dict(options or {})
        open_clip = require("open_clip", "openclip")
        self._tok = open_clip.SimpleTokenizer(context_length=self.context_length, **self.options)
        self.bos_id = int(self._tok.sot_token_id)
        self.eos_id = int(self._tok.eot_token_id)

    @property
    def vocab_size(self) -> int:
        return len(self._tok.encoder)

    def encode(self, text: str, max_len: int | None = None) -> list[int]:
        _check_max_len(max_len)
        n = self.context_length if max_len is None else min(int(max_len), self.context_length)
        row = [int(i) for i in self._tok([text], context_length=n)[0]]
        end = len(row) - 1 - row[::-1].index(self.eos_id)  # the last end token; zeros after it are padding
        return row[: end + 1]

    def decode(self, ids: Sequence[int]) -> str:
        kept = [int(i) for i in ids if int(i) not in (self.bos_id, self.eos_id)]
        return str(self._tok.decode(kept)).strip()

    def to_dict(self) -> dict[str, Any]:
        return {"kind": "open_clip", "context_length": self.context_length, "options": dict(self.options)}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> OpenClipTokenizer:
        _check_kind(d, "open_clip")
        options = d.get("options") or {}
        if not isinstance(options, dict):
            raise ConfigError("'options' must be an object", field="tokenizer.options")
        return cls(int(d.get("context_length", 77)), options)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, OpenClipTokenizer) and self.to_dict() == other.to_dict()

    def __hash__(self) -> int:
        return hash(("open_clip", self.context_length, repr(sorted(self.options.items()))))

    def __repr__(self) -> str:
        return f"OpenClipTokenizer(context_length={self.context_length})"


def _first_id(*candidates: int | None, default: int | None) -> Any:
    for c in candidates:
        if c is not None:
            return int(c)
    return default


_KINDS: dict[str, Any] = {"byte": ByteTokenizer, "char": CharTokenizer, "hf": HFTokenizer,
                          "open_clip": OpenClipTokenizer}


def tokenizer_from_dict(d: dict[str, Any]) -> Tokenizer:
    """Rebuild any tokenizer from its ``to_dict()`` output (dispatch on the explicit ``"kind"``)."""
    if not isinstance(d, dict) or d.get("kind") not in _KINDS:
        got = d.get("kind") if isinstance(d, dict) else d
        raise ConfigError(f"unknown tokenizer kind {got!r}; expected one of {sorted(_KINDS)}",
                          field="tokenizer.kind")
    tok: Tokenizer = _KINDS[d["kind"]].from_dict(d)
    return tok
