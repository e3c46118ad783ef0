"""Distilled guidance on tiny random models: one UNet pass per step, CFG untouched when it is off."""

from __future__ import annotations

import argparse

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from editor import EditSettings, Session
from pipelines.guidance import load_guidance_adapter
from pipelines.guidance_format import (ADAPTER_NAME, EMBEDDING_DIM, LORA_FILE, MAX_SCALE, PROJECTION_FILE,
                                       add_guidance_projection, attach_guidance_adapter)
from tiny_models import tiny_pipeline
from training.distill import (DistillConfig, add_distill_command, distill, list_prompts, run_distill_command,
                              save_guidance_adapter, student_output)
from training.distill.adapter import lora_config
from training.distill.data import encode_prompts

STEPS = 4
BOX = (4, 4, 20, 20)
PROMPTS = ["a red star", "a blue circle on a grass background", "a white moon on a night background"]


def random_adapter(unet, rank: int = 4, seed: int = 0) -> None:
    """A live adapter whose LoRA B and projection are random (a trained adapter stands in)."""
    add_guidance_projection(unet)
    unet.add_adapter(lora_config(rank), adapter_name=ADAPTER_NAME)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in unet.named_parameters():
            if "lora_B" in name or "cond_proj" in name:
                param.copy_(torch.randn(param.shape, generator=generator) * 0.05)


@pytest.fixture(scope="module")
def adapter_dir(tmp_path_factory):
    pipeline = tiny_pipeline()
    random_adapter(pipeline.unet)
    return save_guidance_adapter(pipeline.unet, tmp_path_factory.mktemp("adapter") / "guidance", base_model="tiny")


@pytest.fixture(scope="module")
def adapted(tiny_model_dir, adapter_dir):
    """A Session pipeline with the adapter loaded, and one of the same model without it."""
    with_adapter = Session.from_pretrained(tiny_model_dir, guidance_adapter=adapter_dir).pipeline
    plain = Session.from_pretrained(tiny_model_dir).pipeline
    for pipeline in (with_adapter, plain):
        pipeline.set_progress_bar_config(disable=True)
    return with_adapter, plain


def session_on(pipeline, tiny_model_dir) -> Session:
    session = Session(pipeline, model=str(tiny_model_dir), defaults=EditSettings(num_inference_steps=STEPS))
    session.generate("a grass background", seed=5)
    return session


def unet_input(pipeline, seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    latents = torch.randn((2, 4, 16, 16), generator=generator)
    cond = encode_prompts(pipeline, PROMPTS[:2])
    return latents, torch.tensor([900, 300]), cond


def test_saved_adapter_loads_back_with_identical_outputs(adapter_dir, tmp_path):
    live = tiny_pipeline()
    random_adapter(live.unet)
    latents, t, cond = unet_input(live)
    loaded = tiny_pipeline()
    adapter = load_guidance_adapter(loaded, adapter_dir)
    assert loaded.has_guidance_adapter and adapter.scale_range == (1.0, MAX_SCALE)
    for scale in (2.0, 7.5):
        scales = torch.full((2,), scale)
        with torch.no_grad():
            expected = student_output(live.family, latents, t, cond, scales, EMBEDDING_DIM)
            with adapter.applied(scale):  # W + (s - 1) B A, vs the LoRA branch times s - 1
                fused = loaded.unet(latents, t, encoder_hidden_states=cond,
                                    timestep_cond=adapter.embedding(scale, 2, latents.device, latents.dtype)).sample
        torch.testing.assert_close(fused, expected, rtol=1e-5, atol=1e-5)

    again = tiny_pipeline()  # attach (live) -> save -> same tensors on disk
    attach_guidance_adapter(again.unet, adapter_dir)
    save_guidance_adapter(again.unet, tmp_path / "copy")
    for name in (LORA_FILE, PROJECTION_FILE):
        first, second = load_file(str(adapter_dir / name)), load_file(str(tmp_path / "copy" / name))
        assert first.keys() == second.keys() and all(torch.equal(first[k], second[k]) for k in first)

    other = tiny_pipeline()
    load_guidance_adapter(other, adapter_dir)
    images = [p("a red star", num_inference_steps=STEPS, seed=3, guidance="distilled").image for p in (loaded, other)]
    assert np.array_equal(*images)


def test_cfg_with_an_adapter_loaded_is_bit_identical_to_no_adapter(adapted, tiny_model_dir):
    with_adapter, plain = adapted
    sessions = [session_on(pipeline, tiny_model_dir) for pipeline in (with_adapter, plain)]
    with_distilled = session_on(with_adapter, tiny_model_dir)
    with_distilled.edit("a white moon", (18, 18, 30, 30), guidance="distilled")  # adapter swapped in and out
    for session in sessions:
        session.edit("a red star", BOX)
        session.edit("a blue circle", (14, 2, 30, 16))  # MQD with three regions
    for a, b in zip(sessions[0].layers, sessions[1].layers):
        assert np.array_equal(a.image, b.image)
        assert all(torch.equal(x, y) for x, y in zip(a.trajectory, b.trajectory))
    assert sessions[0].layers[-1].info["guidance"] == "cfg"


def test_zero_initialised_adapter_is_the_teacher_before_training(tmp_path):
    pipeline = tiny_pipeline()
    latents, t, cond = unet_input(pipeline)
    with torch.no_grad():
        teacher = pipeline.unet(latents, t, encoder_hidden_states=cond).sample
    add_guidance_projection(pipeline.unet)
    pipeline.unet.add_adapter(lora_config(4), adapter_name=ADAPTER_NAME)
    with torch.no_grad():
        student = student_output(pipeline.family, latents, t, cond, torch.tensor([3.0, 9.0]), EMBEDDING_DIM)
    assert torch.equal(student, teacher)

    # through the pipeline: the untrained adapter at any scale = the teacher's conditional branch alone
    folder = save_guidance_adapter(pipeline.unet, tmp_path / "zero")
    fresh = tiny_pipeline()
    unguided = fresh("a red star", num_inference_steps=STEPS, seed=1, guidance_scale=1.0).image
    load_guidance_adapter(fresh, folder)
    distilled = fresh("a red star", num_inference_steps=STEPS, seed=1, guidance_scale=6.0, guidance="distilled")
    assert np.array_equal(distilled.image, unguided)


def test_distilled_edit_costs_exactly_half_the_unet_evaluations(adapted, tiny_model_dir):
    with_adapter, _ = adapted
    session = session_on(with_adapter, tiny_model_dir)
    session.edit("a red star", BOX)
    evals = {}
    for mode in ("cfg", "distilled"):
        session.edit("a blue circle", (14, 2, 30, 16), guidance=mode)  # MQD: background, star, circle
        evals[mode] = session.layers[-1].info["unet_evals"]
        assert session.layers[-1].info["guidance"] == mode and session.layers[-1].info["attention_regions"] == 3
        session.undo()
    assert evals == {"cfg": 2 * STEPS, "distilled": STEPS}
    assert session.layers[-1].negative_prompt_embeds is not None


def test_negative_prompt_with_distilled_guidance_is_refused_and_session_unchanged(adapted, tiny_model_dir):
    with_adapter, _ = adapted
    session = session_on(with_adapter, tiny_model_dir)
    before = ([id(layer) for layer in session.layers], np.asarray(session.image).copy())
    with pytest.raises(ValueError, match="no negative prompt"):
        session.edit("a red star", BOX, guidance="distilled", negative_prompt="blurry")
    with pytest.raises(ValueError, match="no negative prompt"):
        with_adapter("a red star", "blurry", num_inference_steps=STEPS, guidance="distilled")
    with pytest.raises(ValueError, match=r"trained for guidance_scale in \[1, 10\]"):
        session.edit("a red star", BOX, guidance="distilled", guidance_scale=30.0)
    assert [id(layer) for layer in session.layers] == before[0]
    assert np.array_equal(np.asarray(session.image), before[1])


def test_distilled_guidance_without_an_adapter_says_how_to_get_one(adapted, tiny_model_dir):
    _, plain = adapted
    assert not plain.has_guidance_adapter
    with pytest.raises(ValueError, match="load_guidance_adapter.*python -m training distill"):
        plain("a red star", num_inference_steps=STEPS, guidance="distilled")
    with pytest.raises(ValueError, match="needs a fast adapter.*python -m training distill --mode fast"):
        plain("a red star", num_inference_steps=4, guidance="fast")
    with pytest.raises(ValueError, match="guidance must be one of"):
        EditSettings(guidance="turbo")


def test_adapter_in_the_model_folder_loads_with_the_model(tiny_model_dir, adapter_dir, tmp_path):
    import shutil

    folder = tmp_path / "model"
    shutil.copytree(tiny_model_dir, folder)
    shutil.copytree(adapter_dir, folder / "guidance")
    assert Session.from_pretrained(folder).pipeline.has_guidance_adapter
    assert not Session.from_pretrained(folder, guidance_adapter=False).pipeline.has_guidance_adapter


def test_a_few_training_steps_reduce_the_distillation_error_and_training_resumes(tmp_path):
    out, state = tmp_path / "adapter", tmp_path / "state"
    prompts = list_prompts(PROMPTS)
    config = dict(rank=4, batch_size=4, lr=3e-3, warmup=1, trajectories=4, sample_steps=(3, 3), val_prompts=1,
                  data="mixed", pool=8)
    start = distill(tiny_pipeline(), out, DistillConfig(steps=0, **config), prompts, state_dir=state,
                      progress=False, log=lambda _: None)
    messages = []
    trained = distill(tiny_pipeline(), out, DistillConfig(steps=8, **config), prompts, state_dir=state,
                        progress=False, log=messages.append)
    assert start["steps"] == 0 and trained["steps"] == 8
    assert trained["val_rel_error"]["v"]["mean"] < start["val_rel_error"]["v"]["mean"]  # the loss's space
    assert messages[0].startswith(f"resuming {out} at step 0")
    more = distill(tiny_pipeline(), out, DistillConfig(steps=9, **config), prompts, state_dir=state,
                     progress=False, log=messages.append)
    assert more["steps"] == 9 and "with optimizer state" in messages[-2]

    pipeline = tiny_pipeline()
    load_guidance_adapter(pipeline, out)
    result = pipeline("a red star", num_inference_steps=STEPS, guidance="distilled", guidance_scale=4.0)
    assert result.info["unet_evals"] == STEPS


def test_distill_command_line_parses():
    parser = argparse.ArgumentParser()
    add_distill_command(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["distill", "--model", "some/folder", "--out", "x", "--steps", "5", "--rank", "8",
                              "--data", "noised", "--prompts", "p.txt"])
    assert (args.steps, args.rank, args.data, args.prompts) == (5, 8, "noised", "p.txt")
    assert args.handler is run_distill_command


def test_background_weights_change_how_often_each_scene_background_is_drawn(capsys):
    from training.distill.rollouts import shapes_world_scenes

    def share_of_sea(weights):
        rng = np.random.default_rng(0)
        scenes = [shapes_world_scenes(rng, background_weights=weights) for _ in range(600)]
        return np.mean([scene.background.endswith("sea background") for scene in scenes])

    assert abs(share_of_sea(()) - 1 / 6) < 0.05
    assert abs(share_of_sea((("sea", 3.0),)) - 3 / 8) < 0.05
    assert share_of_sea((("sky", 1e-9), ("grass", 1e-9), ("sand", 1e-9), ("night", 1e-9), ("brick", 1e-9))) > 0.99

    parser = argparse.ArgumentParser()
    add_distill_command(parser.add_subparsers(dest="command"))
    assert parser.parse_args(["distill", "--background-weights", "sea=3,sand=2"]).background_weights == (
        ("sea", 3.0), ("sand", 2.0))
    for bad in ("ocean=3", "sea", "sea=0", "sea=x"):
        with pytest.raises(SystemExit):
            parser.parse_args(["distill", "--background-weights", bad])
        assert "NAME=WEIGHT" in capsys.readouterr().err
    with pytest.raises(ValueError, match="NAME=WEIGHT"):
        DistillConfig(background_weights=(("ocean", 2.0),))
    with pytest.raises(ValueError, match="shapes-world edit rollouts"):
        distill(tiny_pipeline(), "unused", DistillConfig(steps=0, background_weights=(("sea", 2.0),)),
                list_prompts(PROMPTS), progress=False, log=lambda _: None)


def test_rank_cut_keeps_a_full_rank_adapter_and_makes_a_low_rank_one(adapter_dir, tiny_model_dir):
    from benchmark.adapter_rank import cut_deltas, rank_setups

    session = Session.from_pretrained(tiny_model_dir, guidance_adapter=adapter_dir)
    adapter = session.pipeline.adapters["distilled"]
    full = [getattr(module, adapter.buffer).clone() for module in adapter.modules]
    same, kept = cut_deltas(full, 4)  # the adapter is rank 4: a rank-4 cut is the adapter
    assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(same, full)) and min(kept) > 1 - 1e-9
    one, kept = cut_deltas(full, 1)
    assert all(torch.linalg.matrix_rank(d.reshape(d.shape[0], -1).double(), rtol=1e-6) <= 1 for d in one)
    assert 0 < min(kept) < 1
    setups, energy = rank_setups(adapter, [4, 1])
    session.generate("a grass background", seed=5)
    images = []
    for name in ("rank-4", "rank-1", "rank-4"):
        assert setups[name]() == "distilled"
        session.edit("a red star", BOX, guidance="distilled", num_inference_steps=STEPS)
        images.append(np.asarray(session.image).copy())
        session.undo()
    assert np.array_equal(images[0], images[2]) and not np.array_equal(images[0], images[1])
    assert energy[4] == pytest.approx([1.0] * len(full))
