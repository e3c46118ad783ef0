"""Write the diffusers folder-format index (model_index.json), the scheduler config and the tokenizer."""
from __future__ import annotations

import json
from pathlib import Path

from . import configs

MODEL_INDEX = {
    "_class_name": "LayeredPipeline",
    "_diffusers_version": "0.42.1",
    "vae": ["diffusers", "AutoencoderKL"],
    "text_encoder": ["transformers", "CLIPTextModel"],
    "tokenizer": ["transformers", "PreTrainedTokenizerFast"],
    "unet": ["diffusers", "UNet2DConditionModel"],
    "scheduler": ["diffusers", "DDIMScheduler"],
}


def assemble(out_dir: Path | str = configs.EMBEDDED_DIR) -> Path:
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "model_index.json").write_text(json.dumps(MODEL_INDEX, indent=2) + "\n")
    configs.make_scheduler("ddim").save_pretrained(str(out_dir / "scheduler"))
    if not (out_dir / "tokenizer" / "tokenizer.json").exists():
        from .tokenizer import save_tokenizer

        save_tokenizer(out_dir / "tokenizer")
    return out_dir
