"""Reliability of the web UI (issue #8): autosave and restore across a server restart, interrupted autosaves,
autosaves treated as untrusted files, and many browser sessions at once.

The app runs in-process on a free port and is driven with gradio_client (every Client is one browser
session), on tiny random SD components; the same load test on the embedded model is marked slow.
"""

from __future__ import annotations

import gc
import os
import shutil
import threading
import time
import zipfile

import numpy as np
import pytest
import torch
from gradio import State
from gradio_client import Client
from gradio_client.exceptions import AppError
from ui_client import CIRCLE, STAR, captions, edit, generate, image_of, painted_canvas, settings

from editor import Session
from ui import app, errors
from ui.autosave import ENV_FOLDER, Autosave, default_folder
from ui.cli import autosave_from_args, build_parser, main
from ui.layout import SESSION_IDLE_TTL_S

CLIENTS = 4
EDITS = 10  # per client, after its background: 11 layers each
SMALL_QUEUE = 2  # the fast load test's queue: small, so some clicks are refused as busy (that path is exercised)
RETRY_FOR_S = 120  # a refused click is tried again (as a user would), with backoff, for at most this long


@pytest.fixture(scope="module")
def tiny(tiny_model_dir):
    """(pipeline, model path) of the tiny random model, shared by every app in this module."""
    return Session.from_pretrained(tiny_model_dir, device="cpu").pipeline, str(tiny_model_dir)


def offer(client, demo) -> tuple[list[tuple[str, str]], bool]:
    """What a page load shows: the restore list ((label, id) pairs) and whether the restore row is visible
    (gradio_client returns no layout updates: the row's comes from the handler)."""
    choices = client.predict(api_name="/autosaves")["choices"]
    return [tuple(choice) for choice in choices], demo.handlers.autosave_offer()[1]["visible"]


def assert_same_layers(restored: Session, original: Session):
    assert len(restored.layers) == len(original.layers)
    for mine, theirs in zip(restored.layers, original.layers, strict=True):
        assert (mine.prompt, mine.seed, mine.kind, mine.visible) == (theirs.prompt, theirs.seed, theirs.kind,
                                                                      theirs.visible)
        assert np.array_equal(np.asarray(mine.image), np.asarray(theirs.image))
        assert np.array_equal(np.asarray(mine.user_mask), np.asarray(theirs.user_mask))
        assert all(torch.equal(a, b) for a, b in zip(mine.trajectory, theirs.trajectory, strict=True))


def only_session(demo) -> Session:
    gc.collect()
    [session] = [session for session in demo.handlers.live_sessions if session.layers]
    return session


# ------------------------------------------------------------------------------------------ autosave and restore
def test_edits_autosave_and_a_restarted_server_restores_them_bit_identically(tiny, launch_app, tmp_path):
    folder = tmp_path / "autosave"
    demo, url = launch_app(*tiny, Autosave(folder))
    client = Client(url, verbose=False)
    assert offer(client, demo) == ([], False)  # nothing to restore yet: the offer stays hidden

    background = generate(client, seed=4)
    star = edit(client, painted_canvas(tmp_path, background, STAR), "a red star")
    circle = edit(client, painted_canvas(tmp_path, star, CIRCLE), "a blue circle")
    final = client.predict(index=1, visible=False, api_name="/set_visible")  # hiding is a change too
    [entry] = Autosave(folder).entries()
    assert (entry.layers, entry.prompt) == (3, "a grass background")
    original = only_session(demo)
    demo.close()  # the server is gone; a new one starts on the same folder

    again, url = launch_app(*tiny, Autosave(folder))
    fresh = Client(url, verbose=False)
    choices, shown = offer(fresh, again)
    assert shown and choices == [(entry.label(), entry.id)]
    assert "3 layers" in choices[0][0] and "a grass background" in choices[0][0]
    restored = fresh.predict(choice=entry.id, api_name="/restore")
    assert np.array_equal(image_of(restored), image_of(final))
    assert captions(restored) == captions(final) == ["0: a grass background", "1: a red star (hidden)",
                                                     "2: a blue circle"]
    assert_same_layers(only_session(again), original)
    assert not np.array_equal(image_of(circle), image_of(final))

    # The restored session goes on autosaving under the same id: one entry, now 4 layers.
    edit(fresh, painted_canvas(tmp_path, restored, (20, 2, 30, 9)), "a yellow heart")
    assert [(e.id, e.layers) for e in Autosave(folder).entries()] == [(entry.id, 4)]
    load_event = [dep for dep in again.config["dependencies"] if dep.get("api_name") == "autosaves"]
    assert load_event and any(target[1] == "load" for target in load_event[0]["targets"])


def test_an_interrupted_autosave_keeps_the_previous_one_and_the_edit_still_succeeds(tiny, launch_app, tmp_path,
                                                                                    monkeypatch):
    folder = tmp_path / "autosave"
    _, url = launch_app(*tiny, Autosave(folder))
    client = Client(url, verbose=False)
    star = edit(client, painted_canvas(tmp_path, generate(client, seed=6), STAR), "a red star")
    [entry] = Autosave(folder).entries()
    before = entry.path.read_bytes()

    shown = []
    monkeypatch.setattr(errors.gr, "Warning", shown.append)
    write = zipfile.ZipFile.writestr

    def disk_full_part_way(archive, name, data, *args, **kwargs):
        """Write the images, then fail on the tensors, as a full disk would (autosave files only)."""
        member = getattr(name, "filename", name)  # a ZipInfo or a name
        if str(archive.filename).startswith(str(folder)) and member == "tensors.safetensors":
            raise OSError(28, "No space left on device")
        return write(archive, name, data, *args, **kwargs)

    monkeypatch.setattr(zipfile.ZipFile, "writestr", disk_full_part_way)
    circle = edit(client, painted_canvas(tmp_path, star, CIRCLE), "a blue circle")
    assert captions(circle) == ["0: a grass background", "1: a red star", "2: a blue circle"]  # the edit is done
    assert any("Autosave failed" in message and "No space left" in message for message in shown)
    assert entry.path.read_bytes() == before and sorted(os.listdir(folder)) == [f"{entry.id}.json", entry.path.name]
    kept = Session.load(entry.path, pipeline=tiny[0])
    assert np.array_equal(np.asarray(kept.image), image_of(star)) and len(kept.layers) == 2

    monkeypatch.setattr(zipfile.ZipFile, "writestr", write)  # the disk has room again: the next change saves
    client.predict(api_name="/undo")
    assert entry.path.read_bytes() == before  # the same 2 layers, saved again byte for byte
    client.predict(api_name="/redo")
    assert [e.layers for e in Autosave(folder).entries()] == [3]


def test_autosaves_are_loaded_like_untrusted_uploads(tiny, launch_app, tmp_path):
    folder = tmp_path / "autosave"
    folder.mkdir()
    forged, pruned = "ab" * 16, "cd" * 16
    (folder / f"{forged}.lep").write_bytes(b"PK\x03\x04 not really a project")
    (folder / f"{forged}.json").write_text('{"layers": true, "prompt": "<b>\\u0000x</b>' + "y" * 500 + '"}')
    (folder / f"{pruned}.lep").write_bytes(b"")
    (folder / "notes.lep").write_bytes(b"not ours")  # names not of our form are neither listed nor deleted
    demo, url = launch_app(*tiny, Autosave(folder))
    client = Client(url, verbose=False)
    listed = dict((choice_id, label) for label, choice_id in offer(client, demo)[0])
    assert set(listed) == {forged, pruned}
    assert "? layers" in listed[forged] and "\x00" not in listed[forged] and len(listed[forged]) < 120
    with pytest.raises(AppError) as raised:  # the same loader and checks as an uploaded .lep
        client.predict(choice=forged, api_name="/restore")
    assert "Traceback" not in str(raised.value) and str(raised.value).strip()
    (folder / f"{pruned}.lep").unlink()  # listed on page load, deleted before the click
    with pytest.raises(AppError, match="gone"):
        client.predict(choice=pruned, api_name="/restore")
    for bad in ("../../etc/passwd", "notes", forged.upper()):
        with pytest.raises(AppError, match="not in the list of choices"):  # gradio: only what this tab was offered
            client.predict(choice=bad, api_name="/restore")
        with pytest.raises(ValueError, match="not an autosave id"):  # and the handler checks the id's form itself
            demo.handlers.restore(None, bad)
    assert (folder / "notes.lep").exists()


@pytest.mark.skipif(shutil.which("chromium") is None, reason="chromium is not installed; CI installs it")
def test_a_browser_sees_the_restore_offer_and_restores(tiny, launch_app, tmp_path):
    """gradio_client gets no layout updates, so a real page load shows the offer is visible, then hidden."""
    from playwright.sync_api import sync_playwright

    session = Session(tiny[0])
    session.generate("a sea background", seed=1, num_inference_steps=2)
    session.edit("a red star", STAR, num_inference_steps=2)
    Autosave(tmp_path / "autosave").save("ab" * 16, session)
    _, url = launch_app(*tiny, Autosave(tmp_path / "autosave"))
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=shutil.which("chromium"), headless=True,
                                             args=["--no-sandbox", "--disable-gpu"])
        page = browser.new_page()
        page.goto(url)
        page.locator("#restore").wait_for(state="visible", timeout=60_000)
        assert page.locator("#restore-choice input").input_value().endswith("2 layers · 'a sea background'")
        page.locator("#restore").click()
        page.wait_for_function("document.querySelector('#status').innerText.includes('2 layers')", timeout=60_000)
        page.locator("#restore").wait_for(state="hidden", timeout=10_000)
        browser.close()


def test_only_the_newest_sessions_are_kept(tiny, tmp_path):
    folder = tmp_path / "autosave"
    session = Session(tiny[0])
    session.generate("a sea background", seed=1, num_inference_steps=2)
    autosave = Autosave(folder, keep=3)
    ids = [f"{n:032x}" for n in range(5)]
    for stamp, session_id in enumerate(ids):
        autosave.save(session_id, session)
        os.utime(folder / f"{session_id}.lep", (1000 + stamp, 1000 + stamp))  # a clear order of saves
    folder.joinpath(f".{'e' * 32}.lep.new-1234").write_bytes(b"left by a killed save")
    os.utime(folder / f".{'e' * 32}.lep.new-1234", (0, 0))
    folder.joinpath(f"{'f' * 32}.json").write_text("{}")  # a summary whose project is gone
    autosave.save(ids[4], session)
    assert [entry.id for entry in autosave.entries()] == [ids[4], ids[3], ids[2]]
    assert sorted(os.listdir(folder)) == sorted(f"{i}.{ext}" for i in ids[2:] for ext in ("lep", "json"))
    assert autosave.entries()[0].label().endswith("1 layer · 'a sea background'")


def test_ui_flags_choose_the_autosave_folder(tmp_path, monkeypatch):
    monkeypatch.delenv(ENV_FOLDER, raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    assert autosave_from_args(build_parser().parse_args(["ui"])).folder == tmp_path / "cache/layered-edit/autosave"
    monkeypatch.setenv(ENV_FOLDER, str(tmp_path / "from-env"))
    assert default_folder() == tmp_path / "from-env"
    assert autosave_from_args(build_parser().parse_args(["ui"])).folder == tmp_path / "from-env"
    chosen = build_parser().parse_args(["ui", "--autosave-dir", str(tmp_path / "flag")])
    assert autosave_from_args(chosen).folder == tmp_path / "flag"
    assert autosave_from_args(build_parser().parse_args(["ui", "--no-autosave"])) is None
    with pytest.raises(SystemExit):
        build_parser().parse_args(["ui", "--no-autosave", "--autosave-dir", "x"])

    served = {}
    monkeypatch.setattr(app, "serve", lambda *args, **kwargs: served.update(kwargs) or 0)
    assert main(["ui", "--autosave-dir", str(tmp_path / "flag")]) == 0
    assert served["autosave"].folder == tmp_path / "flag"
    assert main(["ui", "--no-autosave"]) == 0 and served["autosave"] is None


def test_autosave_off_offers_nothing_and_writes_nothing(tiny, launch_app, tmp_path, monkeypatch):
    monkeypatch.setenv(ENV_FOLDER, str(tmp_path / "never"))
    demo, url = launch_app(*tiny, None)
    client = Client(url, verbose=False)
    generate(client, seed=2)
    assert offer(client, demo) == ([], False)
    with pytest.raises(ValueError, match="autosave is off"):
        demo.handlers.restore(None, "ab" * 16)
    assert not (tmp_path / "never").exists()


# ------------------------------------------------------------------------------------------ many browser sessions
BACKGROUNDS = ["a grass background", "a sea background", "a sky background", "a sand background"]
COLOURS = ["red", "green", "blue", "yellow", "white", "black", "purple", "orange", "pink"]
SHAPES = ["star", "circle", "square", "triangle", "heart", "house", "moon", "tree"]


def plan(client_index: int, size: tuple[int, int]) -> tuple[str, list[tuple[str, tuple[int, int, int, int]]]]:
    """Each client's own background and 10 edits: distinct prompts and boxes."""
    rng = np.random.default_rng(client_index)
    width, height = size
    edits = []
    for number in range(EDITS):
        prompt = f"a {COLOURS[(client_index + number) % len(COLOURS)]} {SHAPES[(client_index * 3 + number) % 8]}"
        x0, y0 = int(rng.integers(0, width * 3 // 4)), int(rng.integers(0, height * 3 // 4))
        edits.append((prompt, (x0, y0, x0 + width // 4, y0 + height // 4)))
    return BACKGROUNDS[client_index], edits


def run_load_test(pipeline, model, autosave: Autosave, launch_app, steps: int, max_queue: int) -> dict:
    """CLIENTS browser sessions at once, each: generate + EDITS edits (box masks), then close. Returns numbers."""
    demo, url = launch_app(pipeline, model, autosave, max_queue=max_queue)
    handlers = demo.handlers
    state = demo.components.state  # the tab's Session (the app's other states are small values)
    assert isinstance(state, State)
    assert (state.time_to_live, state.delete_callback) == (SESSION_IDLE_TTL_S, handlers.session_closed)
    counts = {"completed": 0, "refused": 0, "in_flight": 0, "max_in_flight": 0, "max_live_sessions": 0}
    lock = threading.Lock()
    results, errors = {}, []

    def call(client, **kwargs):
        deadline, pause = time.monotonic() + RETRY_FOR_S, 0.05
        while time.monotonic() < deadline:
            with lock:
                counts["in_flight"] += 1
                counts["max_in_flight"] = max(counts["max_in_flight"], counts["in_flight"])
            try:
                result = client.predict(**kwargs)
            except Exception as error:  # noqa: BLE001 - only a clear "busy" refusal is allowed
                if "queue is full" not in str(error).lower():
                    raise
                with lock:
                    counts["refused"] += 1
                time.sleep(pause)
                pause = min(2 * pause, 0.5)
                continue
            finally:
                with lock:
                    counts["in_flight"] -= 1
            with lock:
                counts["completed"] += 1
                counts["max_live_sessions"] = max(counts["max_live_sessions"], len(handlers.live_sessions))
            return result
        raise AssertionError(f"refused as busy for {RETRY_FOR_S} s")

    def browser(index: int, client: Client):
        try:
            background, edits = plan(index, pipeline.default_size)
            result = call(client, prompt=background, seed_mode="fixed", seed=index,
                          **settings(num_inference_steps=steps), api_name="/generate")
            for prompt, (x0, y0, x1, y1) in edits:
                result = call(client, canvas=None, prompt=prompt, seed_mode="session", seed=0, mask_mode="box",
                              x0=x0, y0=y0, x1=x1, y1=y1, **settings(num_inference_steps=steps), api_name="/edit")
            results[index] = result
        except Exception as error:  # noqa: BLE001 - reported below with the client that failed
            errors.append((index, repr(error)))

    clients = [Client(url, verbose=False) for _ in range(CLIENTS)]
    started = time.perf_counter()
    threads = [threading.Thread(target=browser, args=(index, client)) for index, client in enumerate(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=600)
    seconds = time.perf_counter() - started
    assert not errors, errors
    assert counts["completed"] == CLIENTS * (EDITS + 1)

    for index in range(CLIENTS):  # every client sees exactly its own layers, in its own order
        background, edits = plan(index, pipeline.default_size)
        expected = [f"0: {background}"] + [f"{n}: {prompt}" for n, (prompt, _) in enumerate(edits, start=1)]
        assert captions(results[index]) == expected
    saved = {entry.prompt: entry.layers for entry in autosave.entries()}
    assert saved == {background: EDITS + 1 for background in BACKGROUNDS[:CLIENTS]}

    # Closing a tab frees its Session (gr.State's delete_callback via the app's unload handler): none is left.
    for client in clients:
        client.close()
    deadline = time.monotonic() + 30
    while True:
        gc.collect()
        live = len(handlers.live_sessions)
        if live == 0 or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    counts.update(live_after_close=live, seconds=round(seconds, 1), edits_per_s=round(counts["completed"] / seconds, 2))
    print(f"\nload test ({CLIENTS} clients x {EDITS + 1} calls, {steps} steps): {counts}")
    assert live == 0
    return counts


@pytest.fixture
def fast_heartbeat(monkeypatch):
    """Clients notice their own close at the next heartbeat (15 s by default): make that quick for the test."""
    monkeypatch.setenv("GRADIO_HEARTBEAT_INTERVAL", "0.2")


def test_four_browser_sessions_at_once_keep_their_own_layers_and_free_memory_on_close(tiny, launch_app, tmp_path,
                                                                                      fast_heartbeat):
    counts = run_load_test(*tiny, Autosave(tmp_path / "autosave"), launch_app, steps=2, max_queue=SMALL_QUEUE)
    assert counts["max_live_sessions"] == CLIENTS and counts["max_in_flight"] >= 2


@pytest.mark.slow
def test_load_on_the_embedded_model(launch_app, tmp_path, fast_heartbeat):
    """The same load test on the shipped model (~0.7 s per edit at the default 20 steps on a CPU), with the
    app's default queue: four tabs at once are never refused."""
    session = Session.from_pretrained()
    counts = run_load_test(session.pipeline, session.model, Autosave(tmp_path / "autosave"), launch_app,
                           steps=session.defaults.num_inference_steps, max_queue=app.MAX_QUEUE)
    assert counts["max_live_sessions"] == CLIENTS and counts["refused"] == 0
