"""A stand-in for kohya-ss sd-scripts v0.10.1's network trainers, for tests.

It behaves as the real scripts were seen to behave (../../../shared/sd-scripts/README.md):

* the command line is parsed by a parser built from the script's OWN contract
  (tests/data/sdscripts_contract_v0.10.1.json, abbreviations off, types and choices enforced):
  ``train_network.py`` has no ``--cache_text_encoder_outputs``;
* refusals: ``constant`` with warmup, ``Adafactor`` with warmup (after "loading" the models),
  ``DAdaptation*`` (package not installed unless ``installed_optimizers`` says so), a resolution
  outside the bucket bounds (AssertionError), ``full_bf16`` without bf16, persistent workers
  without workers, unknown dataset TOML keys, no tokenizer cache when ``offline``;
* a latent-caching bar of its own comes first; steps per epoch count reg images (balanced to the
  character images) and bucket batching;
* stderr carries tqdm renders that END with ``\\r`` (``framing`` "start" puts it first, as plain
  tqdm does); each step is rendered twice: first with the previous step's ``avr_loss``, then with
  its own; stdout carries the "running training" block, ``epoch k/M`` and
  ``saving checkpoint: <file>``;
* ``--resume`` without ``--skip_until_initial_step`` trains the full ``max_train_steps`` again
  from step 0 and numbers its saves from 0 (overwriting earlier state folders); with it, the
  saved steps are skipped, counting continues at the saved step and ends at the original total;
* SIGINT stops it with KeyboardInterrupt (exit -2); saves ``<name>-<epoch:06d>`` /
  ``<name>-step<step:08d>`` LoRAs with ``-state`` folders holding ``train_state.json``.

``fake_control.json`` next to the scripts steers it: ``fail_at_step``, ``hang_at_step`` (before
the step), ``pause_after_step`` (after both renders of the step), ``ignore_sigint``,
``ignore_sigterm``, ``spawn_child``, ``step_delay``, ``no_output_file``, ``framing``,
``installed_optimizers``, ``offline``. Every invocation's argv is appended to
``invocations.jsonl``.
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

HERE = os.path.dirname(os.path.abspath(__file__))
CONTRACT = next(p for p in (os.path.join(HERE, "contract.json"),
                            os.path.join(HERE, "..", "..", "data", "sdscripts_contract_v0.10.1.json"))
                if os.path.isfile(p))
SUBSET_KEYS = {"image_dir", "is_reg", "alpha_mask", "class_tokens", "caption_extension", "num_repeats"}
DATASET_KEYS = {"resolution", "batch_size", "enable_bucket", "min_bucket_reso", "max_bucket_reso", "subsets"}
GENERAL_KEYS = {"shuffle_caption", "keep_tokens", "caption_extension"}
DADAPT = ("DAdaptation", "DAdaptAdam", "DAdaptAdaGrad", "DAdaptAdan", "DAdaptAdanIP", "DAdaptLion", "DAdaptSGD")


def fake_loss(step: int) -> float:
    """The avr_loss the fake reports for ``step`` (1-based), as tqdm shows it (3 significant digits):
    no two neighbouring steps equal."""
    return float(f"{0.1 + 0.05 * math.exp(-step / 20) + 0.004 * (step % 3):.3g}")


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


# ------------------------------------------------------------------ dataset, as sd-scripts counts it
def _bucket_resos(res, lo, hi, step=64):
    area = res * res
    side = int(math.sqrt(area) // step) * step
    out = {(side, side)}
    w = lo
    while w <= hi:
        h = min(hi, int((area // w) // step) * step)
        if h >= lo:
            out.add((w, h))
            out.add((h, w))
        w += step
    return sorted(out)


def _png_size(path):
    with open(path, "rb") as fh:
        head = fh.read(24)
    return int.from_bytes(head[16:20], "big"), int.from_bytes(head[20:24], "big")


def _reg_repeats(n_reg, n_train):
    """Reg images are repeated (or cut) to as many samples as the character images."""
    reps = [0] * n_reg
    n = 0
    while n_reg and n < n_train:
        for i in range(n_reg):
            reps[i] += 1
            n += 1
            if n >= n_train:
                break
    return reps


def _block_batches(block):
    res = block.get("resolution", 512)
    bucket = block.get("enable_bucket", False)
    lo, hi = block.get("min_bucket_reso", 256), block.get("max_bucket_reso", 1024)
    ratios = [0.0]
    if bucket:
        assert res >= lo, "min_bucket_reso must be equal or less than resolution / min_bucket_resoは最小解像度より大きくできません"
        assert res <= hi, "max_bucket_reso must be equal or greater than resolution"
        ratios = [w / h for w, h in _bucket_resos(res, lo, hi)]
    train, reg = [], []
    for sub in block["subsets"]:
        if set(sub) - SUBSET_KEYS:
            raise ValueError(f"extra keys not allowed in subset: {sorted(set(sub) - SUBSET_KEYS)}")
        files = sorted(f for f in os.listdir(sub["image_dir"]) if f.endswith(".png"))
        sizes = [_png_size(os.path.join(sub["image_dir"], f)) for f in files]
        (reg if sub.get("is_reg") else train).extend((s, sub.get("num_repeats", 1)) for s in sizes)
    n_train = sum(n for _, n in train)
    reps = _reg_repeats(len(reg), n_train)
    counts = {}
    for wh, n in [*train, *[(size, r) for (size, _), r in zip(reg, reps)]]:
        if n:
            k = min(range(len(ratios)), key=lambda i, ar=wh[0] / wh[1]: abs(ratios[i] - ar)) if bucket else 0
            counts[k] = counts.get(k, 0) + n
    bs = block.get("batch_size", 1)
    return sum(-(-c // bs) for c in counts.values()), n_train, sum(1 for r in reps if r)


def read_dataset(path):
    """(batches per epoch, train images x repeats, reg images used) from the dataset TOML."""
    with open(path, "rb") as fh:
        cfg = tomllib.load(fh)
    if set(cfg) - {"general", "datasets"} or set(cfg.get("general", {})) - GENERAL_KEYS:
        raise ValueError(f"extra keys not allowed in dataset config: {sorted(set(cfg) - {'general', 'datasets'})}")
    total = [0, 0, 0]
    for block in cfg["datasets"]:
        if set(block) - DATASET_KEYS:
            raise ValueError(f"extra keys not allowed @ data['datasets']: {sorted(set(block) - DATASET_KEYS)}")
        for i, v in enumerate(_block_batches(block)):
            total[i] += v
    return tuple(total)


# ------------------------------------------------------------------ output
class Bar:
    """tqdm's render, written whole with a carriage return at its end (or start)."""

    def __init__(self, total, framing):
        self.total, self.n, self.postfix, self.framing = total, 0, "", framing
        self.t0 = time.time()
        self.render()

    def render(self):
        elapsed = time.time() - self.t0
        try:
            from tqdm import tqdm
            text = tqdm.format_meter(self.n, self.total, elapsed, prefix="steps", postfix=self.postfix or None,
                                     ncols=None)
        except ImportError:
            pct = int(100 * self.n / max(1, self.total))
            text = (f"steps: {pct:3d}%|{'█' * (pct // 10):10s}| {self.n}/{self.total} [00:00<00:00, 1.00it/s"
                    + (f", {self.postfix}" if self.postfix else "") + "]")
        sys.stderr.write(text + "\r" if self.framing == "end" else "\r" + text)
        sys.stderr.flush()

    def update(self):
        self.n += 1
        self.render()

    def set_postfix(self, **kw):
        self.postfix = ", ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in kw.items())
        self.render()

    def close(self):
        sys.stderr.write("\n")
        sys.stderr.flush()


def _cache_latents(n, framing):
    """sd-scripts caches latents first, under a bar of its own (not the training bar)."""
    print("caching latents.", flush=True)
    for i in range(n + 1):
        text = f"{100 * i // max(1, n):3d}%|{'█' * (10 * i // max(1, n)):10s}| {i}/{n} [00:00<00:00, 50.00it/s]"
        sys.stderr.write(text + "\r" if framing == "end" else "\r" + text)
        sys.stderr.flush()
    sys.stderr.write("\n")


def _write_lora(path):
    header = json.dumps({"__metadata__": {"ss_network_module": "networks.lora"}}).encode()
    header += b" " * (-len(header) % 8)
    with open(path, "wb") as fh:
        fh.write(len(header).to_bytes(8, "little") + header)


def _save(args, out, label, epoch, step):
    ckpt = os.path.join(out, f"{args.output_name}-{label}.safetensors")
    print(f"\nsaving checkpoint: {ckpt}", flush=True)
    _write_lora(ckpt)
    if args.save_state:
        sdir = os.path.join(out, f"{args.output_name}-{label}-state")
        os.makedirs(sdir, exist_ok=True)
        for name in ("optimizer.bin", "random_states_0.pkl"):
            with open(os.path.join(sdir, name), "wb") as fh:
                fh.write(os.urandom(64))
        with open(os.path.join(sdir, "train_state.json"), "w") as fh:
            json.dump({"current_epoch": epoch, "current_step": step}, fh)


def _check_refusals(args, control, script):
    if args.lr_scheduler == "constant" and args.lr_warmup_steps:
        raise ValueError("constant scheduler does not take warmup steps")
    if args.full_bf16:
        assert args.mixed_precision == "bf16", "full_bf16 requires mixed precision='bf16'"
    if args.persistent_data_loader_workers and args.max_data_loader_n_workers == 0:
        raise ValueError("persistent_workers option needs num_workers > 0")
    opt = args.optimizer_type or "AdamW"
    if opt in DADAPT and opt not in control.get("installed_optimizers", []):
        raise ImportError("No module named 'dadaptation'")
    if control.get("offline") and not args.tokenizer_cache_dir:
        raise OSError("We couldn't connect to 'https://huggingface.co' to load the tokenizer (offline)")
    if args.tokenizer_cache_dir:
        os.makedirs(args.tokenizer_cache_dir, exist_ok=True)
    print("loading models ...", flush=True)
    if opt.lower() == "adafactor" and args.lr_warmup_steps:
        raise ValueError(f"adafactor:{args.lr_scheduler} does not require num_warmup_steps / "
                         "Adafactorはnum_warmup_stepsを必要としません")


def _start(script, control):
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
    return args


def _step(args, control, bar, out, epoch, step):
    """One optimisation step as sd-scripts renders it (two renders) and saves it."""
    if control.get("fail_at_step") == step:
        print("Traceback (most recent call last):", file=sys.stderr, flush=True)
        print("torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB", file=sys.stderr, flush=True)
        sys.exit(1)
    if control.get("hang_at_step") == step:
        while True:
            time.sleep(0.1)
    time.sleep(float(control.get("step_delay", 0.005)))
    bar.update()                                   # rendered with the previous step's loss
    if args.save_every_n_steps and step % args.save_every_n_steps == 0:
        _save(args, out, f"step{step:08d}", epoch + 1, step)
    bar.set_postfix(avr_loss=fake_loss(step))     # rendered again with this step's loss
    if control.get("pause_after_step") == step:
        while True:
            time.sleep(0.1)


def main(script):
    control = {}
    cpath = os.path.join(HERE, "fake_control.json")
    if os.path.isfile(cpath):
        with open(cpath) as fh:
            control = json.load(fh)
    args = _start(script, control)
    per_epoch, n_train, n_reg = read_dataset(args.dataset_config)
    _check_refusals(args, control, script)
    total = per_epoch * args.max_train_epochs if args.max_train_epochs else args.max_train_steps
    epochs = math.ceil(total / per_epoch)
    out = args.output_dir
    os.makedirs(out, exist_ok=True)
    _cache_latents(n_train, control.get("framing", "end"))
    saved = 0
    if args.resume:
        with open(os.path.join(args.resume, "train_state.json")) as fh:
            saved = int(json.load(fh)["current_step"])
        print(f"resume training from local state: {args.resume}", flush=True)
        if saved > 0:
            assert total > saved, ("max_train_steps should be greater than initial step / max_train_stepsは初期ステップより"
                                   f"大きい必要があります: {total} vs {saved}")
    print(f"running training / 学習開始\n  num train images * repeats / 学習画像の数×繰り返し回数: {n_train}\n"
          f"  num reg images / 正則化画像の数: {n_reg}\n  num batches per epoch / 1epochのバッチ数: {per_epoch}\n"
          f"  num epochs / epoch数: {epochs}\n  total optimization steps / 学習ステップ数: {total}", flush=True)
    # without --skip_until_initial_step the state only moves the epoch: steps count from 0 to the full total
    skip = saved - (saved // per_epoch) * per_epoch if args.skip_until_initial_step else 0
    step = saved if args.skip_until_initial_step else 0
    bar = Bar(total - step, control.get("framing", "end"))
    for epoch in range(saved // per_epoch, epochs):
        print(f"\nepoch {epoch + 1}/{epochs}\n", flush=True)
        batches = per_epoch - skip
        skip = 0
        for _ in range(batches):
            step += 1
            _step(args, control, bar, out, epoch, step)
            if step >= total:
                break
        if args.save_every_n_epochs and (epoch + 1) % args.save_every_n_epochs == 0 and epoch + 1 < epochs:
            _save(args, out, f"{epoch + 1:06d}", epoch + 1, step)
        if step >= total:
            break
    bar.close()
    if not control.get("no_output_file"):
        ckpt = os.path.join(out, f"{args.output_name}.safetensors")
        print(f"\nsaving checkpoint: {ckpt}", flush=True)
        _write_lora(ckpt)
    print("model saved.", flush=True)


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
