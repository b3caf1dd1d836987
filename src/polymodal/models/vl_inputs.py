"""What the vision-language encoders (`vl_encoder`) read: visual tokens and text tokens.

Visual tokens come in two kinds (``visual: "regions" | "patches"``):

- ``regions`` play the role Faster R-CNN plays for VisualBERT/ViLBERT/LXMERT: `shapes` knows every object's box
  (``metadata["objects"][i]["box"]``, fractions of the side), so each object is cropped from the picture
  (bilinear, ``crop`` x ``crop`` pixels, with a 10% margin) and a global region (the whole picture) comes first,
  as ViLBERT's ``<IMG>`` token does. A region's class label (``"color shape"``) is the target of masked-region
  classification. Samples without boxes get the global region only.
- ``patches``: the picture cut into ``patch`` x ``patch`` squares (ViT's input); a patch's label is the object whose
  box holds the patch centre (the first such object), else background.

Each visual token carries its pixels (what the model's stem embeds), its box ``[x0, y0, x1, y1, area]`` (the
position input), a validity flag, its label id (-100 unknown, 0 background) and a fixed, untrained target for
masked-region feature regression: the token's pixels average-pooled to 4 x 4 (an MAE-style target; the originals
regress the detector's features, which we do not have).

Text: ``<s> text </s>`` with the BPE of `polymodal.lm.tokenizer` (``<s>`` acts as [CLS], ``</s>`` as [SEP]); the
[MASK] id is ``vocab_size`` (one embedding row past the BPE vocabulary, so the tokenizer needs no new special).
`word_spans` finds which tokens spell a word (for the pointing game)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from ..errors import InvalidInput
from ..lm.tokenizer import BOS, EOS, PAD, TextTokenizer

MARGIN = 0.1  # crop margin around a box, as a fraction of its size
TARGET_GRID = 4  # masked-region regression target: pixels pooled to 4 x 4
BACKGROUND = 0  # label id of "no object" (patches outside every box)
IGNORE = -100


@dataclass
class VisualTokens:
    pixels: torch.Tensor  # (B, K, 3, c, c) each token's pixels (normalised like the picture)
    boxes: torch.Tensor  # (B, K, 5) x0, y0, x1, y1, area (fractions)
    valid: torch.Tensor  # (B, K) bool
    labels: torch.Tensor  # (B, K) long: label id, 0 background, -100 unknown
    targets: torch.Tensor  # (B, K, 3 * 4 * 4) masked-region regression targets
    image: torch.Tensor  # (B, 3, S, S) the pictures (patch-based families embed them themselves)

    @property
    def count(self) -> int:
        return int(self.pixels.shape[1])


def region_label(obj: dict[str, Any], classes: Sequence[str]) -> int:
    """The label id of an object (1-based index in ``classes``; -100 when its class is not known)."""
    name = f"{obj.get('color', '')} {obj.get('shape', '')}".strip()
    try:
        return classes.index(name) + 1
    except ValueError:
        return IGNORE


def _with_area(boxes: torch.Tensor) -> torch.Tensor:
    area = (boxes[..., 2] - boxes[..., 0]).clamp(min=0) * (boxes[..., 3] - boxes[..., 1]).clamp(min=0)
    return torch.cat([boxes, area.unsqueeze(-1)], dim=-1)


def _crop(images: torch.Tensor, boxes: torch.Tensor, size: int) -> torch.Tensor:
    """Bilinear crops: images (B, 3, S, S), boxes (B, K, 4) fractions -> (B, K, 3, size, size)."""
    b, k = boxes.shape[:2]
    x0, y0, x1, y1 = boxes.unbind(-1)
    w, h = (x1 - x0) * (1 + 2 * MARGIN), (y1 - y0) * (1 + 2 * MARGIN)
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    theta = torch.zeros(b, k, 2, 3, dtype=images.dtype, device=images.device)
    theta[..., 0, 0], theta[..., 0, 2] = w, cx * 2 - 1
    theta[..., 1, 1], theta[..., 1, 2] = h, cy * 2 - 1
    src = images.unsqueeze(1).expand(b, k, *images.shape[1:]).reshape(b * k, *images.shape[1:])
    grid = F.affine_grid(theta.reshape(b * k, 2, 3), [b * k, images.shape[1], size, size], align_corners=False)
    out = F.grid_sample(src, grid, mode="bilinear", padding_mode="border", align_corners=False)
    return out.view(b, k, images.shape[1], size, size)


def _targets(pixels: torch.Tensor) -> torch.Tensor:
    b, k = pixels.shape[:2]
    pooled = F.adaptive_avg_pool2d(pixels.flatten(0, 1), TARGET_GRID)
    return pooled.reshape(b, k, -1)


def region_tokens(images: torch.Tensor, metadata: Sequence[dict[str, Any]], classes: Sequence[str],
                  max_regions: int, crop: int) -> VisualTokens:
    """The global region + up to ``max_regions - 1`` object regions per picture."""
    b = images.shape[0]
    boxes = torch.zeros(b, max_regions, 4)
    boxes[:, 0] = torch.tensor([0.0, 0.0, 1.0, 1.0])
    valid = torch.zeros(b, max_regions, dtype=torch.bool)
    valid[:, 0] = True
    labels = torch.full((b, max_regions), IGNORE, dtype=torch.long)
    for i, meta in enumerate(metadata):
        objects = [o for o in (meta.get("objects") or []) if isinstance(o, dict) and o.get("box") is not None]
        for j, obj in enumerate(objects[:max_regions - 1], start=1):
            box = obj["box"]
            if not (isinstance(box, list | tuple) and len(box) == 4):
                raise InvalidInput(f"expected [x0, y0, x1, y1], got {box!r}", field=f"metadata.objects[{j - 1}].box")
            boxes[i, j] = torch.tensor([float(v) for v in box])
            valid[i, j] = True
            labels[i, j] = region_label(obj, classes)
    boxes = boxes.to(images.device)
    pixels = _crop(images, boxes, crop) * valid.to(images.device)[..., None, None, None]
    return VisualTokens(pixels, _with_area(boxes), valid.to(images.device), labels.to(images.device),
                        _targets(pixels), images)


def patch_tokens(images: torch.Tensor, metadata: Sequence[dict[str, Any]], classes: Sequence[str],
                 patch: int) -> VisualTokens:
    """The picture's ``patch`` x ``patch`` squares, row-major, labelled by the object over their centre."""
    b, c, s, _ = images.shape
    g = s // patch
    pixels = images.unfold(2, patch, patch).unfold(3, patch, patch)  # B, C, g, g, p, p
    pixels = pixels.permute(0, 2, 3, 1, 4, 5).reshape(b, g * g, c, patch, patch)
    edges = torch.arange(g, dtype=torch.float32) / g
    y0, x0 = torch.meshgrid(edges, edges, indexing="ij")
    boxes = torch.stack([x0, y0, x0 + 1 / g, y0 + 1 / g], -1).reshape(1, g * g, 4).expand(b, -1, -1)
    centres = (boxes[..., :2] + boxes[..., 2:]) / 2
    labels = torch.full((b, g * g), BACKGROUND, dtype=torch.long)
    for i, meta in enumerate(metadata):
        for obj in reversed([o for o in (meta.get("objects") or []) if isinstance(o, dict) and o.get("box")]):
            x_0, y_0, x_1, y_1 = (float(v) for v in obj["box"])
            inside = ((centres[i, :, 0] >= x_0) & (centres[i, :, 0] <= x_1) & (centres[i, :, 1] >= y_0)
                      & (centres[i, :, 1] <= y_1))
            labels[i, inside] = region_label(obj, classes)
    valid = torch.ones(b, g * g, dtype=torch.bool, device=images.device)
    return VisualTokens(pixels, _with_area(boxes.to(images.device)), valid, labels.to(images.device),
                        _targets(pixels), images)


def encode_texts(tok: TextTokenizer, texts: Sequence[str], max_len: int, device: torch.device
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """(ids (B, L), attention mask (B, L) long): ``<s> text </s>`` cut to ``max_len`` (``</s>`` kept)."""
    seqs = [[BOS] + tok.encode(t)[:max_len - 2] + [EOS] for t in texts]
    n = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), n), PAD, dtype=torch.long)
    mask = torch.zeros((len(seqs), n), dtype=torch.long)
    for i, s in enumerate(seqs):
        ids[i, :len(s)] = torch.tensor(s)
        mask[i, :len(s)] = 1
    return ids.to(device), mask.to(device)


def word_spans(tok: TextTokenizer, text: str, words: Sequence[str]) -> dict[str, list[int]]:
    """For each word that occurs exactly once in ``text`` (as a whole word), the positions of the tokens that
    spell it in ``encode_texts``' sequence (offset 1 for ``<s>``)."""
    enc = tok.tok.encode(text)
    lowered = text.lower()
    out: dict[str, list[int]] = {}
    for word in words:
        starts = [i for i in range(len(lowered)) if lowered.startswith(word, i)
                  and (i == 0 or not lowered[i - 1].isalnum())
                  and (i + len(word) == len(lowered) or not lowered[i + len(word)].isalnum())]
        if len(starts) != 1:
            continue
        a, z = starts[0], starts[0] + len(word)
        pos = [j + 1 for j, (s, e) in enumerate(enc.offsets) if s < z and e > a]
        if pos:
            out[word] = pos
    return out


__all__ = ["BACKGROUND", "IGNORE", "VisualTokens", "encode_texts", "patch_tokens", "region_label",
           "region_tokens", "word_spans"]
