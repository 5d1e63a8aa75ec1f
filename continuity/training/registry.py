"""Background training: a per-process registry of jobs running in threads, with their status.

``REGISTRY.start(job)`` returns at once; the status (state, step, loss curve, ETA, LoRA path,
error) is kept in memory, written to ``<job>/status.json`` (atomically, at most once a second)
and pushed to listeners (the node module forwards it to the websocket).
"""
from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Callable

from .. import fsutil
from ..errors import ContinuityError
from .launcher import TrainingCancelled, TrainJob, launch
from .progress import Progress

STATUS_FILE = "status.json"
MAX_POINTS = 2000


class JobStatus:
    def __init__(self, job: TrainJob):
        self.job = job
        self.state = "queued"           # queued, running, finished, failed, cancelled
        self.step: int | None = 0
        self.total: int | None = job.total_steps
        self.epoch: int | None = None
        self.epochs: int | None = None
        self.loss: float | None = None
        self.eta_s: float | None = None
        self.rate: str | None = None
        self.losses: list[tuple[int | None, float]] = []
        self.checkpoints: list[str] = []
        self.lora_path: str | None = None
        self.error: str | None = None
        self.started = time.time()
        self._saved = 0.0           # when status.json was last written
        self.updated = self.started

    def apply(self, ev: Progress) -> None:
        if ev.kind == "step":
            self.step, self.total = ev.step, ev.total
            self.eta_s, self.rate = ev.eta_s, ev.rate
            if ev.loss is not None and ev.loss == ev.loss:
                self.loss = ev.loss
                if not self.losses or self.losses[-1][0] != ev.step:
                    self.losses.append((ev.step, ev.loss))
                    if len(self.losses) > MAX_POINTS:  # keep the curve's shape, halve its points
                        self.losses = self.losses[::2]
        elif ev.kind == "epoch":
            self.epoch, self.epochs = ev.epoch, ev.epochs
        elif ev.kind == "checkpoint" and ev.checkpoint:
            self.checkpoints.append(ev.checkpoint)
        self.updated = time.time()

    def to_dict(self) -> dict:
        return {"job_id": self.job.job_id, "state": self.state, "step": self.step, "total": self.total,
                "epoch": self.epoch, "epochs": self.epochs, "loss": self.loss, "eta_s": self.eta_s,
                "rate": self.rate, "losses": self.losses, "checkpoints": self.checkpoints[-20:],
                "lora_path": self.lora_path, "error": self.error, "job_dir": self.job.job_dir,
                "started": self.started, "updated": self.updated}


class JobRegistry:
    def __init__(self):
        self._lock = threading.Lock()
        self._jobs: dict[str, JobStatus] = {}
        self._cancel: dict[str, threading.Event] = {}
        self._threads: dict[str, threading.Thread] = {}
        self.listeners: list[Callable[[dict], None]] = []

    def _notify(self, st: JobStatus, *, force: bool = False) -> None:
        data = st.to_dict()
        now = time.time()
        if force or now - st._saved > 1.0:
            st._saved = now
            try:
                fsutil.atomic_write_json(os.path.join(st.job.job_dir, STATUS_FILE), data)
            except OSError:
                pass
        for fn in list(self.listeners):
            try:
                fn(data)
            except Exception:
                pass

    def start(self, job: TrainJob, *, resume: bool = False, before: Callable[[], None] | None = None,
              **launch_kw) -> str:
        with self._lock:
            running = self._jobs.get(job.job_id)
            if running and running.state in ("queued", "running"):
                raise ContinuityError(f"job '{job.job_id}' is already running", input="job_name")
            st = JobStatus(job)
            ev = threading.Event()
            self._jobs[job.job_id] = st
            self._cancel[job.job_id] = ev

        def run():
            st.state = "running"
            self._notify(st, force=True)
            try:
                if before:
                    before()
                def on_progress(p: Progress) -> None:
                    st.apply(p)
                    self._notify(st)
                st.lora_path = launch(job, on_progress, ev, resume=resume, **launch_kw)
                st.state = "finished"
            except TrainingCancelled as exc:
                st.state, st.error = "cancelled", str(exc)
            except Exception as exc:  # reported through the status, never raised into the server
                st.state, st.error = "failed", str(exc)
            self._notify(st, force=True)

        t = threading.Thread(target=run, name=f"continuity-train-{job.job_id}", daemon=True)
        self._threads[job.job_id] = t
        t.start()
        return job.job_id

    def status(self, job_id: str) -> dict | None:
        st = self._jobs.get(job_id)
        return st.to_dict() if st else None

    def all(self) -> list[dict]:
        return [st.to_dict() for st in self._jobs.values()]

    def cancel(self, job_id: str) -> bool:
        ev = self._cancel.get(job_id)
        if ev is None:
            return False
        ev.set()
        return True

    def wait(self, job_id: str, timeout: float | None = None) -> dict | None:
        t = self._threads.get(job_id)
        if t:
            t.join(timeout)
        return self.status(job_id)


def read_status_file(job_dir: str) -> dict | None:
    try:
        with open(os.path.join(job_dir, STATUS_FILE), encoding="utf-8") as fh:
            return json.load(fh)
    except (OSError, ValueError):
        return None


REGISTRY = JobRegistry()
