"""Embeddings cached by image content: an image is detected and embedded once per model."""
from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict

import numpy as np


def content_hash(arr: np.ndarray | None) -> str:
    """A short hash of an array's dtype, shape and bytes (``'-'`` for None)."""
    if arr is None:
        return "-"
    a = np.ascontiguousarray(arr)
    h = hashlib.blake2b(digest_size=16)
    h.update(str(a.dtype).encode())
    h.update(str(a.shape).encode())
    h.update(memoryview(a.data).cast("B"))
    return h.hexdigest()


class EmbeddingCache:
    """A bounded, thread-safe LRU map from (content hash, model, policy, ...) to a result."""

    def __init__(self, max_items: int = 4096):
        self.max_items = max_items
        self._d: OrderedDict = OrderedDict()
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    def get(self, key):
        with self._lock:
            if key in self._d:
                self._d.move_to_end(key)
                self.hits += 1
                return self._d[key]
            self.misses += 1
            return None

    def put(self, key, value) -> None:
        with self._lock:
            self._d[key] = value
            self._d.move_to_end(key)
            while len(self._d) > self.max_items:
                self._d.popitem(last=False)

    def clear(self) -> None:
        with self._lock:
            self._d.clear()
            self.hits = self.misses = 0

    def __len__(self) -> int:
        return len(self._d)
