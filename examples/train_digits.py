#!/usr/bin/env python3
"""Train the two bundled example models on scikit-learn's 8x8 digits.

Writes into this folder (examples/):
  digits_cnn.onnx     small CNN (Conv+BN+ReLU, Conv s2 + ReLU6, MaxPool, Flatten, Gemm)
  digits_mlp.onnx     3-layer MLP, magnitude-pruned (Deep Compression style, iterative
                      prune + retrain); pruned weights are exact +0.0 in the file
  digits_test_x.npy   float32 (360,1,8,8), test images scaled to [0,1]
  digits_test_y.npy   int64 (360,), test labels
  digits_calib.npy    float32 (200,1,8,8), the first 200 training images (for calibration)

Both models: input "input" (batch,1,8,8) float32 with a dynamic batch axis,
output "logits" (batch,10), ONNX opset 17.

Needs the [train] extra:  pip install -e '.[train]'  then  python examples/train_digits.py
Runs in well under a minute on one CPU core, and is deterministic.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch
import torch.nn as nn
import torch.nn.functional as F
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

HERE = Path(__file__).resolve().parent
OPSET = 17
SEED = 0

# Ops hoarfrost's importer accepts; the exported models must use nothing else.
ALLOWED_OPS = {
    "Conv", "Relu", "Clip", "MaxPool", "AveragePool", "GlobalAveragePool", "Gemm",
    "MatMul", "Add", "Flatten", "Reshape", "BatchNormalization",
}

# Target weight densities of the pruned MLP's Linear layers.
MLP_DENSITY = {"fc1": 0.125, "fc2": 0.125, "fc3": 0.40}


def set_determinism() -> None:
    torch.manual_seed(SEED)
    np.random.seed(SEED)
    torch.set_num_threads(1)  # fixed reduction order; the models are tiny anyway
    torch.use_deterministic_algorithms(True)


def load_data():
    digits = load_digits()
    X = (digits.images.astype(np.float32) / 16.0).reshape(-1, 1, 8, 8)
    y = digits.target.astype(np.int64)
    X_tr, X_te, y_tr, y_te = train_test_split(
        X, y, test_size=0.2, random_state=0, stratify=y)
    return (np.ascontiguousarray(X_tr, dtype=np.float32), y_tr.astype(np.int64),
            np.ascontiguousarray(X_te, dtype=np.float32), y_te.astype(np.int64))


class DigitsCNN(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 8, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(8)
        self.conv2 = nn.Conv2d(8, 16, 3, stride=2, padding=1)
        self.pool = nn.MaxPool2d(2)
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(16 * 2 * 2, 10)

    def forward(self, x):
        x = F.relu(self.bn1(self.conv1(x)))       # (N, 8, 8, 8)
        x = F.relu6(self.conv2(x))                # (N,16, 4, 4)
        x = self.pool(x)                          # (N,16, 2, 2)
        return self.fc(self.flatten(x))           # (N,10)


class DigitsMLP(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.flatten = nn.Flatten()
        self.fc1 = nn.Linear(64, 64)
        self.fc2 = nn.Linear(64, 32)
        self.fc3 = nn.Linear(32, 10)

    def forward(self, x):
        x = self.flatten(x)
        x = F.relu(self.fc1(x))
        x = F.relu(self.fc2(x))
        return self.fc3(x)


def train(model, X, y, epochs, lr, masks=None, batch=32, weight_decay=0.0):
    """Plain Adam + cosine LR. If masks is given ({param_name: bool tensor}),
    pruned weights get zero gradient and are forced back to +0.0 after every step."""
    Xt, yt = torch.from_numpy(X), torch.from_numpy(y)
    opt = torch.optim.Adam(model.parameters(), lr=lr, weight_decay=weight_decay)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=epochs)
    gen = torch.Generator().manual_seed(SEED)
    params = dict(model.named_parameters())
    n = len(Xt)
    for _ in range(epochs):
        model.train()
        perm = torch.randperm(n, generator=gen)
        for i in range(0, n, batch):
            idx = perm[i:i + batch]
            opt.zero_grad()
            loss = F.cross_entropy(model(Xt[idx]), yt[idx])
            loss.backward()
            if masks:
                for name, m in masks.items():
                    params[name].grad.masked_fill_(~m, 0.0)
            opt.step()
            if masks:
                apply_masks(model, masks)
        sched.step()
    model.eval()
    return model


@torch.no_grad()
def apply_masks(model, masks):
    params = dict(model.named_parameters())
    for name, m in masks.items():
        params[name].masked_fill_(~m, 0.0)  # exact +0.0, never -0.0


@torch.no_grad()
def torch_accuracy(model, X, y) -> float:
    model.eval()
    return float((model(torch.from_numpy(X)).argmax(1).numpy() == y).mean())


@torch.no_grad()
def magnitude_masks(model, densities):
    """Per-layer magnitude pruning: keep the round(d*numel) largest |w| of each layer."""
    masks = {}
    for layer, d in densities.items():
        w = getattr(model, layer).weight
        k = max(1, int(round(d * w.numel())))
        # Rank by |w| with a stable tie-break on flat index: deterministic exact-k masks.
        order = torch.argsort(w.abs().flatten(), descending=True, stable=True)
        m = torch.zeros(w.numel(), dtype=torch.bool)
        m[order[:k]] = True
        masks[f"{layer}.weight"] = m.view_as(w)
    return masks


def train_cnn(X_tr, y_tr, X_te, y_te):
    torch.manual_seed(SEED)
    model = DigitsCNN()
    train(model, X_tr, y_tr, epochs=40, lr=3e-3)
    print(f"[cnn] torch test accuracy {torch_accuracy(model, X_te, y_te):.4f}")
    return model


def train_pruned_mlp(X_tr, y_tr, X_te, y_te):
    torch.manual_seed(SEED)
    model = DigitsMLP()
    train(model, X_tr, y_tr, epochs=40, lr=3e-3)
    print(f"[mlp] dense torch test accuracy {torch_accuracy(model, X_te, y_te):.4f}")
    # Iterative prune + retrain (Han et al., Deep Compression): shrink density in steps,
    # each time re-ranking the surviving weights by magnitude and fine-tuning with the mask.
    steps = [
        {"fc1": 0.50, "fc2": 0.50, "fc3": 0.80},
        {"fc1": 0.30, "fc2": 0.30, "fc3": 0.60},
        {"fc1": 0.20, "fc2": 0.20, "fc3": 0.50},
        {"fc1": 0.15, "fc2": 0.15, "fc3": 0.45},
        MLP_DENSITY,
    ]
    for i, dens in enumerate(steps):
        last = i == len(steps) - 1
        masks = magnitude_masks(model, dens)
        apply_masks(model, masks)
        before = torch_accuracy(model, X_te, y_te)
        train(model, X_tr, y_tr, epochs=40 if last else 20, lr=1e-3, masks=masks)
        after = torch_accuracy(model, X_te, y_te)
        print(f"[mlp] prune to {dens}: acc {before:.4f} after pruning, "
              f"{after:.4f} after fine-tuning")
    return model


def constants_to_initializers(m: onnx.ModelProto) -> None:
    """The exporter emits Clip's min/max (ReLU6) as Constant nodes; Constant is not in
    ALLOWED_OPS, so turn them into initializers."""
    keep = []
    for n in m.graph.node:
        if n.op_type == "Constant":
            (attr,) = n.attribute
            assert attr.name == "value", attr.name
            t = onnx.TensorProto()
            t.CopyFrom(attr.t)
            t.name = n.output[0]
            m.graph.initializer.append(t)
        else:
            keep.append(n)
    del m.graph.node[:]
    m.graph.node.extend(keep)


def rename_initializers(m: onnx.ModelProto, names: dict[str, str]) -> None:
    """Give exporter-generated initializer names (e.g. the BN-folded conv1 weight,
    'onnx::Conv_24') readable ones."""
    for t in m.graph.initializer:
        t.name = names.get(t.name, t.name)
    for n in m.graph.node:
        for i, x in enumerate(n.input):
            n.input[i] = names.get(x, x)


def readable_names(m: onnx.ModelProto) -> dict[str, str]:
    names = {}
    for n in m.graph.node:
        scope = n.name.rsplit("/", 1)[0].strip("/")  # '/conv1/Conv' -> 'conv1'
        if n.op_type in ("Conv", "Gemm") and scope:
            for x, suffix in zip(n.input[1:], ("weight", "bias")):
                if x.startswith("onnx::"):
                    names[x] = f"{scope}.{suffix}"
        if n.op_type == "Clip":
            base = n.name.strip("/").replace("/", "_").lower()
            for x, suffix in zip(n.input[1:], ("min", "max")):
                names[x] = f"{base}.{suffix}"
    return names


def export(model, path: Path) -> None:
    model.eval()
    dummy = torch.zeros(2, 1, 8, 8)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model, (dummy,), str(path),
            input_names=["input"], output_names=["logits"],
            dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}},
            opset_version=OPSET, do_constant_folding=True, dynamo=False,
        )
    m = onnx.load(str(path))
    constants_to_initializers(m)
    rename_initializers(m, readable_names(m))
    onnx.save(m, str(path))
    onnx.checker.check_model(m, full_check=True)
    ops = sorted({n.op_type for n in m.graph.node})
    bad = set(ops) - ALLOWED_OPS
    if bad:
        raise SystemExit(f"{path.name}: ops outside hoarfrost's set: {sorted(bad)}")
    inferred = onnx.shape_inference.infer_shapes(m, check_type=True, strict_mode=True)
    g = inferred.graph
    for vi in list(g.input) + list(g.value_info) + list(g.output):
        dims = vi.type.tensor_type.shape.dim
        if not dims:
            raise SystemExit(f"{path.name}: no inferred shape for {vi.name}")
        for i, d in enumerate(dims):
            if i > 0 and not d.HasField("dim_value"):
                raise SystemExit(f"{path.name}: {vi.name} has non-static dim {i}")
    assert [i.name for i in g.input] == ["input"], [i.name for i in g.input]
    assert [o.name for o in g.output] == ["logits"], [o.name for o in g.output]


def onnx_accuracy(path: Path, X, y, model=None) -> float:
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    logits = sess.run(["logits"], {"input": X})[0]
    if model is not None:
        with torch.no_grad():
            ref = model(torch.from_numpy(X)).numpy()
        diff = float(np.abs(ref - logits).max())
        assert diff < 1e-4, f"{path.name}: onnxruntime differs from torch by {diff}"
    # A batch of 1 must work too (dynamic batch axis).
    one = sess.run(["logits"], {"input": X[:1]})[0]
    assert one.shape == (1, 10)
    return float((logits.argmax(1) == y).mean())


def describe(path: Path) -> None:
    m = onnx.shape_inference.infer_shapes(onnx.load(str(path)))

    def shape(vi):
        return tuple(d.dim_param or d.dim_value for d in vi.type.tensor_type.shape.dim)

    ops = [n.op_type for n in m.graph.node]
    print(f"  {path.name}: {path.stat().st_size} bytes, opset "
          f"{m.opset_import[0].version}, ops {ops}")
    print(f"    inputs  {[(i.name, shape(i)) for i in m.graph.input]}")
    print(f"    outputs {[(o.name, shape(o)) for o in m.graph.output]}")


def mlp_densities(path: Path):
    """Weight density of each Gemm's weight tensor, read back from the .onnx file."""
    m = onnx.load(str(path))
    inits = {t.name: onnx.numpy_helper.to_array(t) for t in m.graph.initializer}
    out = []
    for n in m.graph.node:
        if n.op_type in ("Gemm", "MatMul"):
            w = inits[n.input[1]]
            nz = int(np.count_nonzero(w))
            negzero = int(np.sum((w == 0) & np.signbit(w)))
            out.append((n.name or n.input[1], w.shape, nz, w.size, negzero))
    return out


def main() -> None:
    set_determinism()
    X_tr, y_tr, X_te, y_te = load_data()
    assert X_te.shape == (360, 1, 8, 8) and y_te.shape == (360,)
    np.save(HERE / "digits_test_x.npy", X_te)
    np.save(HERE / "digits_test_y.npy", y_te)
    np.save(HERE / "digits_calib.npy", np.ascontiguousarray(X_tr[:200]))

    cnn = train_cnn(X_tr, y_tr, X_te, y_te)
    export(cnn, HERE / "digits_cnn.onnx")
    mlp = train_pruned_mlp(X_tr, y_tr, X_te, y_te)
    export(mlp, HERE / "digits_mlp.onnx")

    print("\n== results (onnxruntime, float32, 360 test images) ==")
    acc_cnn = onnx_accuracy(HERE / "digits_cnn.onnx", X_te, y_te, cnn)
    acc_mlp = onnx_accuracy(HERE / "digits_mlp.onnx", X_te, y_te, mlp)
    print(f"digits_cnn.onnx test accuracy: {acc_cnn:.4f}")
    print(f"digits_mlp.onnx test accuracy: {acc_mlp:.4f}")
    print("digits_mlp.onnx weight density per layer:")
    for name, shp, nz, size, negzero in mlp_densities(HERE / "digits_mlp.onnx"):
        print(f"  {name:10s} {str(shp):10s} {nz:5d}/{size:5d} nonzero = {nz / size:.3f}")
        assert negzero == 0, f"{name}: {negzero} weights are -0.0"
    print("models:")
    describe(HERE / "digits_cnn.onnx")
    describe(HERE / "digits_mlp.onnx")
    if acc_cnn < 0.95 or acc_mlp < 0.93:
        raise SystemExit("accuracy below target (cnn >= 0.95, mlp >= 0.93)")


if __name__ == "__main__":
    main()
