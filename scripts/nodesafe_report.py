"""Run the nodesafe scanner (PyPI: a static scanner for ComfyUI custom nodes) over the pack, as a report.

CI prints the summary and keeps the full JSON; the run never fails on it. The scanner matches
literals (``compile(`` in ``re.compile(``, ``eval(`` in ``model.eval()``...), so the summary
separates what ComfyUI loads (``__init__.py``, ``continuity/``, ``nodes/``, ``install.py``) from tests,
scripts and benchmarks, and lists the process-start sites of the loaded code by name.

Usage: python scripts/nodesafe_report.py [--out FILE.json]
"""
from __future__ import annotations

import argparse
import collections
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
LOADED = ("__init__.py", "install.py", "continuity/", "nodes/")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=str(REPO / "test-artifacts" / "nodesafe.json"))
    args = ap.parse_args()
    exe = shutil.which("nodesafe") or os.path.join(os.path.dirname(sys.executable), "nodesafe")
    if not os.path.exists(exe):
        print("nodesafe report: nodesafe is not installed (pip install -r requirements-test.txt)")
        return 0
    # the scanner itself, with a fixed argument list (no shell); its exit code is its verdict, not ours
    proc = subprocess.run([exe, "scan", str(REPO), "--format", "json"], capture_output=True, text=True,
                          timeout=600, check=False)
    try:
        report = json.loads(proc.stdout)
    except ValueError:
        print(f"nodesafe report: no JSON from nodesafe (exit {proc.returncode}): {proc.stderr[-500:]}")
        return 0
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=1))
    findings = report.get("findings", [])
    loaded = [f for f in findings if str(f.get("file") or "").startswith(LOADED)]
    by = collections.Counter((f.get("severity"), f.get("category")) for f in loaded)
    print(f"nodesafe {report.get('scanner', {}).get('version', '?')}: verdict "
          f"{report.get('verdict', {}).get('label', report.get('recommendation'))}; {len(findings)} findings, "
          f"{len(loaded)} in the code ComfyUI loads (full report: {args.out})")
    for (sev, cat), n in sorted(by.items(), key=lambda kv: (str(kv[0][0]), -kv[1])):
        print(f"  {sev:8} {cat:40} {n}")
    for f in loaded:
        if f.get("severity") in ("high", "critical") and "subprocess" in (f.get("title") or ""):
            print(f"  process start: {f.get('file')}:{f.get('line')}: {str(f.get('snippet', '')).strip()[:100]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
