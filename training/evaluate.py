"""Quality gates for the embedded model, on held-out data, measured with the analytic detector.

- VAE: PSNR of reconstructions of held-out scenes (256, fixed seed).
- Text-to-image, single object: prompts are held-out captions ("a red star on a sand background" with
  shapes_world.is_held_out True), fixed seeds, DDIM 20 steps, CFG; detector over the whole image ->
  colour accuracy and shape accuracy (colour and shape both right).
- Masked edit through editor.Session (defaults: BCG from memory, MQD, pixel preserve): a held-out (colour, shape)
  object asked for inside a random box of 1/9-1/3 of the image on a generated background -> the detector's colour
  (and shape) success inside the box, and the max abs pixel difference outside the box (must be 0).
- Speed: one edit-sized generation (20 DDIM steps at CFG batch 2 + VAE decode), median wall time; and the median
  wall time of Session.edit (background + default settings) over the masked edits.
Writes results.json and contact_sheet.png.
"""
from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import torch

from . import configs
from .common import to_uint8, world
from .tokenizer import encode_text, load_tokenizer


def heldout_prompts(n: int, seed: int = 0) -> list[tuple[str, str, str, str]]:
    """n (prompt, colour, shape, background) with held-out single-object triples, deterministic."""
    sw = world()
    triples = [(c, s, b) for b in sw.BACKGROUNDS for c in sw.COLOURS for s in sw.SHAPES if sw.is_held_out(c, s, b)]
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(triples))
    out = []
    for i in range(n):
        c, s, b = triples[order[i % len(triples)]]
        out.append((sw.caption(b, [sw.SceneObject(c, s, (0, 0, 1, 1))]), c, s, b))
    return out


@torch.no_grad()
def sample(unet, text_encoder, tok, vae, prompts: list[str], seeds: list[int], steps: int = 20, cfg: float = 5.0,
           scheduler=None, batch: int = 50) -> np.ndarray:
    """Plain diffusers-style DDIM + classifier-free guidance loop (null prompt ""). Returns uint8 BxHxWx3."""
    from diffusers import DDIMScheduler

    sched = scheduler or DDIMScheduler(**configs.SCHEDULER_CONFIG)
    dev = next(unet.parameters()).device
    was_training = unet.training, text_encoder.training
    unet.eval()
    text_encoder.eval()
    sf = float(vae.config.scaling_factor)
    size = int(unet.config.sample_size)
    out = []
    for i in range(0, len(prompts), batch):
        ps, ss = prompts[i : i + batch], seeds[i : i + batch]
        cond = encode_text(text_encoder, tok, ps)
        uncond = encode_text(text_encoder, tok, [""]).expand_as(cond)
        emb = torch.cat([uncond, cond])
        lat = torch.stack([torch.randn(unet.config.in_channels, size, size,
                                       generator=torch.Generator().manual_seed(int(s))) for s in ss]).to(dev)
        sched.set_timesteps(steps)
        lat = lat * sched.init_noise_sigma
        for t in sched.timesteps:
            inp = sched.scale_model_input(torch.cat([lat, lat]), t)
            pu, pc = unet(inp, t, encoder_hidden_states=emb).sample.chunk(2)
            lat = sched.step(pu + cfg * (pc - pu), t, lat).prev_sample
        out.append(to_uint8(vae.decode(lat / sf).sample))
    if was_training[0]:
        unet.train()
    if was_training[1]:
        text_encoder.train()
    return np.concatenate(out)


def detector_scores(images: np.ndarray, items) -> dict:
    from benchmark.detector import detect

    col, shp = [], []
    for img, (_, c, s, _b) in zip(images, items):
        h, w = img.shape[:2]
        d = detect(img, (0, 0, w, h), c, s)
        col.append(bool(d.colour_found))
        shp.append(bool(d.colour_found and d.shape_found))
    return {"colour_acc": float(np.mean(col)), "shape_acc": float(np.mean(shp)), "n": len(col)}


def quick_gate(unet, text_encoder, tok, vae, n: int = 32, steps: int = 20, cfg: float = 5.0, image_size=None) -> dict:
    """Small held-out text-to-image check used at training checkpoints."""
    items = heldout_prompts(n, seed=0)
    imgs = sample(unet, text_encoder, tok, vae, [p for p, *_ in items], list(range(n)), steps=steps, cfg=cfg)
    return {k: round(v, 3) if isinstance(v, float) else v for k, v in detector_scores(imgs, items).items()}


def heldout_edit(seed: int):
    """A background and one held-out (colour, shape) edit in a random box, all from `seed`."""
    sw = world()
    rng = np.random.default_rng(1000 + seed)
    while True:
        background = str(rng.choice(sw.BACKGROUNDS))
        colour, shape = str(rng.choice(list(sw.COLOURS))), str(rng.choice(sw.SHAPES))
        if sw.is_held_out(colour, shape, background):
            return background, colour, shape, sw.random_box(rng, 64)


def masked_edit_gate(session, seeds, keep_images: bool = False) -> dict:
    """Held-out masked edits through `session` (an editor.Session): detector success inside the box, pixels outside."""
    from benchmark.detector import detect
    from pipelines import masks

    sw = world()
    colour_hits, shape_hits, changed_outside, seconds, images = [], [], 0, [], []
    for seed in seeds:
        background, colour, shape, box = heldout_edit(seed)
        session.generate(sw.caption(background, []), seed=seed)
        before = np.asarray(session.image).copy()
        t0 = time.perf_counter()
        session.edit(sw.object_prompt(colour, shape), box)
        seconds.append(time.perf_counter() - t0)
        after = np.asarray(session.image)
        outside = ~masks.box_mask(box, session.size)
        changed_outside += int(np.abs(after.astype(int) - before.astype(int))[outside].max(initial=0) > 0)
        found = detect(after, box, colour, shape)
        colour_hits.append(bool(found.colour_found))
        shape_hits.append(bool(found.colour_found and found.shape_found))
        if keep_images:
            framed = after.copy()
            x0, y0, x1, y1 = box
            framed[y0, x0:x1] = framed[y1 - 1, x0:x1] = framed[y0:y1, x0] = framed[y0:y1, x1 - 1] = 255
            images.append(framed)
    result = {"colour_in_box": round(float(np.mean(colour_hits)), 3), "shape_in_box": round(float(np.mean(shape_hits)), 3),
              "edits_changing_pixels_outside": changed_outside, "n": len(colour_hits),
              "seconds_per_edit_median": round(float(np.median(seconds)), 4)}
    return (result, np.stack(images)) if keep_images else result


def pipeline_from_modules(unet, text_encoder, tok, vae, scheduler=None):
    """A LayeredPipeline over in-memory modules (training checkpoints are evaluated before they are shipped)."""
    from diffusers import DDIMScheduler

    from pipelines import LayeredPipeline

    pipe = LayeredPipeline(vae=vae, text_encoder=text_encoder, tokenizer=tok, unet=unet,
                           scheduler=scheduler or DDIMScheduler(**configs.SCHEDULER_CONFIG))
    pipe.set_progress_bar_config(disable=True)
    return pipe


def contact_sheet(images: np.ndarray, cols: int = 16, pad: int = 2) -> np.ndarray:
    n, h, w, _ = images.shape
    rows = (n + cols - 1) // cols
    sheet = np.full((rows * (h + pad) + pad, cols * (w + pad) + pad, 3), 255, np.uint8)
    for i, im in enumerate(images):
        r, c = divmod(i, cols)
        sheet[pad + r * (h + pad) : pad + r * (h + pad) + h, pad + c * (w + pad) : pad + c * (w + pad) + w] = im
    return sheet


def load_model(model_dir: Path | str):
    from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
    from transformers import CLIPTextModel

    d = Path(model_dir)
    dev = configs.device()
    tok = load_tokenizer(d / "tokenizer")
    vae = AutoencoderKL.from_pretrained(str(d / "vae")).to(dev).eval()
    unet = UNet2DConditionModel.from_pretrained(str(d / "unet")).to(dev).eval()
    te = CLIPTextModel.from_pretrained(str(d / "text_encoder")).to(dev).eval()
    sched = DDIMScheduler.from_pretrained(str(d / "scheduler")) if (d / "scheduler").exists() else None
    return tok, vae, unet, te, sched


def evaluate(model_dir: Path | str = configs.EMBEDDED_DIR, n: int = 200, cfg: float = 5.0, steps: int = 20,
             threads: int | None = 2, out_dir: Path | str | None = None, psnr_n: int = 256, edits: int = 100) -> dict:
    from PIL import Image

    from .train_vae import eval_psnr

    configs.set_threads(threads)
    out_dir = Path(out_dir or configs.RUNS_DIR / "eval")
    out_dir.mkdir(parents=True, exist_ok=True)
    tok, vae, unet, te, sched = load_model(model_dir)
    res: dict = {"model": str(model_dir), "hardware": f"{configs.device()} threads={torch.get_num_threads()}"}
    res["vae_heldout_psnr"] = round(eval_psnr(vae, n=psnr_n, size=int(vae.config.sample_size)), 3)
    items = heldout_prompts(n, seed=0)
    t0 = time.time()
    imgs = sample(unet, te, tok, vae, [p for p, *_ in items], list(range(n)), steps=steps, cfg=cfg, scheduler=sched)
    res["t2i_seconds_per_image_batched"] = round((time.time() - t0) / n, 4)
    res["t2i_single_object_heldout"] = detector_scores(imgs, items) | {"cfg": cfg, "steps": steps}
    times = []
    for k in range(5):  # one edit-sized generation: batch 1 (CFG batch 2), 20 steps, decode
        t0 = time.time()
        sample(unet, te, tok, vae, [items[0][0]], [k], steps=steps, cfg=cfg, scheduler=sched)
        times.append(time.time() - t0)
    res["seconds_per_generation_median"] = round(float(np.median(times)), 4)
    from editor import Session

    session = Session(pipeline_from_modules(unet, te, tok, vae, sched))
    res["masked_edit_heldout"], edited = masked_edit_gate(session, range(edits), keep_images=True)
    Image.fromarray(contact_sheet(edited[:64])).save(out_dir / "masked_edits.png")
    res["prompts"] = [p for p, *_ in items[:64]]
    (out_dir / "results.json").write_text(json.dumps(res, indent=2) + "\n")
    Image.fromarray(contact_sheet(imgs[:128])).save(out_dir / "contact_sheet.png")
    return res
