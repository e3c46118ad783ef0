"""Train the embedded VAE (AutoencoderKL) on shapes-world scenes generated on the fly.

Loss: L1 + MSE + edge (L1 of finite differences: sharp object edges) + 1e-6 KL. AdamW, warmup + cosine over the
time budget. Resumes from runs/vae_ckpt.pt (with optimizer) or assets/embedded/vae (weights only). Checkpoints are
atomic; held-out PSNR is printed at each; scaling_factor = 1/std(latent means) is measured and written each time.
"""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from benchmark import metrics

from . import configs
from .common import (Timer, arch_key, atomic_save_pretrained, atomic_torch_save, hardware, lr_at, read_state,
                     sample_scenes, to_tensor, to_uint8, update_state)


def edge_loss(y: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    dyx = (y[..., 1:, :] - y[..., :-1, :]) - (x[..., 1:, :] - x[..., :-1, :])
    dxx = (y[..., :, 1:] - y[..., :, :-1]) - (x[..., :, 1:] - x[..., :, :-1])
    return dyx.abs().mean() + dxx.abs().mean()


OBJECT_WEIGHT = 8.0  # extra loss weight on object pixels (+1 px border): objects are few pixels but all that matters


def object_weights(scenes, size: int) -> torch.Tensor:
    """B x 1 x H x W loss weights: 1 on background, 1 + OBJECT_WEIGHT on (dilated) object pixels."""
    w = np.ones((len(scenes), 1, size, size), np.float32)
    for i, s in enumerate(scenes):
        if s.masks:
            m = torch.from_numpy(np.any(np.stack(s.masks), 0).astype(np.float32))[None, None]
            w[i, 0] += OBJECT_WEIGHT * F.max_pool2d(m, 3, 1, 1)[0, 0].numpy()
    return torch.from_numpy(w)


def vae_loss(vae, x: torch.Tensor, kl_weight: float = 1e-6, edge_weight: float = 0.5, decoder_only: bool = False,
             weights: torch.Tensor | None = None):
    with torch.set_grad_enabled(not decoder_only and torch.is_grad_enabled()):
        post = vae.encode(x).latent_dist
    y = vae.decode(post.sample()).sample
    w = torch.ones_like(x[:, :1]) if weights is None else weights.to(x.device)
    wn = w.mean() * x.shape[1]
    l1 = ((y - x).abs() * w).mean() / wn * x.shape[1]
    mse = (((y - x) ** 2) * w).mean() / wn * x.shape[1]
    edge = edge_loss(y, x)
    kl = post.kl().mean()
    loss = l1 + mse + edge_weight * edge + (0.0 if decoder_only else kl_weight * kl)
    return loss, {"l1": l1.item(), "mse": mse.item(), "edge": edge.item(), "kl": kl.item()}


@torch.no_grad()
def eval_psnr(vae, n: int = 256, seed: int = 1234, split: str = "heldout", size: int = configs.IMAGE_SIZE,
              bs: int = 64):
    vae.eval()
    dev = next(vae.parameters()).device
    rng = np.random.default_rng(seed)
    scenes = sample_scenes(rng, n, split=split, n_objects=(0, 3), size=size)
    imgs = np.stack([s.image for s in scenes])
    outs = []
    for i in range(0, n, bs):
        x = to_tensor(list(imgs[i : i + bs])).to(dev)
        z = vae.encode(x).latent_dist.mean
        outs.append(to_uint8(vae.decode(z).sample))
    vae.train()
    decoded = np.concatenate(outs)
    return float(np.mean([metrics.psnr(out, img) for out, img in zip(decoded, imgs)]))  # per image, then the mean


@torch.no_grad()
def measure_scaling_factor(vae, n: int = 2000, seed: int = 99, size: int = configs.IMAGE_SIZE, bs: int = 100) -> float:
    vae.eval()
    dev = next(vae.parameters()).device
    rng = np.random.default_rng(seed)
    zs = []
    for i in range(0, n, bs):
        scenes = sample_scenes(rng, min(bs, n - i), split="train", n_objects=(0, 3), size=size)
        zs.append(vae.encode(to_tensor([s.image for s in scenes]).to(dev)).latent_dist.mean.float().cpu())
    vae.train()
    return float(1.0 / torch.cat(zs).std())


def decoder_params(vae):
    return list(vae.post_quant_conv.parameters()) + list(vae.decoder.parameters())


def load_vae(out_dir: Path, run_dir: Path, tiny: bool, dev, lr: float, decoder_only: bool = False):
    """Returns (vae, optimizer, step, source)."""
    from diffusers import AutoencoderKL

    steps_done = int(read_state(out_dir).get("vae", {}).get("steps", 0))
    ckpt_path = run_dir / "vae_ckpt.pt"
    vae_dir = out_dir / "vae"
    if vae_dir.exists():
        vae = AutoencoderKL.from_pretrained(str(vae_dir))
        source = str(vae_dir)
    else:
        vae = configs.make_vae(tiny)
        source = "scratch"
    vae.to(dev).train()
    if decoder_only:
        vae.encoder.requires_grad_(False)
        vae.quant_conv.requires_grad_(False)
    opt = torch.optim.AdamW(decoder_params(vae) if decoder_only else vae.parameters(), lr=lr, weight_decay=1e-4, betas=(0.9, 0.99))
    if ckpt_path.exists():
        ck = torch.load(ckpt_path, map_location=dev, weights_only=True)
        if ck["step"] >= steps_done and ck.get("arch") == arch_key(vae.config):
            vae.load_state_dict(ck["model"])
            try:
                opt.load_state_dict(ck["opt"])
            except ValueError:
                pass
            steps_done = ck["step"]
            source = str(ckpt_path)
    return vae, opt, steps_done, source


def save_vae(vae, opt, step, out_dir: Path, run_dir: Path, info: dict, scaling_samples: int, size: int,
             decoder_only: bool = False):
    # decoder-only fine-tuning leaves the latent space (and so the UNet's scaling) untouched
    sf = float(vae.config.scaling_factor) if decoder_only else measure_scaling_factor(vae, n=scaling_samples, size=size)
    vae.register_to_config(scaling_factor=sf)
    atomic_save_pretrained(vae, out_dir / "vae")
    atomic_torch_save({"step": step, "model": vae.state_dict(), "opt": opt.state_dict(), "arch": arch_key(vae.config)},
                      run_dir / "vae_ckpt.pt")
    update_state(out_dir, "vae", steps=step, scaling_factor=sf, params=sum(p.numel() for p in vae.parameters()),
                 **info)
    return sf


def train_vae(
    minutes: float = 40.0,
    threads: int | None = 1,
    batch_size: int = 8,
    lr: float = 1e-3,
    warmup: int = 200,
    ckpt_minutes: float = 5.0,
    out_dir: Path | str = configs.EMBEDDED_DIR,
    run_dir: Path | str = configs.RUNS_DIR,
    tiny: bool = False,
    max_steps: int | None = None,
    eval_n: int = 256,
    scaling_samples: int = 2000,
    image_size: int = configs.IMAGE_SIZE,
    seed: int | None = None,
    quiet: bool = False,
    decoder_only: bool = False,
) -> dict:
    """Train for `minutes` (or `max_steps` steps of this run), resuming from `out_dir` and `run_dir`; checkpoint
    every `ckpt_minutes` and at the end. Returns the last checkpoint's record. (Long only by its keyword
    arguments, one a line.)"""
    configs.set_threads(threads)
    out_dir, run_dir = Path(out_dir), Path(run_dir)
    dev = configs.device()
    if not decoder_only and (out_dir / "unet").exists():
        # a UNet was trained on this VAE's latents: changing the encoder would invalidate it
        print("[vae] a UNet exists in the model folder: fine-tuning the decoder only", flush=True)
        decoder_only = True
    vae, opt, step0, source = load_vae(out_dir, run_dir, tiny, dev, lr, decoder_only)
    prior_minutes = float(read_state(out_dir).get("vae", {}).get("minutes", 0.0))
    if not quiet:
        print(f"[vae] {configs.n_params(vae)/1e6:.2f}M params, resume from {source} at step {step0}, device {dev}, "
              f"threads {torch.get_num_threads()}", flush=True)
    rng = np.random.default_rng(seed if seed is not None else int(time.time()) + step0)
    timer = Timer(minutes)
    step, i = step0, 0
    last_ckpt = time.time()
    hist: list[dict] = []
    result = {}
    pbar = tqdm(total=max_steps, disable=quiet, desc="vae", mininterval=10)

    def checkpoint(final: bool):
        # the scaling factor is measured on fewer samples at intermediate checkpoints
        info = checkpoint_vae(vae, opt, step, out_dir, run_dir, minutes=prior_minutes + timer.elapsed / 60, hist=hist,
                              batch_size=batch_size, eval_n=eval_n, image_size=image_size, decoder_only=decoder_only,
                              scaling_samples=scaling_samples if final else min(scaling_samples, 500))
        if not quiet:
            pbar.write(f"[vae] step {step} ({timer.elapsed/60:.1f} min) held-out PSNR {info['heldout_psnr']:.2f} dB, "
                       f"scaling_factor {info['scaling_factor']:.4f}")
        result.update(info, steps=step)

    while not timer.done() and (max_steps is None or i < max_steps):
        for g in opt.param_groups:
            g["lr"] = lr_at(i, timer.frac, lr, warmup)
        parts = vae_step(vae, opt, sample_scenes(rng, batch_size, split="train", n_objects=(0, 3), size=image_size),
                         image_size, dev, decoder_only)
        step += 1
        i += 1
        hist.append(parts)
        pbar.update(1)
        if i % 20 == 0:
            pbar.set_postfix(l1=f"{parts['l1']:.4f}", edge=f"{parts['edge']:.4f}", lr=f"{opt.param_groups[0]['lr']:.1e}")
        if time.time() - last_ckpt > ckpt_minutes * 60:
            checkpoint(final=False)
            last_ckpt = time.time()
    pbar.close()
    checkpoint(final=True)
    if not quiet:
        print(f"[vae] done: {result}", flush=True)
    return result


def vae_step(vae, opt, scenes, image_size: int, dev, decoder_only: bool) -> dict:
    """One optimizer step on a batch of scenes; returns the loss parts."""
    x = to_tensor([s.image for s in scenes]).to(dev)
    loss, parts = vae_loss(vae, x, decoder_only=decoder_only, weights=object_weights(scenes, image_size))
    opt.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(decoder_params(vae) if decoder_only else vae.parameters(), 1.0)
    opt.step()
    return parts


def checkpoint_vae(vae, opt, step: int, out_dir: Path, run_dir: Path, *, minutes: float, hist: list[dict],
                   batch_size: int, eval_n: int, image_size: int, decoder_only: bool, scaling_samples: int) -> dict:
    """Measure held-out PSNR, save the VAE (with its scaling factor) and the raw state; returns the record."""
    psnr = eval_psnr(vae, n=eval_n, size=image_size)
    info = dict(minutes=round(minutes, 2), hardware=hardware(),
                last_losses={k: float(np.mean([h[k] for h in hist[-100:]])) for k in hist[-1]} if hist else {},
                heldout_psnr=round(psnr, 3), batch_size=batch_size)
    scaling_factor = save_vae(vae, opt, step, out_dir, run_dir, info, scaling_samples, image_size, decoder_only)
    return {**info, "scaling_factor": scaling_factor}
