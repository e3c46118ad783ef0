"""Train the embedded UNet + text encoder jointly on frozen-VAE latents of shapes-world scenes.

Data: a pool of encoded scenes (posterior means * scaling_factor); every step `refresh` pool entries are replaced
with freshly drawn + encoded scenes, so encoding cost is amortised while data stays effectively unlimited.
Captions: 10% "" (the CFG null prompt), ~30% objects-only ("a red star and a blue house"), else the full caption;
~10% of scenes have no object ("a grass background"). 1-object curriculum for the first `curriculum_steps` steps.
Loss: v-prediction MSE with min-SNR-5 weighting; latent cells covered by an object (dilated by one cell) weigh
1 + OBJECT_LOSS_WEIGHT, because objects cover ~10% of a scene yet carry all of the shape information.
Half of the captioned object scenes are conditioned like an MQD edit (training/regional.py).
AdamW + warmup + cosine over the time budget, EMA 0.999.
Checkpoints (EMA weights) go atomically into assets/embedded/{unet,text_encoder}; runs/unet_ckpt.pt keeps raw
weights, optimizer and EMA state. A fresh machine resumes from the committed EMA weights (new optimizer).
"""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from . import configs
from . import regional
from .common import (EMA, RunOptions, arch_key, atomic_save_pretrained, atomic_torch_save, hardware,
                     load_raw_checkpoint, read_state, restore_optimizer, to_tensor, train_loop, update_state, world)
from .tokenizer import encode_text, load_tokenizer

P_DROP = 0.10  # caption -> "" (unconditional)
P_OBJECTS_ONLY = 0.30  # caption -> objects only
P_BACKGROUND_ONLY = 0.10  # scenes without objects
P_REGIONAL = 0.5  # captioned object scenes conditioned like an MQD edit (training/regional.py)
OBJECT_LOSS_WEIGHT = 4.0  # loss weight of object cells relative to background cells
# Objects' longer side in training scenes (64 px units), from run 4 on. Larger than the world's default 12-28 px:
# a 12 px star is 3x3 latent cells, too few to tell it from a heart, and edit boxes (1/9-1/3 of the image) are
# 21-37 px anyway.
TRAIN_OBJECT_PX = (16, 32)


def objects_caption(objects) -> str:
    """Same listing as shapes_world.caption without the background: "a red star, a blue house and a pink moon"."""
    sw = world()
    phrases = [sw.object_prompt(o.colour, o.shape) for o in objects]
    return phrases[0] if len(phrases) == 1 else ", ".join(phrases[:-1]) + " and " + phrases[-1]


def choose_caption(scene, rng: np.random.Generator) -> str:
    u = rng.random()
    if u < P_DROP:
        return ""
    if scene.objects and u < P_DROP + P_OBJECTS_ONLY:
        return objects_caption(scene.objects)
    return scene.caption


class LatentPool:
    """Encoded scenes kept in memory; `refresh` replaces a few random entries by new scenes."""

    def __init__(self, vae, size: int, rng: np.random.Generator, image_size: int, max_objects: int, bs: int = 64):
        self.vae, self.rng, self.image_size, self.max_objects = vae, rng, image_size, max_objects
        self.dev = next(vae.parameters()).device
        self.sf = float(vae.config.scaling_factor)
        self.scenes: list = []
        lat, wts = [], []
        for i in range(0, size, bs):
            sc = self._draw(min(bs, size - i))
            self.scenes += sc
            lat.append(self._encode(sc))
            wts.append(self._weights(sc, lat[-1].shape[-1]))
        self.latents = torch.cat(lat)
        self.weights = torch.cat(wts)

    def _draw(self, n: int):
        sw = world()
        out = []
        for _ in range(n):
            k = 0 if self.rng.random() < P_BACKGROUND_ONLY else int(self.rng.integers(1, self.max_objects + 1))
            out.append(sw.sample_scene(self.rng, size=self.image_size, n_objects=k, split="train",
                                       object_px=TRAIN_OBJECT_PX))
        return out

    @torch.no_grad()
    def _encode(self, scenes) -> torch.Tensor:
        x = to_tensor([s.image for s in scenes]).to(self.dev)
        return self.vae.encode(x).latent_dist.mean * self.sf

    def _weights(self, scenes, latent_size: int) -> torch.Tensor:
        """Per-cell loss weights (n, 1, h, w): 1 on background, 1 + OBJECT_LOSS_WEIGHT on (dilated) objects."""
        masks = np.zeros((len(scenes), 1, self.image_size, self.image_size), dtype=np.float32)
        for k, s in enumerate(scenes):
            for m in s.masks:
                masks[k, 0] = np.maximum(masks[k, 0], m.astype(np.float32))
        cells = F.adaptive_max_pool2d(torch.from_numpy(masks), latent_size)
        cells = F.max_pool2d(cells, 3, stride=1, padding=1)
        return (1.0 + OBJECT_LOSS_WEIGHT * cells).to(self.dev)

    def refresh(self, n: int) -> None:
        if n <= 0:
            return
        idx = self.rng.choice(len(self.scenes), size=n, replace=False)
        sc = self._draw(n)
        self.latents[torch.as_tensor(idx)] = self._encode(sc)
        self.weights[torch.as_tensor(idx)] = self._weights(sc, self.latents.shape[-1])
        for j, s in zip(idx, sc):
            self.scenes[j] = s

    def batch(self, bs: int):
        """Latents, per-sample region prompts (background first), owner maps [B, H, W] and loss weights.

        A plain sample is its caption in region 0 owning every pixel; a regional one routes like an MQD edit.
        """
        idx = self.rng.choice(len(self.scenes), size=bs, replace=False)
        prompts, owners = [], np.zeros((bs, self.image_size, self.image_size), dtype=np.int64)
        for k, j in enumerate(idx):
            scene = self.scenes[j]
            caption = choose_caption(scene, self.rng)
            if caption and scene.objects and self.rng.random() < P_REGIONAL:
                region_prompts, owners[k] = regional.region_layout(scene, self.rng, self.image_size)
            else:
                region_prompts = [caption]
            prompts.append(region_prompts + [""] * (regional.MAX_REGIONS - len(region_prompts)))
        index = torch.as_tensor(idx)
        return self.latents[index], prompts, torch.from_numpy(owners), self.weights[index]


def diffusion_loss(unet, text_encoder, tokenizer, noise_sched, latents, captions, gen=None, snr_gamma=5.0,
                   cell_weights=None):
    """Min-SNR weighted v/epsilon MSE; `cell_weights` (n, 1, h, w) reweights latent cells (normalised per sample).

    `captions`: one list of region prompts per sample (all the same length); their encodings are concatenated
    along the token axis, as the pipeline does for MQD.
    """
    dev = latents.device
    flat = [prompt for regions in captions for prompt in regions]
    enc = encode_text(text_encoder, tokenizer, flat)
    enc = enc.reshape(len(captions), -1, enc.shape[-1])
    noise = torch.randn(latents.shape, generator=gen, device=dev)
    t = torch.randint(0, noise_sched.config.num_train_timesteps, (latents.shape[0],), generator=gen, device=dev)
    noisy = noise_sched.add_noise(latents, noise, t)
    if noise_sched.config.prediction_type == "v_prediction":
        target = noise_sched.get_velocity(latents, noise, t)
    else:
        target = noise
    pred = unet(noisy, t, encoder_hidden_states=enc).sample
    ac = noise_sched.alphas_cumprod.to(dev)[t]
    snr = ac / (1 - ac)
    if noise_sched.config.prediction_type == "v_prediction":
        w = torch.clamp(snr, max=snr_gamma) / (snr + 1)
    else:
        w = torch.clamp(snr, max=snr_gamma) / snr.clamp(min=1e-8)
    err = F.mse_loss(pred.float(), target.float(), reduction="none").mean(1, keepdim=True)
    if cell_weights is None:
        per_sample = err.mean((1, 2, 3))
    else:
        per_sample = (err * cell_weights).sum((1, 2, 3)) / cell_weights.sum((1, 2, 3))
    loss = (per_sample * w).mean()
    return loss


def load_models(out_dir: Path, run_dir: Path, tiny: bool, dev, lr: float, ema_decay: float):
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextModel

    tok = load_tokenizer(out_dir / "tokenizer")
    vae = AutoencoderKL.from_pretrained(str(out_dir / "vae")).to(dev).eval().requires_grad_(False)
    state = read_state(out_dir).get("unet", {})
    steps_done = int(state.get("steps", 0))
    if (out_dir / "unet").exists() and (out_dir / "text_encoder").exists():
        unet = UNet2DConditionModel.from_pretrained(str(out_dir / "unet"))
        te = CLIPTextModel.from_pretrained(str(out_dir / "text_encoder"))
        source = str(out_dir)
    else:
        unet, te = configs.make_unet(tiny), configs.make_text_encoder(len(tok), tiny)
        source, steps_done = "scratch", 0
    unet.to(dev).train()
    te.to(dev).train()
    params = list(unet.parameters()) + list(te.parameters())
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=1e-2, betas=(0.9, 0.99))
    ema_u, ema_t = EMA(unet, ema_decay), EMA(te, ema_decay)
    ck_path = run_dir / "unet_ckpt.pt"
    ck = load_raw_checkpoint(ck_path, dev, steps_done, unet.config)
    if ck is not None:
        unet.load_state_dict(ck["unet"])
        te.load_state_dict(ck["text_encoder"])
        ema_u.load_state_dict(ck["ema_unet"])
        ema_t.load_state_dict(ck["ema_text"])
        restore_optimizer(opt, ck["opt"])
        steps_done, source = ck["step"], str(ck_path)
    elif not ck_path.exists():
        # fresh optimizer on committed (EMA) weights: EMA restarts from them with its warmup
        ema_u.n = ema_t.n = 1000 if source != "scratch" else 0
    return tok, vae, unet, te, opt, ema_u, ema_t, steps_done, source


def save_checkpoint(unet, te, ema_u, ema_t, opt, step, out_dir: Path, run_dir: Path, info: dict, tiny: bool):
    from diffusers import UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTextConfig

    eu = UNet2DConditionModel.from_config(unet.config)
    ema_u.copy_to(eu)
    et = CLIPTextModel(CLIPTextConfig.from_dict(te.config.to_dict()))
    ema_t.copy_to(et)
    atomic_save_pretrained(eu, out_dir / "unet")
    atomic_save_pretrained(et, out_dir / "text_encoder")
    atomic_torch_save({"step": step, "unet": unet.state_dict(), "text_encoder": te.state_dict(),
                       "ema_unet": ema_u.state_dict(), "ema_text": ema_t.state_dict(), "opt": opt.state_dict(),
                       "arch": arch_key(unet.config)}, run_dir / "unet_ckpt.pt")
    update_state(out_dir, "unet", steps=step, unet_params=configs.n_params(eu),
                 text_encoder_params=configs.n_params(et), **info)
    return eu, et


UNET_RUN = RunOptions(minutes=150.0, batch_size=32, lr=8e-4, warmup=300, ckpt_minutes=10.0)


def train_unet(options: RunOptions = UNET_RUN, *, ema: float = 0.999, pool: int = 2048, refresh: int = 8,
               curriculum_steps: int = 1500, image_size: int | None = None, quick_eval_n: int = 32) -> dict:
    """Train the UNet and text encoder (VAE frozen) as `options` say, resuming from `options.out_dir` (EMA weights)
    and `options.run_dir` (raw weights, optimizer, EMA); returns the last checkpoint's record (as in
    training_state.json). `pool` latents are kept, `refresh` of them redrawn each step; scenes have one object
    for the first `curriculum_steps` steps; `quick_eval_n` held-out captions are checked at each checkpoint."""
    configs.set_threads(options.threads)
    run = UNetRun(options, ema=ema, pool=pool, refresh=refresh, curriculum_steps=curriculum_steps,
                  image_size=image_size, quick_eval_n=quick_eval_n)
    return train_loop(run, options, "unet")


class UNetRun:
    """One `train_unet` run: the models (resumed), optimizer, EMA, latent pool, regional routing and counters."""

    def __init__(self, options: RunOptions, *, ema: float, pool: int, refresh: int, curriculum_steps: int,
                 image_size: int | None, quick_eval_n: int):
        self.options, self.refresh, self.quick_eval_n = options, refresh, quick_eval_n
        self.out_dir, self.run_dir, self.tiny = Path(options.out_dir), Path(options.run_dir), options.tiny
        self.dev = dev = configs.device()
        (self.tok, self.vae, self.unet, self.te, self.opt, self.ema_u, self.ema_t, self.step,
         source) = load_models(self.out_dir, self.run_dir, self.tiny, dev, options.lr, ema)
        self.noise_sched = noise_schedule(self.out_dir)
        self.image_size = image_size or int(self.vae.config.sample_size)
        self.prior_minutes = float(read_state(self.out_dir).get("unet", {}).get("minutes", 0.0))
        if not options.quiet:
            print(f"[unet] unet {configs.n_params(self.unet)/1e6:.2f}M + text {configs.n_params(self.te)/1e6:.2f}M "
                  f"params; resume from {source} at step {self.step}; device {dev}; "
                  f"threads {torch.get_num_threads()}; vae scaling_factor {self.vae.config.scaling_factor:.4f}",
                  flush=True)
        self.rng = np.random.default_rng(options.seed if options.seed is not None else int(time.time()) + self.step)
        self.gen = torch.Generator(device=dev).manual_seed(int(self.rng.integers(2**31)))
        started = time.time()
        self.curriculum_steps = curriculum_steps
        self.curriculum = self.step < curriculum_steps
        self.pool = LatentPool(self.vae, pool, self.rng, self.image_size, max_objects=1 if self.curriculum else 3)
        if not options.quiet:
            print(f"[unet] pool of {pool} latents in {time.time()-started:.1f}s; latent std "
                  f"{self.pool.latents.std():.3f}", flush=True)
        self.routing = regional.install(self.unet)
        self.steps_here = 0  # steps of this run
        self.losses: list[float] = []
        self.train_seconds = 0.0

    def train_step(self, lr: float) -> None:
        if self.curriculum and self.step >= self.curriculum_steps:
            self.curriculum = False
            self.pool.max_objects = 3
            self.pool.refresh(len(self.pool.scenes) // 2)
        for group in self.opt.param_groups:
            group["lr"] = lr
        started = time.time()
        self.pool.refresh(self.refresh)
        latents, captions, owners, cell_weights = self.pool.batch(self.options.batch_size)
        self.routing.allowed = regional.batched_allowed(owners.to(self.dev), self.tok.model_max_length,
                                                        latents.shape[-1])
        loss = diffusion_loss(self.unet, self.te, self.tok, self.noise_sched, latents, captions, self.gen,
                              cell_weights=cell_weights)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(list(self.unet.parameters()) + list(self.te.parameters()), 1.0)
        self.opt.step()
        self.ema_u.update(self.unet)
        self.ema_t.update(self.te)
        self.train_seconds += time.time() - started
        self.step += 1
        self.steps_here += 1
        self.losses.append(loss.item())

    def checkpoint(self, seconds: float, final: bool) -> dict:
        """Save the EMA weights (and raw state), run the quick held-out gates; returns the record with `steps`."""
        eu, et = save_checkpoint(self.unet, self.te, self.ema_u, self.ema_t, self.opt, self.step, self.out_dir,
                                 self.run_dir, {}, self.tiny)
        info = dict(minutes=round(self.prior_minutes + seconds / 60, 2), hardware=hardware(),
                    batch_size=self.options.batch_size,
                    last_loss=float(np.mean(self.losses[-200:])) if self.losses else None,
                    heldout_quick=self.quick_gates(eu, et, self.quick_eval_n) if self.quick_eval_n else {},
                    prediction_type=self.noise_sched.config.prediction_type,
                    sec_per_step=round(self.train_seconds / max(self.steps_here, 1), 3))
        update_state(self.out_dir, "unet", **info)
        return {**info, "steps": self.step}

    def describe(self, record: dict, seconds: float) -> str:
        return (f"[unet] checkpoint step {self.step} ({seconds/60:.1f} min) loss {record['last_loss']} "
                f"held-out {record['heldout_quick']}")

    def postfix(self) -> dict:
        return {"loss": f"{np.mean(self.losses[-100:]):.4f}", "lr": f"{self.opt.param_groups[0]['lr']:.1e}",
                "step": self.step}

    def quick_gates(self, unet, text_encoder, n: int) -> dict:
        """Held-out text-to-image on `n` captions; and (full models) masked edits through Session, as users make."""
        from editor import Session

        from .evaluate import masked_edit_gate, pipeline_from_modules, quick_gate

        metrics = quick_gate(unet.to(self.dev), text_encoder.to(self.dev), self.tok, self.vae, n=n,
                             image_size=self.image_size)
        if not self.tiny:
            session = Session(pipeline_from_modules(unet, text_encoder, self.tok, self.vae))
            metrics["masked_edit"] = masked_edit_gate(session, range(n // 2))
        return metrics


def noise_schedule(out_dir: Path):
    """The training noise schedule: the model folder's scheduler config, else the recipe's."""
    from diffusers import DDPMScheduler

    config = dict(configs.SCHEDULER_CONFIG)
    if (out_dir / "scheduler" / "scheduler_config.json").exists():
        config = DDPMScheduler.load_config(str(out_dir / "scheduler"))
    return DDPMScheduler.from_config(config)
