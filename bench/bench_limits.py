"""Memory of the bounded outputs (not a test): the Dataset Audit contact sheet for many images.

    .testenv/venv/bin/python bench/bench_limits.py [--count 10000] [--side 64]

The sheet is built in uint8 and shows at most continuity.limits.MAX_CONTACT_THUMBS images (those
with issues first), so its size and the memory it takes do not grow with the number of images.
"""
import argparse
import os
import resource
import sys
import time

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.append(REPO)

from continuity import limits
from continuity.dataset import audit


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--count", type=int, default=10000)
    ap.add_argument("--side", type=int, default=64)
    args = ap.parse_args()
    n = args.count
    images = [np.full((args.side, args.side, 3), i % 255, np.uint8) for i in range(n)]
    rows = [audit.ImageAudit(name=f"i{i}", width=args.side, height=args.side, square=True, resolution_ok=False,
                             faces=0, issues=["no face"] if i % 3 == 0 else []) for i in range(n)]
    result = audit.AuditResult(images=rows, coverage={}, summary={}, missing=[])
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t0 = time.perf_counter()
    sheet = audit.contact_sheet(images, result)
    seconds = time.perf_counter() - t0
    grew = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
    print(f"contact sheet of {n} images of {args.side} px (at most {limits.MAX_CONTACT_THUMBS} shown): "
          f"{sheet.shape[1]}x{sheet.shape[0]} {sheet.dtype}, {sheet.nbytes / 1e6:.0f} MB; peak RSS grew "
          f"{grew:.0f} MB; {seconds:.2f} s")


if __name__ == "__main__":
    main()
