"""Guidance adapters with a guidance head, the few-step "fast" mode, and training on edit rollouts (tiny models)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from editor import EditSettings, Session
from pipelines import bcg
from pipelines.guidance import load_guidance_adapter
from pipelines.guidance_format import (ADAPTER_NAME, EMBEDDING_DIM, HEAD_FILE, add_guidance_projection,
                                       make_guidance_head, read_guidance_config)
from pipelines.schedulers import make_scheduler
from tiny_models import tiny_pipeline
from training.distill import DistillConfig, distill, list_prompts, save_guidance_adapter, student_output
from training.distill.adapter import lora_config

PROMPTS = ["a red star", "a blue circle on a grass background", "a white moon on a night background"]
BOX = (4, 4, 20, 20)
FAST_STEPS = 2
TINY_TRAINING = dict(rank=4, lr=3e-3, warmup=1, val_prompts=1, accumulate=1, sample_steps=(3, 3))


def headed_adapter(unet, seed: int = 0) -> None:
    """A live gain-one adapter with random LoRA B, projection and guidance head (a trained one stands in)."""
    add_guidance_projection(unet)
    unet.add_adapter(lora_config(4), adapter_name=ADAPTER_NAME)
    unet.guidance_head = make_guidance_head(unet)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in unet.named_parameters():
            if "lora_B" in name or "cond_proj" in name or name.startswith("guidance_head."):
                param.copy_(torch.randn(param.shape, generator=generator) * 0.05)


@pytest.fixture(scope="module")
def headed_dir(tmp_path_factory):
    pipeline = tiny_pipeline()
    headed_adapter(pipeline.unet)
    return save_guidance_adapter(pipeline.unet, tmp_path_factory.mktemp("headed") / "guidance", base_model="tiny",
                                 lora_gain="one")


@pytest.fixture(scope="module")
def fast_dir(tmp_path_factory):
    """A fast adapter trained for two steps on edit rollouts of the tiny model (the whole training path)."""
    out = tmp_path_factory.mktemp("fast") / "fast"
    config = DistillConfig(mode="fast", lora_gain="one", steps=2, fast_steps=FAST_STEPS, teacher_steps=4,
                           **TINY_TRAINING)
    meta = distill(tiny_pipeline(), out, config, list_prompts(PROMPTS), progress=False, log=lambda _: None,
                   state_dir=out.parent / "state")
    assert meta["mode"] == "fast" and meta["fast_steps"] == FAST_STEPS and meta["steps"] == 2
    return out


def unet_input(pipeline, seed: int = 0):
    from training.distill.data import encode_prompts

    generator = torch.Generator().manual_seed(seed)
    return torch.randn((2, 4, 16, 16), generator=generator), torch.tensor([900, 300]), encode_prompts(pipeline, PROMPTS[:2])


def test_a_headed_adapter_loads_back_with_identical_outputs_linear_in_the_scale(headed_dir):
    live = tiny_pipeline()
    headed_adapter(live.unet)
    latents, t, cond = unet_input(live)
    loaded = tiny_pipeline()
    adapter = load_guidance_adapter(loaded, headed_dir)
    assert read_guidance_config(headed_dir)["head"] and (headed_dir / HEAD_FILE).is_file()
    outputs = {}
    for scale in (2.0, 4.0, 7.5):
        with torch.no_grad():
            expected = student_output(live.family, latents, t, cond, torch.full((2,), scale), EMBEDDING_DIM, "one")
            with adapter.applied(scale):
                fused = loaded.unet(latents, t, encoder_hidden_states=cond,
                                    timestep_cond=adapter.embedding(scale, 2, latents.device, latents.dtype)).sample
        torch.testing.assert_close(fused, expected, rtol=1e-4, atol=1e-5)
        outputs[scale] = fused
    assert not torch.allclose(outputs[2.0], outputs[7.5], atol=1e-3)  # the head carries the scale
    plain = tiny_pipeline()
    with torch.no_grad():  # outside `applied` the UNet is exactly the teacher
        assert torch.equal(loaded.unet(latents, t, encoder_hidden_states=cond).sample,
                           plain.unet(latents, t, encoder_hidden_states=cond).sample)


def test_guidance_and_fast_adapters_side_by_side_do_not_interfere_and_cfg_is_unchanged(headed_dir, fast_dir):
    both, only_guidance, only_fast, plain = (tiny_pipeline() for _ in range(4))
    load_guidance_adapter(both, headed_dir)
    load_guidance_adapter(both, fast_dir, "fast")
    load_guidance_adapter(only_guidance, headed_dir)
    load_guidance_adapter(only_fast, fast_dir, "fast")
    assert both.fast_steps == FAST_STEPS and only_guidance.fast_steps is None

    def image(pipeline, guidance, steps):
        return pipeline("a red star", num_inference_steps=steps, guidance=guidance, guidance_scale=5.0, seed=3).image

    assert np.array_equal(image(both, "distilled", 3), image(only_guidance, "distilled", 3))
    assert np.array_equal(image(both, "fast", FAST_STEPS), image(only_fast, "fast", FAST_STEPS))
    assert np.array_equal(image(both, "cfg", 3), image(plain, "cfg", 3))
    with pytest.raises(ValueError, match=f"runs its adapter's {FAST_STEPS} DDIM steps"):
        image(both, "fast", 5)
    with pytest.raises(ValueError, match="holds a 'fast' adapter"):
        load_guidance_adapter(tiny_pipeline(), fast_dir)


def test_fast_edits_keep_pixels_outside_the_mask_follow_the_memory_and_undo_exactly(fast_dir, tiny_model_dir):
    pipeline = tiny_pipeline()
    load_guidance_adapter(pipeline, fast_dir, "fast")
    session = Session(pipeline, model=str(tiny_model_dir), defaults=EditSettings(guidance="fast", mask_fit="whole"))
    session.generate("a grass background", seed=5)
    assert session.layers[0].info["unet_evals"] == FAST_STEPS
    before = np.asarray(session.image).copy()
    session.edit("a red star", BOX)
    layer = session.layers[-1]
    assert layer.info["guidance"] == "fast" and layer.info["unet_evals"] == FAST_STEPS
    assert layer.info["bcg"] == "memory"
    outside = np.ones(before.shape[:2], dtype=bool)
    outside[BOX[1]:BOX[3], BOX[0]:BOX[2]] = False
    after = np.asarray(session.image)
    assert np.array_equal(after[outside], before[outside]) and not np.array_equal(after, before)
    session.undo()
    assert len(session.layers) == 1 and np.array_equal(np.asarray(session.image), before)
    with pytest.raises(ValueError, match="no negative prompt"):
        session.edit("a red star", BOX, negative_prompt="blurry")


def test_a_few_step_run_follows_a_longer_memory_at_its_own_noise_levels():
    config = tiny_pipeline().scheduler.config
    long_run, short_run = (make_scheduler("ddim", config, timestep_spacing="trailing") for _ in range(2))
    long_run.set_timesteps(20)
    short_run.set_timesteps(4)
    from pipelines.schedulers import schedule_fingerprint

    steps = bcg.matching_steps(schedule_fingerprint(long_run), short_run)
    assert steps == [4, 9, 14, 19]
    for step, index in enumerate(steps):  # the memory's latent after `index` sits where this run is after `step`
        after_long = long_run.timesteps[index + 1] if index + 1 < 20 else -1
        after_short = short_run.timesteps[step + 1] if step + 1 < 4 else -1
        assert int(after_long) == int(after_short)
    odd = make_scheduler("ddim", config, timestep_spacing="trailing")
    odd.set_timesteps(3)  # 999, 666, 333: not among the 20 steps' levels
    assert bcg.matching_steps(schedule_fingerprint(long_run), odd) is None


def test_training_on_edit_rollouts_reduces_the_error_where_the_loss_looks(tmp_path):
    out = tmp_path / "guidance"
    prompts = list_prompts(PROMPTS)
    start = distill(tiny_pipeline(), out, DistillConfig(steps=0, data="edits", **TINY_TRAINING), prompts,
                    progress=False, log=lambda _: None, state_dir=tmp_path / "state")
    trained = distill(tiny_pipeline(), out, DistillConfig(steps=12, data="edits", **{**TINY_TRAINING, "lr": 1e-3}), prompts,
                      progress=False, log=lambda _: None, state_dir=tmp_path / "state")
    assert trained["data"] == "edits" and trained["head"] and trained["steps"] == 12
    assert trained["val_rel_error"]["v"]["mean"] < start["val_rel_error"]["v"]["mean"]
    by_step = trained["val_rel_error"]["x0_by_step"]
    assert set(by_step) == {"s=2", "s=4", "s=7.5"} and all(len(errors) == 20 for errors in by_step.values())


def test_the_guidance_modes_benchmark_prints_every_number_from_one_run(tiny_model_dir, headed_dir, fast_dir, tmp_path,
                                                                       capsys):
    import json
    import shutil

    from benchmark import guidance_modes

    model = tmp_path / "model"
    shutil.copytree(tiny_model_dir, model)
    shutil.copytree(headed_dir, model / "guidance")
    shutil.copytree(fast_dir, model / "fast")
    result = guidance_modes.main(["--model", str(model), "--plans", "1", "--workers", "1", "--repeats", "1",
                                  "--steps", "3", "--json", str(tmp_path / "out.json")])
    out = capsys.readouterr().out
    assert result["modes"] == ["cfg", "distilled", "fast"]
    assert result["latency"]["unet_evals_per_edit"] == {"cfg": 6, "distilled": 3, "fast": FAST_STEPS}
    assert set(result["x0_errors"]["distilled"]) == {"s=2", "s=4", "s=7.5"}
    assert all(len(errors) == 3 for errors in result["x0_errors"]["distilled"].values())
    assert all(len(errors) == FAST_STEPS for errors in result["x0_errors"]["fast"].values())
    quality = result["quality"]
    assert quality["edits"] > 0 and quality["cfg_success"]["n"] == quality["edits"]
    assert quality["fast_minus_cfg_success"]["mcnemar"]["n"] == quality["edits"]
    by_background = quality["by_background"]  # the per-background counts add up to the totals
    assert sum(counts["edits"] for counts in by_background.values()) == quality["edits"]
    assert sum(counts["distilled_colour"] for counts in by_background.values()) == round(
        quality["distilled_colour"]["value"] * quality["edits"])
    for line in ("Task quality, paired", "by background, edits found", "distilled - CFG: colour + shape", "fast - CFG", "McNemar p=",
                 "Per-step x0 relative error of fast", "bare UNet call batch 1 / batch 2", "fast / CFG-20 edit",
                 "same-seed PSNR vs CFG"):
        assert line in out
    rows = json.loads((tmp_path / "out.json").read_text())["rows"]
    assert {"cfg", "distilled", "fast"} <= set(rows[0])


def test_a_format_1_adapter_gains_a_head_on_resume_and_trains_on_edits_and_trajectories(tmp_path):
    out, prompts = tmp_path / "guidance", list_prompts(PROMPTS)
    settings = dict(TINY_TRAINING, lora_gain="scale-1", batch_size=2, trajectories=2)
    quiet = dict(progress=False, log=lambda _: None, state_dir=tmp_path / "state")
    distill(tiny_pipeline(), out, DistillConfig(steps=1, head=False, data="trajectories", **settings), prompts, **quiet)
    assert not read_guidance_config(out)["head"] and not (out / HEAD_FILE).exists()
    meta = distill(tiny_pipeline(), out, DistillConfig(steps=4, data="edits+trajectories", **settings), prompts,
                   **quiet)
    assert meta["head"] and meta["steps"] == 4 and meta["data"] == "edits+trajectories" and (out / HEAD_FILE).is_file()
    loaded = tiny_pipeline()
    assert load_guidance_adapter(loaded, out).head is not None
    with pytest.raises(ValueError, match="without a guidance head"):  # a headed adapter cannot lose its head
        distill(tiny_pipeline(), out, DistillConfig(steps=5, head=False, **settings), prompts, **quiet)


@pytest.mark.parametrize("sampling", ["by-noise", "all"])
def test_edit_rollouts_train_on_high_noise_calls_more_when_sampling_by_noise(sampling):
    """by-noise: a call at t is trained on with probability max(0.25, t / T); the others still advance the
    rollout (through the student or the teacher), so every scene runs all of its steps."""
    from training.distill.adapter import prepare_student
    from training.distill.data import encode_prompts
    from training.distill.rollouts import EditRollouts, prompt_scenes

    pipeline = tiny_pipeline()
    config = DistillConfig(steps=10, data="edits", call_sampling=sampling, **{**TINY_TRAINING, "sample_steps": (10, 10)})
    prepare_student(pipeline.unet, Path("no-adapter-here"), config)
    learned, seen = [], []

    class Recording(EditRollouts):
        def trains_on(self, t):
            seen.append(int(t))
            return super().trains_on(t)

    rollouts = Recording(pipeline, prompt_scenes(list_prompts(PROMPTS), pipeline.default_size),
                         encode_prompts(pipeline, [""]), config, np.random.default_rng(0),
                         lambda pred, target, sample, t: learned.append(int(t[0])))
    for _ in range(3):
        rollouts.run_scene()
    assert len(seen) >= 60 and rollouts.calls == len(learned)  # 3 scenes of a background + 1-2 edits, 10 steps
    if sampling == "all":
        assert sorted(learned) == sorted(seen)
    else:
        high = [t for t in seen if t > 700]
        low = [t for t in seen if t < 250]
        assert sum(t > 700 for t in learned) / len(high) > 0.6 > 0.45 > sum(t < 250 for t in learned) / len(low)
