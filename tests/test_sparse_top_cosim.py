"""``hoarfrost sim`` of an accelerator with sparse engines: the example MLP's first layer on the
back end, its last two on two sparse engines, in Verilator, every output bit-exact."""

import json

import numpy as np
import pytest

from hoarfrost.gen.onnx_import import import_onnx
from hoarfrost.gen.sparse_partition import engine_layers
from hoarfrost.sim.golden import quantize_input, run_int
from hoarfrost.sim.golden_sparse import SparseCounts, sparse_dense_int
from test_compile import SMALL_TOML, compile_quietly, run

pytestmark = pytest.mark.cosim


def test_sim_mlp_with_two_sparse_engines_equals_golden(capsys, examples, tmp_path):
    (tmp_path / "hw.toml").write_text("sparse_pes = 4\n" + SMALL_TOML)
    out = tmp_path / "mlp"
    assert compile_quietly(examples / "digits_mlp.onnx", "--calib", examples / "digits_calib.npy",
                           "--config", tmp_path / "hw.toml", "--sparse", "2", "-o", out) == 0
    code, stdout, err = run(capsys, "sim", out, "--inputs", examples / "digits_test_x.npy",
                            "--limit", 3, "--batch", 3, "--json")
    assert code == 0, err
    s = json.loads(stdout)
    assert s["images"] == 3 and s["matches_golden"], s["mismatch"]
    # each engine's events per image: what golden_sparse counts on the layer's input vectors
    graph = import_onnx(out / "model_q.onnx")
    names = ["/fc2/Gemm", "/fc3/Gemm"]
    x = quantize_input(graph, np.load(examples / "digits_test_x.npy")[:3])
    values = run_int(graph, x, keep_all=True)
    layers = {layer.name: layer for layer in graph.layers}
    for e, (enc, layer, q_in) in zip(s["sparse"], engine_layers(graph, names, 4)):
        events = SparseCounts()
        sparse_dense_int(values[layers[e["layer"]].inputs[0]].reshape(3, -1), enc, layer, q_in,
                         events)
        assert e["macs"] == pytest.approx(events.macs / 3)
        assert e["skipped"] == pytest.approx(events.skipped / 3)
        assert e["entries"] == pytest.approx(events.entries / 3)
    # every layer's cycles as the models predict them: the sequencer's, and for the sparse
    # layers (SEND + RECVS) the engine replayed on each image's vector
    for row in s["layers"]:
        assert row["cycles"] == pytest.approx(row["predicted_cycles"]), row
    assert [r["commands"] for r in s["layers"] if r["name"] in names] == [2, 2]
    assert s["energy_events"]["mul8"] > s["macs_issued"]     # the engines' MACs are priced
