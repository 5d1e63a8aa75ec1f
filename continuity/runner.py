"""Run a Continuity workflow through ComfyUI's HTTP API, from a script or a terminal.

    python scripts/run_workflow.py example_workflows/api/face_fix.json \
        --server http://127.0.0.1:8188 \
        --upload "Load Image.image=shot_012.png" \
        --set "KSampler.seed=42" --set "Face Fix.denoise_pass2=0.4" \
        --out results/

- ``--upload TITLE.INPUT=FILE`` uploads FILE with ``/upload/image`` and sets that input to the
  uploaded name (a folder of images goes into a subfolder of ComfyUI's input).
- ``--set TITLE.INPUT=VALUE`` sets an input of the node with that title (``_meta.title``), or of
  the node with that id, or of every node of that class type; VALUE is parsed as JSON when it can be.
- Progress comes from ``/ws`` (a bar per node, with the node's title); outputs listed in the
  history (images, and files our nodes report) are downloaded with ``/view`` into ``--out``.
- ``--start-comfyui DIR`` starts a headless ComfyUI from that checkout on a free port first
  (``--cpu`` with ``--cpu``) and stops it afterwards.

Only the standard library is needed, plus ``aiohttp`` (present wherever ComfyUI runs) or
``websocket-client`` for the progress bar; without either, the runner polls ``/history``.
"""
from __future__ import annotations

import argparse
import json
import mimetypes
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid


class RunnerError(RuntimeError):
    pass


# ----------------------------------------------------------------------------- HTTP

class Client:
    def __init__(self, url: str, timeout: float = 60):
        self.url = url.rstrip("/")
        self.timeout = timeout
        self.client_id = uuid.uuid4().hex

    def _open(self, req):
        try:
            return urllib.request.urlopen(req, timeout=self.timeout)
        except urllib.error.HTTPError as exc:
            body = exc.read().decode("utf-8", "replace")
            raise RunnerError(f"{req.get_method()} {req.full_url}: HTTP {exc.code}: {body[:4000]}") from None
        except urllib.error.URLError as exc:
            raise RunnerError(f"cannot reach ComfyUI at {self.url}: {exc.reason}") from None

    def get_json(self, path: str):
        with self._open(urllib.request.Request(self.url + path)) as r:
            return json.loads(r.read())

    def post_json(self, path: str, body: dict):
        req = urllib.request.Request(self.url + path, data=json.dumps(body).encode(), method="POST",
                                     headers={"Content-Type": "application/json"})
        with self._open(req) as r:
            return json.loads(r.read() or b"{}")

    def upload_image(self, path: str, subfolder: str = "") -> str:
        """POST /upload/image; returns the name to put in a LoadImage-style input."""
        boundary = uuid.uuid4().hex
        name = os.path.basename(path)
        ctype = mimetypes.guess_type(name)[0] or "application/octet-stream"
        with open(path, "rb") as fh:
            data = fh.read()
        parts = []
        for key, value in (("type", "input"), ("subfolder", subfolder), ("overwrite", "true")):
            parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="{key}"\r\n\r\n{value}\r\n'.encode())
        parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="image"; filename="{name}"\r\n'
                     f"Content-Type: {ctype}\r\n\r\n".encode() + data + b"\r\n")
        parts.append(f"--{boundary}--\r\n".encode())
        req = urllib.request.Request(self.url + "/upload/image", data=b"".join(parts), method="POST",
                                     headers={"Content-Type": f"multipart/form-data; boundary={boundary}"})
        with self._open(req) as r:
            info = json.loads(r.read())
        return f"{info['subfolder']}/{info['name']}" if info.get("subfolder") else info["name"]

    def download(self, item: dict, out_dir: str) -> str:
        query = urllib.parse.urlencode({"filename": item["filename"], "subfolder": item.get("subfolder", ""),
                                        "type": item.get("type", "output")})
        os.makedirs(out_dir, exist_ok=True)
        target = os.path.join(out_dir, item.get("subfolder", "").replace("/", "_") + ("_" if item.get("subfolder") else "")
                              + os.path.basename(item["filename"]))
        with self._open(urllib.request.Request(f"{self.url}/view?{query}")) as r, open(target + ".part", "wb") as fh:
            shutil.copyfileobj(r, fh)
        os.replace(target + ".part", target)
        return target


# ----------------------------------------------------------------------------- workflow editing

# Inputs renamed so that one name means one thing in one unit across the pack (README, Changelog).
# API-format workflows saved before keep working through this runner: the old names are renamed.
RENAMED_INPUTS = {
    "ContinuityFaceDetect": {"min_size": "min_face"},
    "ContinuityFaceRegionMask": {"min_size": "min_face", "feather": "feather_px"},
    "ContinuityGrowCharacterLayer": {"feathering": "feather_px"},
}


def upgrade_inputs(prompt: dict) -> list[str]:
    """Rename the inputs of ``prompt`` (API format) that the pack has renamed; what was renamed."""
    done = []
    for nid, node in prompt.items():
        if not isinstance(node, dict):
            continue
        inputs = node.get("inputs")
        for old, new in RENAMED_INPUTS.get(node.get("class_type", ""), {}).items():
            if isinstance(inputs, dict) and old in inputs and new not in inputs:
                inputs[new] = inputs.pop(old)
                done.append(f"{nid}.{old} -> {new}")
    return done


def load_api_workflow(path: str) -> dict:
    with open(path, encoding="utf-8") as fh:
        data = json.load(fh)
    if "nodes" in data and "links" in data:
        raise RunnerError(f"{path} is a UI-format workflow; use its API-format twin (example_workflows/api/...)")
    if "prompt" in data and isinstance(data["prompt"], dict):
        data = data["prompt"]
    upgrade_inputs(data)
    return data


def find_nodes(prompt: dict, key: str) -> list[str]:
    """Node ids whose title, id or class type is ``key`` (in that order of preference)."""
    by_title = [nid for nid, n in prompt.items() if n.get("_meta", {}).get("title") == key]
    if by_title:
        return by_title
    if key in prompt:
        return [key]
    by_class = [nid for nid, n in prompt.items() if n.get("class_type") == key]
    if by_class:
        return by_class
    titles = sorted({n.get("_meta", {}).get("title", n.get("class_type")) for n in prompt.values()})
    raise RunnerError(f"no node titled, numbered or of type '{key}'; titles in this workflow: {', '.join(titles)}")


def parse_assignment(text: str) -> tuple[str, str, str]:
    if "=" not in text:
        raise RunnerError(f"'{text}': expected TITLE.INPUT=VALUE")
    target, value = text.split("=", 1)
    if "." not in target:
        raise RunnerError(f"'{text}': expected TITLE.INPUT=VALUE")
    title, input_name = target.rsplit(".", 1)
    return title, input_name, value


def set_input(prompt: dict, title: str, input_name: str, value) -> list[str]:
    ids = find_nodes(prompt, title)
    for nid in ids:
        inputs = prompt[nid].setdefault("inputs", {})
        if input_name not in inputs:
            raise RunnerError(f"node '{title}' ({prompt[nid]['class_type']}) has no input '{input_name}'; "
                              f"it has: {', '.join(sorted(inputs))}")
        if isinstance(inputs[input_name], list) and len(inputs[input_name]) == 2 and isinstance(inputs[input_name][0], str):
            raise RunnerError(f"input '{input_name}' of '{title}' is connected to another node; set that node instead")
        inputs[input_name] = value
    return ids


def parse_value(text: str):
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


# ----------------------------------------------------------------------------- progress

class Progress:
    """Prints a one-line progress bar per node from /ws events (stderr)."""

    def __init__(self, prompt: dict, stream=None):
        self.prompt = prompt
        self.stream = stream or sys.stderr
        self.current = None
        self.events: list[dict] = []

    def title(self, node_id) -> str:
        n = self.prompt.get(str(node_id), {})
        return n.get("_meta", {}).get("title") or n.get("class_type", str(node_id))

    def handle(self, ev: dict):
        self.events.append(ev)
        kind, data = ev.get("type"), ev.get("data", {})
        if kind == "executing" and data.get("node") is not None:
            self._line(f"▶ {self.title(data['node'])}")
        elif kind == "progress":
            value, maximum = data.get("value", 0), max(1, data.get("max", 1))
            width = 30
            filled = int(width * value / maximum)
            self._line(f"  {self.title(data.get('node'))} [{'#' * filled}{'.' * (width - filled)}] {value}/{maximum}")
        elif kind == "execution_cached" and data.get("nodes"):
            self._line(f"  cached: {len(data['nodes'])} node(s)")
        elif kind == "execution_error":
            self._line(f"✖ {self.title(data.get('node_id'))}: {data.get('exception_message', '').strip()}")

    def _line(self, text: str):
        self.stream.write("\r\033[K" + text + ("\n" if not text.startswith("  ") or text.endswith("node(s)") else ""))
        self.stream.flush()


def _listen_ws(url: str, client_id: str, on_event, stop: threading.Event, ready: threading.Event):
    ws_url = url.replace("http://", "ws://").replace("https://", "wss://") + f"/ws?clientId={client_id}"
    try:
        import websocket  # websocket-client
        ws = websocket.create_connection(ws_url, timeout=1)
        ready.set()
        while not stop.is_set():
            try:
                msg = ws.recv()
            except websocket.WebSocketTimeoutException:
                continue
            except Exception:
                break
            if isinstance(msg, str):
                on_event(json.loads(msg))
        ws.close()
        return
    except ImportError:
        pass
    except Exception:
        ready.set()
        return
    try:
        import asyncio

        import aiohttp
    except ImportError:
        ready.set()
        return

    async def run():
        async with aiohttp.ClientSession() as session, session.ws_connect(ws_url) as ws:
            ready.set()
            while not stop.is_set():
                try:
                    msg = await ws.receive(timeout=1)
                except asyncio.TimeoutError:
                    continue
                if msg.type == aiohttp.WSMsgType.TEXT:
                    on_event(json.loads(msg.data))
                elif msg.type in (aiohttp.WSMsgType.CLOSED, aiohttp.WSMsgType.ERROR):
                    break
    try:
        asyncio.run(run())
    except Exception:
        pass
    finally:
        ready.set()


# ----------------------------------------------------------------------------- running

def output_files(history_entry: dict) -> list[dict]:
    """Every file the outputs of a finished prompt point at (images, gifs, our reports)."""
    files = []
    for node_out in history_entry.get("outputs", {}).values():
        for items in node_out.values():
            if not isinstance(items, list):
                continue
            for item in items:
                if isinstance(item, dict) and "filename" in item and item.get("type", "output") in ("output", "temp"):
                    files.append(item)
    return files


def describe_node_errors(prompt: dict, node_errors: dict) -> str:
    parts = []
    for nid, info in node_errors.items():
        title = prompt.get(nid, {}).get("_meta", {}).get("title") or info.get("class_type", nid)
        for err in info.get("errors", []):
            parts.append(f"{title}: {err.get('details') or err.get('message')}")
    return "; ".join(parts)


def run_prompt(client: Client, prompt: dict, *, timeout: float = 3600, progress: Progress | None = None) -> dict:
    stop, ready = threading.Event(), threading.Event()
    listener = None
    if progress is not None:
        listener = threading.Thread(target=_listen_ws, args=(client.url, client.client_id, progress.handle, stop, ready),
                                    daemon=True)
        listener.start()
        ready.wait(10)
    try:
        try:
            body = client.post_json("/prompt", {"prompt": prompt, "client_id": client.client_id})
        except RunnerError as exc:
            text = str(exc)
            try:  # make the node errors readable
                payload = json.loads(text.split(": ", 2)[-1])
                if payload.get("node_errors"):
                    text = describe_node_errors(prompt, payload["node_errors"])
                elif payload.get("error"):
                    text = payload["error"].get("message", text) + " " + payload["error"].get("details", "")
            except (ValueError, AttributeError):
                pass
            raise RunnerError(f"ComfyUI refused the workflow: {text}") from None
        prompt_id = body["prompt_id"]
        if body.get("node_errors"):
            # ComfyUI queues the outputs that validated and silently drops the others: a script
            # asked for all of them, so take the prompt back off the queue and say what was wrong.
            try:
                client.post_json("/queue", {"delete": [prompt_id]})
            except RunnerError:
                pass
            raise RunnerError("ComfyUI refused part of the workflow: " + describe_node_errors(prompt, body["node_errors"]))
        deadline = time.time() + timeout
        while time.time() < deadline:
            hist = client.get_json(f"/history/{prompt_id}")
            entry = hist.get(prompt_id)
            if entry and entry.get("status", {}).get("completed") is not None and \
                    entry["status"].get("status_str") in ("success", "error"):
                if entry["status"]["status_str"] == "error":
                    errs = [m[1] for m in entry["status"].get("messages", []) if m[0] == "execution_error"]
                    detail = errs[0].get("exception_message", "") if errs else "unknown error"
                    node = errs[0].get("node_type", "") if errs else ""
                    raise RunnerError(f"the workflow failed in {node}: {detail.strip()}")
                return entry
            time.sleep(0.25)
        raise RunnerError(f"the workflow did not finish within {timeout:.0f} s")
    finally:
        stop.set()
        if listener is not None:
            listener.join(3)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LocalComfyUI:
    """A headless ComfyUI started from a checkout, stopped on exit."""

    def __init__(self, comfy_dir: str, *, cpu: bool = False, base_directory: str | None = None,
                 python: str | None = None, log_path: str | None = None, extra_args: list[str] | None = None):
        self.comfy_dir = os.path.abspath(comfy_dir)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.cmd = [python or sys.executable, "main.py", "--listen", "127.0.0.1", "--port", str(self.port),
                    "--disable-auto-launch"]
        if cpu:
            self.cmd.append("--cpu")
        if base_directory:
            self.cmd += ["--base-directory", os.path.abspath(base_directory)]
        self.cmd += extra_args or []
        self.log_path = log_path
        self.proc: subprocess.Popen | None = None

    def __enter__(self):
        if not os.path.isfile(os.path.join(self.comfy_dir, "main.py")):
            raise RunnerError(f"{self.comfy_dir} is not a ComfyUI checkout (no main.py)")
        log = open(self.log_path, "wb") if self.log_path else subprocess.DEVNULL
        self.proc = subprocess.Popen(self.cmd, cwd=self.comfy_dir, stdout=log, stderr=subprocess.STDOUT,
                                     start_new_session=True, env=dict(os.environ, PYTHONUNBUFFERED="1"))
        proc = self.proc
        client = Client(self.url, timeout=5)
        deadline = time.time() + 300
        while time.time() < deadline:
            if proc.poll() is not None:
                raise RunnerError(f"ComfyUI exited with code {proc.returncode}" +
                                  (f"; see {self.log_path}" if self.log_path else ""))
            try:
                client.get_json("/system_stats")
                return self
            except RunnerError:
                time.sleep(0.5)
        raise RunnerError("ComfyUI did not start within 300 s")

    def __exit__(self, *exc):
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)


def prepare(client: Client, prompt: dict, uploads: list[str], sets: list[str]) -> dict:
    prompt = json.loads(json.dumps(prompt))
    for text in uploads:
        title, input_name, path = parse_assignment(text)
        if os.path.isdir(path):
            # a folder: its images go into one input subfolder; the input gets that subfolder's name
            sub = f"continuity_upload_{uuid.uuid4().hex[:8]}"
            names = sorted(f for f in os.listdir(path) if not f.startswith("."))
            for name in names:
                full = os.path.join(path, name)
                if os.path.isfile(full):
                    client.upload_image(full, subfolder=sub)
            value = sub
        elif os.path.isfile(path):
            value = client.upload_image(path)
        else:
            raise RunnerError(f"--upload {text}: no such file or folder")
        set_input(prompt, title, input_name, value)
    for text in sets:
        title, input_name, value = parse_assignment(text)
        set_input(prompt, title, input_name, parse_value(value))
    return prompt


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="Queue a ComfyUI API-format workflow and download its outputs.")
    ap.add_argument("workflow", help="an API-format workflow JSON (example_workflows/api/*.json)")
    ap.add_argument("--server", default=os.environ.get("COMFYUI_URL", "http://127.0.0.1:8188"),
                    help="ComfyUI's address (default: $COMFYUI_URL or http://127.0.0.1:8188)")
    ap.add_argument("--start-comfyui", metavar="DIR", help="start a headless ComfyUI from this checkout instead")
    ap.add_argument("--base-directory", help="with --start-comfyui: ComfyUI's --base-directory")
    ap.add_argument("--cpu", action="store_true", help="with --start-comfyui: run ComfyUI on the CPU")
    ap.add_argument("--comfy-log", help="with --start-comfyui: write ComfyUI's log here")
    ap.add_argument("--upload", action="append", default=[], metavar="TITLE.INPUT=PATH",
                    help="upload an image (or a folder of images) and set that input to it")
    ap.add_argument("--set", action="append", default=[], metavar="TITLE.INPUT=VALUE", help="set a node input")
    ap.add_argument("--out", default="continuity_outputs", help="folder for the downloaded outputs")
    ap.add_argument("--timeout", type=float, default=3600)
    ap.add_argument("--quiet", action="store_true", help="no progress bar")
    args = ap.parse_args(argv)

    try:
        prompt = load_api_workflow(args.workflow)
        if args.start_comfyui:
            server = LocalComfyUI(args.start_comfyui, cpu=args.cpu, base_directory=args.base_directory,
                                  log_path=args.comfy_log)
        else:
            server = None
        if server is not None:
            server.__enter__()
        try:
            client = Client(server.url if server else args.server)
            client.get_json("/system_stats")
            prompt = prepare(client, prompt, args.upload, args.set)
            progress = None if args.quiet else Progress(prompt)
            started = time.time()
            entry = run_prompt(client, prompt, timeout=args.timeout, progress=progress)
            saved = [client.download(item, args.out) for item in output_files(entry)]
            print(f"done in {time.time() - started:.1f} s; {len(saved)} output file(s) in {os.path.abspath(args.out)}")
            for path in saved:
                print(f"  {path}")
        finally:
            if server is not None:
                server.__exit__(None, None, None)
    except RunnerError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
