"""The `layered-edit` command: the command line is a user interface too."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from benchmark.cli import add_bench_command
from benchmark.plans import pixel_box
from training.distill import add_distill_command
from ui.autosave import ENV_FOLDER, Autosave, default_folder

DEMO_PLAN = {
    "background": "a grass background",
    "edits": [
        {"prompt": "a red star", "box": [0.08, 0.1, 0.45, 0.47]},
        {"prompt": "a blue circle", "box": [0.55, 0.12, 0.92, 0.5]},
        {"prompt": "a yellow heart", "box": [0.3, 0.55, 0.7, 0.95]},
    ],
}


def run_demo(args) -> int:
    """Generate a background, make edits, undo/redo, save the project, and write every layer as a PNG."""
    import numpy as np
    from PIL import Image

    from editor import Session

    plan = json.loads(Path(args.plan).read_text()) if args.plan else DEMO_PLAN
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    session = Session.from_pretrained(args.model, device=args.device)
    started = time.perf_counter()
    session.generate(plan["background"], seed=args.seed)
    print(f"background  {plan['background']!r}: {time.perf_counter() - started:.2f} s")
    for edit in plan["edits"]:
        started = time.perf_counter()
        session.edit(edit["prompt"], pixel_box(edit["box"], session.size))  # the benchmark's rule: edges round outwards
        print(f"edit        {edit['prompt']!r}: {time.perf_counter() - started:.2f} s")
    session.undo()
    session.redo()
    strip = np.concatenate([np.asarray(layer.image) for layer in session.layers], axis=1)
    for index, layer in enumerate(session.layers):
        Image.fromarray(np.asarray(layer.image)).save(out / f"layer_{index:02d}.png")
    Image.fromarray(strip).save(out / "layers.png")
    project = session.save(out / "project.lep")
    print(f"wrote {len(session.layers)} layers to {out}/ (layers.png, layer_XX.png) and the project {project}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="layered-edit",
        description="Layered image editing with memory-guided diffusion.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    demo = commands.add_parser("demo", help="run a scripted multi-edit session and write its layers as PNGs")
    demo.add_argument("--model", default="embedded", help="'embedded' (default), a diffusers folder or a hub id")
    demo.add_argument("--out", default="demo-out", help="output folder (default: demo-out)")
    demo.add_argument("--seed", type=int, default=7, help="session seed (default: 7)")
    demo.add_argument("--plan", help="a JSON plan {background, edits: [{prompt, box: [x0,y0,x1,y1] in 0-1]}}")
    demo.add_argument("--device", help="cpu or cuda (default: cuda when available)")
    demo.set_defaults(handler=run_demo)

    web = commands.add_parser("ui", help="open the web app (Gradio) on this machine")
    web.add_argument("--model", default="embedded", help="'embedded' (default), a diffusers folder or a hub id")
    web.add_argument("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1, this machine only)")
    web.add_argument("--port", type=int, default=7860, help="port (default: 7860)")
    web.add_argument("--device", help="cpu or cuda (default: cuda when available)")
    saving = web.add_mutually_exclusive_group()
    saving.add_argument("--autosave-dir", metavar="DIR",
                        help="folder where each browser session is saved after every change, so a restart can "
                             f"restore it (default: ${ENV_FOLDER}, else ~/.cache/layered-edit/autosave)")
    saving.add_argument("--no-autosave", action="store_true", help="do not autosave browser sessions")
    web.set_defaults(handler=run_ui)

    export = commands.add_parser("export", help="write a saved project's layers for painting programs")
    export.add_argument("project", help="a saved project: a .lep file or a project folder")
    export.add_argument("out", help="file to write; the extension picks the format: .ora (Krita, GIMP), "
                                    ".psd (Photoshop) or .zip (PNGs + manifest)")
    export.set_defaults(handler=run_export)

    add_bench_command(commands)
    add_distill_command(commands)
    return parser


def run_ui(args) -> int:
    """Serve the web app until interrupted; the model is loaded once and shared by all browser tabs."""
    from ui.app import serve

    return serve(args.model, host=args.host, port=args.port, device=args.device, autosave=autosave_from_args(args))


def run_export(args) -> int:
    """Export a saved project as layers; the model is not loaded (the project holds every pixel)."""
    from editor.export import export_project

    print(f"wrote {export_project(args.project, args.out)}")
    return 0


def autosave_from_args(args) -> Autosave | None:
    """The autosave folder the `ui` flags choose: --no-autosave, --autosave-dir, else the default folder."""
    if args.no_autosave:
        return None
    return Autosave(args.autosave_dir if args.autosave_dir else default_folder())


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.handler(args)
    except (ValueError, TypeError, OSError) as error:  # OSError: a missing model folder, a port in use
        print(f"layered-edit {args.command}: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
