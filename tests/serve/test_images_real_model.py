"""A real (tiny, untrained) latent diffusion model behind `/v1/images/generations`, drawn through the `openai`
client: the PNGs are exactly the pictures `TextToImageModel.generate_images` draws with the same options."""

from __future__ import annotations

import base64
import io
from pathlib import Path

import numpy as np
import pytest
import torch
from genfake import serving
from PIL import Image
from t2ifake import SAFETY

pytest.importorskip("diffusers")
openai = pytest.importorskip("openai")

from polymodal.models.registry import build_model  # noqa: E402
from polymodal.models.t2i_front import TextToImageModel  # noqa: E402

VQ = {"kind": "vq", "image_size": 64, "channels": [8, 8, 16, 16], "latent_channels": 4, "codebook_size": 32,
      "norm_groups": 8}
TEXT = {"encoder": {"name": "text_transformer", "width": 32, "layers": 1, "heads": 2, "max_len": 96},
        "tokenizer": {"kind": "byte"}, "max_len": 96}


def test_openai_client_draws_the_models_pictures(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = build_model("latent_diffusion", {
        "autoencoder": {"config": VQ}, "text": {"config": TEXT}, "latent_scale": 1.0,
        "unet": {"channels": [32, 32], "layers_per_block": 1, "head_dim": 16, "norm_groups": 8}}).eval()
    with torch.no_grad():
        for p in model.unet.parameters():
            p.add_(0.05 * torch.randn_like(p))
    gen = TextToImageModel(model, "ldm")
    prompt = "一个红色的星形在蓝色正方形的上方"
    want = gen.generate_images(prompt, n=2, seed=3, steps=2, guidance=2.0)
    with serving(tmp_path, None, {}, image_models={"ldm": gen}) as (url, _), \
            openai.OpenAI(base_url=url + "/v1", api_key="k", max_retries=0, timeout=SAFETY) as client:
        resp = client.images.generate(model="ldm", prompt=prompt, n=2, size="64x64", response_format="b64_json",
                                      extra_body={"seed": 3, "steps": 2, "guidance": 2.0})
    got = [np.asarray(Image.open(io.BytesIO(base64.b64decode(d.b64_json))).convert("RGB")) for d in resp.data]
    assert len(got) == 2 and all(np.array_equal(a, b) for a, b in zip(got, want, strict=True))
    assert not np.array_equal(got[0], got[1])
