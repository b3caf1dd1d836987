"""``arch: "vl_encoder"``: visual tokens (crops and patches against pixel slicing), the four families' training
step (every objective reaches the parameters it should), parity of the transformers parts with their own
``from_pretrained``, ALBEF's momentum teacher and queues, task sampling, config errors, and a trainer run that
reloads to the same scores."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import genkit as g
import pytest
import torch

from polymodal.data.synth import shapes
from polymodal.errors import ConfigError, InvalidInput
from polymodal.models import build_model, load_model
from polymodal.models import vl_inputs as vi
from polymodal.models.vl_encoder import VLEncoder
from polymodal.train.trainer import Trainer

transformers = pytest.importorskip("transformers")
SIZES = {"hidden": 32, "layers": 1, "cross_layers": 1, "visual_layers": 1, "heads": 2}
BLIP_OBJ = {"itc": 1.0, "itm": 1.0, "mlm": 1.0, "mrm": 0.0}


@pytest.fixture(scope="module")
def samples() -> list[Any]:
    return [shapes.make_sample(i, "train", modalities=("text", "image")) for i in range(16)]


def _model(samples: list[Any], family: str = "visualbert", visual: str = "regions", **cfg: Any) -> VLEncoder:
    torch.manual_seed(0)
    if family == "blip":
        cfg.setdefault("objectives", BLIP_OBJ)
        visual = "patches"
    m = build_model("vl_encoder", {"family": family, "visual": visual, "tokenizer": dict(g.TOKENIZER),
                                   "sizes": SIZES, "patch": 16, "queue": 8, "tasks": {"pretrain": 1, "vqa": 1}, **cfg})
    assert isinstance(m, VLEncoder)
    return g.fitted(m, samples)


def test_shapes_boxes_hold_their_object(samples: list[Any]) -> None:
    for s in samples:
        img = s.image.astype(int)
        bg = img[0, 0]
        for o in s.metadata["objects"]:
            x0, y0, x1, y1 = (int(round(v * 64)) for v in o["box"])
            assert 0 <= x0 < x1 <= 64 and 0 <= y0 < y1 <= 64
            cy, cx = (y0 + y1) // 2, (x0 + x1) // 2
            assert abs(img[cy, cx] - bg).sum() > 30  # the box centre is painted (shapes are convex-ish)


def test_region_crop_equals_pixel_slicing(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(vi, "MARGIN", 0.0)
    img = torch.arange(3 * 8 * 8, dtype=torch.float32).view(1, 3, 8, 8)
    meta = [{"objects": [{"color": "red", "shape": "star", "box": [0.25, 0.5, 0.75, 1.0]}]}]
    v = vi.region_tokens(img, meta, ["red star"], max_regions=3, crop=4)
    assert torch.allclose(v.pixels[0, 1], img[0, :, 4:8, 2:6])  # crop of 4 px = pixel centres, exact
    assert torch.allclose(v.pixels[0, 0], torch.nn.functional.avg_pool2d(img[0], 2))  # the global region
    assert v.valid.tolist() == [[True, True, False]] and v.labels.tolist() == [[-100, 1, -100]]
    assert torch.allclose(v.boxes[0, 1], torch.tensor([0.25, 0.5, 0.75, 1.0, 0.25]))
    assert not v.pixels[0, 2].any()
    with pytest.raises(InvalidInput, match="metadata.objects"):
        vi.region_tokens(img, [{"objects": [{"box": [0.1, 0.2]}]}], [], 3, 4)


def test_patches_are_the_picture_cut_in_squares() -> None:
    img = torch.randn(2, 3, 16, 16)
    meta = [{"objects": [{"color": "red", "shape": "star", "box": [0.5, 0.0, 1.0, 0.5]}]}, {}]
    v = vi.patch_tokens(img, meta, ["red star"], patch=8)
    assert v.count == 4
    assert torch.equal(v.pixels[0, 1], img[0, :, 0:8, 8:16])  # row-major: (row 0, col 1)
    assert torch.equal(v.pixels[1, 2], img[1, :, 8:16, 0:8])
    assert v.labels.tolist() == [[0, 1, 0, 0], [0, 0, 0, 0]]
    assert torch.allclose(v.targets[0, 1], torch.nn.functional.adaptive_avg_pool2d(img[0, :, 0:8, 8:16], 4).flatten())


def test_word_spans_point_at_the_word(samples: list[Any]) -> None:
    m = _model(samples)
    tok = m._tok()
    for s in samples[:6]:
        shape = s.metadata["objects"][0]["shape"]
        spans = vi.word_spans(tok, s.text, [shape, "nonexistent"])
        assert "nonexistent" not in spans
        if s.text.lower().count(shape) == 1:
            ids, _ = m.texts([s.text])
            assert shape in tok.decode(ids[0, spans[shape]].tolist()).lower()


@pytest.mark.parametrize("family,visual", [("visualbert", "regions"), ("lxmert", "regions"), ("vilbert", "regions"),
                                           ("visualbert", "patches"), ("blip", "patches"), ("concat", "regions")])
def test_each_family_trains_every_part(samples: list[Any], family: str, visual: str) -> None:
    m = _model(samples, family, visual)
    batch = g.batch_for(m, samples[:8])
    m.train()
    loss, logs = m(batch)
    loss.backward()
    assert torch.isfinite(loss) and {"itm_acc", "mlm_acc", "vqa_acc"} <= set(logs)
    unused = ("teacher.", "mrm_") if family == "blip" else ("teacher.",)
    if family == "visualbert":  # VisualBERT's pooler is used by ITM/VQA; nothing of it is unused
        pass
    no_grad = [n for n, p in m.named_parameters()
               if p.requires_grad and p.grad is None and not n.startswith(unused)]
    assert no_grad == []
    losses = g.train_steps(m, batch, 8, lr=3e-3)
    assert min(losses[-3:]) < losses[0]
    caps = [s.text for s in samples[:8]]
    if family == "concat":  # the fusion baseline: no text -> visual attention
        with pytest.raises(InvalidInput, match="no text -> visual attention"):
            m.attention(batch, caps)
        return
    att, v = m.attention(batch, caps)
    assert att.shape[0] == 8 and att.shape[2] == v.count and torch.isfinite(att).all()
    assert torch.allclose(att.sum(-1), torch.ones(att.shape[:2]), atol=1e-4)  # distributions over visual tokens
    cam, _ = m.attention(batch, caps, method="gradcam")
    assert cam.shape == att.shape and (cam >= 0).all() and torch.allclose(cam.sum(-1), torch.ones(att.shape[:2]),
                                                                          atol=1e-4)
    assert not torch.allclose(cam, att)
    first, _ = m.attention(batch, caps, layer=0)
    assert first.shape == att.shape
    with pytest.raises(InvalidInput, match="no layer 99"):
        m.attention(batch, caps, layer=99)
    scores = m.itm_scores(batch, caps)
    assert scores.shape == (8,) and ((scores >= 0) & (scores <= 1)).all()
    answers = m.generate(batch, [s.targets.qa[0].question for s in samples[:8]])
    assert all(a in m.answers for a in answers)


def test_matching_reads_unmasked_pairs(samples: list[Any], monkeypatch: pytest.MonkeyPatch) -> None:
    """A regression: matching once read the MLM-masked captions for its positives and unmasked ones for its
    negatives, so "has a [MASK]" answered it (train accuracy 1.0, test 0.5). Now it reads unmasked pairs only, the
    positives being the very captions MLM masked."""
    m = _model(samples, mask_prob=0.5)
    calls: list[torch.Tensor] = []
    joint = m.joint

    def record(ids: torch.Tensor, *args: Any, **kw: Any) -> Any:
        calls.append(ids)
        return joint(ids, *args, **kw)

    monkeypatch.setattr(m, "joint", record)
    m.train()
    batch = g.batch_for(m, samples[:8])
    m._pretrain(batch)
    masked, matching = calls
    assert bool((masked == m.mask_id).any())
    assert not bool((matching == m.mask_id).any())
    assert matching.shape[0] > 8  # positives, then negatives
    same = (matching[:8] == masked) | (masked == m.mask_id)  # apart from BERT's 10% random replacements
    assert float(same.float().mean()) > 0.9


def test_vilbert_attention_with_probs_is_multihead_attention() -> None:
    from polymodal.models.vl_backbones import attention_with_probs

    torch.manual_seed(0)
    mha = torch.nn.MultiheadAttention(16, 4, batch_first=True).eval()
    q, kv = torch.randn(3, 5, 16), torch.randn(3, 7, 16)
    pad = torch.zeros(3, 7, dtype=torch.bool)
    pad[1, 5:] = True
    want, want_w = mha(q, kv, kv, key_padding_mask=pad, need_weights=True, average_attn_weights=False)
    got, probs = attention_with_probs(mha, q, kv, pad)
    assert torch.allclose(got, want, atol=1e-6) and torch.allclose(probs, want_w, atol=1e-6)
    assert torch.autograd.grad(got.sum(), probs, retain_graph=True)[0].shape == probs.shape  # in the graph


def test_blip_momentum_teacher_and_queue(samples: list[Any]) -> None:
    m = _model(samples, "blip", momentum=0.9, alpha_warmup=0)
    assert m.teacher is not None and not any(p.requires_grad for p in m.teacher.parameters())
    expected = {n: p.detach().clone() for n, p in m.teacher["text_proj"].named_parameters()}
    opt = torch.optim.AdamW([p for p in m.parameters() if p.requires_grad], lr=1e-2)
    batch = g.batch_for(m, samples[:8])
    m.train()
    for _ in range(2):  # each forward first moves the teacher: t = 0.9 t + 0.1 s (ALBEF's _momentum_update)
        student = {n: p.detach().clone() for n, p in m.text_proj.named_parameters()}
        expected = {n: 0.9 * expected[n] + 0.1 * student[n] for n in expected}
        loss, _ = m(batch)
        opt.zero_grad()
        loss.backward()
        opt.step()
    for n, p in m.teacher["text_proj"].named_parameters():
        assert torch.allclose(p, expected[n], atol=1e-6)
        assert not torch.allclose(p, dict(m.text_proj.named_parameters())[n])
    assert m.image_queue is not None and int(m.image_queue.filled) == 8  # 2 steps x 8 rows, a queue of 8
    emb = m.image_embeddings(g.batch_for(m, samples[:3]))
    assert torch.allclose(emb.norm(dim=-1), torch.ones(3), atol=1e-5)


def test_hf_parts_load_with_from_pretrained(samples: list[Any], tmp_path: Path) -> None:
    for family in ("visualbert", "lxmert"):
        m = _model(samples, family).eval()
        m.save_hf(tmp_path / family)
        cls = transformers.VisualBertModel if family == "visualbert" else transformers.LxmertModel
        hf = cls.from_pretrained(tmp_path / family).eval()
        batch = g.batch_for(m, samples[:4])
        v = m.visual_tokens(batch)
        ids, mask = m.texts([s.text for s in samples[:4]])
        vis = m.stem(v) if m.stem is not None else None
        assert vis is not None
        ours = m.joint(ids, mask, v, vis).pooled
        with torch.no_grad():
            if family == "visualbert":
                ref = hf(input_ids=ids, attention_mask=mask, token_type_ids=torch.zeros_like(ids), visual_embeds=vis,
                         visual_attention_mask=v.valid.long(), visual_token_type_ids=v.valid.long() * 0 + 1).pooler_output
            else:
                ref = hf(input_ids=ids, attention_mask=mask, token_type_ids=torch.zeros_like(ids), visual_feats=vis,
                         visual_pos=v.boxes[..., :4], visual_attention_mask=v.valid.long()).pooled_output
        assert torch.allclose(ours, ref, atol=1e-5)
        assert transformers.AutoTokenizer.from_pretrained(tmp_path / family).encode("a red star")


def test_task_sampling_trains_one_task_per_step(samples: list[Any]) -> None:
    m = _model(samples, task_mode="sample", tasks={"pretrain": 1.0, "vqa": 1.0})
    m.train()
    batch = g.batch_for(m, samples[:8])
    torch.manual_seed(3)
    seen = []
    for _ in range(12):
        _, logs = m(batch)
        seen.append("vqa" if "vqa_acc" in logs else "pretrain")
        assert not ("vqa_acc" in logs and "itm_acc" in logs)
    assert set(seen) == {"pretrain", "vqa"}
    torch.manual_seed(3)
    again = ["vqa" if "vqa_acc" in m(batch)[1] else "pretrain" for _ in range(12)]
    assert again == seen


@pytest.mark.parametrize("cfg,field", [
    ({"family": "uniter"}, "model.family"),
    ({"family": "blip", "visual": "regions"}, "model.visual"),
    ({"objectives": {"itc": 1.0}}, "model.objectives.itc"),
    ({"family": "blip", "visual": "patches", "objectives": {"mrm": 1.0}}, "model.objectives.mrm"),
    ({"tasks": {"captioning": 1.0}}, "model.tasks"),
    ({"tasks": {"pretrain": -1.0}}, "model.tasks.pretrain"),
    ({"task_mode": "round_robin"}, "model.task_mode"),
    ({"patch": 7}, "model.patch"),
    ({"sizes": {"hidden": 30, "heads": 4}}, "model.sizes.heads"),
])
def test_bad_config_names_the_field(cfg: dict[str, Any], field: str) -> None:
    with pytest.raises(ConfigError) as err:
        build_model("vl_encoder", {"tokenizer": dict(g.TOKENIZER), **cfg})
    assert err.value.field == field


def test_vqa_needs_answers_and_questions(samples: list[Any]) -> None:
    m = _model(samples, tasks={"pretrain": 1.0})
    with pytest.raises(InvalidInput, match="not trained to answer"):
        m.generate(g.batch_for(m, samples[:2]), ["what?", "what?"])


def test_trainer_run_reloads_to_the_same_scores(samples: list[Any], tmp_path: Path) -> None:
    data = g.write_data(tmp_path / "data", {"train": samples, "val": samples[:4]}, ["image", "text"])
    model_cfg = {"family": "vilbert", "visual": "regions", "sizes": SIZES, "patch": 16,
                 "tasks": {"pretrain": 1.0, "vqa": 1.0}}
    trainer = Trainer(g.recipe("vl_encoder", model_cfg, steps=3, batch_size=8), data, tmp_path / "run",
                      progress=False)
    result = trainer.fit()
    assert result.step == 3 and result.val_loss is not None
    model, tf, cfg = load_model(tmp_path / "run")
    assert cfg["model"]["classes"] and cfg["model"]["answers"] and cfg["model"]["tokenizer"]["json"]
    assert (tmp_path / "run" / "hf" / "tokenizer.json").is_file()
    batch = g.batch_for(model, samples[:4])
    caps = [s.text for s in samples[:4]]
    assert torch.allclose(model.itm_scores(batch, caps), trainer.model.eval().itm_scores(batch, caps), atol=1e-6)


def test_blip_distillation_share_ramps_up(samples: list[Any]) -> None:
    m = _model(samples, "blip", alpha=0.4, alpha_warmup=4)
    m.train()
    got = [m._alpha() for _ in range(6)]
    assert got == pytest.approx([0.0, 0.1, 0.2, 0.3, 0.4, 0.4])
    assert int(m.state_dict()["itc_steps"]) == 6  # saved with the weights: a resumed run continues the ramp
    m.eval()
    assert m._alpha() == pytest.approx(0.4) and int(m.get_buffer("itc_steps")) == 6


def test_blip_teacher_tracks_the_student_during_warmup(samples: list[Any]) -> None:
    m = _model(samples, "blip", momentum=0.9, alpha_warmup=2)
    assert m.teacher is not None
    opt = torch.optim.AdamW([p for p in m.parameters() if p.requires_grad], lr=1e-2)
    batch = g.batch_for(m, samples[:8])
    m.train()
    for step in range(3):
        student = {n: p.detach().clone() for n, p in m.text_proj.named_parameters()}
        teacher = {n: p.detach().clone() for n, p in m.teacher["text_proj"].named_parameters()}
        loss, _ = m(batch)
        opt.zero_grad()
        loss.backward()
        opt.step()
        for n, p in m.teacher["text_proj"].named_parameters():  # steps 0, 1: a copy; step 2: the EMA
            want = student[n] if step < 2 else 0.9 * teacher[n] + 0.1 * student[n]
            assert torch.allclose(p, want, atol=1e-6)
