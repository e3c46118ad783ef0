"""The methods a benchmark compares: named bundles of Session settings (the paper's ablations and ours).

A method the installed editor cannot express (a setting name or value it does not know yet), or the
model under test cannot run (distilled guidance without a guidance adapter), is reported as
unavailable with the reason, never faked with other settings or silently dropped.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from editor import EditSettings

# Only the settings that define a method; everything else is the session default (or --steps).
# naive: the blended-latent baseline: re-noise the previous image every step, plain cross-attention
#        (MQD reads the memory's earlier prompts, so a no-memory baseline must not use it).
# bcg / qd-* / mqd: the paper's ablation ladder, all with its latent-space preservation;
#        qd-background: outside the edit hears the background prompt (what "qd" meant here before);
#        qd-previous: outside the edit hears the previous layer's prompt (the reference code's QD).
# full: the session defaults (MQD + our pixel-exact preservation; tight masks once `mask_fit` exists).
# full-*: one setting of full changed: whole-mask repaint, the reference code's binary BCG latent mask,
#        its erode-current/dilate-earlier token routing. distilled: full with the one-pass guidance; fast: full
#        in the fast adapter's few steps.
METHODS: dict[str, dict] = {
    "naive": {"background": "renoise", "attention": "bcg", "preserve": "latents"},
    "bcg": {"background": "memory", "attention": "bcg", "preserve": "latents"},
    "qd-background": {"background": "memory", "attention": "qd-background", "preserve": "latents"},
    "qd-previous": {"background": "memory", "attention": "qd-previous", "preserve": "latents"},
    "mqd": {"background": "memory", "attention": "mqd", "preserve": "latents"},
    "full": {},
    "full-whole": {"mask_fit": "whole"},
    "full-bcg-binary": {"bcg_mask": "binary"},
    "full-erode-dilate": {"routing": "erode-dilate"},
    "distilled": {"guidance": "distilled"},
    "fast": {"guidance": "fast"},  # the fast adapter's own steps (check_model)
}
# The paired comparisons the report tests (method, the method it changes one thing of). The defaults are
# chosen from the full-* rows: a default changes only where its ablation wins these paired tests.
COMPARISONS: tuple[tuple[str, str], ...] = (
    ("bcg", "naive"),  # memory vs re-noising the previous image
    ("qd-background", "bcg"), ("qd-previous", "bcg"),  # two-way routing vs none
    ("mqd", "qd-background"), ("mqd", "qd-previous"),  # every layer its own prompt vs two-way
    ("full", "mqd"),  # pixel-exact preservation (and the other session defaults) vs latents
    ("full-whole", "full"), ("full-bcg-binary", "full"), ("full-erode-dilate", "full"),  # default choices
    ("distilled", "full"),  # one-pass guidance vs CFG
    ("fast", "full"),  # a few one-pass steps vs 20 CFG steps
)
# Long sessions (24 edits) run these: the no-memory baseline, memory with plain attention, MQD, the defaults.
LONG_METHODS = ("naive", "bcg", "mqd", "full")


def runs_on(plan_meta: dict, method: str) -> bool:
    """Whether a plan (by its meta) is run with `method`: every method, but LONG_METHODS only on long sessions."""
    return plan_meta.get("part") != "long" or method in LONG_METHODS


@dataclass(frozen=True)
class Method:
    name: str
    bundle: dict  # the settings that define it
    settings: dict | None  # the full resolved EditSettings, None when unavailable
    reason: str | None = None  # why it is unavailable

    @property
    def available(self) -> bool:
        return self.settings is not None


def resolve(name: str, bundle: dict, base: EditSettings | None = None) -> Method:
    """`bundle` applied to `base` (the session defaults), or why the installed editor cannot run it."""
    base = base or EditSettings()
    missing = sorted(set(bundle) - set(EditSettings.names()))
    if missing:
        return Method(name, dict(bundle), None, f"setting {', '.join(missing)} does not exist in EditSettings yet")
    try:
        settings = base.updated(**bundle)
    except (TypeError, ValueError) as error:
        return Method(name, dict(bundle), None, str(error))
    return Method(name, dict(bundle), settings.to_dict())


def select(names: str | None, base: EditSettings | None = None, methods: dict[str, dict] = METHODS) -> list[Method]:
    """Resolve a comma list of method names (None or "all" = every method), in the order given."""
    wanted = list(methods) if names in (None, "", "all") else [n.strip() for n in names.split(",") if n.strip()]
    unknown = [n for n in wanted if n not in methods]
    if unknown:
        raise ValueError(f"unknown method(s) {unknown}; known: {list(methods)}")
    return [resolve(name, methods[name], base) for name in dict.fromkeys(wanted)]


def check_model(method: Method, pipeline) -> Method:
    """`method`, or why this model cannot run it: distilled guidance needs the model's guidance adapter, fast its
    fast adapter (whose step count the method then runs)."""
    guidance = method.settings.get("guidance") if method.available else None
    if guidance == "distilled" and not pipeline.has_guidance_adapter:
        return replace(method, settings=None, reason="the model has no guidance adapter (Session.from_pretrained "
                       "loads MODEL/guidance; train one with `python -m training distill`)")
    if guidance == "fast":
        if not getattr(pipeline, "fast_steps", None):
            return replace(method, settings=None, reason="the model has no fast adapter (Session.from_pretrained "
                           "loads MODEL/fast; train one with `python -m training distill --mode fast`)")
        return replace(method, settings={**method.settings, "num_inference_steps": pipeline.fast_steps,
                                         "scheduler": "ddim"})
    return method
