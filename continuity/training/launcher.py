"""Jobs and the launcher: one sd-scripts process per run, its own process group, a full log.

* :func:`create_job` writes a new job folder atomically (dataset, TOML, ``job.json`` with the
  argument list); an existing job or LoRA folder is never reused.
* :func:`launch` runs it (no shell), streams both pipes into ``logs/run-N.log``, parses progress
  for ``on_progress``, stops the whole process group on ``cancel_event`` (SIGINT, then SIGTERM,
  then SIGKILL), raises :class:`TrainingFailed` with the log tail on a non-zero exit or a missing
  LoRA, and moves the final LoRA into ``<loras>/<job>/``. ``resume=True`` continues from the
  latest ``*-state`` folder.
"""
from __future__ import annotations

import codecs
import json
import os
import shutil
import re
import signal
import subprocess
import threading
import time
from collections import deque
from dataclasses import asdict, dataclass, field
from collections.abc import Callable

from .. import fsutil
from ..errors import ContinuityError
from . import command as cmd
from . import dataset as ds
from .progress import LineSplitter, Progress, parse_line

JOB_FILE = "job.json"
OUT_DIR = "out"
LOG_DIR = "logs"


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
    argv: list[str]
    total_steps: int | None = None
    created: float = field(default_factory=time.time)

    @property
    def output_dir(self) -> str:
        return os.path.join(self.job_dir, OUT_DIR)

    @property
    def lora_path(self) -> str:
        return os.path.join(self.lora_dir, self.output_name + ".safetensors")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def load(cls, job_dir: str) -> TrainJob:
        path = os.path.join(job_dir, JOB_FILE)
        try:
            with open(path, encoding="utf-8") as fh:
                data = json.load(fh)
            return cls(**{k: data[k] for k in cls.__dataclass_fields__ if k in data})
        except (OSError, ValueError, TypeError, KeyError) as exc:
            raise ContinuityError(f"'{job_dir}' is not a training job folder ({exc})", input="job") from exc


def estimate_steps(written: ds.DatasetWritten, args: dict) -> int | None:
    if args.get("max_train_epochs"):
        per_epoch = -(-(written.image_count * written.num_repeats) // max(1, written.batch_size))
        return per_epoch * int(args["max_train_epochs"])
    return int(args["max_train_steps"]) if args.get("max_train_steps") else None


def create_job(*, jobs_root: str, loras_root: str, job_name: str, preset: cmd.Preset, overrides: dict | None,
               python: str, sd_scripts_root: str, models: dict[str, str], model_roots: list[str],
               images, masks=None, captions=None, reg_images=None, token: str = "", class_phrase: str = "",
               shot: str = "", mask_is_loadimage: bool = False, network_weights: str | None = None,
               weight_roots: list[str] | None = None) -> TrainJob:
    """Write a new job folder ``<jobs_root>/<job_name>`` and return the job (not started)."""
    job_name = cmd.check_job_name(job_name)
    token = cmd.check_text(token, input="token", max_len=60)
    class_phrase = cmd.check_text(class_phrase, input="class_phrase", max_len=120)
    job_dir = os.path.join(os.path.realpath(jobs_root), job_name)
    lora_dir = os.path.join(os.path.realpath(loras_root), job_name)
    if os.path.exists(job_dir):
        raise ContinuityError(f"a training job named '{job_name}' already exists ({job_dir}); choose another name "
                              "or resume it", input="job_name")
    if os.path.exists(lora_dir):
        raise ContinuityError(f"the LoRA folder '{lora_dir}' already exists; choose another job name",
                              input="job_name")
    shots = preset.captions.get("shots")
    if shots:
        if shot not in shots:
            raise ContinuityError(f"choose a shot scale: {', '.join(shots)}", input="shot")
        shot_words = shots[shot]
    else:
        shot_words = ""
    # build (and check) the command before writing anything
    built = cmd.build_command(
        preset, overrides, python=python, sd_scripts_root=sd_scripts_root,
        dataset_config=os.path.join(job_dir, ds.TOML_NAME), output_dir=os.path.join(job_dir, OUT_DIR),
        output_name=job_name, models=models, model_roots=model_roots,
        logging_dir=os.path.join(job_dir, LOG_DIR, "tensorboard"), network_weights=network_weights,
        weight_roots=weight_roots)
    try:
        with fsutil.new_folder(job_dir) as stage:
            written = ds.write_dataset(stage, job_dir, images=images, masks=masks, captions=captions,
                                       reg_images=reg_images, settings=built.dataset, captions_cfg=preset.captions,
                                       token=token, class_phrase=class_phrase, shot=shot_words,
                                       mask_is_loadimage=mask_is_loadimage)
            os.makedirs(os.path.join(stage, OUT_DIR))
            os.makedirs(os.path.join(stage, LOG_DIR))
            job = TrainJob(job_id=job_name, job_dir=job_dir, lora_dir=lora_dir, output_name=job_name,
                           preset=preset.id, argv=built.argv, total_steps=estimate_steps(written, built.args))
            fsutil.atomic_write_json(os.path.join(stage, JOB_FILE), job.to_dict())
    except FileExistsError:
        raise ContinuityError(f"a training job named '{job_name}' was created meanwhile; choose another name",
                              input="job_name") from None
    return job


_STATE_RE = re.compile(r"^(?P<name>.+?)-(?:(?P<epoch>\d{6})|step(?P<step>\d{8}))?-?state$")


def find_states(job: TrainJob) -> list[str]:
    """Saved state folders of the job, oldest first (by modification time, then number)."""
    out = job.output_dir
    if not os.path.isdir(out):
        return []
    found = []
    for name in os.listdir(out):
        p = os.path.join(out, name)
        if not os.path.isdir(p) or not name.startswith(job.output_name + "-") or not name.endswith("state"):
            continue
        m = _STATE_RE.match(name)
        if not m or m.group("name") != job.output_name:
            continue
        num = int(m.group("epoch") or m.group("step") or 10**12)  # "<name>-state" is the final one
        found.append((os.stat(p).st_mtime_ns, num, p))
    return [p for _, _, p in sorted(found)]


def latest_state(job: TrainJob) -> str | None:
    states = find_states(job)
    return states[-1] if states else None


def resume_argv(job: TrainJob) -> list[str]:
    state = latest_state(job)
    if state is None:
        raise ContinuityError(f"job '{job.job_id}' has no saved state to resume from (states are saved with each "
                              "periodic save)", input="resume")
    argv = list(job.argv)
    if "--resume" in argv:
        i = argv.index("--resume")
        del argv[i:i + 2]
    return argv + ["--resume", state]


def _state_step(state_dir: str) -> int:
    """The step a saved state was taken at (``train_state.json`` written by sd-scripts), or 0."""
    try:
        with open(os.path.join(state_dir, "train_state.json"), encoding="utf-8") as fh:
            return int(json.load(fh).get("current_step", 0))
    except (OSError, ValueError, TypeError, AttributeError):
        return 0


def _kill_group(proc: subprocess.Popen, grace: tuple[float, float]) -> None:
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
        # the leader is gone; children of the group may remain: check and continue if so
        if not _group_alive(proc.pid):
            break
    # make sure no member of the group survives
    if _group_alive(proc.pid):
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
        return True
    except ProcessLookupError:
        return False
    except PermissionError:
        return True


def launch(job: TrainJob, on_progress: Callable[[Progress], None] | None = None, cancel_event=None, *,  # noqa: C901
           resume: bool = False, env: dict | None = None, grace: tuple[float, float] = (15.0, 10.0),
           poll_s: float = 0.1, on_start: Callable[[subprocess.Popen], None] | None = None) -> str:
    """Run the job to the end and return the LoRA path (in ``job.lora_dir``).

    ``cancel_event``: anything with ``is_set()``; when it turns true the process group is stopped
    and :class:`TrainingCancelled` raised. ``resume``: continue from the latest saved state.
    """
    if os.path.exists(job.lora_path):
        raise ContinuityError(f"job '{job.job_id}' already finished: {job.lora_path}", input="resume")
    argv = resume_argv(job) if resume else list(job.argv)
    offset = _state_step(argv[argv.index("--resume") + 1]) if "--resume" in argv else 0
    if offset and on_progress is not None:
        # a resumed run's bar counts the remaining steps from 0: report absolute steps
        user_cb = on_progress

        def on_progress(ev, _cb=user_cb):
            if ev.kind == "step" and ev.step is not None and ev.total is not None:
                ev.step += offset
                ev.total += offset
            _cb(ev)
    log_path = fsutil.unique_path(os.path.join(job.job_dir, LOG_DIR), "run", ".log")
    run_env = dict(os.environ if env is None else env)
    run_env["PYTHONUNBUFFERED"] = "1"
    run_env.setdefault("PYTHONIOENCODING", "utf-8")
    tail: deque[str] = deque(maxlen=40)
    lock = threading.Lock()
    # stays open while the reader thread copies the trainer's output; closed below
    log = open(log_path, "a", encoding="utf-8", errors="replace")  # noqa: SIM115
    log.write("# " + json.dumps(argv) + "\n")
    log.flush()
    try:
        proc = subprocess.Popen(argv, cwd=os.path.dirname(argv[1]), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                stdin=subprocess.DEVNULL, env=run_env, start_new_session=True, bufsize=0,
                                close_fds=True)
    except OSError as exc:
        log.close()
        raise TrainingFailed(f"could not start sd-scripts ({argv[0]}): {exc}") from exc
    if on_start:
        on_start(proc)

    def pump(stream, label):
        splitter = LineSplitter()
        dec = codecs.getincrementaldecoder("utf-8")("replace")
        while True:
            chunk = stream.read1(65536) if hasattr(stream, "read1") else stream.read(65536)
            if not chunk:
                break
            text = dec.decode(chunk)
            with lock:
                log.write(text)
                log.flush()
            for line in splitter.feed(text):
                _handle(line)
        rest = dec.decode(b"", final=True)
        if rest:
            with lock:
                log.write(rest)
        for line in splitter.feed(rest) + splitter.flush():
            _handle(line)

    def _handle(line):
        with lock:
            tail.append(line.rstrip())
        ev = parse_line(line)
        if ev is not None and on_progress is not None:
            try:
                on_progress(ev)
            except Exception:  # a broken listener must not kill the reader
                pass

    readers = [threading.Thread(target=pump, args=(proc.stdout, "out"), daemon=True),
               threading.Thread(target=pump, args=(proc.stderr, "err"), daemon=True)]
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
        with lock:
            log.write(f"\n# exit code {proc.returncode}\n")
            log.close()
    text_tail = "\n".join(tail)
    if cancelled:
        state = latest_state(job)
        raise TrainingCancelled(f"training '{job.job_id}' was stopped"
                                + (f"; resume from {os.path.basename(state)} is possible" if state else ""))
    if proc.returncode != 0:
        raise TrainingFailed(f"sd-scripts exited with code {proc.returncode}. Full log: {log_path}\n"
                             f"--- last lines ---\n{text_tail}")
    produced = os.path.join(job.output_dir, job.output_name + ".safetensors")
    if not os.path.isfile(produced):
        raise TrainingFailed(f"sd-scripts exited normally but wrote no LoRA ({produced}). Full log: {log_path}\n"
                             f"--- last lines ---\n{text_tail}")
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
