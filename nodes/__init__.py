"""V3 node adapters. Each module of this package lists its node classes in ``NODES``.

Modules are collected automatically; one that fails to import (a missing optional dependency,
say) is reported in the log and the rest of the pack still loads.
"""
import importlib
import logging
import pkgutil

from comfy_api.latest import ComfyExtension, io

log = logging.getLogger("continuity")


def collect_nodes() -> list[type[io.ComfyNode]]:
    found: list[type[io.ComfyNode]] = []
    for info in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
        if info.name.startswith("_"):
            continue
        try:
            module = importlib.import_module(f"{__name__}.{info.name}")
        except Exception:  # keep the other nodes usable, say loudly what failed
            log.exception("Continuity: could not load nodes/%s.py; its nodes are unavailable", info.name)
            continue
        for cls in getattr(module, "NODES", []):
            try:
                cls.define_schema().validate()
            except Exception:  # one broken node must not take the whole pack down
                log.exception("Continuity: node %s in nodes/%s.py has an invalid schema; skipped", cls.__name__, info.name)
                continue
            found.append(cls)
    return found


class ContinuityExtension(ComfyExtension):
    async def get_node_list(self) -> list[type[io.ComfyNode]]:
        return collect_nodes()
