"""``arch: "vl_encoder"``: the vision-language encoder families of the field (`vl_backbones`: VisualBERT, LXMERT,
ViLBERT, ALBEF/BLIP) with their pretraining objectives and task heads, trained by our trainer.

Objectives (``objectives``: name -> weight; `polymodal.losses`):

- ``itm`` image-text matching: the joint vector -> matched / not. Negatives: for ``blip``, ALBEF's hard
  negatives (a text per image and an image per text drawn by the contrastive similarities); for the others a
  caption of another picture drawn uniformly (VisualBERT/LXMERT's random replacement), never an identical text.
- ``mlm`` masked language modelling (BERT's 15%, 80/10/10), ``mrm`` masked region modelling (15% of the
  visual tokens zeroed; regress their pooled pixels and classify their object label: LXMERT's feature regression
  and label classification). For the single/two-stream families one forward over the matched pairs with masked
  text and regions serves MLM and MRM; matching reads the unmasked pairs in a second forward (UNITER).
- ``itc`` (``blip`` only) image-text contrastive on the unimodal [CLS] vectors, with ALBEF's momentum (EMA)
  teacher, feature queues and momentum distillation (``momentum`` > 0; ``alpha`` the teacher's share, ramped up
  over the first ``alpha_warmup`` steps as ALBEF does over its first epoch, while the teacher tracks the student:
  from scratch a lagging teacher stalls the contrastive loss).

Tasks (``tasks``: name -> weight): ``pretrain`` (the objectives above, on captions) and ``vqa`` (the question
read with the picture, the joint vector -> one of ``max_answers`` answers: VisualBERT/LXMERT's VQA head).
``task_mode: "sum"`` trains every task each step (weighted); ``"sample"`` draws one task per step with
probability proportional to its weight (multi-task learning with task sampling, as 12-in-1 does).

Before step 1, `fit_data` trains the BPE tokenizer on the captions and questions and fixes the region label
classes and the answer vocabulary; all three are written into the run config, so the run rebuilds exactly."""

from __future__ import annotations

import os
import zlib
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, cast

import torch
import torch.nn.functional as F
from torch import nn

from ..config import to_dict
from ..data.sample import Batch, Sample
from ..errors import InvalidInput
from ..lm.decoding import DecodingOptions
from ..lm.tokenizer import SPECIALS
from ..losses.distill import FeatureQueue, ema_update, itc_momentum_loss, make_teacher
from ..losses.masked import mask_regions, mask_tokens, mlm_accuracy, mlm_loss, mrm_loss
from ..losses.matching import itm_accuracy, itm_loss, sample_hard_negatives
from .gen_batch import pick
from .generator import MAX_TOKENIZER_TEXTS, TextGenerator, TokenStreamer, check_prompts
from .registry import ARCHS, load_config
from .vl_backbones import Blip, Lxmert, VisualBert, VisualStem, VLOutput, build_backbone
from .vl_config import OBJECTIVES, TASKS, VLEncoderConfig, VLSizes
from .vl_inputs import TARGET_GRID, VisualTokens, encode_texts, patch_tokens, region_tokens

MEAN = STD = [0.5, 0.5, 0.5]



def _mlp(dim: int, out: int) -> nn.Module:
    return nn.Sequential(nn.Linear(dim, dim), nn.GELU(), nn.LayerNorm(dim), nn.Linear(dim, out))


def _image_id(sample_id: str) -> int:
    return zlib.crc32(sample_id.encode("utf-8"))


class VLEncoder(TextGenerator):
    task = "matching"
    modalities: tuple[str, ...] = ("image",)

    def __init__(self, config: dict[str, Any]):
        super().__init__(config)
        c = load_config(VLEncoderConfig, self.config)
        self.c = c
        self.family = c.family
        self.classes, self.answers = list(c.classes), list(c.answers)
        if c.tasks.get("vqa", 0):
            self.task = "vqa"
        h = c.sizes.hidden
        self.mask_id = self.vocab_size  # one row past the BPE vocabulary
        crop = 2 * c.patch if c.visual == "regions" else c.patch
        self.crop = crop
        self.stem = None if c.family == "blip" else VisualStem(h, crop, c.visual == "regions")
        self.backbone = build_backbone(c.family, c.sizes, self.vocab_size + 1, h, c.image_size, c.patch)
        self.itm_head = nn.Linear(h, 2)
        self.mlm_head = _mlp(h, self.vocab_size)
        self.mrm_reg = nn.Linear(h, 3 * TARGET_GRID * TARGET_GRID)
        self.mrm_cls = nn.Linear(h, c.max_classes + 1)
        self.vqa_head = _mlp(h, c.max_answers)
        self.teacher: nn.ModuleDict | None = None
        if c.family == "blip":
            self.vision_proj, self.text_proj = nn.Linear(h, c.embed_dim), nn.Linear(h, c.embed_dim)
            self.temp = nn.Parameter(torch.tensor(0.07))
            if c.momentum > 0:
                self.teacher = nn.ModuleDict({"vision": make_teacher(self._blip().vision),
                                              "text": make_teacher(self._blip().text),
                                              "vision_proj": make_teacher(self.vision_proj),
                                              "text_proj": make_teacher(self.text_proj)})
            self.register_buffer("itc_steps", torch.zeros((), dtype=torch.long))  # saved: the ramp resumes exactly
            self.image_queue = FeatureQueue(c.queue, c.embed_dim) if c.queue else None
            self.text_queue = FeatureQueue(c.queue, c.embed_dim) if c.queue else None

    # ------------------------------------------------------------------ data
    def preprocess(self) -> dict[str, dict[str, Any]]:
        return {"image": {"size": self.c.image_size, "mean": MEAN, "std": STD}}

    def captions_of(self, sample_targets: Any) -> list[str]:
        return [x.text for x in sample_targets.captions if x.media == "image" and x.lang in self.c.langs]

    def questions_of(self, sample_targets: Any) -> list[tuple[str, str]]:
        return [(q.question, q.answer) for q in sample_targets.qa if q.media == "image" and q.lang in self.c.langs]

    def corpus(self, samples: Iterable[Sample]) -> list[str]:
        def texts() -> Iterator[str]:
            for s in samples:
                yield from self.captions_of(s.targets)
                for q, a in self.questions_of(s.targets):
                    yield q
                    yield a
        return [t for _, t in zip(range(MAX_TOKENIZER_TEXTS), texts(), strict=False)]

    def fit_data(self, samples: Iterable[Sample]) -> None:
        """The tokenizer (base class), the region classes and the answer vocabulary, from the training data."""
        items = list(samples)
        if not self.classes:
            names = sorted({f"{o.get('color', '')} {o.get('shape', '')}".strip() for s in items
                            for o in (s.metadata.get("objects") or []) if isinstance(o, dict)})
            self.classes = names[:self.c.max_classes]
            self.config["classes"] = self.classes
        if not self.answers and self.c.tasks.get("vqa", 0):
            counts = Counter(a for s in items for _, a in self.questions_of(s.targets))
            self.answers = [a for a, _ in counts.most_common(self.c.max_answers)]
            self.config["answers"] = self.answers
        super().fit_data(items)

    # ------------------------------------------------------------------ pieces
    def _blip(self) -> Blip:
        assert isinstance(self.backbone, Blip)
        return self.backbone

    def visual_tokens(self, batch: Batch) -> VisualTokens:
        if "image" not in batch.data:
            raise InvalidInput("the batch has no image (this model reads images)", field="image")
        images = batch.data["image"]
        if self.c.visual == "regions":
            return region_tokens(images, batch.metadata, self.classes, self.c.max_regions, self.crop)
        return patch_tokens(images, batch.metadata, self.classes, self.c.patch)

    def texts(self, texts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        return encode_texts(self._tok(), texts, self.c.sizes.max_text, self.itm_head.weight.device)

    def joint(self, ids: torch.Tensor, mask: torch.Tensor, v: VisualTokens, vis: torch.Tensor | None = None,
              attend: bool = False) -> VLOutput:
        """The fused encoding of text rows with their pictures (``vis``: stem output, recomputed when None)."""
        if vis is None:
            vis = self.stem(v) if self.stem is not None else v.image.new_zeros(0)
        out: VLOutput = self.backbone(ids, mask, vis, v, attend)
        return out

    # ------------------------------------------------------------------ training
    def forward(self, batch: Batch) -> tuple[torch.Tensor, dict[str, float]]:
        tasks = {k: w for k, w in self.c.tasks.items() if w > 0}
        if self.c.task_mode == "sample" and self.training:
            names = list(tasks)
            k = int(torch.multinomial(torch.tensor([tasks[n] for n in names], dtype=torch.float), 1))
            tasks = {names[k]: 1.0}
        total = self.itm_head.weight.new_zeros(())
        logs: dict[str, float] = {}
        for name, w in tasks.items():
            loss, part = self._pretrain(batch) if name == "pretrain" else self._vqa(batch)
            total = total + w * loss
            logs.update(part)
        logs["loss"] = float(total.detach())
        return total, logs

    def _rows(self, batch: Batch, options: list[list[Any]]) -> tuple[list[int], list[Any]]:
        """Rows with a picture and something to learn from, and the drawn item of each."""
        have = batch.mask.get("image")
        drawn = pick([len(o) for o in options], 1, self.training)
        rows, items = [], []
        for i, (opts, chosen) in enumerate(zip(options, drawn, strict=True)):
            if chosen and (have is None or bool(have[i])):
                rows.append(i)
                items.append(opts[chosen[0]])
        return rows, items

    def _pretrain(self, batch: Batch) -> tuple[torch.Tensor, dict[str, float]]:
        rows, caps = self._rows(batch, [self.captions_of(t) for t in batch.targets])
        zero = self.itm_head.weight.sum() * 0.0
        if len(rows) < 2:
            return zero, {}
        sub = _select(batch, rows)
        v = self.visual_tokens(sub)
        ids, mask = self.texts(caps)
        obj = self.c.objectives
        if self.family == "blip":
            return self._pretrain_blip(sub, v, ids, mask, caps)
        loss, logs = zero, {}
        if obj.get("mlm", 0):
            masked_ids, labels = mask_tokens(ids, _maskable(ids, mask), mask_id=self.mask_id,
                                             vocab_low=len(SPECIALS), vocab_high=self._tok().vocab_size,
                                             prob=self.c.mask_prob)
        else:
            masked_ids, labels = ids, torch.full_like(ids, -100)
        assert self.stem is not None
        vis = self.stem(v)
        vis_in, chosen = (mask_regions(vis, v.valid, prob=self.c.mask_prob) if obj.get("mrm", 0)
                          else (vis, torch.zeros_like(v.valid)))
        pos = self.joint(masked_ids, mask, v, vis_in)
        if obj.get("mlm", 0):
            logits = self.mlm_head(pos.text)
            loss = loss + obj["mlm"] * mlm_loss(logits, labels)
            logs["mlm_acc"] = mlm_accuracy(logits, labels)
        if obj.get("mrm", 0) and pos.visual is not None:
            reg, cls = mrm_loss(self.mrm_reg(pos.visual), v.targets, chosen, logits=self.mrm_cls(pos.visual),
                                labels=v.labels)
            loss = loss + obj["mrm"] * (reg + cls)
            logs.update(loss_mrm_reg=float(reg.detach()), loss_mrm_cls=float(cls.detach()))
        if obj.get("itm", 0):
            # matching reads the unmasked pairs, positives and drawn negatives (UNITER's recipe: masking only for
            # MLM/MRM), so a [MASK] is no clue to the answer and the task is the one asked at inference
            same = torch.tensor([[a == b for b in caps] for a in caps], device=ids.device)
            neg = sample_hard_negatives(torch.zeros(len(caps), len(caps), device=ids.device), same=same)
            ok = (neg >= 0).nonzero().squeeze(1)
            img_rows = torch.cat([torch.arange(len(caps), device=ids.device), ok])
            txt_rows = torch.cat([torch.arange(len(caps), device=ids.device), neg[ok]])
            out = self.joint(ids[txt_rows], mask[txt_rows], _take(v, img_rows), vis[img_rows])
            logits = self.itm_head(out.pooled)
            target = torch.cat([torch.ones(len(caps)), torch.zeros(len(ok))]).long().to(ids.device)
            loss = loss + obj["itm"] * itm_loss(logits, target)
            logs["itm_acc"] = itm_accuracy(logits, target)
        return loss, logs

    def _pretrain_blip(self, batch: Batch, v: VisualTokens, ids: torch.Tensor, mask: torch.Tensor,
                       caps: list[str]) -> tuple[torch.Tensor, dict[str, float]]:
        """ALBEF: ITC (momentum distillation + queues), ITM with hard negatives, MLM through the fusion encoder."""
        blip, obj = self._blip(), self.c.objectives
        with torch.no_grad():
            self.temp.clamp_(0.001, 0.5)
        img = blip.image_tokens(v)
        txt = blip.text_only(ids, mask)
        img_f = F.normalize(self.vision_proj(img[:, 0]), dim=-1)
        txt_f = F.normalize(self.text_proj(txt[:, 0]), dim=-1)
        image_ids = torch.tensor([_image_id(i) for i in batch.ids], device=ids.device)
        loss = img_f.sum() * 0.0
        logs: dict[str, float] = {}
        sim_i2t = img_f @ txt_f.t()
        if obj.get("itc", 0):
            itc = self._itc(batch, v, ids, mask, img_f, txt_f, image_ids)
            loss = loss + obj["itc"] * itc
            logs["loss_itc"] = float(itc.detach())
        if obj.get("itm", 0):
            same = image_ids[:, None] == image_ids[None, :]
            same = same | torch.tensor([[a == b for b in caps] for a in caps], device=ids.device)
            with torch.no_grad():
                neg_txt = sample_hard_negatives(sim_i2t / self.temp, same=same)
                neg_img = sample_hard_negatives(sim_i2t.t() / self.temp, same=same)
            ok_t, ok_i = (neg_txt >= 0).nonzero().squeeze(1), (neg_img >= 0).nonzero().squeeze(1)
            rows_img = torch.cat([torch.arange(len(caps), device=ids.device), ok_t, neg_img[ok_i]])
            rows_txt = torch.cat([torch.arange(len(caps), device=ids.device), neg_txt[ok_t], ok_i])
            out = blip.fuse(ids[rows_txt], mask[rows_txt], img[rows_img], attend=False)
            logits = self.itm_head(out.pooled)
            target = torch.zeros(len(rows_txt), dtype=torch.long, device=ids.device)
            target[:len(caps)] = 1
            loss = loss + obj["itm"] * itm_loss(logits, target)
            logs["itm_acc"] = itm_accuracy(logits, target)
        if obj.get("mlm", 0):
            masked, labels = mask_tokens(ids, _maskable(ids, mask), mask_id=self.mask_id, vocab_low=len(SPECIALS),
                                         vocab_high=self._tok().vocab_size, prob=self.c.mask_prob)
            logits = self.mlm_head(blip.fuse(masked, mask, img, attend=False).text)
            loss = loss + obj["mlm"] * mlm_loss(logits, labels)
            logs["mlm_acc"] = mlm_accuracy(logits, labels)
        return loss, logs

    def _itc(self, batch: Batch, v: VisualTokens, ids: torch.Tensor, mask: torch.Tensor, img_f: torch.Tensor,
             txt_f: torch.Tensor, image_ids: torch.Tensor) -> torch.Tensor:
        if self.teacher is None:
            img_all, txt_all, all_ids = img_f.detach(), txt_f.detach(), image_ids
            t_i2t = t_t2i = None
        else:
            t = self.teacher
            with torch.no_grad():
                blip = self._blip()
                m = self._momentum()
                ema_update(t["vision"], blip.vision, m)
                ema_update(t["text"], blip.text, m)
                ema_update(t["vision_proj"], self.vision_proj, m)
                ema_update(t["text_proj"], self.text_proj, m)
                ti = F.normalize(t["vision_proj"](t["vision"](pixel_values=v.image).last_hidden_state[:, 0]), dim=-1)
                tt = F.normalize(t["text_proj"](t["text"](input_ids=ids, attention_mask=mask, is_decoder=False)
                                                .last_hidden_state[:, 0]), dim=-1)
            img_all, txt_all, all_ids = ti, tt, image_ids
        if self.image_queue is not None and self.text_queue is not None:
            qi, qids = self.image_queue.features()
            qt, _ = self.text_queue.features()
            img_all, txt_all = torch.cat([img_all, qi]), torch.cat([txt_all, qt])
            all_ids = torch.cat([all_ids, qids])
        pos = image_ids[:, None] == all_ids[None, :]
        if self.teacher is not None:
            with torch.no_grad():
                t_i2t, t_t2i = img_all[:len(ids)] @ txt_all.t() / self.temp, txt_all[:len(ids)] @ img_all.t() / self.temp
        loss = itc_momentum_loss(img_f, txt_f, img_all, txt_all, pos, pos, self.temp, teacher_i2t=t_i2t,
                                 teacher_t2i=t_t2i, alpha=self._alpha())
        if self.training and self.image_queue is not None and self.text_queue is not None:
            self.image_queue.enqueue(img_all[:len(ids)].detach(), image_ids)
            self.text_queue.enqueue(txt_all[:len(ids)].detach(), image_ids)
        return loss

    def _momentum(self) -> float:
        """The teacher's EMA momentum: 0 (the teacher is the student) during the first ``alpha_warmup`` steps,
        then ``momentum``. ALBEF starts from pretrained towers, where teacher and student agree from step 1; from
        scratch a 0.995 teacher lags the fast-moving student by hundreds of steps and the contrastive loss hardly
        moves (an ITC-only probe on `shapes`: loss 3.36 -> 2.83 in 300 steps with 0.995 from step 1, 3.16 -> 1.57
        with the teacher tracking the student)."""
        return self.c.momentum if int(self.get_buffer("itc_steps")) >= self.c.alpha_warmup else 0.0

    def _alpha(self) -> float:
        """The distillation share: ``alpha`` ramped up linearly over the first ``alpha_warmup`` training steps
        (ALBEF ramps it over the first epoch: a random teacher is no target)."""
        if self.teacher is None:
            return 0.0
        steps = int(self.get_buffer("itc_steps"))
        if self.training:
            self.get_buffer("itc_steps").add_(1)
        return self.c.alpha * min(1.0, steps / self.c.alpha_warmup) if self.c.alpha_warmup else self.c.alpha

    def _vqa(self, batch: Batch) -> tuple[torch.Tensor, dict[str, float]]:
        known = {a: i for i, a in enumerate(self.answers)}
        rows, qa = self._rows(batch, [self.questions_of(t) for t in batch.targets])
        if not rows:
            return self.itm_head.weight.sum() * 0.0, {}
        sub = _select(batch, rows)
        ids, mask = self.texts([q for q, _ in qa])
        logits = self.vqa_head(self.joint(ids, mask, self.visual_tokens(sub)).pooled)
        target = torch.tensor([known.get(a, -100) for _, a in qa], device=ids.device)
        loss = F.cross_entropy(logits, target, ignore_index=-100) if bool((target >= 0).any()) else logits.sum() * 0
        acc = float(((logits.argmax(-1) == target) & (target >= 0)).sum()) / max(len(qa), 1)
        return loss, {"loss_vqa": float(loss.detach()), "vqa_acc": acc}

    # ------------------------------------------------------------------ inference
    @torch.no_grad()
    def itm_scores(self, batch: Batch, texts: Sequence[str]) -> torch.Tensor:
        """P(match) of picture i with text i (B,)."""
        v = self.visual_tokens(batch)
        ids, mask = self.texts(texts)
        out: torch.Tensor = self.itm_head(self.joint(ids, mask, v).pooled).softmax(-1)[:, 1]
        return out

    def attention(self, batch: Batch, texts: Sequence[str], method: str = "attention", layer: int | None = None
                  ) -> tuple[torch.Tensor, VisualTokens]:
        """Text -> visual relevance (B, L, K) of each picture with its text, rows summing to 1 over the visual
        tokens, and the visual tokens. ``method``: ``"attention"`` (a cross-modal layer's attention, heads
        averaged, renormalised over the visual tokens; default the last layer, what the model finally attends)
        or ``"gradcam"`` (that attention weighted by the positive part of the gradient of the matching logit with
        respect to it, heads averaged: ALBEF's Grad-CAM; default the middle layer ``(n - 1) // 2``, as ALBEF
        takes a middle fusion layer: in the last one the text rows no longer reach the [CLS] vector the matching
        head reads, so their gradient is zero). Rows without any positive relevance come back uniform."""
        if method not in ("attention", "gradcam"):
            raise InvalidInput(f"must be 'attention' or 'gradcam', got {method!r}", field="method")
        v = self.visual_tokens(batch)
        ids, mask = self.texts(texts)
        was = self.training
        self.eval()
        try:
            with torch.enable_grad() if method == "gradcam" else torch.no_grad():
                out = self.joint(ids, mask, v, attend=True)
                if not out.attn:
                    raise InvalidInput(f"the {self.family} family exposes no text -> visual attention", field="family")
                n = len(out.attn)
                index = layer if layer is not None else (n - 1 if method == "attention" else (n - 1) // 2)
                if not -n <= index < n:
                    raise InvalidInput(f"this model has {n} cross-modal layers, no layer {index}", field="layer")
                cut = cast(Callable[[torch.Tensor, int], torch.Tensor], self.backbone.text_to_visual)
                block = cut(out.attn[index], ids.shape[1])
                if method == "gradcam":
                    score = self.itm_head(out.pooled)[:, 1].sum()
                    grad = torch.autograd.grad(score, out.attn[index])[0]
                    block = block * cut(grad, ids.shape[1]).clamp(min=0)
                rel = block.detach().mean(1).clamp(min=0)
        finally:
            self.train(was)
        total = rel.sum(-1, keepdim=True)
        uniform = v.valid[:, None, :].to(rel.dtype) / v.valid.sum(-1)[:, None, None].clamp(min=1)
        return torch.where(total > 1e-12, rel / total.clamp(min=1e-12), uniform), v

    @torch.no_grad()
    def image_embeddings(self, batch: Batch) -> torch.Tensor:
        """blip: the contrastive image vectors (B, D), L2-normalised."""
        img = self._blip().image_tokens(self.visual_tokens(batch))
        return F.normalize(self.vision_proj(img[:, 0]), dim=-1)

    @torch.no_grad()
    def text_embeddings(self, texts: Sequence[str]) -> torch.Tensor:
        ids, mask = self.texts(texts)
        return F.normalize(self.text_proj(self._blip().text_only(ids, mask)[:, 0]), dim=-1)

    @property
    def has_itc(self) -> bool:
        return self.family == "blip"

    def generate(self, batch: Batch, prompts: Sequence[str | None] | None = None,
                 options: DecodingOptions | None = None, streamer: TokenStreamer | None = None) -> list[str]:
        """VQA: the most probable answer of the answer vocabulary for each row's question (``prompts``)."""
        if not self.answers:
            raise InvalidInput("this model was not trained to answer questions (no vqa task)", field="task")
        rows = check_prompts(prompts, len(batch))
        if any(not p for p in rows):
            raise InvalidInput("a VQA model needs a question per input", field="prompt")
        was = self.training
        self.eval()
        try:
            with torch.no_grad():
                ids, mask = self.texts([str(p) for p in rows])
                logits = self.vqa_head(self.joint(ids, mask, self.visual_tokens(batch)).pooled)
                logits[:, len(self.answers):] = float("-inf")
        finally:
            self.train(was)
        return [self.answers[i] for i in logits.argmax(-1).tolist()]

    def save_hf(self, folder: str | os.PathLike[str]) -> None:
        """The transformers parts in their own format plus the tokenizer: ``VisualBertModel`` / ``LxmertModel``
        (``from_pretrained(folder)``), BLIP's ``vision/`` and ``text/`` models; ViLBERT (our module) only the
        tokenizer. Our heads live in the run's model.safetensors."""
        out = Path(folder)
        out.mkdir(parents=True, exist_ok=True)
        bb = self.backbone
        if isinstance(bb, Blip):
            bb.vision.save_pretrained(out / "vision", safe_serialization=True)
            bb.text.save_pretrained(out / "text", safe_serialization=True)
        elif isinstance(bb, VisualBert | Lxmert):
            bb.model.save_pretrained(out, safe_serialization=True)
        self._tok().to_hf().save_pretrained(out)


def _maskable(ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return (mask > 0) & (ids >= len(SPECIALS))


def _take(v: VisualTokens, rows: torch.Tensor) -> VisualTokens:
    return VisualTokens(v.pixels[rows], v.boxes[rows], v.valid[rows], v.labels[rows], v.targets[rows], v.image[rows])


def _select(batch: Batch, rows: list[int]) -> Batch:
    if rows == list(range(len(batch))):
        return batch
    idx = torch.tensor(rows, device=next(iter(batch.data.values())).device) if batch.data else torch.tensor(rows)
    return Batch([batch.ids[i] for i in rows], {k: t[idx] for k, t in batch.data.items()},
                 {k: t[idx] for k, t in batch.mask.items()}, {k: t[idx] for k, t in batch.pad_mask.items()},
                 [batch.texts[i] for i in rows], [batch.metadata[i] for i in rows],
                 [batch.targets[i] for i in rows] if batch.targets else [])


def build_vl_encoder(cfg: Mapping[str, Any]) -> VLEncoder:
    return VLEncoder(to_dict(load_config(VLEncoderConfig, cfg)))


ARCHS.register("vl_encoder")(build_vl_encoder)

__all__ = ["OBJECTIVES", "TASKS", "VLEncoder", "VLEncoderConfig", "VLSizes", "build_vl_encoder"]
