"""The test harness: the real ComfyUI in-process, as a live server, and in headless Chromium.

Everything here uses ComfyUI as a user has it: the pack is loaded with ComfyUI's own
``load_custom_node`` (in-process) or found in ``custom_nodes/`` (live server); graphs go through
``execution.validate_prompt`` and ``execution.PromptExecutor`` or through ``/prompt``.
"""
from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
SUPPORT = Path(__file__).resolve().parent
TEST_NODES = SUPPORT / "continuity_test_nodes"
ENV_DIR = Path(os.environ.get("CONTINUITY_ENV", REPO / ".testenv"))
PACK_LINK_NAME = "continuity"


def comfyui_path() -> Path:
    if os.environ.get("COMFYUI_PATH"):
        return Path(os.environ["COMFYUI_PATH"]).resolve()
    marker = ENV_DIR / "comfyui_path"
    if marker.exists():
        return Path(marker.read_text().strip())
    raise RuntimeError("ComfyUI not found: run scripts/setup_test_env.sh or set COMFYUI_PATH")


def make_base_dir(base: Path) -> Path:
    """A ComfyUI --base-directory with the pack and the test nodes linked into custom_nodes."""
    for sub in ("custom_nodes", "input", "output", "models", "user", "temp"):
        (base / sub).mkdir(parents=True, exist_ok=True)
    for name, target in ((PACK_LINK_NAME, REPO), ("continuity_test_nodes", TEST_NODES)):
        link = base / "custom_nodes" / name
        if not link.exists():
            link.symlink_to(target, target_is_directory=True)
    return base


# --------------------------------------------------------------------------- in-process ComfyUI

class _RecordingServer:
    """Stands in for PromptServer in PromptExecutor: records every message sent to clients."""

    def __init__(self):
        self.client_id = "test-client"
        self.last_node_id = None
        self.last_prompt_id = None
        self.messages: list[tuple[str, dict]] = []

    def send_sync(self, event, data, sid=None):
        self.messages.append((event, data))

    def queue_updated(self):
        pass


@dataclass
class GraphResult:
    prompt_id: str
    success: bool
    outputs: dict            # node id -> tuple of output values (from the executor's cache)
    ui: dict                 # node id -> ui dict (what /history shows)
    messages: list           # (event, data) sent to the client
    error: dict | None = None

    def output(self, node_id: str, index: int = 0) -> list:
        """Output ``index`` of a node as the executor holds it: a list (one item unless a list output)."""
        return self.outputs[str(node_id)][index]

    def value(self, node_id: str, index: int = 0):
        """Output ``index`` of a node that is not a list output: its single value."""
        items = self.output(node_id, index)
        assert len(items) == 1, f"node {node_id} output {index} holds {len(items)} items"
        return items[0]


@dataclass
class InProcessComfy:
    base: Path
    executor: object = None
    server: _RecordingServer = field(default_factory=_RecordingServer)
    pack_module: object = None

    def start(self):
        root = comfyui_path()
        if str(root) not in sys.path:
            sys.path.insert(0, str(root))
        from comfy.cli_args import args
        args.cpu = True
        args.base_directory = str(self.base)
        args.disable_api_nodes = True
        import comfy.model_management  # noqa: F401  (after args.cpu)
        import folder_paths
        import utils.install_util  # noqa: F401  (before `nodes`, or `utils` resolves to comfy/utils.py)
        folder_paths.set_input_directory(str(self.base / "input"))
        folder_paths.set_output_directory(str(self.base / "output"))
        folder_paths.set_temp_directory(str(self.base / "temp"))
        import execution

        import nodes
        asyncio.run(nodes.init_extra_nodes(init_custom_nodes=False, init_api_nodes=False))
        for link in ("continuity", "continuity_test_nodes"):
            path = str(self.base / "custom_nodes" / link)
            ok = asyncio.run(nodes.load_custom_node(path))
            if not ok:
                raise RuntimeError(f"ComfyUI could not load {path}")
        self.pack_module = sys.modules[(str(self.base / "custom_nodes" / "continuity")).replace(".", "_x_")]
        self.executor = execution.PromptExecutor(self.server, cache_type=False, cache_args={"lru": 0, "ram": 0})
        return self

    def node_class(self, class_type: str):
        import nodes
        return nodes.NODE_CLASS_MAPPINGS[class_type]

    def validate(self, prompt: dict):
        import execution
        return asyncio.run(execution.validate_prompt(str(uuid.uuid4()), prompt, None))

    def run(self, prompt: dict, *, expect_success: bool = True, extra_data: dict | None = None) -> GraphResult:
        valid = self.validate(prompt)
        if not valid[0]:
            raise AssertionError(f"graph did not validate: {json.dumps(valid[1])} {json.dumps(valid[3])}")
        prompt_id = str(uuid.uuid4())
        self.server.messages = []
        self.executor.reset()
        self.executor.execute(prompt, prompt_id, extra_data or {"client_id": "test-client"}, valid[2])
        outputs = {}
        for node_id in prompt:
            entry = self.executor.caches.outputs.get(node_id)
            if entry is not None:
                outputs[node_id] = tuple(entry.outputs) if hasattr(entry, "outputs") else tuple(entry)
        error = None
        for event, data in self.executor.status_messages:
            if event == "execution_error":
                error = data
        result = GraphResult(prompt_id, self.executor.success and error is None, outputs,
                             dict(getattr(self.executor, "history_result", {}).get("outputs", {})),
                             list(self.server.messages), error)
        if expect_success and not result.success:
            raise AssertionError(f"graph failed: {error.get('exception_message') if error else '?'}\n"
                                 f"{''.join(error.get('traceback', [])) if error else ''}")
        return result


# --------------------------------------------------------------------------- live server

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LiveServer:
    """``main.py --cpu`` on a free loopback port with its own base directory."""

    def __init__(self, base: Path, log_path: Path, front_end_root: Path | None = None):
        self.base = base
        self.front_end_root = front_end_root
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = log_path
        self.proc: subprocess.Popen | None = None

    def start(self, timeout: float = 180):
        root = comfyui_path()
        cmd = [sys.executable, "main.py", "--cpu", "--listen", "127.0.0.1", "--port", str(self.port),
               "--base-directory", str(self.base), "--disable-auto-launch", "--disable-api-nodes",
               "--preview-method", "none", "--database-url", f"sqlite:///{self.base / 'user' / 'comfyui.db'}"]
        if self.front_end_root is not None:
            cmd += ["--front-end-root", str(self.front_end_root)]
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        self._log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(cmd, cwd=root, stdout=self._log, stderr=subprocess.STDOUT, env=env,
                                     start_new_session=True)
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"ComfyUI exited with {self.proc.returncode}:\n{self.log_tail()}")
            try:
                self.get("/system_stats")
                return self
            except (urllib.error.URLError, ConnectionError, OSError):
                time.sleep(0.5)
        raise RuntimeError(f"ComfyUI did not start in {timeout}s:\n{self.log_tail()}")

    def log_tail(self, n: int = 4000) -> str:
        try:
            return self.log_path.read_bytes()[-n:].decode("utf-8", "replace")
        except OSError:
            return ""

    def stop(self):
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)
        if getattr(self, "_log", None):
            self._log.close()

    # -- HTTP
    def request(self, method: str, path: str, body=None, headers=None):
        data = None
        headers = dict(headers or {})
        if body is not None and not isinstance(body, bytes):
            data = json.dumps(body).encode()
            headers.setdefault("Content-Type", "application/json")
        elif isinstance(body, bytes):
            data = body
        req = urllib.request.Request(self.url + path, data=data, method=method, headers=headers)
        try:
            with urllib.request.urlopen(req, timeout=60) as resp:
                raw = resp.read()
                return resp.status, raw
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read()

    def get(self, path: str):
        status, raw = self.request("GET", path)
        if status != 200:
            raise urllib.error.URLError(f"GET {path}: HTTP {status}")
        return json.loads(raw) if raw[:1] in (b"{", b"[") else raw

    def post_prompt(self, prompt: dict, client_id: str | None = None):
        """POST /prompt; returns (HTTP status, JSON body)."""
        status, raw = self.request("POST", "/prompt", {"prompt": prompt, "client_id": client_id or "tests"})
        return status, json.loads(raw)

    def wait_history(self, prompt_id: str, timeout: float = 300) -> dict:
        deadline = time.time() + timeout
        while time.time() < deadline:
            hist = self.get(f"/history/{prompt_id}")
            if prompt_id in hist and hist[prompt_id].get("status", {}).get("completed") is not None:
                entry = hist[prompt_id]
                if entry["status"].get("status_str") in ("success", "error"):
                    return entry
            if self.proc.poll() is not None:
                raise RuntimeError(f"ComfyUI died:\n{self.log_tail()}")
            time.sleep(0.2)
        raise TimeoutError(f"prompt {prompt_id} did not finish in {timeout}s:\n{self.log_tail()}")

    def run(self, prompt: dict, timeout: float = 300, *, expect_success: bool = True) -> dict:
        status, body = self.post_prompt(prompt)
        if status != 200:
            raise AssertionError(f"/prompt refused the graph: HTTP {status} {json.dumps(body)[:2000]}")
        entry = self.wait_history(body["prompt_id"], timeout)
        if expect_success and entry["status"]["status_str"] != "success":
            msgs = [m for m in entry["status"].get("messages", []) if m[0] == "execution_error"]
            raise AssertionError(f"graph failed: {json.dumps(msgs)[:4000]}")
        return entry

    def ws_events(self, prompt: dict, timeout: float = 300) -> tuple[dict, list[dict]]:
        """Queue ``prompt`` while listening on /ws; return (history entry, every JSON event)."""
        import websocket  # websocket-client
        client_id = uuid.uuid4().hex
        ws = websocket.create_connection(f"ws://127.0.0.1:{self.port}/ws?clientId={client_id}", timeout=timeout)
        events = []
        try:
            status, body = self.post_prompt(prompt, client_id)
            if status != 200:
                raise AssertionError(f"/prompt refused the graph: HTTP {status} {json.dumps(body)[:2000]}")
            prompt_id = body["prompt_id"]
            deadline = time.time() + timeout
            while time.time() < deadline:
                msg = ws.recv()
                if isinstance(msg, bytes):
                    continue  # binary previews
                ev = json.loads(msg)
                events.append(ev)
                data = ev.get("data", {})
                if ev.get("type") == "executing" and data.get("node") is None and data.get("prompt_id") == prompt_id:
                    break
                if ev.get("type") in ("execution_error", "execution_interrupted") and data.get("prompt_id") == prompt_id:
                    break
        finally:
            ws.close()
        return self.wait_history(prompt_id, 60), events


# --------------------------------------------------------------------------- frontends

@dataclass(frozen=True)
class Frontend:
    """A ComfyUI frontend build: the one the ComfyUI under test pins, or a newer one beside it."""
    version: str
    root: Path | None      # passed as --front-end-root; None: the pinned package ComfyUI finds itself


def frontends() -> list[Frontend]:
    """The pinned frontend and, when setup_test_env.sh installed it, the newest one it knows."""
    found = []
    try:
        from importlib.metadata import version
        pinned = version("comfyui_frontend_package")
    except Exception:
        pinned = "pinned"
    found.append(Frontend(pinned, None))
    marker = ENV_DIR / "frontend_latest"
    if marker.exists():
        ver, _, root = marker.read_text().strip().partition(" ")
        if ver and Path(root, "index.html").exists() and ver != pinned:
            found.append(Frontend(ver, Path(root)))
    return found


# --------------------------------------------------------------------------- headless Chromium

def find_chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        path = shutil.which(name)
        if path:
            return path
    return None


class Browser:
    """Debian's Chromium, headless, driven through the DevTools protocol (no downloads)."""

    def __init__(self, profile_dir: Path):
        self.profile_dir = profile_dir
        self.proc = None
        self.ws = None
        self._id = 0
        self.console: list[dict] = []     # console errors and uncaught exceptions: {"text", "url"}
        self.responses: dict[str, int] = {}   # URL -> HTTP status of what the page fetched

    def start(self, url: str, width: int = 1600, height: int = 1000, timeout: float = 60):
        import websocket
        exe = find_chromium()
        if exe is None:
            raise RuntimeError("chromium is not installed (apt-get install chromium)")
        self.profile_dir.mkdir(parents=True, exist_ok=True)
        cmd = [exe, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
               "--disable-background-networking", "--disable-component-update", "--disable-sync",
               "--disable-dev-shm-usage", f"--user-data-dir={self.profile_dir}", "--remote-debugging-port=0",
               f"--window-size={width},{height}", "about:blank"]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        port_file = self.profile_dir / "DevToolsActivePort"
        deadline = time.time() + timeout
        while not port_file.exists():
            if time.time() > deadline or self.proc.poll() is not None:
                raise RuntimeError("chromium did not start")
            time.sleep(0.1)
        port = int(port_file.read_text().split()[0])
        targets = []
        while time.time() < deadline:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/json") as resp:
                    targets = [t for t in json.loads(resp.read()) if t.get("type") == "page"]
                if targets:
                    break
            except OSError:
                pass
            time.sleep(0.1)
        self.ws = websocket.create_connection(targets[0]["webSocketDebuggerUrl"], timeout=timeout, suppress_origin=True)
        self.send("Page.enable")
        self.send("Runtime.enable")
        self.send("Network.enable")
        self.send("Log.enable")
        self.send("Page.navigate", url=url)
        return self

    def _event(self, msg: dict) -> None:
        """Keep what a test asserts on: console errors, uncaught exceptions, response statuses."""
        method, params = msg.get("method"), msg.get("params", {})
        if method == "Runtime.consoleAPICalled" and params.get("type") in ("error", "assert"):
            text = " ".join(str(a.get("value", a.get("description", ""))) for a in params.get("args", []))
            frames = (params.get("stackTrace") or {}).get("callFrames") or [{}]
            self.console.append({"text": text, "url": frames[0].get("url", "")})
        elif method == "Runtime.exceptionThrown":
            d = params.get("exceptionDetails", {})
            text = d.get("exception", {}).get("description") or d.get("text", "")
            self.console.append({"text": text, "url": d.get("url", "")})
        elif method == "Log.entryAdded" and params.get("entry", {}).get("level") == "error":
            e = params["entry"]
            self.console.append({"text": e.get("text", ""), "url": e.get("url", "")})
        elif method == "Network.responseReceived":
            r = params.get("response", {})
            self.responses[r.get("url", "")] = r.get("status", 0)

    def send(self, method: str, **params):
        self._id += 1
        my_id = self._id
        self.ws.send(json.dumps({"id": my_id, "method": method, "params": params}))
        while True:
            msg = json.loads(self.ws.recv())
            if "method" in msg:
                self._event(msg)
            if msg.get("id") == my_id:
                if "error" in msg:
                    raise RuntimeError(f"{method}: {msg['error']}")
                return msg.get("result", {})

    def navigate(self, url: str) -> None:
        self.send("Page.navigate", url=url)

    def eval(self, expression: str, timeout: float = 60):
        """The value of ``expression`` (awaited), as JSON: return plain data, never live page objects."""
        res = self.send("Runtime.evaluate", expression=expression, awaitPromise=True, returnByValue=True,
                        timeout=int(timeout * 1000))
        if "exceptionDetails" in res:
            raise RuntimeError(f"JS error: {json.dumps(res['exceptionDetails'])[:2000]}")
        return res.get("result", {}).get("value")

    def wait_for(self, expression: str, timeout: float = 90, interval: float = 0.25):
        deadline = time.time() + timeout
        last = None
        while time.time() < deadline:
            try:
                last = self.eval(expression)
                if last:
                    return last
            except RuntimeError:
                pass
            time.sleep(interval)
        raise TimeoutError(f"timed out waiting for: {expression} (last: {last})")

    def screenshot(self, path: Path):
        import base64
        data = self.send("Page.captureScreenshot", format="png")["data"]
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(base64.b64decode(data))
        return path

    def stop(self):
        try:
            if self.ws:
                self.ws.close()
        finally:
            if self.proc and self.proc.poll() is None:
                os.killpg(self.proc.pid, signal.SIGTERM)
                try:
                    self.proc.wait(10)
                except subprocess.TimeoutExpired:
                    os.killpg(self.proc.pid, signal.SIGKILL)
