#!/usr/bin/env python3
"""Transfer learning on a frozen front end: two heads, two tasks, one frozen block (FixyNN).

Keeps the first ``--freeze`` convolutions of ``digits_cnn.onnx`` (default 2: conv1, conv2 and
the max pooling after them, exactly what ``hoarfrost bench freeze --layers 2`` freezes, as
``hoarfrost.gen.freeze.frozen_layers`` chooses them) with their ONNX nodes and initializers
unchanged, and trains two new heads on the frozen features, in numpy:

  digits_head_digit.onnx  head "digit": which digit (10 classes), as the original CNN
  digits_head_loop.onnx   head "loop": does the digit, as usually written, have a closed loop
                          (0, 4, 6, 8, 9) or not (1, 2, 3, 5, 7): 2 classes

Each head is Flatten -> Gemm F->H -> Relu -> Gemm H->classes on the frozen output tensor (F
its size, 64 for two convolutions; H = 32 hidden units less those training left dead), trained
with Adam on the cross-entropy in float64 from a fixed seed. Both files are whole models
(input ``input`` (batch,1,8,8), output ``logits`` (batch,classes), opset 17) that every
hoarfrost command takes; quantized with the same calibration images their front halves are the
same integers, so one frozen block serves both and only the head (on the programmable back end)
changes.

Training images: scikit-learn's digits with train_digits.py's split (the 1437 training images;
the committed test and calibration sets are checked to be that split's). scikit-learn is the
only thing beyond hoarfrost's own dependencies this needs (no torch):

    pip install scikit-learn          # or: pip install -e '.[train]'
    python examples/train_heads.py

Runs in a few seconds on one core and rewrites both files byte for byte on the same machine
(float64 training; another BLAS may round differently). Exits non-zero if a head's accuracy on
the 360 test images is under 95 % (float or quantized).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import onnx
from onnx import helper, numpy_helper

from hoarfrost.gen.freeze import output_tensor
from hoarfrost.gen.ir import split_graph
from hoarfrost.gen.onnx_import import import_onnx
from hoarfrost.gen.quantize import quantize
from hoarfrost.sim.golden import run_float, run_int

HERE = Path(__file__).resolve().parent
BASE = HERE / "digits_cnn.onnx"
SEED = 0
HIDDEN = 32
#: Digits whose usual written form encloses an area (4 as printed, with a closed top).
LOOP_DIGITS = (0, 4, 6, 8, 9)
#: head name -> (labels from the digit labels, number of classes, what it means)
TASKS = {
    "digit": (lambda y: y, 10, "digit class 0-9"),
    "loop": (lambda y: np.isin(y, LOOP_DIGITS).astype(np.int64), 2,
             f"closed loop: digit in {LOOP_DIGITS} (class 1) or not (class 0)"),
}
MIN_ACCURACY = 0.95


def load_data():
    """train_digits.py's split of scikit-learn's digits; checked against the committed files."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    X = (digits.images.astype(np.float32) / 16.0).reshape(-1, 1, 8, 8)
    y = digits.target.astype(np.int64)
    X_tr, X_te, y_tr, y_te = train_test_split(X, y, test_size=0.2, random_state=0, stratify=y)
    for name, mine in (("digits_test_x.npy", X_te), ("digits_test_y.npy", y_te),
                       ("digits_calib.npy", X_tr[:200])):
        if not np.array_equal(np.load(HERE / name), mine):
            raise SystemExit(f"{name} is not train_digits.py's split of load_digits()")
    return X_tr, y_tr, X_te, y_te


def frozen_front(freeze: int):
    """The float front graph hoarfrost freezes for ``--layers freeze`` and its output tensor."""
    graph = import_onnx(BASE)
    calib = np.load(HERE / "digits_calib.npy")
    tensor = output_tensor(quantize(graph, calib), freeze)
    return split_graph(graph, tensor)[0], tensor


# --- the head in numpy ------------------------------------------------------------------------

def init_head(rng, features: int, classes: int) -> dict[str, np.ndarray]:
    """He-uniform weights, zero biases; ``(out, in)`` weights as ONNX Gemm with transB=1."""
    def he(out, fan_in):
        bound = np.sqrt(6.0 / fan_in)
        return rng.uniform(-bound, bound, size=(out, fan_in))
    return {"w1": he(HIDDEN, features), "b1": np.zeros(HIDDEN),
            "w2": he(classes, HIDDEN) * 0.5, "b2": np.zeros(classes)}


def forward(p, x):
    h = np.maximum(x @ p["w1"].T + p["b1"], 0.0)
    return h, h @ p["w2"].T + p["b2"]


def gradients(p, x, y):
    """Mean cross-entropy gradients of a batch."""
    h, logits = forward(p, x)
    z = logits - logits.max(axis=1, keepdims=True)
    prob = np.exp(z)
    prob /= prob.sum(axis=1, keepdims=True)
    d = prob
    d[np.arange(len(y)), y] -= 1.0
    d /= len(y)
    dh = (d @ p["w2"]) * (h > 0)
    return {"w2": d.T @ h, "b2": d.sum(axis=0), "w1": dh.T @ x, "b1": dh.sum(axis=0)}


def train_head(x, y, classes: int, *, epochs=80, batch=32, lr=3e-3, weight_decay=1e-4):
    """Adam with a cosine learning rate and L2 on the weights; deterministic from SEED."""
    rng = np.random.default_rng(SEED)
    p = init_head(rng, x.shape[1], classes)
    m = {k: np.zeros_like(v) for k, v in p.items()}
    v = {k: np.zeros_like(v) for k, v in p.items()}
    b1, b2, eps, step = 0.9, 0.999, 1e-8, 0
    for epoch in range(epochs):
        rate = lr * 0.5 * (1 + np.cos(np.pi * epoch / epochs))
        perm = rng.permutation(len(x))
        for i in range(0, len(x), batch):
            idx = perm[i:i + batch]
            g = gradients(p, x[idx], y[idx])
            step += 1
            for k in p:
                if k.startswith("w"):
                    g[k] = g[k] + weight_decay * p[k]
                m[k] = b1 * m[k] + (1 - b1) * g[k]
                v[k] = b2 * v[k] + (1 - b2) * g[k] ** 2
                mh, vh = m[k] / (1 - b1 ** step), v[k] / (1 - b2 ** step)
                p[k] = p[k] - rate * mh / (np.sqrt(vh) + eps)
    return drop_dead_units(p)


def drop_dead_units(p):
    """The head without hidden units whose input weights decayed to nothing.

    Weight decay drives a ReLU unit that never fires to weights of ~1e-9: it is a constant,
    relu(bias), whose contribution moves into the output bias. Left in, per-channel weight
    quantization would give it a scale of ~1e-11 and its bias an int32-overflowing value.
    """
    peak = np.abs(p["w1"]).max(axis=1)
    dead = peak < 1e-6 * peak.max()
    p = dict(p)
    p["b2"] = p["b2"] + p["w2"][:, dead] @ np.maximum(p["b1"][dead], 0.0)
    p["w1"], p["b1"], p["w2"] = p["w1"][~dead], p["b1"][~dead], p["w2"][:, ~dead]
    return {k: val.astype(np.float32) for k, val in p.items()}


# --- ONNX ---------------------------------------------------------------------------------------

def head_model(name: str, tensor: str, params: dict[str, np.ndarray]) -> onnx.ModelProto:
    """digits_cnn.onnx up to ``tensor`` (nodes and initializers as they are) + the head."""
    base = onnx.load(str(BASE))
    nodes = []
    for node in base.graph.node:
        nodes.append(node)
        if tensor in node.output:
            break
    else:
        raise SystemExit(f"{BASE.name} has no node writing {tensor!r}")
    used = {i for n in nodes for i in n.input}
    inits = [t for t in base.graph.initializer if t.name in used]
    flat, hidden, relu = f"/{name}/Flatten_output_0", f"/{name}/fc1/Gemm_output_0", \
        f"/{name}/Relu_output_0"
    nodes += [
        helper.make_node("Flatten", [tensor], [flat], name=f"/{name}/Flatten", axis=1),
        helper.make_node("Gemm", [flat, f"{name}.fc1.weight", f"{name}.fc1.bias"], [hidden],
                         name=f"/{name}/fc1/Gemm", alpha=1.0, beta=1.0, transB=1),
        helper.make_node("Relu", [hidden], [relu], name=f"/{name}/Relu"),
        helper.make_node("Gemm", [relu, f"{name}.fc2.weight", f"{name}.fc2.bias"], ["logits"],
                         name=f"/{name}/fc2/Gemm", alpha=1.0, beta=1.0, transB=1),
    ]
    inits += [numpy_helper.from_array(params[k], f"{name}.{layer}.{kind}")
              for k, layer, kind in (("w1", "fc1", "weight"), ("b1", "fc1", "bias"),
                                     ("w2", "fc2", "weight"), ("b2", "fc2", "bias"))]
    classes = params["w2"].shape[0]
    output = helper.make_tensor_value_info("logits", onnx.TensorProto.FLOAT, ["batch", classes])
    graph = helper.make_graph(nodes, f"digits_head_{name}", list(base.graph.input), [output],
                              initializer=inits)
    model = helper.make_model(graph, opset_imports=list(base.opset_import),
                              producer_name="hoarfrost examples/train_heads.py")
    model.ir_version = base.ir_version
    onnx.checker.check_model(model, full_check=True)
    return model


def onnx_logits(path: Path, x: np.ndarray) -> np.ndarray:
    import onnxruntime as ort
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return sess.run(["logits"], {"input": x})[0]


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--freeze", type=int, default=2,
                        help="convolutions kept frozen from digits_cnn.onnx (default 2)")
    parser.add_argument("--out", type=Path, default=HERE,
                        help="where to write the two models (default: examples/)")
    args = parser.parse_args(argv)

    X_tr, y_tr, X_te, y_te = load_data()
    front, tensor = frozen_front(args.freeze)
    print(f"frozen front end: {' -> '.join(l.name for l in front.layers)}, output {tensor!r} "
          f"{front.shapes[tensor]}")
    f_tr = run_float(front, X_tr).reshape(len(X_tr), -1)
    f_te = run_float(front, X_te).reshape(len(X_te), -1)
    calib = np.load(HERE / "digits_calib.npy")

    failed = []
    for name, (relabel, classes, meaning) in TASKS.items():
        params = train_head(f_tr, relabel(y_tr), classes)
        path = args.out / f"digits_head_{name}.onnx"
        onnx.save(head_model(name, tensor, params), str(path))
        want = relabel(y_te)
        logits = onnx_logits(path, X_te)
        ref = forward({k: v.astype(np.float64) for k, v in params.items()}, f_te)[1]
        diff = float(np.abs(ref - logits).max())
        assert diff < 1e-4, f"{path.name}: onnxruntime differs from the numpy head by {diff}"
        float_correct = int((logits.argmax(axis=1) == want).sum())
        qgraph = quantize(import_onnx(path), calib, 8)
        int_correct = int((run_int(qgraph, X_te).argmax(axis=1) == want).sum())
        n = len(want)
        print(f"{path.name} ({meaning}): {params['w1'].shape[0]} hidden units, "
              f"{path.stat().st_size} bytes; test accuracy float "
              f"{float_correct}/{n} = {float_correct / n:.4f} (onnxruntime), 8-bit golden "
              f"{int_correct}/{n} = {int_correct / n:.4f} (calibrated on digits_calib.npy)")
        if min(float_correct, int_correct) < MIN_ACCURACY * n:
            failed.append(path.name)
    if failed:
        raise SystemExit(f"accuracy under {MIN_ACCURACY:.0%}: {', '.join(failed)}")


if __name__ == "__main__":
    main()
