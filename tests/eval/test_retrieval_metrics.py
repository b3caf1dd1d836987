"""Chunked retrieval metrics vs a plain full-matrix reference."""

import math

import numpy as np
import pytest

from polymodal.errors import InvalidInput
from polymodal.eval.retrieval import duplicate_rate, retrieval_ranks
from polymodal.eval.zeroshot import class_embeddings, zeroshot_metrics


def reference_ranks(q, g, positives):
    s = q @ g.T
    ranks = []
    for i, pos in enumerate(positives):
        order = sorted(range(g.shape[0]), key=lambda j: (-s[i, j], j))  # ties: gallery order
        ranks.append(min(order.index(p) for p in pos))
    return np.array(ranks)


@pytest.mark.parametrize("chunk", [3, 7, 1000])
def test_ranks_match_reference_with_several_captions(chunk):
    rng = np.random.default_rng(0)
    images = rng.normal(size=(20, 8)).astype(np.float32)
    caption_of = np.repeat(np.arange(20), 3)  # 3 captions per image
    captions = images[caption_of] + rng.normal(scale=1.5, size=(60, 8)).astype(np.float32)
    # text -> image: each caption on its own, one positive
    t2i = retrieval_ranks(captions, images, positives=[[i] for i in caption_of], chunk=chunk)
    np.testing.assert_array_equal(t2i.ranks, reference_ranks(captions, images, [[i] for i in caption_of]))
    # image -> text: hit if any of its captions is in the top k
    pos = [np.flatnonzero(caption_of == i) for i in range(20)]
    i2t = retrieval_ranks(images, captions, positives=pos, chunk=chunk)
    ref = reference_ranks(images, captions, pos)
    np.testing.assert_array_equal(i2t.ranks, ref)
    s = i2t.summary()
    assert s["R@1"] == pytest.approx((ref < 1).mean())
    assert s["R@5"] == pytest.approx((ref < 5).mean())
    assert s["median_rank"] == math.floor(np.median(ref)) + 1


def test_ties_broken_by_gallery_order_and_labels_mode():
    g = np.array([[1, 0], [1, 0], [0, 1]], dtype=np.float32)
    q = np.array([[1, 0]], dtype=np.float32)
    assert retrieval_ranks(q, g, positives=[[1]]).ranks[0] == 1
    assert retrieval_ranks(q, g, positives=[[0]]).ranks[0] == 0
    r = retrieval_ranks(q, g, query_labels=[5], gallery_labels=[7, 5, 5], chunk=2)
    assert r.ranks[0] == 1


def test_bad_inputs():
    q = np.zeros((2, 3), np.float32)
    with pytest.raises(InvalidInput, match="no positive"):
        retrieval_ranks(q, np.ones((4, 3), np.float32), positives=[[0], []])
    with pytest.raises(InvalidInput, match="equal D"):
        retrieval_ranks(q, np.ones((4, 2), np.float32), positives=[[0], [1]])


def test_zeroshot_prompt_ensemble_and_metrics():
    rng = np.random.default_rng(1)
    table = {f"t{i} c{j}": rng.normal(size=4) for i in range(2) for j in range(6)}

    def embed(texts):
        return np.stack([table[t] for t in texts])

    C = class_embeddings(embed, [f"c{j}" for j in range(6)], ["t0 {}", "t1 {}"])
    for j in range(6):
        a, b = table[f"t0 c{j}"], table[f"t1 c{j}"]
        m = a / np.linalg.norm(a) + b / np.linalg.norm(b)
        np.testing.assert_allclose(C[j], m / np.linalg.norm(m), atol=1e-6)
    x = C[[0, 1, 2, 3, 4, 5, 0, 0]] + 0.01
    labels = [0, 1, 2, 3, 4, 5, 1, 1]
    m = zeroshot_metrics(x, C, labels)
    pred = (x @ C.T).argmax(1)
    assert m["acc1"] == pytest.approx((pred == np.array(labels)).mean())
    recalls = [np.mean(pred[np.array(labels) == k] == k) for k in range(6)]
    assert m["mean_per_class_recall"] == pytest.approx(np.mean(recalls))
    assert math.isnan(zeroshot_metrics(x[:, :], C[:3], [0] * 8)["acc5"])


def test_duplicate_rate():
    assert duplicate_rate(["a", "b", "A", "c"]) == 0.5


def test_zeroshot_nll_matches_torch_cross_entropy_at_the_models_scale():
    """nll is softmax cross-entropy at the given scale (CLIP), and summed binary cross-entropy with a bias (SigLIP),
    checked against torch's own losses; the accuracies do not depend on the scale."""
    import torch
    import torch.nn.functional as F

    rng = np.random.default_rng(3)
    C = rng.normal(size=(5, 8)).astype(np.float32)
    C /= np.linalg.norm(C, axis=1, keepdims=True)
    x = rng.normal(size=(12, 8)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    y = rng.integers(0, 5, size=12)
    for scale in (100.0, 14.3):
        m = zeroshot_metrics(x, C, y, scale=scale)
        logits = scale * torch.from_numpy(x).double() @ torch.from_numpy(C).double().T
        assert m["nll"] == pytest.approx(float(F.cross_entropy(logits, torch.from_numpy(y))), rel=1e-6)
        assert m["acc1"] == zeroshot_metrics(x, C, y)["acc1"] and m["logit_scale"] == scale
    m = zeroshot_metrics(x, C, y, scale=10.0, bias=-3.0)
    logits = 10.0 * torch.from_numpy(x).double() @ torch.from_numpy(C).double().T - 3.0
    target = F.one_hot(torch.from_numpy(y), 5).double()
    ref = F.binary_cross_entropy_with_logits(logits, target, reduction="none").sum(1).mean()
    assert m["nll"] == pytest.approx(float(ref), rel=1e-6)
    with pytest.raises(InvalidInput):
        zeroshot_metrics(x, C, y, scale=0.0)
