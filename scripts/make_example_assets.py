#!/usr/bin/env python3
"""Make the example inputs the shipped workflows use, from the photos in assets/faces.

- assets/examples/character_sheet.jpg: a composite sheet of six portraits of one person (2x3,
  white gutters), the input of the dataset-preparation workflow.
- assets/examples/shot.jpg: a wide shot whose face is small, the input of the face-fix workflows.
- assets/examples/clip.mp4: a short clip that pans and zooms over portraits of one person, the
  input of the video identity and motion workflow.
- assets/examples/two_people.jpg: two people side by side (img1's and img16's), the input of the
  cast face-fix workflow; the references of the two characters are other photos of them.
- assets/examples/two_shot.mp4: a short shot of the same two people moving toward each other, then a
  hard cut to a closer framing: the input of the video shot workflows.

Deterministic; run it again only to change these files.
"""
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

REPO = Path(__file__).resolve().parents[1]
FACES = REPO / "assets" / "faces"
OUT = REPO / "assets" / "examples"


def sheet():
    names = ["img1.jpg", "img2.jpg", "img4.jpg", "img5.jpg", "img6.jpg", "img7.jpg"]
    cell, gutter = 400, 24
    w = 3 * cell + 4 * gutter
    h = 2 * cell + 3 * gutter
    canvas = Image.new("RGB", (w, h), (250, 250, 248))
    for i, name in enumerate(names):
        im = ImageOps.fit(Image.open(FACES / name).convert("RGB"), (cell, cell), Image.LANCZOS, centering=(0.5, 0.4))
        r, c = divmod(i, 3)
        canvas.paste(im, (gutter + c * (cell + gutter), gutter + r * (cell + gutter)))
    canvas.save(OUT / "character_sheet.jpg", quality=90)


def shot():
    im = Image.open(FACES / "img13.jpg").convert("RGB")   # 2048x1364, the face is a small part
    im.thumbnail((1280, 1280), Image.LANCZOS)
    im.save(OUT / "shot.jpg", quality=90)


def clip():
    import av
    frames = []
    for name in ["img1.jpg", "img2.jpg"]:
        im = Image.open(FACES / name).convert("RGB")
        base = ImageOps.fit(im, (512, 512), Image.LANCZOS, centering=(0.5, 0.4))
        for t in range(12):
            s = 1.0 - 0.02 * t
            side = int(512 * s)
            x0 = int((512 - side) * (0.5 + 0.4 * np.sin(t / 4)))
            y0 = (512 - side) // 2
            frames.append(base.crop((x0, y0, x0 + side, y0 + side)).resize((256, 256), Image.LANCZOS))
    with av.open(str(OUT / "clip.mp4"), "w") as container:
        stream = container.add_stream("libx264", rate=12)
        stream.width, stream.height, stream.pix_fmt = 256, 256, "yuv420p"
        stream.options = {"crf": "23"}
        for f in frames:
            for packet in stream.encode(av.VideoFrame.from_image(f)):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)

def _head(name: str, side: int) -> Image.Image:
    return ImageOps.fit(Image.open(FACES / name).convert("RGB"), (side, side), Image.LANCZOS, centering=(0.5, 0.35))


def two_people():
    canvas = Image.new("RGB", (640, 360), (70, 80, 95))
    canvas.paste(_head("img1.jpg", 300), (20, 40))
    canvas.paste(_head("img16.jpg", 300), (320, 50))
    canvas.save(OUT / "two_people.jpg", quality=90)


def two_shot():
    import av
    a, d = _head("img1.jpg", 200), _head("img16.jpg", 200)
    yy, xx = np.mgrid[0:216, 0:384]
    frames = []
    for t in range(16):
        tint = (70, 80, 95) if t < 10 else (95, 80, 60)
        bg = np.clip(np.array(tint, np.float32) + 18 * np.sin(xx / 29.0 + yy / 41.0)[..., None], 0, 255)
        im = Image.fromarray(bg.astype(np.uint8))
        if t < 10:       # a wide two-shot: they move toward each other
            s = 96
            im.paste(a.resize((s, s), Image.LANCZOS), (40 + 6 * t, 60))
            im.paste(d.resize((s, s), Image.LANCZOS), (250 - 6 * t, 56))
        else:            # the cut: closer, and the second person drifts out to the right
            s = 128
            im.paste(a.resize((s, s), Image.LANCZOS), (40, 40))
            im.paste(d.resize((s, s), Image.LANCZOS), (220 + 8 * (t - 10), 44))
        frames.append(im)
    with av.open(str(OUT / "two_shot.mp4"), "w") as container:
        stream = container.add_stream("libx264", rate=12)
        stream.width, stream.height, stream.pix_fmt = 384, 216, "yuv420p"
        stream.options = {"crf": "20"}
        for f in frames:
            for packet in stream.encode(av.VideoFrame.from_image(f)):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


if __name__ == "__main__":
    OUT.mkdir(parents=True, exist_ok=True)
    sheet()
    shot()
    clip()
    two_people()
    two_shot()
    for p in sorted(OUT.iterdir()):
        print(p.relative_to(REPO), p.stat().st_size // 1024, "KB")
