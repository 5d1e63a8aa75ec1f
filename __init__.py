"""Continuity: keep a film's characters looking like themselves from shot to shot.

ComfyUI loads this package from ``custom_nodes/``. The nodes are V3 (``comfy_api``) adapters in
``nodes/`` over the ComfyUI-free core in ``continuity/``. Only the V3 entry point is exported:
exporting ``NODE_CLASS_MAPPINGS`` as well would make ComfyUI ignore it.
"""

WEB_DIRECTORY = "./web"


async def comfy_entrypoint():
    from .nodes import ContinuityExtension

    return ContinuityExtension()


__all__ = ["WEB_DIRECTORY", "comfy_entrypoint"]
