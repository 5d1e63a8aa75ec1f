"""Training runs of this server process and their status, in memory and in ``<job>/status.json``.

Both modes go through :data:`REGISTRY`: ``start(job)`` runs the launcher in a thread; the node
of a ``wait`` run follows it through ``listener`` and waits, a ``background`` run returns at once.
The status (state, absolute step, total, the loss curve with one point per step, ETA, LoRA
name, error) is pushed to listeners and written to ``status.json`` (keyed, atomically): at
every state change at once, during the run at most once a second, and on the way out.

A trainer never outlives its server unnoticed: :func:`shutdown` (at interpreter exit and on
SIGTERM) stops every trainer of this process and writes ``stopped`` to its status;
:func:`reconcile` (at start-up) finds jobs a previous server left ``running`` and shows their true
state: a trainer still alive (the server was killed outright) is stopped, and both become
``stopped`` with the step reached, ready to resume.
"""
from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Callable

from ..errors import ContinuityError
from . import records
from .launcher import (TrainingCancelled, TrainJob, stop_process_group, launch, process_start_time,
                       stop_all_trainers)
from .progress import Progress

STATUS_FILE = "status.json"
MAX_POINTS = 2000
STATES = ("queued", "running", "finished", "failed", "cancelled", "stopped")
ACTIVE = ("queued", "running")


class JobStatus:
    def __init__(self, job: TrainJob, mode: str = "background"):
        self.job = job
        self.mode = mode
        self.state = "queued"
        self.step = 0
        self.total: int | None = job.total_steps
        self.epoch: int | None = None
        self.epochs: int | None = None
        self.loss: float | None = None
        self.eta_s: float | None = None
        self.rate: str | None = None
        self.losses: list[list] = []
        self.checkpoints: list[str] = []
        self.lora_path: str | None = None
        self.error: str | None = None
        self.pid: int | None = None
        self.pid_start: int | None = None
        self.started = time.time()
        self.updated = self.started
        self.exc: BaseException | None = None

    def apply(self, ev: Progress) -> None:
        if ev.kind == "step" and ev.step is not None:
            self.step = ev.step
            if ev.total:
                self.total = ev.total      # the trainer's own count, once it printed it
            self.eta_s, self.rate = ev.eta_s, ev.rate
            if ev.loss is not None and ev.loss == ev.loss:
                self.loss = ev.loss
                # a step is rendered twice (first with the previous loss): its last render wins
                if self.losses and self.losses[-1][0] == ev.step:
                    self.losses[-1][1] = ev.loss
                else:
                    while self.losses and self.losses[-1][0] > ev.step:   # resumed from an earlier state
                        self.losses.pop()
                    self.losses.append([ev.step, ev.loss])
                    if len(self.losses) > MAX_POINTS:  # keep the curve's shape, halve its points
                        self.losses = self.losses[::2]
        elif ev.kind == "total" and ev.total and not self.step:
            self.total = ev.total
        elif ev.kind == "epoch":
            self.epoch, self.epochs = ev.epoch, ev.epochs
        elif ev.kind == "checkpoint" and ev.checkpoint:
            self.checkpoints.append(os.path.basename(ev.checkpoint))
        self.updated = time.time()

    @property
    def lora_name(self) -> str | None:
        if not self.lora_path:
            return None
        return os.path.relpath(self.lora_path, os.path.dirname(self.job.lora_dir)).replace(os.sep, "/")

    def to_dict(self) -> dict:
        """The status as stored and shown: no server paths."""
        return {"job_id": self.job.job_id, "state": self.state, "mode": self.mode, "step": self.step,
                "total": self.total, "epoch": self.epoch, "epochs": self.epochs, "loss": self.loss,
                "eta_s": self.eta_s, "rate": self.rate, "losses": self.losses,
                "checkpoints": self.checkpoints[-20:], "lora_name": self.lora_name, "error": self.error,
                "warnings": list(self.job.warnings), "pid": self.pid, "pid_start": self.pid_start,
                "started": self.started, "updated": self.updated}


def _status_schema(data) -> dict:
    r = records
    r.fields(data, {
        "job_id": r.is_str(64), "state": lambda v: v in STATES, "mode": lambda v: v in ("wait", "background"),
        "step": lambda v: r.is_int(v) and v >= 0, "total": r.opt(lambda v: r.is_int(v) and v >= 0),
        "epoch": r.opt(r.is_int), "epochs": r.opt(r.is_int), "loss": r.opt(r.is_num), "eta_s": r.opt(r.is_num),
        "rate": r.opt(r.is_str(40)),
        "losses": r.list_of(lambda p: isinstance(p, list) and len(p) == 2 and r.is_int(p[0]) and r.is_num(p[1]),
                            2 * MAX_POINTS),
        "checkpoints": r.list_of(r.is_str(300), 20), "lora_name": r.opt(r.is_str(300)),
        "error": r.opt(r.is_str(20000)), "warnings": r.list_of(r.is_str(2000), 20),
        "pid": r.opt(r.is_int), "pid_start": r.opt(r.is_int), "started": r.is_num, "updated": r.is_num,
    }, kind="status.json")
    for key in ("job_id", "state", "step"):
        if key not in data:
            raise records.RecordError(f"status.json has no '{key}'", input="job_name")
    return data


def read_status_file(job_dir: str) -> dict | None:
    """The job's status.json, checked (None if there is none; RecordError if it is not valid)."""
    path = os.path.join(job_dir, STATUS_FILE)
    if not os.path.lexists(path):
        return None
    data = records.read_signed(path, "status.json", _status_schema, job_id=os.path.basename(os.path.normpath(job_dir)))
    if data["job_id"] != os.path.basename(os.path.normpath(job_dir)):
        raise records.RecordError("status.json belongs to another job", input="job_name")
    return data


def write_status_file(job_dir: str, data: dict) -> None:
    records.write_signed(os.path.join(job_dir, STATUS_FILE), "status.json", data,
                         job_id=os.path.basename(os.path.normpath(job_dir)))


class JobRegistry:
    def __init__(self):
        self._lock = threading.Lock()
        self._jobs: dict[str, JobStatus] = {}
        self._cancel: dict[str, threading.Event] = {}
        self._threads: dict[str, threading.Thread] = {}
        self.listeners: list[Callable[[dict], None]] = []
        self.stopping = False

    def _save(self, st: JobStatus) -> None:
        try:
            write_status_file(st.job.job_dir, st.to_dict())
        except (OSError, ContinuityError):
            pass
        st._saved = time.time()  # type: ignore[attr-defined]

    def _notify(self, st: JobStatus, *, force: bool = False) -> None:
        if force or time.time() - getattr(st, "_saved", 0) > 1.0:
            self._save(st)
        data = st.to_dict()
        for fn in list(self.listeners):
            try:
                fn(data)
            except Exception:
                pass

    def start(self, job: TrainJob, *, resume: bool = False, mode: str = "background",
              listener: Callable[[Progress], None] | None = None, before: Callable[[], None] | None = None,
              **launch_kw) -> str:
        with self._lock:
            if self.stopping:
                raise ContinuityError("the server is stopping; no training starts now", input="job_name")
            running = self._jobs.get(job.job_id)
            if running and running.state in ACTIVE:
                raise ContinuityError(f"job '{job.job_id}' is already running", input="job_name")
            st = JobStatus(job, mode)
            if resume:
                self._continue_curve(st)
            ev = threading.Event()
            self._jobs[job.job_id] = st
            self._cancel[job.job_id] = ev

        def on_progress(p: Progress) -> None:
            st.apply(p)
            self._notify(st)
            if listener is not None:
                listener(p)

        def on_start(proc) -> None:
            st.pid, st.pid_start = proc.pid, process_start_time(proc.pid)
            self._notify(st, force=True)

        def run():
            st.state = "running"
            self._notify(st, force=True)
            try:
                if before:
                    before()
                st.lora_path = launch(job, on_progress, ev, resume=resume, on_start=on_start, **launch_kw)
                st.state = "finished"
                st.step = st.total or st.step
            except TrainingCancelled as exc:
                st.state, st.error, st.exc = ("stopped" if self.stopping else "cancelled"), str(exc), exc
                if self.stopping:
                    st.error = "the server stopped during training; resume to continue"
            except BaseException as exc:  # reported through the status, never raised into the server
                st.state, st.error, st.exc = "failed", str(exc), exc
                if self.stopping:         # the trainer died because the server stopped it
                    st.state, st.error = "stopped", "the server stopped during training; resume to continue"
            st.pid = st.pid_start = None
            self._notify(st, force=True)

        t = threading.Thread(target=run, name=f"continuity-train-{job.job_id}", daemon=True)
        self._threads[job.job_id] = t
        t.start()
        return job.job_id

    @staticmethod
    def _continue_curve(st: JobStatus) -> None:
        """A resumed job keeps the curve and total of its earlier runs."""
        try:
            old = read_status_file(st.job.job_dir)
        except ContinuityError:
            old = None
        if old:
            st.losses = [list(p) for p in old.get("losses", [])]
            st.total = old.get("total") or st.total
            st.step = old.get("step", 0)

    def is_running(self, job_id: str) -> bool:
        """Whether the run thread of ``job_id`` is still going."""
        t = self._threads.get(job_id)
        return bool(t and t.is_alive())

    def get(self, job_id: str) -> JobStatus | None:
        return self._jobs.get(job_id)

    def status(self, job_id: str) -> dict | None:
        st = self._jobs.get(job_id)
        return st.to_dict() if st else None

    def all(self) -> list[dict]:
        return [st.to_dict() for st in self._jobs.values()]

    def cancel(self, job_id: str) -> bool:
        ev = self._cancel.get(job_id)
        st = self._jobs.get(job_id)
        if ev is None or st is None or st.state not in ACTIVE:
            return False
        ev.set()
        return True

    def wait(self, job_id: str, timeout: float | None = None) -> dict | None:
        t = self._threads.get(job_id)
        if t:
            t.join(timeout)
        return self.status(job_id)

    def shutdown(self, grace: tuple[float, float] = (5.0, 3.0)) -> None:
        """The server is stopping: stop every trainer, write each status as ``stopped``."""
        with self._lock:
            self.stopping = True
            active = [st for st in self._jobs.values() if st.state in ACTIVE]
        for st in active:
            self._cancel[st.job.job_id].set()
        stop_all_trainers(grace)
        for st in active:
            t = self._threads.get(st.job.job_id)
            if t:
                t.join(2.0)
            if st.state in ACTIVE:     # the run thread did not get to it
                st.state, st.error = "stopped", "the server stopped during training; resume to continue"
                st.pid = st.pid_start = None
            self._save(st)


def reconcile(jobs_root: str, registry: JobRegistry | None = None) -> list[str]:
    """At start-up: jobs a previous server left 'running' get their true state (see module doc)."""
    fixed: list[str] = []
    if not os.path.isdir(jobs_root):
        return fixed
    for name in sorted(os.listdir(jobs_root)):
        job_dir = os.path.join(jobs_root, name)
        if name.startswith(".") or (registry and registry.get(name)) or not os.path.isdir(job_dir):
            continue
        try:
            st = read_status_file(job_dir)
        except ContinuityError:
            continue
        if not st or st["state"] not in ACTIVE:
            continue
        pid, start = st.get("pid"), st.get("pid_start")
        alive = bool(pid and start and process_start_time(pid) == start)
        if alive and pid:
            stop_process_group(pid)
        st.update(state="stopped", pid=None, pid_start=None, updated=time.time(),
                  error=("the server was restarted while this job trained; its trainer was stopped. "
                         if alive else "the server stopped while this job trained. ")
                  + "Resume it to continue from its latest saved state.")
        try:
            write_status_file(job_dir, st)
        except (OSError, ContinuityError):
            continue
        fixed.append(name)
    return fixed


REGISTRY = JobRegistry()
_hooks_installed = False


def install_shutdown_hooks(registry: JobRegistry = REGISTRY) -> None:
    """Stop trainers with the server: at interpreter exit, and on SIGTERM (then the previous
    handler runs, or the default action)."""
    global _hooks_installed
    if _hooks_installed:
        return
    _hooks_installed = True
    import atexit
    atexit.register(registry.shutdown)
    if threading.current_thread() is not threading.main_thread():
        return
    previous = signal.getsignal(signal.SIGTERM)

    def on_term(signum, frame):
        registry.shutdown()
        if callable(previous):
            previous(signum, frame)
        else:
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            os.kill(os.getpid(), signal.SIGTERM)

    try:
        signal.signal(signal.SIGTERM, on_term)
    except ValueError:
        pass
