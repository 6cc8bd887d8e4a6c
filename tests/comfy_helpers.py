"""Test helpers for the ComfyUI integration: load the pack as a package, run a real ComfyUI server, convert
UI workflows to API prompts, and make small media files. Nothing here imports ComfyUI."""

from __future__ import annotations

import importlib.util
import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
import wave
from pathlib import Path
from contextlib import contextmanager
from typing import Any, Callable, Iterator, Optional

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
WORKFLOWS = REPO / "workflows"
PACK_NAME = "omnisync_pack"
PACK_DIR_NAME = "omnisync"  # the pack's folder name inside custom_nodes

WIDGET_TYPES = {"INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"}
FRONTEND_ONLY = {"Note", "MarkdownNote", "Reroute", "PrimitiveNode"}


# --------------------------------------------------------------------------------------------- the pack


def load_pack():
    """Import the repository root as a package (as ComfyUI does), so ``nodes``' relative imports resolve.

    The name is unique (``omnisync_pack``), so the pack's ``nodes`` package never shadows ComfyUI's ``nodes.py``.
    """
    if PACK_NAME in sys.modules:
        return sys.modules[PACK_NAME]
    spec = importlib.util.spec_from_file_location(PACK_NAME, REPO / "__init__.py",
                                                  submodule_search_locations=[str(REPO)])
    module = importlib.util.module_from_spec(spec)
    sys.modules[PACK_NAME] = module
    spec.loader.exec_module(module)
    return module


def pack_module(name: str):
    load_pack()
    return importlib.import_module(f"{PACK_NAME}.{name}")


# --------------------------------------------------------------------------------------------- UI -> API


def _is_widget(spec: list) -> bool:
    kind, opts = spec[0], (spec[1] if len(spec) > 1 else {})
    if opts.get("forceInput"):
        return False
    return isinstance(kind, list) or kind in WIDGET_TYPES


def _has_control_value(name: str, spec: list) -> bool:
    """The frontend stores a fixed/increment/decrement/randomize value after seed-like INTs and flagged combos."""
    opts = spec[1] if len(spec) > 1 else {}
    flag = opts.get("control_after_generate")
    if spec[0] == "INT":
        return bool(flag) if flag is not None else name in ("seed", "noise_seed")
    return bool(flag)


def widget_names(info: dict) -> list[tuple[str, bool]]:
    """(widget input name, followed by a control value) in the order the frontend stores widgets_values."""
    specs = {**info["input"].get("required", {}), **info["input"].get("optional", {})}
    order = info["input_order"].get("required", []) + info["input_order"].get("optional", [])
    return [(name, _has_control_value(name, specs[name])) for name in order if _is_widget(specs[name])]


def ui_to_api(workflow: dict, object_info: dict) -> dict:
    """Convert a UI-format workflow to an API prompt (widgets by /object_info order, links to [id, slot])."""
    links = {link[0]: link for link in workflow["links"]}  # [id, from_node, from_slot, to_node, to_slot, type]
    prompt = {}
    for node in workflow["nodes"]:
        if node["type"] in FRONTEND_ONLY or node.get("mode", 0) in (2, 4):  # 2 muted, 4 bypassed
            continue
        if node["type"] not in object_info:
            raise KeyError(f"node type {node['type']!r} (node {node['id']}) is not installed")
        values = list(node.get("widgets_values") or [])
        inputs: dict[str, Any] = {}
        for name, control in widget_names(object_info[node["type"]]):
            if not values:
                break
            inputs[name] = values.pop(0)
            if control and values:
                values.pop(0)
        for inp in node.get("inputs", []):
            if inp.get("link") is not None:
                link = links[inp["link"]]
                inputs[inp["name"]] = [str(link[1]), link[2]]
        prompt[str(node["id"])] = {"class_type": node["type"], "inputs": inputs}
    return prompt


def load_workflow(name: str) -> dict:
    return json.loads((WORKFLOWS / name).read_text())


def nodes_of_type(prompt: dict, class_type: str) -> list[str]:
    return [nid for nid, node in prompt.items() if node["class_type"] == class_type]


# --------------------------------------------------------------------------------------------- server


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class ComfyServer:
    """A ComfyUI server on 127.0.0.1 with only this pack in a temporary custom_nodes folder."""

    def __init__(self, comfy_path: Path, python: str, base: Path):
        self.comfy_path, self.python, self.base = Path(comfy_path), python, Path(base)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.input_dir = self.base / "input"
        self.output_dir = self.base / "output"
        self.models_dir = self.base / "models"
        self.log_path = self.base / "server.log"
        self.proc: Optional[subprocess.Popen] = None
        self._log = None  # the server's log file while it runs
        self.client_id = uuid.uuid4().hex

    def prepare(self) -> None:
        for path in (self.input_dir, self.output_dir, self.models_dir / "omnisync", self.base / "custom_nodes"):
            path.mkdir(parents=True, exist_ok=True)
        link = self.base / "custom_nodes" / PACK_DIR_NAME
        if not link.exists():
            link.symlink_to(REPO, target_is_directory=True)

    def start(self, timeout: float = 240.0) -> None:
        self.prepare()
        cmd = [self.python, "main.py", "--cpu", "--listen", "127.0.0.1", "--port", str(self.port),
               "--base-directory", str(self.base), "--input-directory", str(self.input_dir),
               "--output-directory", str(self.output_dir), "--disable-auto-launch"]
        env = dict(os.environ, OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "1"), DO_NOT_TRACK="1")
        env.pop("PYTHONPATH", None)
        self._log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(cmd, cwd=self.comfy_path, stdout=self._log, stderr=subprocess.STDOUT, env=env)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"ComfyUI exited with {self.proc.returncode}:\n{self.log_tail()}")
            try:
                self.get("/object_info/OmniSyncModelLoader", timeout=5)
                return
            except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
                time.sleep(1.0)
        raise TimeoutError(f"ComfyUI did not answer within {timeout} s:\n{self.log_tail()}")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=20)
        self.proc = None
        if self._log is not None:
            self._log.close()
            self._log = None

    def log_tail(self, chars: int = 6000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return ""

    # HTTP
    def get(self, path: str, timeout: float = 30.0) -> Any:
        with urllib.request.urlopen(self.url + path, timeout=timeout) as resp:
            return json.loads(resp.read())

    def post(self, path: str, body: Optional[dict] = None, timeout: float = 30.0) -> tuple[int, Any]:
        data = json.dumps(body or {}).encode()
        req = urllib.request.Request(self.url + path, data=data, headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=timeout) as resp:
                raw = resp.read()
                return resp.status, (json.loads(raw) if raw.strip() else None)
        except urllib.error.HTTPError as err:
            raw = err.read()
            return err.code, (json.loads(raw) if raw.strip() else None)

    def queue(self, prompt: dict, workflow: Optional[dict] = None) -> str:
        body = {"prompt": prompt, "client_id": self.client_id}
        if workflow is not None:
            body["extra_data"] = {"extra_pnginfo": {"workflow": workflow}}
        status, reply = self.post("/prompt", body)
        if status != 200:
            raise AssertionError(f"/prompt refused the prompt ({status}): {json.dumps(reply, indent=1)[:4000]}")
        return reply["prompt_id"]

    def wait(self, prompt_id: str, timeout: float = 300.0) -> dict:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            history = self.get(f"/history/{prompt_id}")
            if prompt_id in history and history[prompt_id].get("status", {}).get("status_str") in ("success", "error"):
                return history[prompt_id]
            time.sleep(0.5)
        raise TimeoutError(f"prompt {prompt_id} did not finish within {timeout} s:\n{self.log_tail()}")

    def wait_running(self, prompt_id: str, timeout: float = 120.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            queue = self.get("/queue")
            if any(item[1] == prompt_id for item in queue.get("queue_running", [])):
                return
            time.sleep(0.2)
        raise TimeoutError(f"prompt {prompt_id} did not start within {timeout} s")

    def saved_files(self, history: dict) -> list[Path]:
        files = []
        for output in history.get("outputs", {}).values():
            for item in output.get("images", []):
                if item.get("type") == "output":
                    files.append(self.output_dir / item.get("subfolder", "") / item["filename"])
        return files


@contextmanager
def running_server(base: Path, setup: Callable[[ComfyServer], None]) -> Iterator[ComfyServer]:
    """A started server on ``base`` (COMFYUI_PATH, COMFYUI_PYTHON or this interpreter) after ``setup(server)`` has
    placed its models and inputs; stopped on exit."""
    srv = ComfyServer(Path(os.environ["COMFYUI_PATH"]), os.environ.get("COMFYUI_PYTHON", sys.executable), base)
    srv.prepare()
    setup(srv)
    try:
        srv.start()
        yield srv
    finally:
        srv.stop()


def history_error(history: dict) -> str:
    for event, data in history.get("status", {}).get("messages", []):
        if event == "execution_error":
            return f"{data.get('node_type')}: {data.get('exception_message')}"
    return ""


def history_events(history: dict) -> list[str]:
    return [event for event, _ in history.get("status", {}).get("messages", [])]


# --------------------------------------------------------------------------------------------- media


def talking_clip(seconds: float, fps: float, size: int = 64, seed: int = 3) -> tuple[torch.Tensor, torch.Tensor]:
    """A synthetic talking face: (frames [F,size,size,3] float 0..1, speech [N] at 16 kHz driving the lips)."""
    from omnisync_model.training.synthetic import make_talking_clip

    clip, speech, _ = make_talking_clip(seed, "realistic", seconds, fps, size)
    return clip.frames, speech


def write_video(path: Path, frames: torch.Tensor, fps: float, speech: Optional[torch.Tensor] = None) -> Path:
    from omnisync_model.media.video_io import VideoWriter

    audio = (speech[None].float(), 16000) if speech is not None else None
    with VideoWriter(path, fps, frames.shape[2], frames.shape[1], audio=audio) as writer:
        writer.write(frames)
    return path


def write_wav(path: Path, waveform: torch.Tensor, sample_rate: int) -> Path:
    """[C,N] float in -1..1 -> 16-bit PCM WAV (stdlib ``wave``)."""
    data = (waveform.clamp(-1, 1).T.numpy() * 32767.0).round().astype(np.int16)  # [C,N] -> [N,C] interleaved
    with wave.open(str(path), "wb") as out:
        out.setnchannels(waveform.shape[0])
        out.setsampwidth(2)
        out.setframerate(sample_rate)
        out.writeframes(data.tobytes())
    return path


def speech_wav(path: Path, seconds: float, sample_rate: int = 44100, seed: int = 11) -> Path:
    """Stereo speech at ``sample_rate`` (exercises downmixing and resampling)."""
    from omnisync_model.training.synthetic import make_speech

    speech, _ = make_speech(seed, seconds, sample_rate=sample_rate)
    return write_wav(path, torch.stack([speech, 0.8 * speech]), sample_rate)
