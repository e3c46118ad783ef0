"""Fast tests of training/ on tiny configs (no network, CPU)."""
from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest
import torch

from benchmark import shapes_world as sw
from training import configs
from training.assemble import MODEL_INDEX, assemble
from training.tokenizer import load_tokenizer, save_tokenizer, tokenize


def test_tokenizer_roundtrip_and_length(tmp_path):
    tok = save_tokenizer(tmp_path / "tokenizer")
    tok2 = load_tokenizer(tmp_path / "tokenizer")
    rng = np.random.default_rng(0)
    caps = [sw.sample_scene(rng, n_objects=3).caption for _ in range(20)] + ["", "a red star"]
    ids = tokenize(tok, caps)
    assert ids.shape == (len(caps), configs.MAX_TOKENS) == tuple(tokenize(tok2, caps).shape)
    assert torch.equal(ids, tokenize(tok2, caps))
    assert tok.pad_token_id == 0 and tok.unk_token_id == 1 and tok.bos_token_id == 2 and tok.eos_token_id == 3
    assert (ids[:, 0] == tok.bos_token_id).all()
    assert not (ids == tok.unk_token_id).any()
    for cap, row in zip(caps, ids):
        words = sw.CAPTION_TOKEN_PATTERN.findall(cap)
        n = len(words)
        assert n + 2 <= configs.MAX_TOKENS
        assert row[n + 1] == tok.eos_token_id and (row[n + 2 :] == tok.pad_token_id).all()
        assert tok.decode(row, skip_special_tokens=True).split() == words
    assert tokenize(tok, [""])[0, :2].tolist() == [2, 3]
    for w in sw.vocabulary():
        assert tok.convert_tokens_to_ids(w) != tok.unk_token_id


def _outputs_equal(a, b, x, **kw):
    with torch.no_grad():
        return torch.allclose(a(x, **kw).sample, b(x, **kw).sample, atol=1e-6)


def test_vae_and_unet_tiny_train_save_resume(tmp_path):
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextModel

    from training.train_unet import UNET_RUN, train_unet
    from training.train_vae import VAE_RUN, train_vae

    out, runs = tmp_path / "model", tmp_path / "runs"
    save_tokenizer(out / "tokenizer")
    assemble(out)
    assert json.loads((out / "model_index.json").read_text()) == MODEL_INDEX
    run = dict(minutes=5, threads=1, out_dir=out, run_dir=runs, tiny=True, seed=0, quiet=True)
    vae_run = replace(VAE_RUN, batch_size=2, **run)
    kw = dict(eval_n=4, scaling_samples=8, image_size=32)
    r = train_vae(replace(vae_run, max_steps=2), **kw)
    assert r["steps"] == 2 and np.isfinite(r["heldout_psnr"]) and r["scaling_factor"] > 0
    vae = AutoencoderKL.from_pretrained(str(out / "vae"))
    assert vae.config.scaling_factor == pytest.approx(r["scaling_factor"])
    vae.save_pretrained(str(tmp_path / "vae2"))
    x = torch.rand(1, 3, 32, 32) * 2 - 1
    assert _outputs_equal(vae.eval(), AutoencoderKL.from_pretrained(str(tmp_path / "vae2")).eval(), x)
    r = train_vae(replace(vae_run, max_steps=1), **kw)
    assert r["steps"] == 3
    assert json.loads((out / "training_state.json").read_text())["vae"]["steps"] == 3

    unet_run = replace(UNET_RUN, batch_size=4, **run)
    ukw = dict(pool=16, refresh=2, quick_eval_n=2, curriculum_steps=1)
    r = train_unet(replace(unet_run, max_steps=2), **ukw)
    assert r["steps"] == 2 and np.isfinite(r["last_loss"])
    r = train_unet(replace(unet_run, max_steps=1), **ukw)  # resumes from runs/ (optimizer state) and continues counting
    assert r["steps"] == 3
    (runs / "unet_ckpt.pt").unlink()  # fresh machine: resumes from the committed EMA weights only
    r = train_unet(replace(unet_run, max_steps=1), **ukw)
    assert r["steps"] == 4
    state = json.loads((out / "training_state.json").read_text())
    assert state["unet"]["steps"] == 4 and state["vae"]["steps"] == 3

    # once a UNet exists, VAE training only fine-tunes the decoder: latents and scaling factor stay put
    enc_before = {k: v.clone() for k, v in AutoencoderKL.from_pretrained(str(out / "vae")).encoder.state_dict().items()}
    sf_before = AutoencoderKL.from_pretrained(str(out / "vae")).config.scaling_factor
    r = train_vae(replace(vae_run, max_steps=1), **kw)
    vae3 = AutoencoderKL.from_pretrained(str(out / "vae"))
    assert r["steps"] == 4 and vae3.config.scaling_factor == sf_before
    assert all(torch.equal(v, enc_before[k]) for k, v in vae3.encoder.state_dict().items())
    unet = UNet2DConditionModel.from_pretrained(str(out / "unet")).eval()
    te = CLIPTextModel.from_pretrained(str(out / "text_encoder")).eval()
    unet.save_pretrained(str(tmp_path / "unet2"))
    enc = te(tokenize(load_tokenizer(out / "tokenizer"), ["a red star"]))[0]
    lat = torch.randn(1, 4, 8, 8)
    assert _outputs_equal(unet, UNet2DConditionModel.from_pretrained(str(tmp_path / "unet2")).eval(), lat,
                          timestep=torch.tensor([500]), encoder_hidden_states=enc)


def test_regional_training_routes_like_an_mqd_edit():
    """Training's batched maps equal the pipeline's MQD maps, and object pixels always hear their own phrase."""
    import numpy as np
    import torch

    from benchmark import shapes_world as sw
    from pipelines.attention import RegionMaps
    from training import regional

    rng = np.random.default_rng(3)
    scene = sw.sample_scene(rng, size=64, n_objects=3, split="train")
    prompts, owners = regional.region_layout(scene, rng, 64)
    assert prompts[0] == sw.caption(scene.background, []) and len(prompts) == 4
    for index, (obj, mask) in enumerate(zip(scene.objects, scene.masks), start=1):
        assert prompts[index] == sw.object_prompt(obj.colour, obj.shape)
        assert (owners[mask] == index).all()
    plain = np.zeros_like(owners)
    batched = regional.batched_allowed(torch.from_numpy(np.stack([owners, plain])), 20, 16)
    for length, allowed in batched.items():
        assert torch.equal(allowed[0:1], RegionMaps(owners, 4, 20, (16, 16)).allowed(length, torch.device("cpu")))
        assert allowed[1, 0, :, :20].all() and not allowed[1, 0, :, 20:].any()  # plain = region 0 only


def test_a_plain_sample_under_the_regional_processor_equals_plain_attention():
    import torch

    from tiny_models import tiny_pipeline
    from training import regional

    unet = tiny_pipeline().unet.eval()
    latents = torch.randn(1, 4, 16, 16, generator=torch.Generator().manual_seed(0))
    caption = torch.randn(1, 20, unet.config.cross_attention_dim, generator=torch.Generator().manual_seed(1))
    padded = torch.cat([caption, torch.randn(1, 60, caption.shape[-1])], dim=1)
    with torch.no_grad():
        expected = unet(latents, 10, encoder_hidden_states=caption).sample
        routing = regional.install(unet)
        routing.allowed = regional.batched_allowed(torch.zeros(1, 64, 64, dtype=torch.long), 20, 16)
        routed = unet(latents, 10, encoder_hidden_states=padded).sample
    torch.testing.assert_close(routed, expected, atol=1e-5, rtol=1e-5)
