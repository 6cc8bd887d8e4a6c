"""Static checks of the example workflows (UI format) that need no ComfyUI; the real server runs them in
test_comfy_server.py."""

import json

import pytest

from comfy_helpers import PACK_DIR_NAME, REPO, WORKFLOWS

FILES = ["lipsync_basic.json", "lipsync_long_video.json", "lipsync_step_by_step.json",
         "lipsync_after_video_generator.json", "lipsync_video_file.json"]
OURS = {"OmniSyncModelLoader", "OmniSyncAudioEncode", "OmniSyncMouthRegion", "OmniSyncNoiseInit", "OmniSyncSampler",
        "OmniSyncLipSync", "OmniSyncLipSyncVideo", "OmniSyncFaceCrop", "OmniSyncFacePaste", "OmniSyncPixelVAE",
        "OmniSyncWindowSplit", "OmniSyncWindowStitch"}
CORE = {"Note", "LoadVideo", "GetVideoComponents", "LoadAudio", "CreateVideo", "SaveVideo", "VAEEncode", "VAEDecode",
        "UNETLoader", "CLIPLoader", "VAELoader", "CLIPTextEncode", "EmptyHunyuanLatentVideo", "ModelSamplingSD3",
        "KSampler"}


@pytest.fixture(params=FILES)
def workflow(request):
    return request.param, json.loads((WORKFLOWS / request.param).read_text())


def test_workflow_is_ui_format_with_a_note(workflow):
    name, wf = workflow
    assert wf["version"] == 0.4 and {"nodes", "links", "last_node_id", "last_link_id", "extra"} <= set(wf)
    types = {n["type"] for n in wf["nodes"]}
    assert types <= OURS | CORE, f"{name}: unexpected node types {sorted(types - OURS - CORE)}"
    notes = [n for n in wf["nodes"] if n["type"] == "Note"]
    assert len(notes) == 1 and "what to change" in notes[0]["widgets_values"][0].lower()
    assert wf["last_node_id"] == max(n["id"] for n in wf["nodes"])
    assert wf["last_link_id"] == max(link[0] for link in wf["links"])
    assert "SaveVideo" in types and "OmniSyncModelLoader" in types


def test_workflow_links_agree_with_both_ends(workflow):
    name, wf = workflow
    nodes = {n["id"]: n for n in wf["nodes"]}
    for link_id, src, src_slot, dst, dst_slot, kind in wf["links"]:
        out = nodes[src]["outputs"][src_slot]
        inp = nodes[dst]["inputs"][dst_slot]
        assert link_id in out["links"] and inp["link"] == link_id, (name, link_id)
        assert out["type"] == kind == inp["type"], (name, link_id, out["type"], kind, inp["type"])
    linked = {i["link"] for n in wf["nodes"] for i in n["inputs"] if i.get("link") is not None}
    assert linked == {link[0] for link in wf["links"]}


def test_workflows_use_the_shipped_checkpoint(workflow):
    _, wf = workflow
    loaders = [n for n in wf["nodes"] if n["type"] == "OmniSyncModelLoader"]
    assert [n["widgets_values"][0] for n in loaders] == ["omnisync_small_demo.safetensors"]


def test_long_video_workflow_uses_windows_and_face_crop():
    wf = json.loads((WORKFLOWS / "lipsync_long_video.json").read_text())
    types = [n["type"] for n in wf["nodes"]]
    assert {"OmniSyncFaceCrop", "OmniSyncLipSync", "OmniSyncFacePaste"} <= set(types)
    sync = next(n for n in wf["nodes"] if n["type"] == "OmniSyncLipSync")
    window, overlap = sync["widgets_values"][5:7]  # fps, tau, steps, seed, control, window, overlap, ...
    assert 0 < overlap < window


def test_video_file_workflow_streams_load_video_into_save_video():
    wf = json.loads((WORKFLOWS / "lipsync_video_file.json").read_text())
    nodes = {n["id"]: n for n in wf["nodes"]}
    by_type = {n["type"]: n for n in wf["nodes"]}
    assert "GetVideoComponents" not in by_type and "OmniSyncLipSync" not in by_type  # no IMAGE batch anywhere
    sync = by_type["OmniSyncLipSyncVideo"]
    feeds = {link[4]: nodes[link[1]]["type"] for link in wf["links"] if link[3] == sync["id"]}
    assert feeds == {0: "OmniSyncModelLoader", 1: "LoadVideo", 2: "LoadAudio"}
    saved = [link for link in wf["links"] if link[3] == by_type["SaveVideo"]["id"]]
    assert [(link[1], link[5]) for link in saved] == [(sync["id"], "VIDEO")]
    region, blend, size = sync["widgets_values"][:3]
    assert (region, blend, size) == ("face (auto)", "mouth", 0)


def test_step_by_step_workflow_is_modular_with_a_vae():
    types = {n["type"] for n in json.loads((WORKFLOWS / "lipsync_step_by_step.json").read_text())["nodes"]}
    assert {"OmniSyncAudioEncode", "OmniSyncNoiseInit", "OmniSyncSampler", "VAEEncode", "VAEDecode",
            "OmniSyncPixelVAE"} <= types and "OmniSyncLipSync" not in types


# --------------------------------------------------------------------------------------------- in the browser
# Geometry as ComfyUI's frontend (1.27) draws it, measured in headless chromium: a node's title bar is drawn above
# its pos (LiteGraph.NODE_TITLE_HEIGHT); our nodes carry a source badge above the title. A video preview
# (LoadVideo; SaveVideo once it has a result) grows the node downwards to PREVIEW_CHROME + width / aspect: a
# 320-wide LoadVideo with a 9:16 portrait clip grows from 330 to 643 px, a 400-wide SaveVideo showing a square
# result from 420 to 498 px.
ALL = sorted(p.name for p in WORKFLOWS.glob("*.json"))
TITLE_HEIGHT = 30
GAP = 20  # room between nodes for the source badge ("omnisync") drawn above a title, and the eye
PREVIEW_CHROME = {"LoadVideo": 74, "SaveVideo": 98}  # the widgets and margins above the preview
TALLEST_ASPECT = 9 / 16  # portrait phone video: the tallest preview a user is likely to load
SHIPPED = {"omnisync_small_demo.safetensors"}  # in the pack's assets folder: nothing to download
CONVERTED = {  # released as pickles, converted once by the pack's converter (its Note says how): no file to link
    "whisper-large-v2.safetensors",  # X-Dub's whisper/large-v2.pt
    "whisper_tiny.safetensors",  # LatentSync's whisper/tiny.pt
    "latentsync_unet.safetensors",  # LatentSync's latentsync_unet.pt
}
RENAMED: dict[str, str] = {}  # workflow file name -> the downloaded file's name, where they differ (none now)
MODEL_SUFFIXES = (".safetensors", ".sft", ".ckpt", ".pt", ".pth", ".bin", ".gguf")
MODEL_FOLDERS = {"checkpoints", "diffusion_models", "text_encoders", "vae", "audio_encoders", "clip_vision",
                 "loras", "omnisync"}


@pytest.fixture(params=ALL)
def any_workflow(request):
    return request.param, json.loads((WORKFLOWS / request.param).read_text())


def drawn_rect(node: dict) -> tuple[float, float, float, float]:
    """(x0, y0, x1, y1) the frontend draws for a node: title bar included, a video preview grown to its tallest."""
    (x, y), (w, h) = node["pos"], node["size"]
    if node["type"] in PREVIEW_CHROME:
        h = max(h, PREVIEW_CHROME[node["type"]] + w / TALLEST_ASPECT)
    return x, y - TITLE_HEIGHT, x + w, y + h


def test_grown_video_previews_are_the_measured_sizes():
    assert drawn_rect({"type": "LoadVideo", "pos": [0, 0], "size": [320, 330]})[3] == pytest.approx(642.9, abs=0.1)
    square = {"type": "SaveVideo", "pos": [0, 0], "size": [400, 420]}
    assert drawn_rect(square)[3] == pytest.approx(498 - 400 + 400 * 16 / 9)  # 498 with a square result


def test_no_two_nodes_overlap_even_with_a_grown_video_preview(any_workflow):
    name, wf = any_workflow
    rects = [(n["id"], n["type"], drawn_rect(n)) for n in wf["nodes"]]
    for i, (id_a, type_a, a) in enumerate(rects):
        for id_b, type_b, b in rects[i + 1:]:
            apart = (a[2] + GAP <= b[0] or b[2] + GAP <= a[0] or a[3] + GAP <= b[1] or b[3] + GAP <= a[1])
            assert apart, f"{name}: {type_a} #{id_a} {a} and {type_b} #{id_b} {b} overlap (or are < {GAP} px apart)"


def test_links_never_run_leftwards(any_workflow):
    """A link into a node left of its source loops back across the graph; ours all run left to right (or down)."""
    name, wf = any_workflow
    nodes = {n["id"]: n for n in wf["nodes"]}
    for link_id, src, _, dst, _, _ in wf["links"]:
        assert nodes[dst]["pos"][0] >= nodes[src]["pos"][0], \
            f"{name}: link {link_id} runs leftwards, {nodes[src]['type']} -> {nodes[dst]['type']}"


def test_every_template_has_a_small_jpeg_thumbnail(any_workflow):
    """The template browser shows /api/workflow_templates/<pack>/<name>.jpg for a pack's workflows/<name>.json."""
    name, _ = any_workflow
    thumb = WORKFLOWS / name.replace(".json", ".jpg")
    assert thumb.is_file(), f"{name}: no thumbnail {thumb.name}"
    data = thumb.read_bytes()
    assert data[:3] == b"\xff\xd8\xff" and data[-2:] == b"\xff\xd9", f"{thumb.name} is not a JPEG"
    assert 5_000 < len(data) < 150_000, f"{thumb.name}: {len(data)} bytes"
    assert jpeg_size(data) == (512, 384)


def test_no_stray_thumbnails():
    assert {p.stem for p in WORKFLOWS.glob("*.jpg")} == {p.stem for p in WORKFLOWS.glob("*.json")}


def jpeg_size(data: bytes) -> tuple[int, int]:
    """(width, height) from a JPEG's start-of-frame segment."""
    i = 2
    while i < len(data):
        marker, length = data[i + 1], int.from_bytes(data[i + 2:i + 4], "big")
        if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):
            return int.from_bytes(data[i + 7:i + 9], "big"), int.from_bytes(data[i + 5:i + 7], "big")
        i += 2 + length
    raise ValueError("no start-of-frame segment")


def model_files(node: dict) -> list[str]:
    """The model file names among a node's widget values."""
    values = node.get("widgets_values") or []
    return [v for v in values if isinstance(v, str) and v.lower().endswith(MODEL_SUFFIXES)]


def test_every_model_file_has_a_download_link(any_workflow):
    """The frontend's missing-models dialog reads node.properties.models [{name, url, directory}], keeps the
    entries whose name is one of the node's widget values and offers the url (huggingface.co or civitai.com, a
    .safetensors / .sft file) when models/<directory> lacks the file."""
    name, wf = any_workflow
    for node in wf["nodes"]:
        needed = [f for f in model_files(node) if f not in SHIPPED | CONVERTED]
        links = {m["name"]: m for m in (node.get("properties") or {}).get("models", [])}
        for file in needed:
            assert file in links, f"{name}: {node['type']} #{node['id']} needs {file} but has no properties.models"
            link = links[file]
            assert set(link) == {"name", "url", "directory"}, link
            assert link["url"].startswith("https://huggingface.co/") and "/resolve/" in link["url"], link
            fetched = link["url"].split("?")[0].rsplit("/", 1)[1]  # a browser download keeps the url's name
            assert fetched == RENAMED.get(file, file), f"{name}: the link fetches {fetched}, not {file}"
            assert file.endswith((".safetensors", ".sft")) and link["directory"] in MODEL_FOLDERS, link
        assert set(links) <= set(needed), f"{name}: {node['type']} #{node['id']} links files it does not use"


def test_template_category_is_named_for_both_install_folders():
    """The template browser titles a pack's group with i18n templateWorkflows.category.<custom_nodes folder>: the
    folder is 'omnisync' for the README's clone and the project name for a registry / Manager install."""
    import tomllib

    locale = json.loads((REPO / "locales" / "en" / "main.json").read_text())
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["name"]
    titles = locale["templateWorkflows"]["category"]
    assert titles[PACK_DIR_NAME] == titles[project] == "OmniSync lip sync"
