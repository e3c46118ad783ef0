"""Guidance distillation: train a guidance adapter so one UNet pass per step does what CFG does with two.

    python -m training distill [--model embedded|FOLDER|HUB_ID] [--out DIR] [--steps N] [--minutes M]
                               [--rank R] [--data trajectories|noised|mixed] [--prompts FILE] ...

Student = the UNet + a LoRA whose branch is multiplied by s - 1, + a zero-initialised projection of the
guidance scale into the timestep embedding (pipelines/guidance_format.py); both start at zero, so the student
starts as the teacher's conditional pass. Teacher = the same UNet with the LoRA disabled and no scale embedding.
Target = uncond + s * (cond - uncond), s ~ U[1, max_scale] per sample, the unconditional prompt "" (so
distilled mode has no negative prompt). Loss: squared error of the noise prediction (eps; derived from
v for v-prediction models), divided per sample by the target's mean square ("relative-eps": the error
the benchmark reports; "relative" does the same on the raw UNet output; --loss mse neither).

Training states (where the UNet is evaluated):
- "trajectories": the teacher's own CFG sampling runs (DDIM, a random step count and scale per
  batch of prompts). Each teacher evaluation gives a state AND its target, so no images are needed,
  and the student learns exactly the states it meets at inference.
- "noised": clean latents forward-noised to a random t (Meng et al.; the seed paper). Clean latents
  are VAE-encoded shapes-world scenes for the embedded model, or the teacher's own CFG samples.
- "mixed": alternate batches of both.
Prompts: shapes-world captions and object prompts for the embedded model, else --prompts FILE.

Resumable: rerun the same command and it continues from the adapter in --out (and the optimizer
state in --state); --steps is the total to reach. The adapter folder is rewritten atomically every
--ckpt-minutes and at the end. CUDA is used when present.

The parts: config.py (DistillConfig), adapter.py (teacher, student, saving the adapter), data.py (prompts and
training states), loss.py (loss and validation), loop.py (the optimisation loop), command.py (the command line).
"""

from .adapter import save_guidance_adapter, student_output
from .command import add_distill_command, distill_model, run_distill_command
from .config import DistillConfig
from .data import file_prompts, list_prompts
from .loop import distill

__all__ = ["DistillConfig", "add_distill_command", "distill", "distill_model", "file_prompts", "list_prompts",
           "run_distill_command", "save_guidance_adapter", "student_output"]
