"""Static checks of the example workflows (UI format) that need no ComfyUI; the real server runs them in
test_comfy_server.py."""

import json

import pytest

from comfy_helpers import WORKFLOWS

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
