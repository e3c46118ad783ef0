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
# bcg / qd / mqd: the paper's ablation ladder, all with its latent-space preservation.
# full: MQD + our pixel-exact preservation; distilled: full with the one-pass distilled guidance.
METHODS: dict[str, dict] = {
    "naive": {"background": "renoise", "attention": "bcg", "preserve": "latents"},
    "bcg": {"background": "memory", "attention": "bcg", "preserve": "latents"},
    "qd": {"background": "memory", "attention": "qd", "preserve": "latents"},
    "mqd": {"background": "memory", "attention": "mqd", "preserve": "latents"},
    "full": {"background": "memory", "attention": "mqd", "preserve": "pixels"},
    "distilled": {"background": "memory", "attention": "mqd", "preserve": "pixels", "guidance": "distilled"},
}


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
    """`method`, or why this model cannot run it: distilled guidance needs the model's guidance adapter."""
    if method.available and method.settings.get("guidance") == "distilled" and not pipeline.has_guidance_adapter:
        return replace(method, settings=None, reason="the model has no guidance adapter (Session.from_pretrained "
                       "loads MODEL/guidance; train one with `python -m training distill`)")
    return method
