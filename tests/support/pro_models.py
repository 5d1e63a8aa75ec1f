"""Random-weight stand-ins for the pro face backends' model files, shared by the core and node tests."""
from __future__ import annotations

import os

import numpy as np
import pytest


def scrfd_graph(path, kps=True, score_bias=(-20.0, -20.0, 5.0), d=0.25, seed=0):
    """An ONNX graph shaped like SCRFD (9 outputs; strides 8/16/32; 2 anchors): Conv + Transpose +
    Reshape per head. Zero weights and these biases: only stride 32 scores high, each box is its
    anchor centre +- d * stride, key points at the centre + (i, -i) * 0.1 * stride."""
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper, numpy_helper
    nodes, inits, outputs = [], [], []
    heads = [("score", 1), ("bbox", 4)] + ([("kps", 10)] if kps else [])
    for name, k in heads:
        for si, s in enumerate((8, 16, 32)):
            out = f"{name}_{s}"
            W = np.zeros((2 * k, 3, s, s), np.float32)
            if name == "score":
                B = np.full(2 * k, score_bias[si], np.float32)
            elif name == "bbox":
                B = np.full(2 * k, d, np.float32)
            else:
                B = np.tile(np.array([[0.1 * i, -0.1 * i] for i in range(5)], np.float32).reshape(-1), 2)
            inits += [numpy_helper.from_array(W, f"W_{out}"), numpy_helper.from_array(B, f"B_{out}"),
                      numpy_helper.from_array(np.array([-1, k], np.int64), f"S_{out}")]
            nodes += [helper.make_node("Conv", ["input.1", f"W_{out}", f"B_{out}"], [f"c_{out}"], strides=[s, s]),
                      helper.make_node("Transpose", [f"c_{out}"], [f"t_{out}"], perm=[0, 2, 3, 1]),
                      helper.make_node("Reshape", [f"t_{out}", f"S_{out}"], [f"r_{out}"])]
            if name == "score":
                nodes.append(helper.make_node("Sigmoid", [f"r_{out}"], [out]))
            else:
                nodes.append(helper.make_node("Identity", [f"r_{out}"], [out]))
            outputs.append(helper.make_tensor_value_info(out, TensorProto.FLOAT, None))
    g = helper.make_graph(nodes, "scrfd_like", [helper.make_tensor_value_info("input.1", TensorProto.FLOAT,
                                                                              [1, 3, 640, 640])],
                          outputs, inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)])
    m.ir_version = 8
    os.makedirs(os.path.dirname(path), exist_ok=True)
    onnx.save(m, path)
    return path
