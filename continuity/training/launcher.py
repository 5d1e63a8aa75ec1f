"""Jobs and the launcher: one sd-scripts process per run, its own process group, a full log.

* :func:`create_job` writes a new job folder atomically (images, captions, ``dataset.toml``
  and a keyed ``job.json`` with the job's validated *settings*); an existing job or LoRA folder
  is never reused, and a name a concurrent writer took meanwhile gets the next free ``-N``.
* :func:`load_job` reads a job back through :mod:`.records` (keyed, schema-checked); the
  interpreter, sd-scripts and model folders always come from the server's configuration.
* :func:`launch` builds the argument list from the settings through the same builder and
  allow-lists as a new run (nothing read from disk is executed; the stored argv is only
  informative), writes the dataset TOML privately, runs sd-scripts (no shell), streams both
  pipes into ``logs/run-N.log``, parses progress as each render arrives, stops the whole process
  group on ``cancel_event`` (SIGINT, then SIGTERM, then SIGKILL), records every state folder the
  run saved (file hashes in a keyed ``states.json``) and moves the final LoRA into
  ``<loras>/<job>/``. ``resume=True`` continues from the latest recorded state: its files are
  checked against the record while being copied to a private folder, and sd-scripts gets
  ``--resume <copy> --skip_until_initial_step`` so it skips the steps done and ends at the
  original total, numbering its saves after the state's step.
"""
from __future__ import annotations

import codecs
import errno
import json
import os
import re
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from .. import fsutil
from ..errors import ContinuityError
from . import command as cmd
from . import dataset as ds
from . import records
from .progress import LineSplitter, Progress, parse_line

if TYPE_CHECKING:
    from subprocess import Popen

JOB_FILE = "job.json"
STATES_FILE = "states.json"
OUT_DIR = "out"
LOG_DIR = "logs"
JOB_VERSION = 2


class TrainingFailed(ContinuityError):
    """sd-scripts exited with an error (or produced no LoRA); the message ends with the log tail."""


class TrainingCancelled(ContinuityError):
    """The run was stopped on request; saved states allow a resume."""


@dataclass
class TrainJob:
    job_id: str
    job_dir: str
    lora_dir: str
    output_name: str
    preset: str
    argv: list[str]                                  # the first run's argument list (informative only)
    total_steps: int | None = None
    created: float = field(default_factory=time.time)
    overrides: dict = field(default_factory=dict)    # validated settings: what a run is rebuilt from
    models: dict = field(default_factory=dict)
    network_weights: str | None = None
    dataset: dict = field(default_factory=dict)      # the dataset TOML's spec (folders relative to the job)
    warnings: list = field(default_factory=list)
    # the server's side (never stored): interpreter, checkout, folders
    python: str = field(default="", compare=False, repr=False)
    sd_root: str = field(default="", compare=False, repr=False)
    model_roots: list = field(default_factory=list, compare=False, repr=False)
    weight_roots: list = field(default_factory=list, compare=False, repr=False)
    tokenizer_cache_dir: str | None = field(default=None, compare=False, repr=False)
    extra_optimizers: tuple = field(default=(), compare=False, repr=False)

    @property
    def output_dir(self) -> str:
        return os.path.join(self.job_dir, OUT_DIR)

    @property
    def lora_path(self) -> str:
        return os.path.join(self.lora_dir, self.output_name + ".safetensors")

    def stored(self) -> dict:
        return {"version": JOB_VERSION, "job_id": self.job_id, "output_name": self.output_name,
                "preset": self.preset, "argv": self.argv, "total_steps": self.total_steps, "created": self.created,
                "overrides": self.overrides, "models": self.models, "network_weights": self.network_weights,
                "dataset": self.dataset, "warnings": self.warnings}

    def command(self, *, dataset_config: str, resume: str | None = None,
                output_dir: str | None = None) -> cmd.BuiltCommand:
        """The argument list of a run, from the validated settings (same builder as a new job)."""
        return cmd.build_command(
            cmd.load_preset(self.preset), self.overrides, python=self.python, sd_scripts_root=self.sd_root,
            dataset_config=dataset_config, output_dir=output_dir or self.output_dir, output_name=self.output_name,
            models=self.models, model_roots=self.model_roots, logging_dir=os.path.join(self.job_dir, LOG_DIR, "tb"),
            network_weights=self.network_weights, resume=resume, weight_roots=self.weight_roots or None,
            tokenizer_cache_dir=self.tokenizer_cache_dir, extra_optimizers=self.extra_optimizers)


def _job_schema(data) -> dict:
    r = records
    value = lambda v: isinstance(v, (str, bool)) or r.is_num(v) or r.list_of(r.is_num, 4)(v)
    r.fields(data, {"version": lambda v: v == JOB_VERSION, "job_id": r.is_str(64), "output_name": r.is_str(64),
                    "preset": r.is_str(64), "argv": r.list_of(r.is_str(4096), 500), "total_steps": r.opt(r.is_int),
                    "created": r.is_num,
                    "overrides": lambda v: isinstance(v, dict) and len(v) <= 100 and all(map(value, v.values())),
                    "models": lambda v: isinstance(v, dict) and len(v) <= 8 and all(map(r.is_str(4096), v.values())),
                    "network_weights": r.opt(r.is_str(4096)), "dataset": lambda v: isinstance(v, dict),
                    "warnings": r.list_of(r.is_str(2000), 20)}, kind="job.json")
    for key in ("version", "job_id", "output_name", "preset", "overrides", "models", "dataset"):
        if key not in data:
            raise records.RecordError(f"job.json has no '{key}'", input="job_name")
    cmd.check_job_name(data["job_id"])
    if data["output_name"] != data["job_id"]:
        raise records.RecordError("job.json names another job", input="job_name")
    return data


def load_job(job_dir: str, *, loras_root: str, python: str, sd_root: str, model_roots: list[str],
             weight_roots: list[str] | None = None, tokenizer_cache_dir: str | None = None,
             extra_optimizers=()) -> TrainJob:
    """A job folder read back (keyed, schema-checked), with the server's side filled in."""
    data = records.read_signed(os.path.join(job_dir, JOB_FILE), "job.json", _job_schema,
                               job_id=os.path.basename(os.path.normpath(job_dir)))
    if data["job_id"] != os.path.basename(os.path.normpath(job_dir)):
        raise records.RecordError("job.json belongs to another job folder", input="job_name")
    return TrainJob(job_id=data["job_id"], job_dir=job_dir, lora_dir=os.path.join(loras_root, data["job_id"]),
                    output_name=data["output_name"], preset=data["preset"], argv=list(data.get("argv", [])),
                    total_steps=data.get("total_steps"), created=float(data.get("created", 0.0)),
                    overrides=dict(data["overrides"]), models=dict(data["models"]),
                    network_weights=data.get("network_weights"), dataset=dict(data["dataset"]),
                    warnings=list(data.get("warnings", [])), python=python, sd_root=sd_root,
                    model_roots=list(model_roots), weight_roots=list(weight_roots or []),
                    tokenizer_cache_dir=tokenizer_cache_dir, extra_optimizers=tuple(extra_optimizers))


def estimate_steps(written: ds.DatasetWritten, args: dict) -> int | None:
    """Steps as sd-scripts counts them: bucket batches of images x repeats plus balanced reg images."""
    if args.get("max_train_epochs"):
        return written.batches_per_epoch() * int(args["max_train_epochs"])
    return int(args["max_train_steps"]) if args.get("max_train_steps") else None


def _taken(err: OSError) -> bool:
    return err.errno in (errno.EEXIST, errno.ENOTEMPTY) or isinstance(err, FileExistsError)


def create_job(*, jobs_root: str, loras_root: str, job_name: str, preset: cmd.Preset, overrides: dict | None,
               python: str, sd_scripts_root: str, models: dict[str, str], model_roots: list[str],
               images, masks=None, captions=None, reg_images=None, token: str = "", class_phrase: str = "",
               shot: str = "", mask_is_loadimage: bool = False, network_weights: str | None = None,
               weight_roots: list[str] | None = None, tokenizer_cache_dir: str | None = None,
               extra_optimizers=()) -> TrainJob:
    """Write a new job folder ``<jobs_root>/<job_name>`` and return the job (not started).

    Everything sd-scripts would refuse is refused before anything is written.
    """
    job_name = cmd.check_job_name(job_name)
    token = cmd.check_text(token, input="token", max_len=60)
    class_phrase = cmd.check_text(class_phrase, input="class_phrase", max_len=120)
    jobs_root, loras_root = os.path.realpath(jobs_root), os.path.realpath(loras_root)
    if os.path.exists(os.path.join(jobs_root, job_name)):
        raise ContinuityError(f"a training job named '{job_name}' already exists; choose another name or resume it",
                              input="job_name")
    if os.path.exists(os.path.join(loras_root, job_name)):
        raise ContinuityError(f"a LoRA folder named '{job_name}' already exists; choose another job name",
                              input="job_name")
    shots = preset.captions.get("shots")
    if shots and shot not in shots:
        raise ContinuityError(f"choose a shot scale: {', '.join(shots)}", input="shot")
    shot_words = shots[shot] if shots else ""
    job = TrainJob(job_id=job_name, job_dir=os.path.join(jobs_root, job_name),
                   lora_dir=os.path.join(loras_root, job_name), output_name=job_name, preset=preset.id, argv=[],
                   overrides=dict(overrides or {}), models=dict(models), network_weights=network_weights,
                   python=python, sd_root=sd_scripts_root, model_roots=list(model_roots),
                   weight_roots=list(weight_roots or []), tokenizer_cache_dir=tokenizer_cache_dir,
                   extra_optimizers=tuple(extra_optimizers))
    # build (and check) the command before writing anything
    built = job.command(dataset_config=os.path.join(job.job_dir, ds.TOML_NAME))
    stage = tempfile.mkdtemp(prefix=".partial-" + job_name + "-", dir=_mkdirs(jobs_root))
    try:
        written = ds.write_dataset(stage, job.job_dir, images=images, masks=masks, captions=captions,
                                   reg_images=reg_images, settings=built.dataset, captions_cfg=preset.captions,
                                   token=token, class_phrase=class_phrase, shot=shot_words,
                                   mask_is_loadimage=mask_is_loadimage)
        os.makedirs(os.path.join(stage, OUT_DIR))
        os.makedirs(os.path.join(stage, LOG_DIR))
        job.total_steps, job.dataset, job.warnings = estimate_steps(written, built.args), written.spec, written.warnings
        _place(stage, job, jobs_root, loras_root)
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        raise
    return job


def _mkdirs(path: str) -> str:
    os.makedirs(path, exist_ok=True)
    return path


def _place(stage: str, job: TrainJob, jobs_root: str, loras_root: str) -> None:
    """Move the staged folder to its name; a name taken meanwhile (EEXIST/ENOTEMPTY) gets ``-2``, ..."""
    base = job.job_id
    for n in range(1, 1000):
        name = base if n == 1 else f"{base}-{n}"
        if len(name) > 64:
            break
        final = os.path.join(jobs_root, name)
        if os.path.exists(final) or os.path.exists(os.path.join(loras_root, name)):
            continue
        job.job_id = job.output_name = name
        job.job_dir, job.lora_dir = final, os.path.join(loras_root, name)
        job.argv = job.command(dataset_config=os.path.join(final, ds.TOML_NAME)).argv
        with open(os.path.join(stage, ds.TOML_NAME), "w", encoding="utf-8") as fh:
            fh.write(ds.toml_for(job.dataset, final))
        records.write_signed(os.path.join(stage, JOB_FILE), "job.json", job.stored(), job_id=name)
        try:
            os.rename(stage, final)
            return
        except OSError as exc:
            if not _taken(exc):
                raise
    raise ContinuityError(f"no free job name like '{base}' is left; choose another name", input="job_name")


# ------------------------------------------------------------------ saved states
# a state folder of the first run, or of a resumed run's own folder (out/resume-N/)
_STATE_RE = re.compile(r"^(?:resume-\d{1,4}/)?(?P<name>[^/]+?)-(?:(?P<epoch>\d{6})|step(?P<step>\d{8}))-state$")
RESUME_DIR = "resume-{}"
_CKPT_RE = re.compile(r"-(\d{6}|step\d{8})\.safetensors$")


def _states_schema(data) -> dict:
    for name, rec in data.items():
        if not (isinstance(name, str) and _STATE_RE.match(name) and isinstance(rec, dict)
                and records.is_int(rec.get("step")) and isinstance(rec.get("files"), dict)
                and set(rec) <= {"step", "files", "total"} and records.opt(records.is_int)(rec.get("total"))
                and all(isinstance(k, str) and "/" not in k and k not in (".", "..") and isinstance(v, str)
                        for k, v in rec["files"].items())):
            raise records.RecordError("states.json has an unexpected entry", input="job_name")
    return data


def saved_states(job: TrainJob) -> dict:
    path = os.path.join(job.job_dir, STATES_FILE)
    if not os.path.exists(path):
        return {}
    return records.read_signed(path, "states.json", _states_schema, job_id=job.job_id)


def find_states(job: TrainJob) -> list[str]:
    """Saved state folders of the job that its own runs recorded, oldest (lowest step) first."""
    recs = saved_states(job)
    found = [(rec["step"], name) for name, rec in recs.items() if os.path.isdir(os.path.join(job.output_dir, name))]
    return [os.path.join(job.output_dir, name) for _, name in sorted(found)]


def latest_state(job: TrainJob) -> str | None:
    states = find_states(job)
    return states[-1] if states else None


def _hash_new_states(job: TrainJob, labels: list[tuple[str, int]], total: int | None = None) -> None:
    """Hash the state folders announced by this run's 'saving checkpoint' lines into states.json."""
    if not labels:
        return
    recs = saved_states(job)
    changed = False
    for label, seen_step in labels:
        prefix, _, tail = label.rpartition("/")
        name = (prefix + "/" if prefix else "") + f"{job.output_name}-{tail}-state"
        folder = os.path.join(job.output_dir, name)
        try:
            with open(os.path.join(folder, "train_state.json"), encoding="utf-8") as fh:
                step = json.load(fh).get("current_step")
            files = {f: records.sha256_file(os.path.join(folder, f)) for f in sorted(os.listdir(folder))
                     if os.path.isfile(os.path.join(folder, f)) and not os.path.islink(os.path.join(folder, f))}
        except (OSError, ValueError, AttributeError):
            continue                     # not (yet) complete: not resumable
        if not records.is_int(step):
            continue
        # the absolute step: a resumed run's trainer may count its own steps from less than the state's
        step = max(step, seen_step)
        recs[name] = {"step": step, "files": files, "total": total}
        changed = True
    if changed:
        records.write_signed(os.path.join(job.job_dir, STATES_FILE), "states.json", recs, job_id=job.job_id)


def _stage_state(job: TrainJob, run_dir: str) -> tuple[str, int]:
    """Copy the latest recorded state to ``run_dir``, checking every byte against the record."""
    recs = saved_states(job)
    state = latest_state(job)
    if state is None:
        raise ContinuityError(f"job '{job.job_id}' has no saved state to resume from (states are saved with each "
                              "periodic save)", input="resume")
    name = os.path.relpath(state, job.output_dir).replace(os.sep, "/")
    rec = recs[name]
    total = rec.get("total") or job.total_steps      # the trainer's own count, when it printed it
    if total and rec["step"] >= total:
        # sd-scripts asserts max_train_steps > the state's step
        raise ContinuityError(f"the latest state ({os.path.basename(state)}) is at the last step "
                              f"({rec['step']}/{total}): there is nothing left to train; its LoRA is "
                              f"{name[:-len('-state')]}.safetensors in the job's out/ folder", input="resume")
    present = sorted(f for f in os.listdir(state) if os.path.isfile(os.path.join(state, f)))
    if present != sorted(rec["files"]):
        raise ContinuityError(f"the saved state {name} was changed after training wrote it; it is not used",
                              input="resume")
    dest = os.path.join(run_dir, os.path.basename(state))
    os.makedirs(dest)
    for fname, digest in rec["files"].items():
        src = os.path.join(state, fname)
        if os.path.islink(src) or records.sha256_file(src, copy_to=os.path.join(dest, fname)) != digest:
            raise ContinuityError(f"the saved state {name} was changed after training wrote it; it is not used",
                                  input="resume")
    return dest, int(rec["step"])


def resume_argv(job: TrainJob, run_dir: str | None = None) -> list[str]:
    """The argument list a resume would run (checks that a recorded state exists)."""
    state = latest_state(job)
    if state is None:
        raise ContinuityError(f"job '{job.job_id}' has no saved state to resume from (states are saved with each "
                              "periodic save)", input="resume")
    return job.command(dataset_config=os.path.join(run_dir or job.job_dir, ds.TOML_NAME), resume=state).argv


# ------------------------------------------------------------------ processes
_ACTIVE: dict[int, Popen] = {}
_ACTIVE_LOCK = threading.Lock()


def start_trainer(argv: list[str], *, env: dict) -> Popen:
    """The pack's one subprocess call site: sd-scripts' interpreter on its script, an argument
    list built by :func:`command.build_command` (never a shell, never text from disk), in its own
    process group so a cancel reaches its data-loader workers too."""
    proc = subprocess.Popen(argv, cwd=os.path.dirname(argv[1]), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            stdin=subprocess.DEVNULL, env=env, start_new_session=True, bufsize=0, close_fds=True)
    with _ACTIVE_LOCK:
        _ACTIVE[proc.pid] = proc
    return proc


def stop_all_trainers(grace: tuple[float, float] = (5.0, 3.0)) -> list[int]:
    """Stop every trainer this process started (the server is stopping); their pids."""
    with _ACTIVE_LOCK:
        procs = [p for p in _ACTIVE.values() if p.poll() is None]
    for p in procs:
        _kill_group(p, grace)
    return [p.pid for p in procs]


def _kill_group(proc: Popen, grace: tuple[float, float]) -> None:
    """SIGINT, then SIGTERM, then SIGKILL to the whole process group, waiting between."""
    for sig, wait in ((signal.SIGINT, grace[0]), (signal.SIGTERM, grace[1]), (signal.SIGKILL, 10.0)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            break
        try:
            proc.wait(wait)
        except subprocess.TimeoutExpired:
            continue
        if not _group_alive(proc.pid):
            break
    if _group_alive(proc.pid):
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def stop_process_group(pgid: int, grace: tuple[float, float] = (10.0, 5.0)) -> None:
    """Stop a process group this process did not start (a trainer left by a previous server)."""
    for sig, wait in ((signal.SIGINT, grace[0]), (signal.SIGTERM, grace[1]), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(pgid, sig)
        except (ProcessLookupError, PermissionError):
            return
        deadline = time.time() + wait
        while time.time() < deadline:
            if not _group_alive(pgid):
                return
            time.sleep(0.05)


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
        return True
    except ProcessLookupError:
        return False
    except PermissionError:
        return True


def process_start_time(pid: int) -> int | None:
    """The kernel's start time of ``pid`` (to tell a live trainer from a reused pid), or None."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as fh:
            fields_ = fh.read().rsplit(")", 1)[1].split()
        return None if fields_[0] == "Z" else int(fields_[19])
    except (OSError, IndexError, ValueError):
        return None


class _Run:
    """One sd-scripts process: reads both pipes, logs them, turns renders into events."""

    def __init__(self, job: TrainJob, on_progress, offset: int, log_path: str, out_dir: str):
        self.job, self.on_progress, self.offset = job, on_progress, offset
        self.prefix = os.path.relpath(out_dir, job.output_dir).replace(os.sep, "/")
        self.prefix = "" if self.prefix == "." else self.prefix + "/"
        self.out_dir = out_dir
        self.tail: deque[str] = deque(maxlen=40)
        self.lock = threading.Lock()
        self.log = open(log_path, "a", encoding="utf-8", errors="replace")  # noqa: SIM115 - closed by _run
        self.total_line: int | None = None
        self.labels: list[tuple[str, int]] = []
        self.last_step = offset

    def pump(self, stream) -> None:
        splitter = LineSplitter()
        dec = codecs.getincrementaldecoder("utf-8")("replace")
        while True:
            chunk = stream.read1(65536) if hasattr(stream, "read1") else stream.read(65536)
            if not chunk:
                break
            text = dec.decode(chunk)
            with self.lock:
                self.log.write(text)
                self.log.flush()
            for line in splitter.feed(text):
                self.handle(line)
        for line in splitter.feed(dec.decode(b"", final=True)) + splitter.flush():
            self.handle(line)

    def handle(self, line: str) -> None:
        with self.lock:
            self.tail.append(line.rstrip())
        ev = parse_line(line)
        if ev is None:
            return
        if ev.kind == "total":
            self.total_line = ev.total
        elif ev.kind == "checkpoint" and ev.checkpoint:
            m = _CKPT_RE.search(ev.checkpoint)
            if m:
                with self.lock:
                    self.labels.append((self.prefix + m.group(1), self.last_step))
            ev.checkpoint = os.path.basename(ev.checkpoint)
        elif ev.kind == "step" and ev.step is not None:
            if self.offset:
                # a resumed run's bar counts only the steps it trains: report absolute steps and the
                # run's own total (its "total optimization steps" line, i.e. the original total)
                ev.step += self.offset
                ev.total = self.total_line or ((ev.total or 0) + self.offset)
            self.last_step = ev.step
        if self.on_progress is not None:
            try:
                self.on_progress(ev)
            except Exception:  # a broken listener must not kill the reader
                pass


def _private_run_dir(job: TrainJob) -> str:
    runs = os.path.join(records.private_dir(), "runs")
    os.makedirs(runs, mode=0o700, exist_ok=True)
    return tempfile.mkdtemp(prefix=f"{os.getpid()}-{job.job_id}-", dir=runs)


def clean_private_runs() -> list[str]:
    """Remove per-run private copies left by servers that are gone (a state copy can be large);
    copies of a live server (two servers may share one base folder) are kept."""
    runs = os.path.join(records.private_dir(), "runs")
    removed = []
    for name in os.listdir(runs) if os.path.isdir(runs) else []:
        pid = name.split("-", 1)[0]
        if pid.isdigit() and (int(pid) == os.getpid() or process_start_time(int(pid)) is not None):
            continue
        shutil.rmtree(os.path.join(runs, name), ignore_errors=True)
        removed.append(name)
    return removed


def launch(job: TrainJob, on_progress: Callable[[Progress], None] | None = None, cancel_event=None, *,
           resume: bool = False, env: dict | None = None, grace: tuple[float, float] = (15.0, 10.0),
           poll_s: float = 0.05, on_start: Callable[[Popen], None] | None = None) -> str:
    """Run the job to the end and return the LoRA path (in ``job.lora_dir``).

    ``cancel_event``: anything with ``is_set()``; when it turns true the process group is stopped
    and :class:`TrainingCancelled` raised. ``resume``: continue from the latest recorded state.
    """
    if os.path.exists(job.lora_path):
        raise ContinuityError(f"job '{job.job_id}' already finished (LoRA {job.output_name}.safetensors)",
                              input="resume")
    run_dir = _private_run_dir(job)
    try:
        state, offset = _stage_state(job, run_dir) if resume else (None, 0)
        toml = os.path.join(run_dir, ds.TOML_NAME)
        with open(toml, "w", encoding="utf-8") as fh:
            fh.write(ds.toml_for(job.dataset, job.job_dir))
        out_dir = _resume_out_dir(job) if resume else job.output_dir
        argv = job.command(dataset_config=toml, resume=state, output_dir=out_dir).argv
        return _run(job, argv, offset, on_progress, cancel_event, env=env, grace=grace, poll_s=poll_s,
                    on_start=on_start, out_dir=out_dir)
    finally:
        shutil.rmtree(run_dir, ignore_errors=True)


def _resume_out_dir(job: TrainJob) -> str:
    """A resumed run saves into its own ``out/resume-N``: whatever numbering the trainer uses, the
    earlier runs' checkpoints and states are never written over."""
    for n in range(1, 10_000):
        path = os.path.join(job.output_dir, RESUME_DIR.format(n))
        try:
            os.mkdir(path)
            return path
        except FileExistsError:
            continue
    raise ContinuityError(f"job '{job.job_id}' was resumed too often", input="resume")


def _run(job, argv, offset, on_progress, cancel_event, *, env, grace, poll_s, on_start, out_dir) -> str:
    log_path = fsutil.unique_path(os.path.join(job.job_dir, LOG_DIR), "run", ".log")
    run_env = dict(os.environ if env is None else env)
    run_env["PYTHONUNBUFFERED"] = "1"
    run_env.setdefault("PYTHONIOENCODING", "utf-8")
    run = _Run(job, on_progress, offset, log_path, out_dir)
    run.log.write("# " + json.dumps(argv) + "\n")
    run.log.flush()
    try:
        proc = start_trainer(argv, env=run_env)
    except OSError as exc:
        run.log.close()
        raise TrainingFailed(f"could not start sd-scripts ({os.path.basename(argv[0])}): {exc.strerror}") from exc
    if on_start:
        on_start(proc)
    readers = [threading.Thread(target=run.pump, args=(s,), daemon=True) for s in (proc.stdout, proc.stderr)]
    for t in readers:
        t.start()
    cancelled = False
    try:
        while proc.poll() is None:
            if cancel_event is not None and cancel_event.is_set():
                cancelled = True
                _kill_group(proc, grace)
                break
            time.sleep(poll_s)
    except BaseException:
        _kill_group(proc, grace)
        raise
    finally:
        if proc.poll() is None:
            _kill_group(proc, grace)
        proc.wait()
        if _group_alive(proc.pid):
            _kill_group(proc, grace)
        for t in readers:
            t.join(5)
        with _ACTIVE_LOCK:
            _ACTIVE.pop(proc.pid, None)
        with run.lock:
            run.log.write(f"\n# exit code {proc.returncode}\n")
            run.log.close()
        try:
            _hash_new_states(job, run.labels, run.total_line)
        except (ContinuityError, OSError):
            pass  # a damaged states.json: these states are simply not resumable
    if proc.returncode != 0 and cancel_event is not None and cancel_event.is_set():
        cancelled = True      # stopped from outside (the server stopping) before the loop saw the request
    return _finish(job, proc.returncode, cancelled, run, log_path)


def _finish(job: TrainJob, code: int, cancelled: bool, run: _Run, log_path: str) -> str:
    text_tail = "\n".join(run.tail)
    log_rel = f"{LOG_DIR}/{os.path.basename(log_path)} in the job folder '{job.job_id}'"
    if cancelled:
        state = latest_state(job)
        raise TrainingCancelled(f"training '{job.job_id}' was stopped"
                                + (f"; resume from {os.path.basename(state)} is possible" if state else ""))
    if code != 0:
        raise TrainingFailed(f"sd-scripts exited with code {code}. Full log: {log_rel}\n"
                             f"--- last lines ---\n{text_tail}")
    produced = os.path.join(run.out_dir, job.output_name + ".safetensors")
    if not os.path.isfile(produced):
        raise TrainingFailed(f"sd-scripts exited normally but wrote no LoRA ({job.output_name}.safetensors). "
                             f"Full log: {log_rel}\n--- last lines ---\n{text_tail}")
    os.makedirs(job.lora_dir, exist_ok=True)
    dest = job.lora_path
    if os.path.exists(dest):  # never overwrite: take the next free name
        dest = fsutil.unique_path(job.lora_dir, job.output_name, ".safetensors")
    _move(produced, dest)
    return dest


def _move(src: str, dest: str) -> None:
    """Rename, or copy to a temporary name beside ``dest`` and rename (across file systems)."""
    try:
        os.replace(src, dest)
    except OSError:
        tmp = dest + ".partial"
        shutil.copyfile(src, tmp)
        os.replace(tmp, dest)
        os.unlink(src)
