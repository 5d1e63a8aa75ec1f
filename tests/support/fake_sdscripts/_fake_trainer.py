"""A stand-in for kohya-ss sd-scripts v0.10.1 training scripts, for tests.

It parses the command line with a parser built from the real parsers' contract
(tests/data/sdscripts_contract_v0.10.1.json, abbreviations off, types and choices enforced),
reads the dataset TOML, and prints what sd-scripts prints: a tqdm bar ``steps:`` with
``avr_loss`` on stderr (carriage returns), ``epoch k/M`` and ``saving checkpoint: <file>`` on
stdout. It writes ``<output_name>-<epoch:06d>.safetensors`` and ``-state`` folders on each
periodic save and the final ``<output_name>.safetensors``.

Behaviour is controlled by ``fake_control.json`` next to the scripts:
``{"fail_at_step": n, "hang_at_step": n, "ignore_sigint": bool, "ignore_sigterm": bool,
"spawn_child": bool, "step_delay": s, "no_output_file": bool}``; it also records every
invocation's argv in ``invocations.jsonl``.
"""
import argparse
import json
import math
import os
import signal
import subprocess
import sys
import time
import tomllib

from tqdm import tqdm

HERE = os.path.dirname(os.path.abspath(__file__))
CONTRACT = next(p for p in (os.path.join(HERE, "contract.json"),
                            os.path.join(HERE, "..", "..", "data", "sdscripts_contract_v0.10.1.json"))
                if os.path.isfile(p))


def _type(name):
    return {"int": int, "float": float, "str": str, "Path": str, None: None,
            "int_or_float": lambda v: float(v) if "." in v or "e" in v.lower() else int(v)}[name]


def build_parser(script):
    with open(CONTRACT, encoding="utf-8") as fh:
        spec = json.load(fh)[script]
    p = argparse.ArgumentParser(prog=script, allow_abbrev=False, add_help=False)
    done = set()
    for opt, s in spec.items():
        if s["dest"] == "help" or opt in done:
            continue
        names = [o for o, t in spec.items() if t["dest"] == s["dest"] and o not in done and t == s]
        done.update(names)
        if s["nargs"] == 0:
            p.add_argument(*names, dest=s["dest"], action="store_const", const=s["const"], default=s["default"])
            continue
        kw = {"dest": s["dest"], "default": s["default"]}
        if s["type"]:
            kw["type"] = _type(s["type"])
        if s["choices"]:
            kw["choices"] = s["choices"]
        if s["nargs"] is not None:
            kw["nargs"] = s["nargs"]
        p.add_argument(*names, **kw)
    return p


def main(script):  # noqa: C901
    control = {}
    cpath = os.path.join(HERE, "fake_control.json")
    if os.path.isfile(cpath):
        with open(cpath) as fh:
            control = json.load(fh)
    with open(os.path.join(HERE, "invocations.jsonl"), "a") as fh:
        fh.write(json.dumps({"script": script, "argv": sys.argv[1:], "pid": os.getpid(),
                             "pgid": os.getpgid(0), "python": sys.executable}) + "\n")
    args = build_parser(script).parse_args()
    if control.get("ignore_sigint"):
        signal.signal(signal.SIGINT, signal.SIG_IGN)
    if control.get("ignore_sigterm"):
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    if control.get("spawn_child"):
        child = subprocess.Popen([sys.executable, "-c", "import time,signal;"
                                  "signal.signal(signal.SIGINT, signal.SIG_IGN);"
                                  "signal.signal(signal.SIGTERM, signal.SIG_IGN);time.sleep(600)"])
        with open(os.path.join(HERE, "children.txt"), "a") as fh:
            fh.write(f"{child.pid}\n")
    if args.lr_scheduler == "constant" and args.lr_warmup_steps:
        raise ValueError("constant scheduler does not take warmup steps")  # as sd-scripts refuses it
    with open(args.dataset_config, "rb") as fh:
        cfg = tomllib.load(fh)
    n_images = 0
    batch = 1
    for block in cfg["datasets"]:
        batch = block.get("batch_size", 1)
        for sub in block["subsets"]:
            if sub.get("is_reg"):
                continue
            files = [f for f in os.listdir(sub["image_dir"]) if f.endswith(".png")]
            n_images += len(files) * sub.get("num_repeats", 1)
    steps_per_epoch = max(1, math.ceil(n_images / batch))
    if args.max_train_epochs:
        total = steps_per_epoch * args.max_train_epochs
        epochs = args.max_train_epochs
    else:
        total = args.max_train_steps
        epochs = math.ceil(total / steps_per_epoch)
    out = args.output_dir
    os.makedirs(out, exist_ok=True)
    name = args.output_name
    start_step = 0
    if args.resume:
        with open(os.path.join(args.resume, "train_state.json")) as fh:
            st = json.load(fh)
        start_step = st["current_step"]
        print(f"resume training from {args.resume}, step {start_step}", flush=True)
    first_epoch = start_step // steps_per_epoch
    print(f"running training / 学習開始\n  num train images * repeats: {n_images}\n  num epochs: {epochs}\n"
          f"  total optimization steps: {total}", flush=True)
    bar = tqdm(range(total - start_step), smoothing=0, desc="steps", mininterval=0)
    step = start_step
    delay = float(control.get("step_delay", 0.005))
    for epoch in range(first_epoch, epochs):
        print(f"\nepoch {epoch + 1}/{epochs}", flush=True)
        for _ in range(steps_per_epoch):
            if step >= total:
                break
            step += 1
            if control.get("fail_at_step") == step:
                print("Traceback (most recent call last):", file=sys.stderr, flush=True)
                print("torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB", file=sys.stderr,
                      flush=True)
                sys.exit(1)
            if control.get("hang_at_step") == step:
                while True:
                    time.sleep(0.1)
            time.sleep(delay)
            loss = 0.1 + 0.05 * math.exp(-step / 20)
            bar.update(1)
            bar.set_postfix(avr_loss=loss)
        every = args.save_every_n_epochs
        if every and (epoch + 1) % every == 0 and epoch + 1 < epochs:
            ckpt = os.path.join(out, f"{name}-{epoch + 1:06d}.safetensors")
            print(f"\nsaving checkpoint: {ckpt}", flush=True)
            _write_lora(ckpt)
            if args.save_state:
                sdir = os.path.join(out, f"{name}-{epoch + 1:06d}-state")
                os.makedirs(sdir, exist_ok=True)
                with open(os.path.join(sdir, "train_state.json"), "w") as fh:
                    json.dump({"current_epoch": epoch + 1, "current_step": step}, fh)
                time.sleep(0.01)
    bar.close()
    if not control.get("no_output_file"):
        ckpt = os.path.join(out, f"{name}.safetensors")
        print(f"\nsaving checkpoint: {ckpt}", flush=True)
        _write_lora(ckpt)
    print("model saved.", flush=True)


def _write_lora(path):
    header = json.dumps({"__metadata__": {"ss_network_module": "networks.lora"}}).encode()
    header += b" " * (-len(header) % 8)
    with open(path, "wb") as fh:
        fh.write(len(header).to_bytes(8, "little") + header)


def install(dest, *, tag="v0.10.1", control=None):
    """Copy the fake checkout to ``dest`` with a .git folder whose HEAD is at ``tag``; return dest."""
    import shutil
    shutil.copytree(HERE, dest, ignore=shutil.ignore_patterns("__pycache__", "*.jsonl", "fake_control.json",
                                                              "children.txt"))
    shutil.copyfile(CONTRACT, os.path.join(dest, "contract.json"))
    git = os.path.join(dest, ".git")
    os.makedirs(os.path.join(git, "refs", "tags"), exist_ok=True)
    commit = "0123456789abcdef0123456789abcdef01234567"
    with open(os.path.join(git, "HEAD"), "w") as fh:
        fh.write(commit + "\n")
    if tag:
        with open(os.path.join(git, "refs", "tags", tag), "w") as fh:
            fh.write(commit + "\n")
    set_control(dest, control or {})
    return dest


def set_control(dest, control):
    with open(os.path.join(dest, "fake_control.json"), "w") as fh:
        json.dump(control, fh)


def invocations(dest):
    path = os.path.join(dest, "invocations.jsonl")
    if not os.path.isfile(path):
        return []
    with open(path) as fh:
        return [json.loads(line) for line in fh if line.strip()]
