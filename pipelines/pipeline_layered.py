"""LayeredPipeline: text-to-image and masked edits that follow a remembered latent trajectory.

A diffusers `DiffusionPipeline` whose components are those of an SD-1.x/2.x folder (4-channel text-to-image
or 9-channel inpainting UNet, and the shipped embedded model), an SDXL folder (two text encoders) or a
PixArt-α folder (a transformer and T5), so each loads with `from_pretrained`. What differs between those
families sits in `pipelines.families`, which the pipeline asks; this file never branches on the family.
It knows nothing of layers, undo or projects: the editor hands it the previous layer's trajectory and
image as plain tensors and stores what it returns.
"""

from __future__ import annotations

import contextlib
import functools
import threading
from collections.abc import Callable, Sequence

import numpy as np
import torch
from diffusers import AutoencoderKL, DiffusionPipeline
from diffusers.image_processor import VaeImageProcessor
from diffusers.utils.torch_utils import randn_tensor

from . import bcg
from .bcg import BackgroundMemory
from .compositing import composite
from .attention import RegionalAttnProcessor, RegionMaps, resolve_attention
from .call_inputs import CALLBACK_TENSOR_INPUTS, EditRegion, LayeredPipelineOutput, check_settings
from .families import ModelFamily, family_class, identity_mismatch, parameter_dtype
from .guidance import NEGATIVE_PROMPT_ERROR, GuidanceAdapter
from .masks import bcg_latent_mask, latent_mask
from .schedulers import initial_sigma, make_scheduler, scale_model_input, schedule_fingerprint
from .text_conditioning import TextConditioning
from .tight import ObjectTracker, object_pixels, soft_object_mask


def serialized(method):
    """Run a pipeline method under the pipeline's lock: MQD swaps the denoiser's processors for a call."""
    @functools.wraps(method)
    def locked(self, *args, **kwargs):
        with self._call_lock:
            return method(self, *args, **kwargs)
    return locked


class LayeredPipeline(DiffusionPipeline):
    """Generate a background, then edit inside masks with Background Consistency Guidance."""

    model_cpu_offload_seq = "text_encoder->text_encoder_2->text_encoder_3->unet->transformer->vae"
    # Components a family may not have: SD-1/2 and PixArt-α have one text encoder, only PixArt a transformer.
    _optional_components = ["unet", "transformer", "text_encoder_2", "tokenizer_2", "text_encoder_3", "tokenizer_3"]
    # The MQD processor class; benchmark/mqd_speed.py swaps in the per-region-loop reference to time it.
    region_processor = RegionalAttnProcessor
    _callback_tensor_inputs = list(CALLBACK_TENSOR_INPUTS)

    def __init__(self, vae: AutoencoderKL, text_encoder, tokenizer, scheduler, unet=None, transformer=None,
                 text_encoder_2=None, tokenizer_2=None, text_encoder_3=None, tokenizer_3=None):
        super().__init__()
        self.register_modules(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet, scheduler=scheduler,
                              transformer=transformer, text_encoder_2=text_encoder_2, tokenizer_2=tokenizer_2,
                              text_encoder_3=text_encoder_3, tokenizer_3=tokenizer_3)
        self.vae_scale_factor = 2 ** (len(self.vae.config.block_out_channels) - 1)
        self.image_processor = VaeImageProcessor(vae_scale_factor=self.vae_scale_factor)
        self._call_lock = threading.RLock()
        self.adapters: dict[str, GuidanceAdapter] = {}  # guidance mode -> adapter (guidance.load_guidance_adapter)
        self.family: ModelFamily = family_class(self)(self)
        self._identity = self.family.identity()  # before any adapter can swap weights in

    # ----------------------------------------------------------------- properties
    @property
    def denoiser(self) -> torch.nn.Module:
        """The UNet or transformer that predicts noise."""
        return self.family.denoiser

    @property
    def default_size(self) -> tuple[int, int]:
        """(width, height) the denoiser was trained at."""
        return self.family.native_size

    @property
    def vae_shift(self) -> float:
        """The latent mean SD3's and FLUX's VAEs subtract before scaling (0 for SD's)."""
        return float(getattr(self.vae.config, "shift_factor", None) or 0.0)

    @property
    def latent_channels(self) -> int:
        return int(self.vae.config.latent_channels)

    @property
    def is_inpainting_unet(self) -> bool:
        """SD inpainting UNets take latents + mask + masked-image latents (4 + 1 + 4 channels)."""
        return int(self.denoiser.config.in_channels) == 2 * self.latent_channels + 1

    @property
    def model_identity(self) -> dict:
        """What a saved project records about this model (family, architecture, a sample of weights)."""
        return dict(self._identity)

    def check_model_identity(self, saved: dict) -> None:
        """Refuse a project made with another model: its latents and prompt embeddings would not fit this one."""
        reason = identity_mismatch(saved, self._identity)
        if reason is not None:
            raise ValueError(f"this project cannot be edited with this {self.family.label} model: {reason}")

    @property
    def _execution_device(self) -> torch.device:
        """The denoiser's device. diffusers' generic property walks every component's modules on each call (a
        visible share of a few-step edit); a pipeline with offloading hooks keeps diffusers' answer."""
        if getattr(self.denoiser, "_hf_hook", None) is not None:
            return super()._execution_device
        return next(self.denoiser.parameters()).device  # diffusers' `device` also walks the modules

    @property
    def guidance_adapter(self) -> GuidanceAdapter | None:
        """The adapter of guidance="distilled" (None when none is loaded)."""
        return self.adapters.get("distilled")

    @property
    def fast_adapter(self) -> GuidanceAdapter | None:
        """The adapter of guidance="fast" (None when none is loaded)."""
        return self.adapters.get("fast")

    @property
    def has_guidance_adapter(self) -> bool:
        """Whether guidance="distilled" is available (a guidance adapter is loaded)."""
        return self.guidance_adapter is not None

    @property
    def fast_steps(self) -> int | None:
        """The step count guidance="fast" runs (None without a fast adapter)."""
        return None if self.fast_adapter is None else self.fast_adapter.sample_steps

    # ----------------------------------------------------------------- inputs
    def check_inputs(self, prompt, negative_prompt, num_inference_steps, guidance_scale, height, width,
                     edit, free_steps_ratio, preserve, attention, callback_on_step_end_tensor_inputs,
                     guidance="cfg", bcg_mask="fractional", region_routing="majority", scheduler=None):
        if not isinstance(prompt, str):
            raise TypeError(f"prompt must be a string, got {type(prompt).__name__}")
        if not isinstance(negative_prompt, str):
            raise TypeError(f"negative_prompt must be a string, got {type(negative_prompt).__name__}")
        for text, name in ((prompt, "prompt"), (negative_prompt, "negative_prompt")):
            self.check_prompt_length(text, name)
        multiple = self.family.size_multiple
        if height % multiple or width % multiple:
            raise ValueError(f"height and width must be multiples of {multiple} for {self.family.label}, got "
                             f"{width}x{height}")
        check_settings(num_inference_steps, guidance_scale, free_steps_ratio, preserve, attention, guidance, bcg_mask,
                       region_routing, callback_on_step_end_tensor_inputs)
        if scheduler not in self.family.schedulers:
            raise ValueError(f"{self.family.label} samples with {self.family.schedulers}, not {scheduler!r}")
        if guidance == "cfg" and guidance_scale > 1.0 and self.family.native_guidance:
            raise ValueError(f"this {self.family.label} model embeds its guidance scale (it was distilled): use "
                             f"guidance='distilled', or guidance_scale <= 1 for none")
        if guidance == "distilled":
            if negative_prompt:
                raise ValueError(NEGATIVE_PROMPT_ERROR)
            if self.family.native_guidance:
                pass  # the denoiser's own guidance embedding takes any scale
            elif self.guidance_adapter is None:
                raise ValueError("guidance='distilled' needs a guidance adapter: load one with "
                                 "pipelines.guidance.load_guidance_adapter(pipeline, FOLDER) (or "
                                 "Session.from_pretrained(..., guidance_adapter=FOLDER)); train one with "
                                 "`python -m training distill --model MODEL --out FOLDER`")
            else:
                self.guidance_adapter.check_scale(guidance_scale)
        if guidance == "fast":
            if negative_prompt:
                raise ValueError(NEGATIVE_PROMPT_ERROR)
            if self.fast_adapter is None:
                raise ValueError("guidance='fast' needs a fast adapter: the model folder's 'fast' folder, or "
                                 "pipelines.guidance.load_guidance_adapter(pipeline, FOLDER, 'fast'); train one with "
                                 "`python -m training distill --mode fast --model MODEL --out FOLDER`")
            self.fast_adapter.check_scale(guidance_scale)
            if num_inference_steps != self.fast_steps or scheduler != "ddim":
                raise ValueError(f"guidance='fast' runs its adapter's {self.fast_steps} DDIM steps; got "
                                 f"num_inference_steps={num_inference_steps}, scheduler={scheduler!r}")
        if edit is not None:
            edit.check(height, width)

    def check_prompt_length(self, text: str, name: str = "prompt") -> None:
        """A prompt longer than the text encoder's window is an error, not a silent truncation."""
        count = self.family.prompt_token_count(text)
        limit = self.family.max_prompt_tokens
        if count > limit:
            raise ValueError(f"{name} is {count} tokens long but the text encoder reads at most {limit}; shorten it")

    # ----------------------------------------------------------------- encoders
    @torch.no_grad()
    def encode_prompt(self, prompt: str) -> TextConditioning:
        """Text -> the denoiser's text conditioning for one prompt: hidden states [1, L, D] padded to the text
        encoder's window (and the family's token mask or pooled embedding)."""
        return self.family.encode_prompt([prompt])

    @torch.no_grad()
    def encode_image(self, image: np.ndarray) -> torch.Tensor:
        """uint8 HxWx3 -> scaled latent [1, C, h, w] (the posterior's mode: deterministic)."""
        pixels = self.image_processor.preprocess(image.astype(np.float32)[None] / 255.0)
        pixels = pixels.to(device=self.vae.device, dtype=self.vae.dtype)
        latent = self.vae.encode(pixels).latent_dist.mode()
        return (latent - self.vae_shift) * self.vae.config.scaling_factor

    @torch.no_grad()
    def decode_latents(self, latents: torch.Tensor) -> np.ndarray:
        """Scaled latent -> uint8 HxWx3."""
        sample = self.vae.decode(latents.to(self.vae.dtype) / self.vae.config.scaling_factor + self.vae_shift).sample
        image = self.image_processor.postprocess(sample.float(), output_type="np")[0]
        return (image * 255.0).round().astype(np.uint8)

    def initial_noise(self, seed: int, height: int, width: int) -> torch.Tensor:
        """x_T for a seed, drawn on the CPU so a seed gives the same noise on every device."""
        shape = (1, self.latent_channels, height // self.vae_scale_factor, width // self.vae_scale_factor)
        generator = torch.Generator("cpu").manual_seed(int(seed))
        return randn_tensor(shape, generator=generator, device=torch.device("cpu"), dtype=torch.float32).to(
            device=self._execution_device, dtype=parameter_dtype(self.denoiser))

    def inpainting_inputs(self, edit: EditRegion | None, height: int, width: int) -> torch.Tensor:
        """The extra mask + masked-image latents an inpainting UNet reads (empty for text-to-image UNets)."""
        if edit is None:  # a background: everything is to be painted, nothing is known
            region = np.ones((height, width), dtype=bool)
            known = np.zeros((height, width, 3), dtype=np.uint8) + 127
        else:
            # like diffusers' inpainting pipelines: the region to paint is mid-grey in the known image
            region = edit.region
            known = np.where(region[..., None], 127, edit.previous_image)
        size = (height // self.vae_scale_factor, width // self.vae_scale_factor)
        mask = latent_mask(region, size, device=self._execution_device, dtype=parameter_dtype(self.denoiser))
        return torch.cat([mask, self.encode_image(known.astype(np.uint8)).to(parameter_dtype(self.denoiser))], dim=1)

    # ----------------------------------------------------------------- the call
    @torch.no_grad()
    @serialized
    def __call__(
        self,
        prompt: str,
        negative_prompt: str = "",
        *,
        num_inference_steps: int = 20,
        guidance_scale: float = 7.5,
        scheduler: str = "ddim",
        seed: int = 0,
        height: int | None = None,
        width: int | None = None,
        edit: EditRegion | None = None,
        free_steps_ratio: float = 0.1,
        preserve: str = "pixels",
        attention: str = "mqd",
        guidance: str = "cfg",
        bcg_mask: str = "fractional",
        region_routing: str = "majority",
        callback_on_step_end: Callable | None = None,
        callback_on_step_end_tensor_inputs: Sequence[str] = ("latents",),
    ) -> LayeredPipelineOutput:
        """Generate a background (edit=None) or one masked edit on top of the layer described by `edit`.

        Args:
            prompt: what to paint: the whole picture for a background, the new object for an edit.
            negative_prompt: the unconditional half of classifier-free guidance ("" by default); must be
                empty with guidance="distilled".
            num_inference_steps: denoising steps of `scheduler`.
            guidance_scale: the guidance scale s of `uncond + s * (cond - uncond)`; <= 1 turns guidance off.
            scheduler: a name of pipelines.schedulers.SCHEDULERS (deterministic samplers only).
            seed: picks the initial noise; every layer of a session shares it unless given its own.
            height, width: the image size in pixels; default: the previous image's, else the model's own.
            edit: the region to paint and what the memory holds below it; None paints a background.
            free_steps_ratio: share of final steps run without BCG so the object's boundary harmonises.
            preserve: "pixels" keeps the previous pixels outside the edit's soft mask bit-identical;
                "latents" returns the decoded image as it is (the paper's behaviour).
            attention: "mqd" routes each region's queries to its own layer's prompt; "qd-background" and
                "qd-previous" split the edit's prompt vs one earlier prompt (see attention.ATTENTION_MODES);
                "bcg" is plain cross-attention.
            guidance: "cfg" (a batch of 2 per step) or "distilled" (a batch of 1 with the guidance adapter).
            callback_on_step_end: diffusers' callback `(pipeline, step, timestep, tensors) -> tensors`,
                called after BCG; it may return replaced "latents".
            callback_on_step_end_tensor_inputs: which tensors the callback receives.
            bcg_mask: "fractional" (area-averaged latent mask, ours) or "binary" (nearest-resized, the reference
                code's); see masks.BCG_MASKS. For ablations.
            region_routing: "majority" (ours) or "erode-dilate" (the reference code's); see
                attention.ROUTING_MODES. For ablations.

        Returns:
            LayeredPipelineOutput: the image, the trajectory (the latent after each step, after BCG), the
            prompt embeddings and the soft mask the edit painted through.
        """
        # 1. Check inputs
        default_w, default_h = self.default_size
        height = height or (edit.previous_image.shape[0] if edit is not None else default_h)
        width = width or (edit.previous_image.shape[1] if edit is not None else default_w)
        self.check_inputs(prompt, negative_prompt, num_inference_steps, guidance_scale, height, width,
                          edit, free_steps_ratio, preserve, attention, callback_on_step_end_tensor_inputs, guidance,
                          bcg_mask, region_routing, scheduler)
        device = self._execution_device
        # guidance_scale <= 1 turns guidance off in either mode: one plain conditional pass per step
        do_cfg = guidance == "cfg" and guidance_scale > 1.0
        distilled = guidance == "distilled" and guidance_scale > 1.0
        fast = guidance == "fast"  # its adapter is on at every scale: it distils the steps too

        # 2. Encode the prompts (the unconditional half is the negative prompt, "" by default)
        prompt_text = self.encode_prompt(prompt)
        negative_text = self.encode_prompt(negative_prompt) if do_cfg else None
        regions = self.attention_regions(attention, edit, prompt_text)
        text = self.family.prepare_text(self.text_conditioning(prompt_text, negative_text, regions),
                                        max(len(regions), 1))

        # 3. Timesteps, from a fresh scheduler so concurrent calls never share its state
        sampler = make_scheduler(scheduler, self.scheduler.config,
                                 **({"timestep_spacing": "trailing"} if fast else {}))  # 999 first, as trained
        latent_size = (height // self.vae_scale_factor, width // self.vae_scale_factor)
        self.family.set_timesteps(sampler, num_inference_steps, latent_size, device=device)
        timesteps = sampler.timesteps

        # 4. Initial noise: the same for every layer of a session unless its seed differs
        noise = self.initial_noise(seed, height, width)
        latents = noise * initial_sigma(sampler)

        # 5. What BCG follows, and where (the whole region, or the object as it forms)
        memory = None if edit is None else self.prepare_background_memory(edit, sampler, noise, free_steps_ratio,
                                                                          bcg_mask)
        extra_channels = self.inpainting_inputs(edit, height, width) if self.is_inpainting_unet else None

        # 6. Distilled guidance: the adapter's weights and the scale's embedding (the teacher runs without both)
        student, timestep_cond = contextlib.nullcontext(), None
        if distilled and self.family.native_guidance:  # FLUX-dev: the denoiser's own guidance embedding
            timestep_cond = self.family.guidance_condition(guidance_scale, latents.shape[0], device,
                                                           parameter_dtype(self.denoiser))
        elif distilled or fast:
            adapter = self.fast_adapter if fast else self.guidance_adapter
            student = adapter.applied(guidance_scale)
            timestep_cond = adapter.embedding(guidance_scale, latents.shape[0], device, parameter_dtype(self.denoiser))

        # 7. Denoising loop, with the MQD processors installed for this call only
        trajectory: list[torch.Tensor] = []
        unet_evals = 0
        maps = None
        if regions:
            maps = RegionMaps.from_masks([mask for _, mask in regions], text.tokens // len(regions), latent_size,
                                         self.family.token_grids(latent_size), region_routing)
        # CFG's unconditional row (row 0) hears the plain null prompt in every region
        routing = self.family.attention_routing(maps, text, self.region_processor, (0,) if do_cfg else (),
                                                latent_size)
        with routing, student, self.progress_bar(total=len(timesteps)) as progress:
            for i, t in enumerate(timesteps):
                model_input = torch.cat([latents] * 2) if do_cfg else latents
                model_input = scale_model_input(sampler, model_input, t)
                if extra_channels is not None:
                    model_input = torch.cat([model_input, extra_channels.expand(model_input.shape[0], -1, -1, -1)], dim=1)
                noise_pred = self.family.predict(model_input, t, text, timestep_cond=timestep_cond)
                unet_evals += model_input.shape[0]
                if do_cfg:
                    uncond, cond = noise_pred.chunk(2)
                    noise_pred = uncond + guidance_scale * (cond - uncond)
                latents = sampler.step(noise_pred, t, latents).prev_sample
                if memory is not None:
                    latents = memory.blend(i, latents)
                if callback_on_step_end is not None:
                    values = {"latents": latents} if "latents" in callback_on_step_end_tensor_inputs else {}
                    latents = callback_on_step_end(self, i, t, values).get("latents", latents)
                trajectory.append(latents.detach().to("cpu", torch.float16))
                progress.update()

        # 8. Decode, then keep the previous pixels wherever the edit's soft mask is 0
        decoded = self.decode_latents(latents)
        soft = None if edit is None else self.edit_soft_mask(edit, memory, decoded)
        image = decoded if edit is None or preserve == "latents" else composite(edit.previous_image, decoded, soft)

        info = {"bcg": "none" if memory is None else memory.source,
                "blended_steps": 0 if memory is None else memory.blend_steps, "unet_evals": unet_evals,
                "attention_regions": len(regions), "guidance": "fast" if fast else "distilled" if distilled else "cfg" if do_cfg else "off"}
        if soft is not None:
            info.update(mask_fit=edit.mask_fit, painted_pixels=int(np.count_nonzero(soft)))
        prompt_embeds, extras = prompt_text.storage()
        negative_embeds = None
        if negative_text is not None:
            negative_embeds, negative_extras = negative_text.storage(prefix="negative_")
            extras.update(negative_extras)
        return LayeredPipelineOutput(
            image=image,
            decoded=decoded,
            mask=soft,
            trajectory=trajectory,
            schedule=schedule_fingerprint(sampler),
            prompt_embeds=prompt_embeds,
            negative_prompt_embeds=negative_embeds,
            info=info,
            extra_tensors=extras,
        )

    def prepare_background_memory(self, edit: EditRegion, sampler, noise: torch.Tensor, free_steps_ratio: float,
                                  bcg_mask: str = "fractional") -> BackgroundMemory:
        """The latents BCG blends in after each step: the stored trajectory (or its steps at this run's noise
        levels), or the re-noised previous latent when the levels differ or no memory is asked for."""
        timesteps = sampler.timesteps
        region = bcg_latent_mask(edit.region, tuple(noise.shape[-2:]), bcg_mask, device=noise.device, dtype=noise.dtype)
        if edit.background == "renoise":
            encoded = self.encode_image(edit.previous_image).to(noise.dtype)
            remembered, source = bcg.renoised_trajectory(sampler, encoded, noise, timesteps), "renoise-image"
        elif tuple(edit.previous_schedule) == schedule_fingerprint(sampler):
            remembered, source = edit.previous_trajectory, "memory"
        elif (steps := bcg.matching_steps(edit.previous_schedule, sampler)) is not None:
            remembered, source = [edit.previous_trajectory[j] for j in steps], "memory"  # fewer steps, same levels
        else:
            final = edit.previous_trajectory[-1].to(device=noise.device, dtype=noise.dtype)
            remembered, source = bcg.renoised_trajectory(sampler, final, noise, timesteps), "renoise"
        blend_steps = bcg.blended_step_count(len(timesteps), free_steps_ratio)
        tracker = ObjectTracker(region, blend_steps) if edit.mask_fit == "tight" else None
        return BackgroundMemory(remembered, source, blend_steps, region, tracker)

    @staticmethod
    def edit_soft_mask(edit: EditRegion, memory: BackgroundMemory, decoded: np.ndarray) -> np.ndarray:
        """The soft mask the pixel composite uses: the rough region's, or the object's silhouette with a
        `feather_px` soft edge (all zero when no object formed: the edit then changes nothing)."""
        if memory.tracker is None:
            return edit.soft_mask
        seeds = memory.tracker.pixel_cells(edit.region.shape)
        silhouette = object_pixels(decoded, edit.previous_image, edit.region, seeds)
        return soft_object_mask(silhouette, edit.soft_mask, edit.feather_px)

    @staticmethod
    def attention_regions(attention: str, edit: EditRegion | None, prompt_text: TextConditioning):
        """(text, mask) per region for MQD, back to front, the current edit last; [] = plain attention.

        mqd: every earlier visible layer; qd-background: the background (layer 0) everywhere; qd-previous:
        the layer just below everywhere (the reference code's QD).
        """
        attention = resolve_attention(attention)
        if edit is None or attention == "bcg" or not edit.earlier_regions:
            return []
        if attention == "mqd":
            earlier = list(edit.earlier_regions)
        else:
            text, mask = edit.earlier_regions[-1 if attention == "qd-previous" else 0]
            earlier = [(text, np.ones_like(mask, dtype=bool))]
        return earlier + [(prompt_text, edit.region)]

    def text_conditioning(self, prompt_text: TextConditioning, negative_text: TextConditioning | None,
                          regions) -> TextConditioning:
        """The denoiser's text conditioning: CFG stacks [uncond, cond]; MQD concatenates one prompt per region.

        The unconditional half repeats the null prompt once per region, so every query attends to
        exactly the plain unconditional prompt, whatever its region.
        """
        cond = prompt_text
        if regions:
            lengths = {text.tokens for text, _ in regions}
            if len(lengths) != 1:
                raise ValueError(f"region prompts have different token lengths {sorted(lengths)}")
            device, dtype = prompt_text.embeds.device, prompt_text.embeds.dtype
            cond = TextConditioning.regions([text.to(device, dtype) for text, _ in regions])
        if negative_text is None:
            return cond
        return TextConditioning.batch([negative_text.repeat_tokens(max(len(regions), 1)), cond])

    @torch.no_grad()
    def trajectory_from_image(self, image: np.ndarray, *, num_inference_steps: int = 20, scheduler: str = "ddim",
                              seed: int = 0) -> tuple[list[torch.Tensor], tuple]:
        """A trajectory for a photo: its latent noised to each step's level with the session noise.

        Cheaper and more faithful to the photo than DDIM inversion; later edits follow it exactly
        like a generated background's trajectory.
        """
        height, width = image.shape[:2]
        sampler = make_scheduler(scheduler, self.scheduler.config)
        latent_size = (height // self.vae_scale_factor, width // self.vae_scale_factor)
        self.family.set_timesteps(sampler, num_inference_steps, latent_size, device=self._execution_device)
        latent = self.encode_image(image).to(parameter_dtype(self.denoiser))
        noise = self.initial_noise(seed, height, width)
        trajectory = bcg.renoised_trajectory(sampler, latent, noise, sampler.timesteps)
        return [z.detach().to("cpu", torch.float16) for z in trajectory], schedule_fingerprint(sampler)
