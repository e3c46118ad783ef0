"""Guidance distillation: adapters that make an edit cheaper than classifier-free guidance.

    python -m training distill [--mode guidance|fast] [--model embedded|FOLDER|HUB_ID] [--out DIR] [--steps N]
                               [--minutes M] [--data edits+trajectories|edits|trajectories|...] [--prompts FILE] ...

Two kinds of adapter, one format (pipelines/guidance_format.py), both students of the same teacher: the UNet
with the adapter off, running CFG with the empty prompt as the unconditional half (so neither mode has a
negative prompt).
- --mode guidance (guidance="distilled"): one pass per step reproduces uncond + s (cond - uncond) for any s in
  [--min-scale, --max-scale]. Student = the UNet + a LoRA + a zero-initialised projection of s into the timestep
  embedding + a guidance head (a zero-initialised copy of the last layer whose output is added times s - 1: the
  student is linear in s as CFG is; --no-head drops it, and --lora-gain scale-1 multiplies the LoRA branch by
  s - 1 instead, as format-1 adapters did).
- --mode fast (guidance="fast"): --fast-steps DDIM steps (trailing spacing) do what --teacher-steps CFG DDIM steps
  do. Trajectory-segmented step distillation: the teacher's run is cut into --fast-steps segments, and from the
  state at a segment's start one student step must land where the teacher lands at its end (the target is that
  step's output, training/distill/rollouts.py output_reaching). Guidance is distilled in the same adapter
  (the LoRA on at every scale, the scale embedded): one pass per step, a few steps.

Loss: per-sample squared error divided by the target's mean square, in v space by default ("relative-v": for a
fixed x_t, |dv|^2 = |dx0|^2 + |deps|^2, so the high-noise steps that decide the layout count as much as the
low-noise ones), or in eps, x0 or the raw output. Validation reports the error in eps, v and x0, and x0 step by
step at s = 2, 4, 7.5.

Training states (where the student is evaluated):
- "edits" (training/distill/rollouts.py): real masked edits through a Session, the code path of the app: BCG
  puts the remembered background back at every step, MQD routes each region to its prompt, and the rollout
  follows the student's own output half of the time (its own mistakes) and the teacher's otherwise. The
  teacher's target is computed at every state the editor produced, inside the same attention routing.
  Backgrounds are trained on too (text-to-image states, following the teacher).
  The default, for both modes.
- "edits+trajectories": after each edit scene, as many optimizer steps on shuffled batches of teacher
  trajectories (many prompts per batch: less correlated than one edit's steps).
- "trajectories": the teacher's own CFG sampling runs (DDIM, a random step count and scale per batch).
- "noised": clean latents forward-noised to a random t; "mixed": "noised" and "trajectories" in turn.
Prompts and scenes: shapes-world captions, objects and boxes (training-split triples) for the embedded model
(--background-weights sea=3 draws the sea scenes, where the fast student missed most, three times as often),
else --prompts FILE (backgrounds and edit prompts drawn from it, boxes of 1/9-1/3 of the image).

Resumable: rerun the same command and it continues from the adapter in --out (and the optimizer
state in --state); --steps is the total to reach. The adapter folder is rewritten atomically every
--ckpt-minutes and at the end. CUDA is used when present.

The parts: config.py (DistillConfig), adapter.py (teacher, student, saving the adapter), data.py (prompts and
stored training states), rollouts.py (edit rollouts and step-distillation targets), loss.py (loss and
validation), loop.py (the optimisation loop), command.py (the command line).
"""

from .adapter import save_guidance_adapter, student_output
from .command import add_distill_command, distill_model, run_distill_command
from .config import DistillConfig
from .data import file_prompts, list_prompts
from .loop import distill

__all__ = ["DistillConfig", "add_distill_command", "distill", "distill_model", "file_prompts", "list_prompts",
           "run_distill_command", "save_guidance_adapter", "student_output"]
