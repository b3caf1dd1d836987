"""The text->image archs: the VQ autoencoder, latent diffusion and the token model (DALL-E / ERNIE-ViLG), checked
against diffusers' and transformers' own classes loaded from the folders the runs save."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

pytest.importorskip("diffusers")

from genkit import batch_for, train_steps  # noqa: E402

from polymodal.data.synth import shapes  # noqa: E402
from polymodal.errors import ConfigError, InvalidInput  # noqa: E402
from polymodal.lm.tokenizer import BOS, EOS, PAD  # noqa: E402
from polymodal.models.registry import build_model  # noqa: E402
from polymodal.models.t2i_ar import IGNORE, TokenAR  # noqa: E402
from polymodal.models.t2i_autoencoder import ImageAutoencoder, from_pixels, to_pixels  # noqa: E402
from polymodal.models.t2i_diffusion import LatentDiffusion  # noqa: E402
from polymodal.models.t2i_front import ImageOptions, TextToImageModel  # noqa: E402

VQ = {"kind": "vq", "image_size": 64, "channels": [8, 8, 16, 16], "latent_channels": 4, "codebook_size": 32,
      "norm_groups": 8}
TEXT = {"encoder": {"name": "text_transformer", "width": 32, "layers": 1, "heads": 2, "max_len": 96},
        "tokenizer": {"kind": "byte"}, "max_len": 96}
UNET = {"channels": [32, 32], "layers_per_block": 1, "head_dim": 16, "norm_groups": 8}
PROMPTS = ["a small red star above a large blue square", "一个红色的星形在蓝色正方形的上方"]


def samples(n: int, split: str = "train") -> list[Any]:
    return [shapes.make_sample(i, split, langs=("en", "zh"), modalities=("text", "image")) for i in range(n)]


def same_picture(a: np.ndarray, b: np.ndarray) -> bool:
    return float(np.abs(a.astype(int) - b.astype(int)).mean()) < 0.5


def perturb(module: torch.nn.Module, scale: float = 0.05) -> None:
    """Move the weights off their init, so outputs depend clearly on the inputs."""
    with torch.no_grad():
        for p in module.parameters():
            p.add_(scale * torch.randn_like(p))


def diffusion(**kw: Any) -> LatentDiffusion:
    torch.manual_seed(0)
    cfg = {"autoencoder": {"config": VQ}, "text": {"config": TEXT}, "unet": UNET, "latent_scale": 1.0, "steps": 4,
           **kw}
    m = build_model("latent_diffusion", cfg)
    assert isinstance(m, LatentDiffusion)
    return m.eval()


def token_model(**kw: Any) -> TokenAR:
    torch.manual_seed(0)
    m = build_model("token_ar", {"autoencoder": {"config": VQ}, "tokenizer": {"vocab_size": 300}, "text_len": 24,
                                 "layers": 1, "width": 32, "heads": 2, **kw})
    assert isinstance(m, TokenAR)
    m.fit_data(samples(40))
    return m.eval()


# ----------------------------------------------------------------------------------------------- autoencoder

def test_vq_codes_decode_like_the_quantizing_decoder_and_reload_in_diffusers(tmp_path: Path) -> None:
    diffusers = pytest.importorskip("diffusers")
    torch.manual_seed(0)
    ae = build_model("image_autoencoder", VQ).eval()
    assert isinstance(ae, ImageAutoencoder)
    x = from_pixels([s.image for s in samples(3)], 64, torch.device("cpu"))
    with torch.no_grad():
        codes = ae.codes(x)
        assert codes.shape == (3, 64) and int(codes.max()) < 32
        torch.testing.assert_close(ae.decode_codes(codes), ae.decode(ae.latents(x)), atol=1e-4, rtol=1e-4)
        ae.save_hf(tmp_path / "vq")
        ref = diffusers.VQModel.from_pretrained(tmp_path / "vq").eval()
        torch.testing.assert_close(ref(x).sample, ae.decode(ae.latents(x)))


def test_autoencoder_learns_to_reconstruct() -> None:
    torch.manual_seed(0)
    ae = build_model("image_autoencoder", {**VQ, "codebook_size": 64})
    data = samples(8)
    batch = batch_for(ae, data)
    losses = train_steps(ae, batch, 40, lr=3e-3)
    assert losses[-1] < 0.6 * losses[0]
    rec = ae.reconstruct([s.image for s in data[:2]])
    assert rec[0].dtype == np.uint8 and rec[0].shape == (64, 64, 3)


def test_autoencoder_config_errors_name_the_key() -> None:
    with pytest.raises(ConfigError, match="divisible") as err:
        build_model("image_autoencoder", {**VQ, "channels": [8, 12]})
    assert err.value.field == "model.channels"
    with pytest.raises(ConfigError) as err:
        build_model("image_autoencoder", {**VQ, "kind": "gan"})
    assert err.value.field == "model.kind"


# ----------------------------------------------------------------------------------------------- diffusion

def reference_ddim(folder: Path, model: LatentDiffusion, prompts: list[str], seeds: list[int], steps: int,
                   g: float) -> list[np.ndarray]:
    """Classifier-free guided DDIM written against diffusers' classes loaded from the run's saved folders."""
    diffusers = pytest.importorskip("diffusers")
    unet = diffusers.UNet2DConditionModel.from_pretrained(folder / "unet").eval()
    vq = diffusers.VQModel.from_pretrained(folder / "vqvae").eval()
    sched = diffusers.DDIMScheduler.from_pretrained(folder / "scheduler")
    sched.set_timesteps(steps)
    n = len(prompts)
    cond, cmask = model.context(prompts)
    null, nmask = model.context(prompts, torch.ones(n, dtype=torch.bool))
    z = torch.stack([torch.randn(4, 8, 8, generator=torch.Generator().manual_seed(s)) for s in seeds])
    with torch.no_grad():
        for t in sched.timesteps:
            e_c = unet(z, t, encoder_hidden_states=cond, encoder_attention_mask=cmask).sample
            e_u = unet(z, t, encoder_hidden_states=null, encoder_attention_mask=nmask).sample
            z = sched.step(e_u + g * (e_c - e_u), t, z).prev_sample
        return to_pixels(vq.decode(z / model.latent_scale).sample)


def test_guided_ddim_matches_a_reference_loop_over_the_saved_diffusers_folders(tmp_path: Path) -> None:
    m = diffusion(latent_scale=1.7)
    with torch.no_grad():  # move the weights off their init so the U-Net's output is not ~0
        for p in m.unet.parameters():
            p.add_(0.05 * torch.randn_like(p))
    m.save_hf(tmp_path / "hf")
    got = m.sample_images(PROMPTS, [3, 4], ImageOptions(steps=5, guidance=2.5, sampler="ddim"))
    want = reference_ddim(tmp_path / "hf", m, PROMPTS, [3, 4], 5, 2.5)
    for a, b in zip(got, want, strict=True):
        assert np.abs(a.astype(int) - b.astype(int)).max() <= 1


def test_both_samplers_start_below_the_last_training_step() -> None:
    """DPM-Solver++'s default "linspace" spacing started at t = 999, where the capped cosine schedule leaves no
    signal: the bench's 10-step pictures were noise (attribute accuracy 0.12 vs 0.42 with DDIM's spacing)."""
    m = diffusion()
    for steps in (10, 25):
        starts = []
        for kind in ("ddim", "dpm"):
            sched = m.scheduler(kind)
            sched.set_timesteps(steps)
            starts.append(int(sched.timesteps[0]))
        assert max(starts) <= m.c.train_timesteps - m.c.train_timesteps // (steps + 1)  # never t = 999


def test_guidance_zero_ignores_the_prompt_and_one_is_conditional() -> None:
    m = diffusion()
    with torch.no_grad():
        for p in m.unet.parameters():
            p.add_(0.05 * torch.randn_like(p))
    uncond = m.sample_images(PROMPTS, [7, 7], ImageOptions(guidance=0.0))
    assert np.array_equal(uncond[0], uncond[1])
    cond = m.sample_images(PROMPTS, [7, 7], ImageOptions(guidance=1.0))
    assert not np.array_equal(cond[0], cond[1])


def test_an_image_depends_on_its_seed_not_on_its_batch() -> None:
    front = TextToImageModel(diffusion(), "tiny")
    four = front.generate_images(PROMPTS[0], n=4, seed=0, steps=3, guidance=2.0)
    one = front.generate_images(PROMPTS[0], n=1, seed=2, steps=3, guidance=2.0)
    # equal up to the float rounding of batched arithmetic (a batch of 4 vs 1 takes other kernels)
    assert same_picture(four[2], one[0]) and not same_picture(four[0], four[1])
    two = front.generate_images(PROMPTS, n=2, seed=0, steps=3, guidance=2.0, batch_size=3)
    assert same_picture(two[0], four[0])  # prompt-major: prompt 0's images come first with seeds 0, 1
    assert np.array_equal(front.generate_images(PROMPTS[0], n=4, seed=0, steps=3, guidance=2.0)[3], four[3])
    with pytest.raises(InvalidInput) as err:
        front.generate_images(PROMPTS[0], steps=0)
    assert err.value.field == "steps"
    with pytest.raises(InvalidInput):
        front.generate_images([""])


def test_diffusion_training_reduces_the_loss_and_drops_captions() -> None:
    m = diffusion(cond_dropout=0.5)
    batch = batch_for(m, samples(8))
    torch.manual_seed(1)
    before = [float(m(batch)[0].detach()) for _ in range(4)]
    train_steps(m, batch, 30, lr=2e-3)
    torch.manual_seed(1)
    after = [float(m(batch)[0].detach()) for _ in range(4)]
    assert np.mean(after) < np.mean(before)
    assert all(not p.requires_grad for p in [*m.autoencoder.parameters(), *m.text.parameters()])
    states, mask = m.context(PROMPTS, torch.tensor([True, False]))
    assert int(mask[0].sum()) == 1 and int(mask[1].sum()) > 1
    torch.testing.assert_close(states[0, 0], m.null[0, 0])


def test_latent_scale_is_measured_on_the_training_pictures() -> None:
    m = diffusion(latent_scale=None)
    data = samples(6)
    m.fit_data(data)
    x = from_pixels([s.image for s in data], 64, torch.device("cpu"))
    with torch.no_grad():
        want = 1.0 / float(m.autoencoder.latents(x).std())
    assert m.latent_scale == pytest.approx(want, rel=1e-5)
    assert m.config["latent_scale"] == pytest.approx(want, rel=1e-5)


# ----------------------------------------------------------------------------------------------- token model

def test_token_rows_put_codes_after_the_prompt_and_captions_after_the_codes() -> None:
    m = token_model()
    codes = torch.arange(64).reshape(1, 64).repeat(2, 1) % 32
    ids, labels = m.rows(codes, ["a red star", "a red star"], torch.tensor([False, True]))
    tl, n = m.c.text_len, m.n_codes
    text = m.text_ids("a red star")
    assert ids[0, :tl].tolist() == text and int(ids[0, tl]) == m.boi
    assert ids[0, tl + 1:tl + 1 + n].tolist() == (codes[0] + m.text_vocab).tolist()
    assert (labels[0, :tl + 1] == IGNORE).all() and labels[0, tl + 1:tl + 1 + n].tolist() == ids[0, tl + 1:tl + 1 + n].tolist()
    assert int(ids[1, 0]) == m.boi and int(ids[1, n + 1]) == m.bot and ids[1, n + 2:].tolist() == text
    real = [t for t in text if t != PAD]
    assert labels[1, n + 2:n + 2 + len(real)].tolist() == real and real[0] == BOS and real[-1] == EOS
    assert (labels[1, :n + 2] == IGNORE).all()
    assert m.text_ids(None)[:3] == [BOS, EOS, PAD]


def test_token_sampling_matches_transformers_greedy_decoding_from_the_saved_folder(tmp_path: Path) -> None:
    transformers = pytest.importorskip("transformers")
    m = token_model()
    m.save_hf(tmp_path / "hf")
    ref = transformers.GPT2LMHeadModel.from_pretrained(tmp_path / "hf" / "lm").eval()
    prefix = torch.tensor([[*m.text_ids(PROMPTS[0]), m.boi]])
    lo, hi = m.text_vocab, m.text_vocab + m.codebook
    allowed = [i for i in range(ref.config.vocab_size) if not lo <= i < hi]

    class OnlyCodes(transformers.LogitsProcessor):  # type: ignore[misc]
        def __call__(self, ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
            scores[:, allowed] = float("-inf")
            return scores

    out = ref.generate(prefix, max_new_tokens=m.n_codes, do_sample=False, logits_processor=[OnlyCodes()],
                       attention_mask=torch.ones_like(prefix))
    want = out[0, prefix.shape[1]:] - lo
    got = m.sample_images([PROMPTS[0]], [0], ImageOptions(top_k=1))[0]
    with torch.no_grad():
        ref_pixels = to_pixels(m.autoencoder.decode_codes(want[None]))[0]
    assert np.array_equal(got, ref_pixels)


def test_token_guidance_zero_ignores_the_prompt_and_captions_decode() -> None:
    m = token_model(image_to_text=0.5)
    perturb(m.lm, 0.2)
    a, b = m.sample_images(PROMPTS, [5, 5], ImageOptions(guidance=0.0))
    assert np.array_equal(a, b)
    a, b = m.sample_images(PROMPTS, [5, 5], ImageOptions(guidance=1.0))
    assert not np.array_equal(a, b)
    caps = m.caption_images([s.image for s in samples(2)], max_tokens=4)
    assert len(caps) == 2 and all(isinstance(c, str) for c in caps)


def test_token_training_learns_both_directions() -> None:
    m = token_model(image_to_text=0.5)
    m.train()
    batch = batch_for(m, samples(8))
    torch.manual_seed(0)
    first = m(batch)[1]
    train_steps(m, batch, 25, lr=3e-3)
    torch.manual_seed(0)
    last = m(batch)[1]
    assert last["image_loss"] < first["image_loss"] and last["text_loss"] < first["text_loss"]


def test_token_model_needs_a_vq_autoencoder() -> None:
    with pytest.raises(ConfigError, match="VQ"):
        build_model("token_ar", {"autoencoder": {"config": {**VQ, "kind": "kl"}}, "tokenizer": {"vocab_size": 300}})


def test_the_codebook_starts_from_encoder_outputs_and_dead_codes_restart() -> None:
    """Without this care the first vq_tiny run collapsed to ~40 of 512 codes and drew only the background."""
    torch.manual_seed(0)
    ae = build_model("image_autoencoder", VQ)
    assert isinstance(ae, ImageAutoencoder)
    ae.train()
    batch = batch_for(ae, samples(4))
    with torch.no_grad():
        h = ae.net.encode(batch.data["image"]).latents
    flat = h.permute(0, 2, 3, 1).reshape(-1, h.shape[1])
    ae(batch)
    book = ae.net.quantize.embedding.weight.detach()
    assert bool(ae.codebook_ready)
    assert torch.cdist(book, flat).min(dim=1).values.max() < 1e-2  # every code sits on an encoder output
    with torch.no_grad():
        ae.net.quantize.embedding.weight[5] = 1e3  # a code nothing can pick
    ae.code_usage[5] = 0.0
    ae(batch)
    restarted = ae.net.quantize.embedding.weight.detach()[5]
    assert float(torch.cdist(restarted[None], flat).min()) < 1e-2 and float(ae.code_usage[5]) == 1.0
    ae.eval()
    before = ae.net.quantize.embedding.weight.detach().clone()
    ae(batch)  # evaluation never touches the codebook
    torch.testing.assert_close(ae.net.quantize.embedding.weight.detach(), before)
