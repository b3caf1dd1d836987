"""evaluate_retrieval / evaluate_zeroshot on a fake model whose embeddings we control."""

import numpy as np
import pytest

from polymodal.data.sample import Sample
from polymodal.eval.tasks import evaluate_retrieval, evaluate_zeroshot


class FakeModel:
    """Embeds text by a table, images by their mean colour pattern: fully known to the test."""

    modalities = ("image", "text")

    def __init__(self, table):
        self.table = table

    def embed(self, text=None, image=None):
        if text is not None:
            rows = [self.table[t] for t in text]
        else:
            rows = [img[0, 0, :3].astype(np.float32) - 127.5 for img in image]
        x = np.stack(rows).astype(np.float32)
        return x / np.linalg.norm(x, axis=1, keepdims=True)


def make_samples(n, rng):
    out, table = [], {}
    for i in range(n):
        col = rng.integers(0, 256, size=3).astype(np.uint8)
        img = np.broadcast_to(col, (4, 4, 3)).copy()
        cap, zh = f"item {i}", f"物品 {i}"
        noise = rng.normal(scale=30, size=3)
        table[cap] = col.astype(np.float32) - 127.5 + noise
        table[zh] = col.astype(np.float32) - 127.5 - noise
        out.append(Sample(f"s{i}", text=cap, image=img,
                          metadata={"captions": {"en": cap, "zh": zh}, "labels": {"c": int(col[0] > 127)},
                                    "label": int(col[0] > 127)}))
    return out, table


def test_retrieval_directions_match_direct_computation():
    rng = np.random.default_rng(0)
    samples, table = make_samples(30, rng)
    model = FakeModel(table)
    res = evaluate_retrieval(model, samples)
    t = model.embed(text=[s.text for s in samples])
    im = model.embed(image=[s.image for s in samples])
    s = t @ im.T
    r1 = np.mean(s.argmax(1) == np.arange(30))
    assert res["directions"]["text->image"]["R@1"] == pytest.approx(r1)
    assert res["directions"]["image->text"]["R@1"] == pytest.approx(np.mean(s.T.argmax(1) == np.arange(30)))
    # attribute match: a hit when the top item has the same label
    lab = np.array([x.metadata["labels"]["c"] for x in samples])
    assert res["directions"]["text->image"]["attribute"]["R@1"] == pytest.approx(np.mean(lab[s.argmax(1)] == lab))
    # several captions per item: image->text hit if any caption is in the top k
    res2 = evaluate_retrieval(model, samples, all_captions=True)
    caps = [c for x in samples for c in (x.text, x.metadata["captions"]["zh"])]
    tc = model.embed(text=caps)
    owner = np.repeat(np.arange(30), 2)
    top1 = (im @ tc.T).argmax(1)
    assert res2["directions"]["image->text"]["R@1"] == pytest.approx(np.mean(owner[top1] == np.arange(30)))
    assert res2["directions"]["text->image"]["n_queries"] == 60


def test_zeroshot_on_fake_model():
    rng = np.random.default_rng(1)
    samples, table = make_samples(20, rng)
    table.update({"dark": np.array([-1.0, 0, 0]), "bright": np.array([1.0, 0, 0])})
    res = evaluate_zeroshot(FakeModel(table), samples, ["dark", "bright"], templates=["{}"])
    pred = np.array([int(x.image[0, 0, 0] > 127.5) for x in samples])
    truth = np.array([x.metadata["label"] for x in samples])
    assert res["image"]["acc1"] == pytest.approx(np.mean(pred == truth))


def test_zeroshot_uses_the_models_own_temperature():
    """A model with a learned (log) logit_scale and a SigLIP bias is scored at that temperature; one without
    (a text-only tower, a fake) at CLIP_benchmark's 100."""
    import torch

    rng = np.random.default_rng(2)
    samples, table = make_samples(12, rng)
    table.update({"dark": np.array([-1.0, 0, 0]), "bright": np.array([1.0, 0, 0])})
    plain = evaluate_zeroshot(FakeModel(table), samples, ["dark", "bright"], templates=["{}"])
    assert plain["image"]["logit_scale"] == 100.0
    fake = FakeModel(table)
    fake.model = torch.nn.Module()
    fake.model.logit_scale = torch.nn.Parameter(torch.tensor(np.log(7.0)))
    fake.model.logit_bias = None
    clip = evaluate_zeroshot(fake, samples, ["dark", "bright"], templates=["{}"])
    assert clip["image"]["logit_scale"] == pytest.approx(7.0)
    assert clip["image"]["acc1"] == plain["image"]["acc1"] and clip["image"]["nll"] != plain["image"]["nll"]
    fake.model.logit_bias = torch.nn.Parameter(torch.tensor(-2.0))
    sig = evaluate_zeroshot(fake, samples, ["dark", "bright"], templates=["{}"])
    assert sig["image"]["nll"] != clip["image"]["nll"]
