"""Text tokenizers. Byte-level (UTF-8, any language) is the dependency-free default."""

from __future__ import annotations


class ByteTokenizer:
    """UTF-8 bytes shifted by the special ids: 0 pad, 1 bos, 2 eos; byte b -> b + 3 (vocab 259)."""

    pad_id, bos_id, eos_id = 0, 1, 2
    vocab_size = 259

    def encode(self, text: str, max_len: int | None = None) -> list[int]:
        ids = [self.bos_id] + [b + 3 for b in text.encode("utf-8")] + [self.eos_id]
        if max_len is not None and len(ids) > max_len:
            ids = ids[: max_len - 1] + [self.eos_id]
        return ids

    def decode(self, ids: list[int]) -> str:
        return bytes(i - 3 for i in ids if i >= 3).decode("utf-8", errors="replace")
