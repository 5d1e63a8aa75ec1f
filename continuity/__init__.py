"""Continuity's core: the logic of the pack, free of ComfyUI.

Modules here take and return plain numpy arrays, torch tensors, paths and dataclasses; the node
adapters in ``nodes/`` translate ComfyUI's types and folders into these calls. Everything here is
importable and testable without ComfyUI.
"""
__version__ = "0.1.0"
