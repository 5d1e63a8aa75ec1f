#!/usr/bin/env python3
"""Queue a Continuity API workflow on a ComfyUI server; see continuity/runner.py for the options."""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from continuity.runner import main

if __name__ == "__main__":
    sys.exit(main())
