"""Shared helpers for the trainers: data, atomic checkpoints, training_state.json, EMA, lr schedule, the run loop."""
from __future__ import annotations

import json
import math
import os
import platform
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
import torch
from tqdm import tqdm

from memory import atomic_directory, atomic_file, write_atomic

from . import configs

STATE_FILE = "training_state.json"


# ---------------------------------------------------------------- data
def world():
    from benchmark import shapes_world as sw

    return sw


def to_tensor(images: list[np.ndarray]) -> torch.Tensor:
    """uint8 HxWx3 list -> float tensor Bx3xHxW in [-1, 1]."""
    x = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).float()
    return x / 127.5 - 1.0


def to_uint8(x: torch.Tensor) -> np.ndarray:
    """Bx3xHxW in [-1, 1] -> uint8 BxHxWx3."""
    x = ((x.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return x.permute(0, 2, 3, 1).cpu().numpy()


def sample_scenes(rng: np.random.Generator, n: int, split: str = "train", n_objects=(0, 3),
                  size: int = configs.IMAGE_SIZE):
    sw = world()
    return [sw.sample_scene(rng, size=size, n_objects=n_objects, split=split) for _ in range(n)]


# ---------------------------------------------------------------- checkpoints
def atomic_save_pretrained(model, out_dir: Path, **kw) -> None:
    """save_pretrained into a staging folder next to out_dir, then swap it in (memory.atomic_directory)."""
    with atomic_directory(out_dir, parents=True) as staging:
        model.save_pretrained(str(staging), safe_serialization=True, max_shard_size="15MB", **kw)


def atomic_torch_save(obj, path: Path) -> None:
    with atomic_file(path, parents=True) as file:
        torch.save(obj, file)


def load_raw_checkpoint(path: Path, dev, steps_done: int, model_config) -> dict | None:
    """The raw checkpoint at `path` (runs/) when it exists, is at least as far as `steps_done` (the committed
    weights' step) and is of the same architecture; else None (resume from the committed weights)."""
    if not path.exists():
        return None
    checkpoint = torch.load(path, map_location=dev, weights_only=True)
    if checkpoint["step"] >= steps_done and checkpoint.get("arch") == arch_key(model_config):
        return checkpoint
    return None


def restore_optimizer(optimizer, state: dict) -> None:
    """Load a saved optimizer state; one for another parameter set (e.g. decoder-only after full training) is
    ignored and the optimizer starts fresh."""
    try:
        optimizer.load_state_dict(state)
    except ValueError:
        pass


def read_state(model_dir: Path) -> dict:
    p = Path(model_dir) / STATE_FILE
    if p.exists():
        return json.loads(p.read_text())
    return {}


def update_state(model_dir: Path, component: str, **fields) -> dict:
    """Merge fields into training_state.json[component] (atomic write)."""
    model_dir = Path(model_dir)
    state = read_state(model_dir)
    comp = state.setdefault(component, {})
    comp.update(fields)
    state["hardware"] = hardware()
    state["updated"] = time.strftime("%Y-%m-%d %H:%M:%S")
    write_atomic(model_dir / STATE_FILE, (json.dumps(state, indent=2, sort_keys=True) + "\n").encode(), parents=True)
    return state


def hardware() -> str:
    if torch.cuda.is_available():
        return f"cuda:{torch.cuda.get_device_name(0)}"
    return f"cpu:{platform.processor() or platform.machine()} x{os.cpu_count()} cores, {torch.get_num_threads()} threads"


# ---------------------------------------------------------------- optimisation
def lr_at(step_in_run: int, frac_time: float, base_lr: float, warmup: int, min_frac: float = 0.1) -> float:
    """Linear warmup (steps of this run), then cosine decay over the run's time budget to min_frac * base_lr."""
    w = min(1.0, (step_in_run + 1) / max(1, warmup))
    f = min(max(frac_time, 0.0), 1.0)
    cos = min_frac + (1 - min_frac) * 0.5 * (1 + math.cos(math.pi * f))
    return base_lr * w * cos


class EMA:
    """Exponential moving average of parameters (with warmup: decay = min(decay, (1+n)/(10+n)))."""

    def __init__(self, model: torch.nn.Module, decay: float = 0.999):
        self.decay = decay
        self.shadow = {k: v.detach().clone().float() for k, v in model.state_dict().items()}
        self.n = 0

    @torch.no_grad()
    def update(self, model: torch.nn.Module) -> None:
        self.n += 1
        d = min(self.decay, (1 + self.n) / (10 + self.n))
        for k, v in model.state_dict().items():
            if v.dtype.is_floating_point:
                self.shadow[k].mul_(d).add_(v.detach().float(), alpha=1 - d)
            else:
                self.shadow[k].copy_(v)

    def copy_to(self, model: torch.nn.Module) -> None:
        model.load_state_dict({k: v.to(model.state_dict()[k].dtype) for k, v in self.shadow.items()})

    def state_dict(self) -> dict:
        return {"decay": self.decay, "n": self.n, "shadow": self.shadow}

    def load_state_dict(self, sd: dict) -> None:
        self.decay = sd["decay"]
        self.n = sd["n"]
        self.shadow = {k: v.clone() for k, v in sd["shadow"].items()}


def arch_key(config) -> str:
    """Architecture identity of a model config (ignores private keys and the VAE scaling factor)."""
    d = {k: v for k, v in dict(config).items() if not k.startswith("_") and k != "scaling_factor"}
    return json.dumps(d, sort_keys=True, default=list)


class Timer:
    def __init__(self, minutes: float):
        self.t0 = time.time()
        self.budget = minutes * 60.0

    @property
    def elapsed(self) -> float:
        return time.time() - self.t0

    @property
    def frac(self) -> float:
        return self.elapsed / max(self.budget, 1e-9)

    def done(self) -> bool:
        return self.elapsed >= self.budget


# ---------------------------------------------------------------- the run loop
@dataclass(frozen=True)
class RunOptions:
    """What every trainer's run takes (the common flags of `python -m training vae|unet`). Each trainer defines
    its defaults once (train_vae.VAE_RUN, train_unet.UNET_RUN); change them with dataclasses.replace."""

    minutes: float  # wall-clock budget of this run (setup excluded)
    batch_size: int
    lr: float  # peak learning rate
    warmup: int  # steps of linear warm-up (each run)
    ckpt_minutes: float  # checkpoint interval
    threads: int | None = 1  # torch CPU threads
    out_dir: Path | str = configs.EMBEDDED_DIR  # the model folder: resumed from, checkpointed into
    run_dir: Path | str = configs.RUNS_DIR  # raw weights + optimizer state
    tiny: bool = False  # tiny test configs
    max_steps: int | None = None  # stop after this many steps of this run
    seed: int | None = None  # None: time-based
    quiet: bool = False


class Run(Protocol):
    """One trainer's run as `train_loop` drives it."""

    steps_here: int  # steps of this run

    def train_step(self, lr: float) -> None: ...

    def checkpoint(self, seconds: float, final: bool) -> dict: ...

    def describe(self, record: dict, seconds: float) -> str: ...

    def postfix(self) -> dict: ...


def train_loop(run: Run, options: RunOptions, name: str) -> dict:
    """Step `run` until `options.minutes` run out (or `max_steps` steps of this run), with warm-up + cosine learning
    rate; checkpoint every `ckpt_minutes` and at the end. Returns the last checkpoint's record."""
    timer = Timer(options.minutes)
    last_checkpoint = time.time()
    result: dict = {}
    progress = tqdm(total=options.max_steps, disable=options.quiet, desc=name, mininterval=10)

    def checkpoint(final: bool) -> None:
        result.update(run.checkpoint(timer.elapsed, final))
        if not options.quiet:
            progress.write(run.describe(result, timer.elapsed))

    while not timer.done() and (options.max_steps is None or run.steps_here < options.max_steps):
        run.train_step(lr_at(run.steps_here, timer.frac, options.lr, options.warmup))
        progress.update(1)
        if run.steps_here % 20 == 0:
            progress.set_postfix(run.postfix())
        if time.time() - last_checkpoint > options.ckpt_minutes * 60:
            checkpoint(final=False)
            last_checkpoint = time.time()
    progress.close()
    checkpoint(final=True)
    if not options.quiet:
        print(f"[{name}] done: {result}", flush=True)
    return result
