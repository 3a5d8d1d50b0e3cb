"""What a .tflite model is: its I/O, operators, numeric types, metadata. Used by `edgetl info` and by
the toolchain's full-integer check (an "int8" model that still computes in float is an error)."""

from __future__ import annotations

from collections import Counter

from .model import LoadedModel

FLOAT_TYPES = ("float32", "float16", "float64")


def float_ops(m: LoadedModel) -> list[dict]:
    """Operators that read or write a float tensor, except the QUANTIZE that converts a float graph
    input and the DEQUANTIZE that produces a float graph output (float I/O of an int8 model).

    An empty list means the model computes in integers from end to end (full-integer)."""
    sg = m.structure["subgraphs"][0]
    tensors = sg["tensors"]
    names = m.ops if len(m.ops) == len(sg["operators"]) else [None] * len(sg["operators"])
    graph_in, graph_out = set(sg["inputs"]), set(sg["outputs"])
    found = []
    for i, (op, name) in enumerate(zip(sg["operators"], names)):
        ins = [t for t in op["inputs"] if t >= 0]
        outs = [t for t in op["outputs"] if t >= 0]
        floats = [t for t in ins + outs if tensors[t]["type"] in FLOAT_TYPES]
        if not floats:
            continue
        if name == "QUANTIZE" and all(t in graph_in for t in ins if t in floats):
            continue
        if name == "DEQUANTIZE" and all(t in graph_out for t in outs) and not any(t in floats for t in ins):
            continue
        found.append({"index": i, "op": name or f"op#{i}", "float_tensors": [tensors[t]["name"] for t in floats]})
    return found


def tensor_type_counts(m: LoadedModel) -> dict:
    return dict(Counter(t["type"] for t in m.structure["subgraphs"][0]["tensors"]).most_common())


def precision(m: LoadedModel) -> str:
    """A one-word summary: full-integer, float16-weights, dynamic-range, float32 or mixed."""
    types = tensor_type_counts(m)
    fops = float_ops(m)
    if not fops:
        return "full-integer"
    if types.get("float16"):
        return "float16-weights"
    if types.get("int8") or types.get("uint8"):
        return "dynamic-range" if m.inputs and m.input.dtype.kind == "f" else "mixed"
    return "float32"


def describe(m: LoadedModel) -> dict:
    fops = float_ops(m)
    return {
        "path": str(m.path),
        "size_bytes": m.size_bytes,
        "backend": str(m.backend),
        "xnnpack": m.delegated,
        "inputs": [t.describe() for t in m.inputs],
        "outputs": [t.describe() for t in m.outputs],
        "operators": len(m.ops) or len(m.structure["subgraphs"][0]["operators"]),
        "op_counts": m.op_counts(),
        "tensor_types": tensor_type_counts(m),
        "precision": precision(m),
        "float_ops": [f["op"] for f in fops],
        "subgraphs": len(m.structure["subgraphs"]),
        "flatbuffer_metadata": [n for n in m.structure["metadata_names"] if n],
        "edgetl_metadata": m.meta,
    }
