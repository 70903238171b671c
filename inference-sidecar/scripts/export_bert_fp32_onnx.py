"""Writes an fp32 ONNX graph of a BERT encoder (e.g. all-MiniLM-L6-v2) from its safetensors weights.

No fp32 ONNX of MiniLM ships in any package this project can download, and exporting one with torch
means a multi-gigabyte install. The BERT forward pass is small enough to write down directly with the
`onnx` helper API: embeddings (word + position + token type, LayerNorm), then per layer self-attention
with an additive padding mask, residual + LayerNorm, an erf-GELU feed-forward, residual + LayerNorm.
Output: `last_hidden_state` [batch, seq, hidden]; pooling stays in the server, as for any encoder.

Usage: python export_bert_fp32_onnx.py MODEL_DIR OUT.onnx   (MODEL_DIR holds config.json and
model.safetensors). Needs `onnx` and `numpy` only.
"""

import json
import math
import os
import struct
import sys

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

DTYPES = {"F32": np.float32, "I64": np.int64}


def read_safetensors(path):
    with open(path, "rb") as f:
        header_len = struct.unpack("<Q", f.read(8))[0]
        header = json.loads(f.read(header_len))
        data = f.read()
    tensors = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        start, end = info["data_offsets"]
        array = np.frombuffer(data[start:end], dtype=DTYPES[info["dtype"]]).reshape(info["shape"])
        tensors[name] = array
    return tensors


def build(model_dir):
    config = json.load(open(os.path.join(model_dir, "config.json")))
    weights = read_safetensors(os.path.join(model_dir, "model.safetensors"))
    prefix = "bert." if "bert.embeddings.word_embeddings.weight" in weights else ""
    hidden = config["hidden_size"]
    heads = config["num_attention_heads"]
    head_dim = hidden // heads
    eps = float(config.get("layer_norm_eps", 1e-12))
    if config.get("hidden_act", "gelu") != "gelu":
        raise SystemExit(f"unsupported hidden_act {config.get('hidden_act')}")

    nodes, initializers = [], []
    counter = [0]

    def name(base):
        counter[0] += 1
        return f"{base}_{counter[0]}"

    def const(base, array):
        n = name(base)
        initializers.append(numpy_helper.from_array(np.ascontiguousarray(array), n))
        return n

    def node(op, inputs, **attrs):
        out = name(op.lower())
        nodes.append(helper.make_node(op, inputs, [out], **attrs))
        return out

    def weight(key):
        return weights[prefix + key]

    def linear(x, key):
        w = const(key + ".weight.T", weight(key + ".weight").T.astype(np.float32))
        b = const(key + ".bias", weight(key + ".bias").astype(np.float32))
        return node("Add", [node("MatMul", [x, w]), b])

    def layer_norm(x, key):
        scale = const(key + ".weight", weight(key + ".weight"))
        bias = const(key + ".bias", weight(key + ".bias"))
        return node("LayerNormalization", [x, scale, bias], axis=-1, epsilon=eps)

    # Embeddings.
    words = node("Gather", [const("word_embeddings", weight("embeddings.word_embeddings.weight")), "input_ids"], axis=0)
    # Position embeddings: the first `seq` rows of the table. A 1-D Slice (rather than Range + Gather
    # of a scalar) because ONNX Runtime's optimizer rewrites the latter into an invalid Slice.
    seq_len = node(
        "Slice",
        [node("Shape", ["input_ids"]), const("one_1d", np.array([1], dtype=np.int64)), const("two_1d", np.array([2], dtype=np.int64))],
    )
    pos = node(
        "Slice",
        [
            const("position_embeddings", weight("embeddings.position_embeddings.weight")),
            const("zero_1d", np.array([0], dtype=np.int64)),
            seq_len,
            const("axis0", np.array([0], dtype=np.int64)),
        ],
    )
    types = node(
        "Gather", [const("token_type_embeddings", weight("embeddings.token_type_embeddings.weight")), "token_type_ids"], axis=0
    )
    x = layer_norm(node("Add", [node("Add", [words, pos]), types]), "embeddings.LayerNorm")

    # Additive mask [batch, 1, 1, seq]: 0 where attended, float32 min where padded (as transformers).
    mask = node("Cast", ["attention_mask"], to=TensorProto.FLOAT)
    inverted = node("Sub", [const("one", np.array(1.0, dtype=np.float32)), mask])
    additive = node("Mul", [inverted, const("min", np.array(np.finfo(np.float32).min, dtype=np.float32))])
    additive = node("Unsqueeze", [additive, const("axes", np.array([1, 2], dtype=np.int64))])

    split_shape = const("split_shape", np.array([0, 0, heads, head_dim], dtype=np.int64))
    merge_shape = const("merge_shape", np.array([0, 0, hidden], dtype=np.int64))
    scale = const("scale", np.array(1.0 / math.sqrt(head_dim), dtype=np.float32))
    sqrt2 = const("sqrt2", np.array(math.sqrt(2.0), dtype=np.float32))
    half = const("half", np.array(0.5, dtype=np.float32))
    one = const("one_f", np.array(1.0, dtype=np.float32))

    for i in range(config["num_hidden_layers"]):
        p = f"encoder.layer.{i}."
        q = node("Transpose", [node("Reshape", [linear(x, p + "attention.self.query"), split_shape])], perm=[0, 2, 1, 3])
        k = node("Transpose", [node("Reshape", [linear(x, p + "attention.self.key"), split_shape])], perm=[0, 2, 3, 1])
        v = node("Transpose", [node("Reshape", [linear(x, p + "attention.self.value"), split_shape])], perm=[0, 2, 1, 3])
        scores = node("Add", [node("Mul", [node("MatMul", [q, k]), scale]), additive])
        probs = node("Softmax", [scores], axis=-1)
        context = node("Reshape", [node("Transpose", [node("MatMul", [probs, v])], perm=[0, 2, 1, 3]), merge_shape])
        attended = layer_norm(node("Add", [linear(context, p + "attention.output.dense"), x]), p + "attention.output.LayerNorm")
        inner = linear(attended, p + "intermediate.dense")
        gelu = node("Mul", [node("Mul", [inner, half]), node("Add", [one, node("Erf", [node("Div", [inner, sqrt2])])])])
        x = layer_norm(node("Add", [linear(gelu, p + "output.dense"), attended]), p + "output.LayerNorm")

    nodes.append(helper.make_node("Identity", [x], ["last_hidden_state"]))
    dims = ["batch", "sequence"]
    graph = helper.make_graph(
        nodes,
        "bert_encoder_fp32",
        [helper.make_tensor_value_info(n, TensorProto.INT64, dims) for n in ("input_ids", "attention_mask", "token_type_ids")],
        [helper.make_tensor_value_info("last_hidden_state", TensorProto.FLOAT, dims + [hidden])],
        initializers,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="lexserve")
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def main():
    if len(sys.argv) != 3:
        raise SystemExit(__doc__)
    model = build(sys.argv[1])
    tmp = sys.argv[2] + ".tmp"
    onnx.save(model, tmp)
    os.replace(tmp, sys.argv[2])


if __name__ == "__main__":
    main()
