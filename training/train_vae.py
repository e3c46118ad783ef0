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

from benchmark import metrics

from . import configs
from .common import (RunOptions, arch_key, atomic_save_pretrained, atomic_torch_save, hardware, load_raw_checkpoint,
                     read_state, restore_optimizer, sample_scenes, to_tensor, to_uint8, train_loop, update_state)


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
    opt = torch.optim.AdamW(decoder_params(vae) if decoder_only else vae.parameters(), lr=lr, weight_decay=1e-4,
                            betas=(0.9, 0.99))
    ck = load_raw_checkpoint(ckpt_path, dev, steps_done, vae.config)
    if ck is not None:
        vae.load_state_dict(ck["model"])
        restore_optimizer(opt, ck["opt"])
        steps_done, source = ck["step"], str(ckpt_path)
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


VAE_RUN = RunOptions(minutes=40.0, batch_size=8, lr=1e-3, warmup=200, ckpt_minutes=5.0)


def train_vae(options: RunOptions = VAE_RUN, *, eval_n: int = 256, scaling_samples: int = 2000,
              image_size: int = configs.IMAGE_SIZE, decoder_only: bool = False) -> dict:
    """Train the VAE as `options` say, resuming from `options.run_dir` (with optimizer) or `options.out_dir`
    (weights only); returns the last checkpoint's record. Each checkpoint measures held-out PSNR on `eval_n`
    scenes and the scaling factor on `scaling_samples` (500 at most between checkpoints). `decoder_only` keeps the
    latent space fixed; it is forced once a UNet exists in the model folder."""
    configs.set_threads(options.threads)
    run = VAERun(options, eval_n=eval_n, scaling_samples=scaling_samples, image_size=image_size,
                 decoder_only=decoder_only)
    return train_loop(run, options, "vae")


class VAERun:
    """One `train_vae` run: the VAE (resumed), its optimizer, the scene generator and the loss history."""

    def __init__(self, options: RunOptions, *, eval_n: int, scaling_samples: int, image_size: int,
                 decoder_only: bool):
        self.options, self.eval_n, self.scaling_samples, self.image_size = options, eval_n, scaling_samples, image_size
        self.out_dir, self.run_dir = Path(options.out_dir), Path(options.run_dir)
        self.dev = configs.device()
        if not decoder_only and (self.out_dir / "unet").exists():
            # a UNet was trained on this VAE's latents: changing the encoder would invalidate it
            print("[vae] a UNet exists in the model folder: fine-tuning the decoder only", flush=True)
            decoder_only = True
        self.decoder_only = decoder_only
        self.vae, self.opt, self.step, source = load_vae(self.out_dir, self.run_dir, options.tiny, self.dev,
                                                         options.lr, decoder_only)
        self.prior_minutes = float(read_state(self.out_dir).get("vae", {}).get("minutes", 0.0))
        if not options.quiet:
            print(f"[vae] {configs.n_params(self.vae)/1e6:.2f}M params, resume from {source} at step {self.step}, "
                  f"device {self.dev}, threads {torch.get_num_threads()}", flush=True)
        self.rng = np.random.default_rng(options.seed if options.seed is not None else int(time.time()) + self.step)
        self.steps_here = 0
        self.history: list[dict] = []  # loss parts per step

    def train_step(self, lr: float) -> None:
        for group in self.opt.param_groups:
            group["lr"] = lr
        scenes = sample_scenes(self.rng, self.options.batch_size, split="train", n_objects=(0, 3),
                               size=self.image_size)
        x = to_tensor([s.image for s in scenes]).to(self.dev)
        loss, parts = vae_loss(self.vae, x, decoder_only=self.decoder_only,
                               weights=object_weights(scenes, self.image_size))
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(decoder_params(self.vae) if self.decoder_only else self.vae.parameters(), 1.0)
        self.opt.step()
        self.step += 1
        self.steps_here += 1
        self.history.append(parts)

    def checkpoint(self, seconds: float, final: bool) -> dict:
        """Measure held-out PSNR, save the VAE (with its scaling factor) and the raw state; returns the record."""
        psnr = eval_psnr(self.vae, n=self.eval_n, size=self.image_size)
        history = self.history
        info = dict(minutes=round(self.prior_minutes + seconds / 60, 2), hardware=hardware(),
                    last_losses={k: float(np.mean([h[k] for h in history[-100:]])) for k in history[-1]}
                    if history else {},
                    heldout_psnr=round(psnr, 3), batch_size=self.options.batch_size)
        samples = self.scaling_samples if final else min(self.scaling_samples, 500)
        scaling_factor = save_vae(self.vae, self.opt, self.step, self.out_dir, self.run_dir, info, samples,
                                  self.image_size, self.decoder_only)
        return {**info, "steps": self.step, "scaling_factor": scaling_factor}

    def describe(self, record: dict, seconds: float) -> str:
        return (f"[vae] step {self.step} ({seconds/60:.1f} min) held-out PSNR {record['heldout_psnr']:.2f} dB, "
                f"scaling_factor {record['scaling_factor']:.4f}")

    def postfix(self) -> dict:
        parts = self.history[-1]
        return {"l1": f"{parts['l1']:.4f}", "edge": f"{parts['edge']:.4f}",
                "lr": f"{self.opt.param_groups[0]['lr']:.1e}"}
