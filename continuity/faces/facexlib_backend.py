"""Pro backends from facexlib: BiSeNet face parsing (19 CelebAMask-HQ classes) and RetinaFace detection.

* BiSeNet: the network is reproduced here class for class (same module names as
  ``facexlib/parsing/bisenet.py`` and ``resnet.py``, MIT licence, Copyright (c) 2020 Xintao Wang),
  so facexlib's ``parsing_bisenet.pth`` loads with ``strict=True`` without installing facexlib.
* RetinaFace (ResNet-50): likewise reproduced (``facexlib/detection/retinaface*.py``), so
  ``detection_Resnet50_Final.pth`` loads without facexlib (and its numba / filterpy dependencies).

Weights go in ComfyUI's ``models/facexlib`` (registered by the node layer) and are downloaded on
first use when online. The parsing weights were trained on CelebAMask-HQ: non-commercial use only.
"""
from __future__ import annotations

import threading
from typing import Any

import numpy as np

from .base import Face, as_uint8_rgb
from .dlib_backend import LANDMARKS5_ORDER
from .weights import ensure_file
from .boxes import nms

BISENET_FILE = "parsing_bisenet.pth"
BISENET_URL = "https://github.com/xinntao/facexlib/releases/download/v0.2.0/parsing_bisenet.pth"
RETINAFACE_FILE = "detection_Resnet50_Final.pth"
RETINAFACE_URL = "https://github.com/xinntao/facexlib/releases/download/v0.1.0/detection_Resnet50_Final.pth"
LICENCE = "facexlib code MIT; the parsing model is trained on CelebAMask-HQ (non-commercial research use only)"

# CelebAMask-HQ classes as facexlib's BiSeNet numbers them, and our region names.
CLASSES = ("background", "skin", "l_brow", "r_brow", "l_eye", "r_eye", "glasses", "l_ear", "r_ear", "earring",
           "nose", "mouth", "u_lip", "l_lip", "neck", "necklace", "cloth", "hair", "hat")
REGION_CLASSES = {"skin": (1,), "brows": (2, 3), "eyes": (4, 5), "glasses": (6,), "ears": (7, 8, 9), "nose": (10,),
                  "mouth": (11, 12, 13), "neck": (14,), "hair": (17,), "hat": (18,)}

_lock = threading.RLock()
_models: dict[tuple, object] = {}


def _torch():
    import torch
    return torch


def _resnet18_class(nn: Any, F: Any):
    """facexlib's ResNet-18 backbone (the BiSeNet context path's), as a class of ``nn``."""

    def conv3x3(i, o, stride=1):
        return nn.Conv2d(i, o, kernel_size=3, stride=stride, padding=1, bias=False)

    class BasicBlock(nn.Module):
        def __init__(self, in_chan, out_chan, stride=1):
            super().__init__()
            self.conv1 = conv3x3(in_chan, out_chan, stride)
            self.bn1 = nn.BatchNorm2d(out_chan)
            self.conv2 = conv3x3(out_chan, out_chan)
            self.bn2 = nn.BatchNorm2d(out_chan)
            self.relu = nn.ReLU(inplace=True)
            self.downsample = None
            if in_chan != out_chan or stride != 1:
                self.downsample = nn.Sequential(nn.Conv2d(in_chan, out_chan, kernel_size=1, stride=stride, bias=False),
                                                nn.BatchNorm2d(out_chan))

        def forward(self, x):
            r = F.relu(self.bn1(self.conv1(x)))
            r = self.bn2(self.conv2(r))
            s = x if self.downsample is None else self.downsample(x)
            return self.relu(s + r)

    def layer(i, o, n, stride=1):
        return nn.Sequential(BasicBlock(i, o, stride), *[BasicBlock(o, o, 1) for _ in range(n - 1)])

    class ResNet18(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv1 = nn.Conv2d(3, 64, kernel_size=7, stride=2, padding=3, bias=False)
            self.bn1 = nn.BatchNorm2d(64)
            self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
            self.layer1 = layer(64, 64, 2)
            self.layer2 = layer(64, 128, 2, 2)
            self.layer3 = layer(128, 256, 2, 2)
            self.layer4 = layer(256, 512, 2, 2)

        def forward(self, x):
            x = self.maxpool(F.relu(self.bn1(self.conv1(x))))
            f8 = self.layer2(self.layer1(x))
            f16 = self.layer3(f8)
            return f8, f16, self.layer4(f16)

    return ResNet18


def _bisenet_blocks(torch: Any, nn: Any, F: Any):
    """facexlib's BiSeNet building blocks: (ConvBNReLU, BiSeNetOutput, AttentionRefinementModule,
    FeatureFusionModule)."""
    class ConvBNReLU(nn.Module):
        def __init__(self, i, o, ks=3, stride=1, padding=1):
            super().__init__()
            self.conv = nn.Conv2d(i, o, kernel_size=ks, stride=stride, padding=padding, bias=False)
            self.bn = nn.BatchNorm2d(o)

        def forward(self, x):
            return F.relu(self.bn(self.conv(x)))

    class BiSeNetOutput(nn.Module):
        def __init__(self, i, mid, n):
            super().__init__()
            self.conv = ConvBNReLU(i, mid)
            self.conv_out = nn.Conv2d(mid, n, kernel_size=1, bias=False)

        def forward(self, x):
            feat = self.conv(x)
            return self.conv_out(feat), feat

    class AttentionRefinementModule(nn.Module):
        def __init__(self, i, o):
            super().__init__()
            self.conv = ConvBNReLU(i, o)
            self.conv_atten = nn.Conv2d(o, o, kernel_size=1, bias=False)
            self.bn_atten = nn.BatchNorm2d(o)
            self.sigmoid_atten = nn.Sigmoid()

        def forward(self, x):
            feat = self.conv(x)
            a = self.sigmoid_atten(self.bn_atten(self.conv_atten(F.avg_pool2d(feat, feat.size()[2:]))))
            return feat * a

    class FeatureFusionModule(nn.Module):
        def __init__(self, i, o):
            super().__init__()
            self.convblk = ConvBNReLU(i, o, ks=1, padding=0)
            self.conv1 = nn.Conv2d(o, o // 4, kernel_size=1, bias=False)
            self.conv2 = nn.Conv2d(o // 4, o, kernel_size=1, bias=False)
            self.relu = nn.ReLU(inplace=True)
            self.sigmoid = nn.Sigmoid()

        def forward(self, fsp, fcp):
            feat = self.convblk(torch.cat([fsp, fcp], dim=1))
            a = self.sigmoid(self.conv2(self.relu(self.conv1(F.avg_pool2d(feat, feat.size()[2:])))))
            return feat * a + feat

    return ConvBNReLU, BiSeNetOutput, AttentionRefinementModule, FeatureFusionModule


def build_bisenet(num_class: int = 19):
    """facexlib's BiSeNet, same structure and parameter names."""
    torch = _torch()
    nn: Any = torch.nn  # imported on first use: the classes are built at run time
    F = torch.nn.functional
    ResNet18 = _resnet18_class(nn, F)
    ConvBNReLU, BiSeNetOutput, AttentionRefinementModule, FeatureFusionModule = _bisenet_blocks(torch, nn, F)

    class ContextPath(nn.Module):
        def __init__(self):
            super().__init__()
            self.resnet = ResNet18()
            self.arm16 = AttentionRefinementModule(256, 128)
            self.arm32 = AttentionRefinementModule(512, 128)
            self.conv_head32 = ConvBNReLU(128, 128)
            self.conv_head16 = ConvBNReLU(128, 128)
            self.conv_avg = ConvBNReLU(512, 128, ks=1, padding=0)

        def forward(self, x):
            f8, f16, f32 = self.resnet(x)
            avg = self.conv_avg(F.avg_pool2d(f32, f32.size()[2:]))
            avg_up = F.interpolate(avg, f32.size()[2:], mode="nearest")
            f32_up = self.conv_head32(F.interpolate(self.arm32(f32) + avg_up, f16.size()[2:], mode="nearest"))
            f16_up = self.conv_head16(F.interpolate(self.arm16(f16) + f32_up, f8.size()[2:], mode="nearest"))
            return f8, f16_up, f32_up

    class BiSeNet(nn.Module):
        def __init__(self, num_class):
            super().__init__()
            self.cp = ContextPath()
            self.ffm = FeatureFusionModule(256, 256)
            self.conv_out = BiSeNetOutput(256, 256, num_class)
            self.conv_out16 = BiSeNetOutput(128, 64, num_class)
            self.conv_out32 = BiSeNetOutput(128, 64, num_class)

        def forward(self, x):
            h, w = x.size()[2:]
            f8, cp8, cp16 = self.cp(x)
            out, _ = self.conv_out(self.ffm(f8, cp8))
            return (F.interpolate(out, (h, w), mode="bilinear", align_corners=True),)

    return BiSeNet(num_class)


def _load_network(name: str, build, filename: str, url: str, licence: str, models_dir: str | None, device: str,
                  input: str = "backend"):
    """``build()`` with the weights file loaded strictly (fetched into ``models_dir`` when missing and
    online), in eval mode on ``device``; one per (network, folder, device) per process."""
    key = (name, models_dir, device)
    with _lock:
        if key not in _models:
            torch = _torch()
            path = ensure_file(models_dir, filename, url, licence=licence, input=input)
            net = build()
            state = torch.load(path, map_location="cpu", weights_only=True)
            # checkpoints saved from DataParallel prefix every name with "module."
            state = {k[7:] if k.startswith("module.") else k: v for k, v in state.items()}
            net.load_state_dict(state, strict=True)
            _models[key] = net.eval().to(device)
        return _models[key]


def load_bisenet(models_dir: str | None, device: str = "cpu"):
    """facexlib's BiSeNet with its weights (cached per process)."""
    return _load_network("bisenet", lambda: build_bisenet(19), BISENET_FILE, BISENET_URL, LICENCE, models_dir,
                         device, input="parser")


class BiSeNetParser:
    """Region masks from BiSeNet on a 512x512 crop around each face (all 11 regions; a beard is
    labelled skin by CelebAMask-HQ, so "beard" is the skin below the mouth outside the jaw line)."""

    name = "bisenet"
    regions = ("skin", "brows", "eyes", "nose", "mouth", "ears", "hair", "beard", "neck", "glasses", "hat")
    use_mediapipe = False

    def __init__(self, device: str = "cpu", models_dir: str | None = None, net=None, size: int = 512,
                 margin: float = 0.8):
        self.device = device
        self.models_dir = models_dir
        self._net = net
        self.size = size
        self.margin = margin

    @property
    def net(self):
        if self._net is None:
            self._net = load_bisenet(self.models_dir, self.device)
        return self._net

    def labels(self, rgb: np.ndarray, face: Face) -> tuple[np.ndarray, tuple[int, int, int, int]]:
        """Class map (crop size) and the crop box (x0, y0, x1, y1) in the image."""
        import cv2
        torch = _torch()
        h, w = rgb.shape[:2]
        cx, cy = face.center
        side = max(face.width, face.height) * (1 + 2 * self.margin)
        x0, y0 = int(round(cx - side / 2)), int(round(cy - side / 2 - 0.1 * side))
        x1, y1 = x0 + int(round(side)), y0 + int(round(side))
        pad = ((max(0, -y0), max(0, y1 - h)), (max(0, -x0), max(0, x1 - w)), (0, 0))
        crop = np.pad(rgb[max(0, y0):min(h, y1), max(0, x0):min(w, x1)], pad, mode="constant")
        inp = cv2.resize(crop, (self.size, self.size), interpolation=cv2.INTER_AREA if crop.shape[0] > self.size
                         else cv2.INTER_LINEAR).astype(np.float32) / 255.0
        inp = (inp - (0.485, 0.456, 0.406)) / (0.229, 0.224, 0.225)
        x = torch.from_numpy(inp.transpose(2, 0, 1).astype(np.float32))[None].to(self.device)
        with torch.inference_mode():
            out = self.net(x)[0]
        lab = out[0].argmax(0).to(torch.uint8).cpu().numpy()
        lab = cv2.resize(lab, (crop.shape[1], crop.shape[0]), interpolation=cv2.INTER_NEAREST)
        return lab, (x0, y0, x1, y1)

    def parse(self, rgb: np.ndarray, face: Face, faces=None, person=None, want=None) -> dict[str, np.ndarray]:
        rgb = as_uint8_rgb(rgb)
        h, w = rgb.shape[:2]
        lab, (x0, y0, x1, y1) = self.labels(rgb, face)
        full = np.zeros((h, w), np.uint8)
        sy0, sx0 = max(0, -y0), max(0, -x0)
        view = lab[sy0:sy0 + min(h, y1) - max(0, y0), sx0:sx0 + min(w, x1) - max(0, x0)]
        full[max(0, y0):min(h, y1), max(0, x0):min(w, x1)] = view + 1     # 0 = outside the crop
        out = {}
        want = set(self.regions if want is None else want)
        for region, classes in REGION_CLASSES.items():
            if region in want:
                out[region] = np.isin(full, [c + 1 for c in classes]).astype(np.uint8)
        if "beard" in want:
            # CelebAMask-HQ labels a beard as skin: take the skin below the mouth corners' level
            skin = np.isin(full, [2]).astype(np.uint8)
            if face.landmarks5 is not None:
                mouth_y = float(np.max(np.asarray(face.landmarks5)[3:, 1]))
                skin[: max(0, int(mouth_y))] = 0
            else:
                skin[:] = 0
            out["beard"] = skin
        return out


def build_retinaface():
    """facexlib's RetinaFace (ResNet-50 backbone), same structure and parameter names as
    ``facexlib/detection/retinaface.py`` / ``retinaface_net.py``, so ``detection_Resnet50_Final.pth``
    loads with ``strict=True``. Returns a module whose forward gives (loc, softmax conf, landmarks)."""
    torch = _torch()
    nn: Any = torch.nn
    F = torch.nn.functional
    import torchvision
    from torchvision.models._utils import IntermediateLayerGetter

    def conv_bn(i, o, stride=1, leaky=0.0):
        return nn.Sequential(nn.Conv2d(i, o, 3, stride, 1, bias=False), nn.BatchNorm2d(o),
                             nn.LeakyReLU(negative_slope=leaky, inplace=True))

    def conv_bn_no_relu(i, o, stride):
        return nn.Sequential(nn.Conv2d(i, o, 3, stride, 1, bias=False), nn.BatchNorm2d(o))

    def conv_bn1x1(i, o, stride, leaky=0.0):
        return nn.Sequential(nn.Conv2d(i, o, 1, stride, padding=0, bias=False), nn.BatchNorm2d(o),
                             nn.LeakyReLU(negative_slope=leaky, inplace=True))

    class SSH(nn.Module):
        def __init__(self, i, o):
            super().__init__()
            leaky = 0.1 if o <= 64 else 0.0
            self.conv3X3 = conv_bn_no_relu(i, o // 2, 1)
            self.conv5X5_1 = conv_bn(i, o // 4, 1, leaky)
            self.conv5X5_2 = conv_bn_no_relu(o // 4, o // 4, 1)
            self.conv7X7_2 = conv_bn(o // 4, o // 4, 1, leaky)
            self.conv7x7_3 = conv_bn_no_relu(o // 4, o // 4, 1)

        def forward(self, x):
            c5_1 = self.conv5X5_1(x)
            return F.relu(torch.cat([self.conv3X3(x), self.conv5X5_2(c5_1),
                                     self.conv7x7_3(self.conv7X7_2(c5_1))], dim=1))

    class FPN(nn.Module):
        def __init__(self, ins, o):
            super().__init__()
            leaky = 0.1 if o <= 64 else 0.0
            self.output1 = conv_bn1x1(ins[0], o, 1, leaky)
            self.output2 = conv_bn1x1(ins[1], o, 1, leaky)
            self.output3 = conv_bn1x1(ins[2], o, 1, leaky)
            self.merge1 = conv_bn(o, o, leaky=leaky)
            self.merge2 = conv_bn(o, o, leaky=leaky)

        def forward(self, x):
            o1, o2, o3 = self.output1(x[0]), self.output2(x[1]), self.output3(x[2])
            o2 = self.merge2(o2 + F.interpolate(o3, size=o2.shape[2:], mode="nearest"))
            o1 = self.merge1(o1 + F.interpolate(o2, size=o1.shape[2:], mode="nearest"))
            return [o1, o2, o3]

    class Head(nn.Module):
        def __init__(self, i, n, k):
            super().__init__()
            self.k = k
            self.conv1x1 = nn.Conv2d(i, n * k, kernel_size=(1, 1), stride=1, padding=0)

        def forward(self, x):
            out = self.conv1x1(x).permute(0, 2, 3, 1).contiguous()
            return out.view(out.shape[0], -1, self.k)

    class RetinaFace(nn.Module):
        def __init__(self):
            super().__init__()
            backbone = torchvision.models.resnet50(weights=None)
            self.body = IntermediateLayerGetter(backbone, {"layer2": 1, "layer3": 2, "layer4": 3})
            self.fpn = FPN([512, 1024, 2048], 256)
            self.ssh1, self.ssh2, self.ssh3 = SSH(256, 256), SSH(256, 256), SSH(256, 256)
            self.ClassHead = nn.ModuleList([Head(256, 2, 2) for _ in range(3)])
            self.BboxHead = nn.ModuleList([Head(256, 2, 4) for _ in range(3)])
            self.LandmarkHead = nn.ModuleList([Head(256, 2, 10) for _ in range(3)])

        def forward(self, x):
            fpn = self.fpn(list(self.body(x).values()))
            feats = [self.ssh1(fpn[0]), self.ssh2(fpn[1]), self.ssh3(fpn[2])]
            loc = torch.cat([self.BboxHead[i](f) for i, f in enumerate(feats)], dim=1)
            conf = torch.cat([self.ClassHead[i](f) for i, f in enumerate(feats)], dim=1)
            ldm = torch.cat([self.LandmarkHead[i](f) for i, f in enumerate(feats)], dim=1)
            return loc, F.softmax(conf, dim=-1), ldm

    return RetinaFace()


def retinaface_priors(height: int, width: int) -> np.ndarray:
    """facexlib's PriorBox for RetinaFace: (N, 4) cx, cy, w, h relative to the image."""
    out = []
    for step, sizes in ((8, (16, 32)), (16, (64, 128)), (32, (256, 512))):
        fh, fw = -(-height // step), -(-width // step)
        cy, cx = np.meshgrid((np.arange(fh) + 0.5) * step / height, (np.arange(fw) + 0.5) * step / width,
                             indexing="ij")
        grid = []
        for s in sizes:
            grid.append(np.stack([cx, cy, np.full_like(cx, s / width), np.full_like(cy, s / height)], -1))
        out.append(np.stack(grid, 2).reshape(-1, 4))        # (i, j, size) order, as facexlib
    return np.concatenate(out).astype(np.float32)


def load_retinaface(models_dir: str | None, device: str = "cpu"):
    """facexlib's RetinaFace (ResNet-50) with its weights (cached per process)."""
    return _load_network("retinaface", build_retinaface, RETINAFACE_FILE, RETINAFACE_URL, "MIT (facexlib)",
                         models_dir, device)


class RetinaFaceDetector:
    """facexlib's RetinaFace (ResNet-50) with its own pre- and post-processing (BGR minus
    (104, 117, 123), priors, variances 0.1 / 0.2, score 0.8, NMS 0.4); large images are detected on a
    copy whose longest side is ``max_side``."""

    name = "retinaface"

    def __init__(self, device: str = "cpu", models_dir: str | None = None, conf_threshold: float = 0.8,
                 nms: float = 0.4, max_side: int = 1280, net=None):
        self.device = device
        self.conf_threshold = conf_threshold
        self.nms = nms
        self.max_side = max_side
        self.net = net if net is not None else load_retinaface(models_dir, device)

    def detect(self, rgb: np.ndarray) -> list[Face]:
        import cv2
        torch = _torch()
        rgb = as_uint8_rgb(rgb)
        h, w = rgb.shape[:2]
        s = min(1.0, self.max_side / max(h, w))
        work = cv2.resize(rgb, (round(w * s), round(h * s)), interpolation=cv2.INTER_AREA) if s < 1 else rgb
        wh, ww = work.shape[:2]
        x = work[..., ::-1].astype(np.float32) - np.array([104.0, 117.0, 123.0], np.float32)
        x = torch.from_numpy(np.ascontiguousarray(x.transpose(2, 0, 1)))[None].to(self.device)
        with torch.inference_mode():
            loc, conf, ldm = (t[0].float().cpu() for t in self.net(x))
        pri = torch.from_numpy(retinaface_priors(wh, ww))
        v0, v1 = 0.1, 0.2
        centre = pri[:, :2] + loc[:, :2] * v0 * pri[:, 2:]
        size = pri[:, 2:] * torch.exp(loc[:, 2:] * v1)
        boxes = torch.cat([centre - size / 2, centre + size / 2], 1) * torch.tensor([ww, wh, ww, wh]) / s
        lms = (pri[:, None, :2] + ldm.view(-1, 5, 2) * v0 * pri[:, None, 2:]) * torch.tensor([ww, wh]) / s
        scores = conf[:, 1]
        keep = torch.nonzero(scores > self.conf_threshold).flatten()
        boxes, lms, scores = boxes[keep], lms[keep], scores[keep]
        faces = []
        for i in nms(boxes.numpy(), scores.numpy(), self.nms):
            x0, y0, x1, y1 = (float(v) for v in boxes[i])
            faces.append(Face(box=(x0, y0, x1, y1), score=float(scores[i]), landmarks5=lms[i].numpy().astype(np.float32),
                              backend="retinaface", extra={"landmarks5_order": LANDMARKS5_ORDER}))
        faces.sort(key=lambda f: f.area, reverse=True)
        return faces
