"""Fake sd-scripts train_network.py (tests only): see _fake_trainer.py."""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _fake_trainer import main

if __name__ == "__main__":
    main("train_network.py")
