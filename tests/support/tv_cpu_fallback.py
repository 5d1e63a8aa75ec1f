"""CPU fallback for torchvision 0.28.0's compiled ops, for the test environment only.

torchvision 0.28.0 on PyPI is a CUDA build: on CPU torch its ``_C`` library does not load and its
import fails with ``operator torchvision::nms does not exist``. ComfyUI imports torchvision at
start-up and only uses its transforms, so it is enough to define ``torchvision::nms`` (with a CPU
kernel) when, and only when, the compiled library cannot be loaded.

Installed as a ``.pth`` hook: it adds a meta-path finder that acts on the first import of
torchvision, so no other Python process pays for importing torch.
"""
import importlib.abc
import importlib.util
import os
import sys


def _define_nms_if_missing():
    import torch

    spec = importlib.util.find_spec("torchvision")
    if spec is None or not spec.submodule_search_locations:
        return
    lib_dir = list(spec.submodule_search_locations)[0]
    libs = [f for f in os.listdir(lib_dir) if f.startswith("_C") and f.endswith((".so", ".pyd"))]
    try:
        if not libs:
            raise OSError("no compiled library")
        torch.ops.load_library(os.path.join(lib_dir, libs[0]))
        return  # the real ops are there
    except (OSError, RuntimeError):
        pass
    try:
        torch.ops.torchvision.nms  # noqa: B018  (already defined by someone else)
        return
    except (AttributeError, RuntimeError):
        pass

    lib = torch.library.Library("torchvision", "DEF")
    lib.define("nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
    # torchvision registers fake (meta) kernels for these two at import: both must exist.
    lib.define("qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")

    def nms_cpu(dets, scores, iou_threshold):
        order = torch.argsort(scores, descending=True)
        x1, y1, x2, y2 = dets.unbind(1)
        areas = (x2 - x1).clamp(min=0) * (y2 - y1).clamp(min=0)
        keep = []
        suppressed = torch.zeros(len(order), dtype=torch.bool)
        for idx_pos in range(len(order)):
            if suppressed[idx_pos]:
                continue
            i = order[idx_pos]
            keep.append(i)
            rest = order[idx_pos + 1:]
            xx1 = torch.maximum(x1[i], x1[rest])
            yy1 = torch.maximum(y1[i], y1[rest])
            xx2 = torch.minimum(x2[i], x2[rest])
            yy2 = torch.minimum(y2[i], y2[rest])
            inter = (xx2 - xx1).clamp(min=0) * (yy2 - yy1).clamp(min=0)
            iou = inter / (areas[i] + areas[rest] - inter)
            suppressed[idx_pos + 1:] |= iou > iou_threshold
        return torch.stack(keep) if keep else torch.empty(0, dtype=torch.long)

    lib.impl("nms", nms_cpu, "CPU")
    # keep the library object alive for the life of the process
    sys.modules[__name__]._lib = lib


class _Finder(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name != "torchvision":
            return None
        sys.meta_path.remove(self)
        try:
            _define_nms_if_missing()
        except Exception as exc:  # never break the import itself
            print(f"[tv_cpu_fallback] could not define torchvision::nms: {exc}", file=sys.stderr)
        return None


if not any(isinstance(f, _Finder) for f in sys.meta_path):
    sys.meta_path.insert(0, _Finder())
