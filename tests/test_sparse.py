"""The sparse engine's software side: pruning, weight sharing, the EIE encoding, golden model.

The encoding must decode to exactly the matrix it was made from; the golden model that walks
it must equal :func:`hoarfrost.sim.golden.dense_int` on the decoded layer; a compressed model
stays runnable by :func:`hoarfrost.sim.golden.run_int`.
"""

from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hoarfrost.gen.errors import HoarfrostError
from hoarfrost.gen.ir import Dense, QParams, Requant
from hoarfrost.gen.sparse import (MAX_REL, REL_BITS, compress_dense, compress_graph, encode,
                                  kmeans_1d, prune_magnitude, random_activations, random_layer,
                                  refit_pruned, share_weights)
from hoarfrost.sim.golden import dense_int, run_int, run_layer_int
from hoarfrost.sim.golden_sparse import SparseCounts, sparse_accumulators, sparse_dense_int

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def random_index(rng, rows, cols, density, bits, *, zero_rows=(), zero_cols=()):
    """A codebook index matrix of about ``density`` non-zeros, some rows/columns all zero."""
    index = np.where(rng.random((rows, cols)) < density,
                     rng.integers(1, 1 << bits, (rows, cols)), 0)
    index[list(zero_rows), :] = 0
    index[:, list(zero_cols)] = 0
    return index


def random_codebook(rng, bits):
    return np.concatenate([[0], rng.integers(-127, 128, (1 << bits) - 1)])


def layer_from_index(rng, index, codebook):
    """A quantized Dense of weights ``codebook[index]`` with random bias and requantization."""
    rows = index.shape[0]
    return Dense("fc", ["x"], "y", weight_q=codebook[index], weight_scale=np.full(rows, 0.01),
                 weight_bits=8, bias_q=rng.integers(-3000, 3000, rows),
                 requant=Requant(rng.integers(1 << 15, 1 << 16, rows),
                                 rng.integers(8, 16, rows), int(rng.integers(-10, 10)),
                                 -128 if rng.random() < 0.5 else int(rng.integers(-10, 0)), 127))


@st.composite
def sparse_cases(draw):
    rows = draw(st.integers(1, 40))
    cols = draw(st.integers(1, 40))
    seed = draw(st.integers(0, 2**31))
    rng = np.random.default_rng(seed)
    bits = draw(st.sampled_from([2, 3, 4]))
    density = draw(st.sampled_from([0.0, 0.03, 0.1, 0.3, 1.0]))
    zero_rows = draw(st.lists(st.integers(0, rows - 1), max_size=3))
    zero_cols = draw(st.lists(st.integers(0, cols - 1), max_size=3))
    index = random_index(rng, rows, cols, density, bits, zero_rows=zero_rows,
                         zero_cols=zero_cols)
    pes = draw(st.integers(1, 8))
    return rng, index, random_codebook(rng, bits), pes


@settings(max_examples=60, deadline=None)
@given(sparse_cases())
def test_encoding_decodes_to_the_same_matrix(case):
    # Every non-zero weight is stored once, in its PE, with a 4-bit relative index; padding
    # entries (index 0) bridge gaps longer than 15 rows; counts are the column pointers.
    _, index, codebook, pes = case
    enc = encode(index, codebook, pes)
    assert np.array_equal(enc.decode_index(), index)
    assert np.array_equal(enc.decode(), codebook[index])
    assert enc.entries - enc.padding == np.count_nonzero(index)
    for pe in range(pes):
        assert len(enc.rel[pe]) == len(enc.index[pe]) == enc.counts[pe].sum()
        assert enc.rel[pe].max(initial=0) <= MAX_REL
        # a padding entry always skips the full 15 rows
        assert np.all(enc.rel[pe][enc.index[pe] == 0] == MAX_REL)
    bits = enc.storage_bits()
    assert bits["entries"] == enc.entries * (REL_BITS + enc.index_bits)
    # counts: a main word per column, escaped ones continued in the extension list
    main_bits, ext_bits = enc.count_split()
    escape = (1 << main_bits) - 1
    escapes = 0
    for pe in range(pes):
        main, ext = enc.count_memories(pe)
        assert max(main, default=0) < 1 << main_bits
        assert all(e < 1 << ext_bits for e in ext)
        it = iter(ext)
        rebuilt = [c + next(it) if ext_bits and c == escape else c for c in main]
        assert rebuilt == enc.counts[pe].tolist()
        escapes += len(ext)
    assert bits["pointers"] == pes * index.shape[1] * main_bits + escapes * ext_bits
    assert bits["pointers"] <= pes * index.shape[1] * enc.count_bits
    assert bits["total"] == bits["entries"] + bits["pointers"] + bits["codebook"]


@settings(max_examples=60, deadline=None)
@given(sparse_cases(), st.sampled_from([0.0, 0.2, 0.5, 1.0]))
def test_golden_sparse_equals_dense_golden(case, act_density):
    # Walking the encoding and skipping x == zp gives the dense golden model's results; the
    # counts are the skipped activations and the entries of the columns that were not skipped.
    rng, index, codebook, pes = case
    enc = encode(index, codebook, pes)
    layer = layer_from_index(rng, index, codebook)
    qin = QParams(0.05, int(rng.integers(-128, 128)))
    x = random_activations(rng, 3, index.shape[1], act_density, qin.zero_point)
    counts = SparseCounts()
    acc = sparse_accumulators(x, enc, qin.zero_point, counts)
    assert np.array_equal(acc, (x.astype(np.int64) - qin.zero_point) @ codebook[index].T)

    out = sparse_dense_int(x, enc, layer, qin)
    assert np.array_equal(out, dense_int(x, layer, qin))
    live = x != qin.zero_point
    assert counts.skipped == int((~live).sum())
    assert counts.macs == int((live.astype(np.int64) @ (index != 0).T).sum())
    per_col = enc.counts.sum(axis=0)
    assert counts.entries == int((live * per_col).sum())


def test_prune_keeps_the_largest_magnitudes():
    w = np.array([[0.1, -0.9, 0.3], [0.5, -0.2, 0.05]])
    pruned = prune_magnitude(w, 0.5)
    assert np.array_equal(pruned, [[0, -0.9, 0.3], [0.5, 0, 0]])
    assert np.count_nonzero(prune_magnitude(np.ones((10, 10)), 0.1)) == 10
    with pytest.raises(HoarfrostError, match="1.5"):
        prune_magnitude(w, 1.5)


def test_refit_moves_a_pruned_weight_onto_the_weights_that_stay():
    """Input 1 equals input 0: pruning w[:, 1] loses its contribution, which the refit puts
    onto w[:, 0] exactly; the pruned zeros stay zero and the bias absorbs a constant input."""
    rng = np.random.default_rng(0)
    x = rng.normal(0, 1, (50, 4))
    x[:, 1] = x[:, 0]
    x[:, 3] = 1.0                                  # a constant input: a bias term
    weight = np.array([[2.0, 0.5, 1.0, -0.3], [-1.0, -0.1, 3.0, 0.2]])
    bias = np.array([0.1, -0.2])
    pruned = prune_magnitude(weight, 0.5)          # keeps 2.0, 1.0 / -1.0, 3.0
    assert np.array_equal(pruned != 0, [[1, 0, 1, 0], [1, 0, 1, 0]])
    w, b = refit_pruned(weight, bias, pruned, x, ridge=0.0)
    assert np.all(w[pruned == 0] == 0)
    assert np.allclose(w, [[2.5, 0, 1.0, 0], [-1.1, 0, 3.0, 0]])
    assert np.allclose(b, [0.1 - 0.3, -0.2 + 0.2])
    assert np.allclose(x @ w.T + b, x @ weight.T + bias)
    # pruning alone misses by the dropped terms
    assert not np.allclose(x @ pruned.T + bias, x @ weight.T + bias)


def test_refit_recovers_the_accuracy_pruning_costs(digits_mlp):
    """The MLP's three layers pruned to 20% on the engines: magnitude pruning alone keeps
    56.1% of the 360 test digits, re-fitted to the calibration data 93.9% (dense: 96.7%)."""
    quantized = digits_mlp[0]
    x, y = np.load(EXAMPLES / "digits_test_x.npy"), np.load(EXAMPLES / "digits_test_y.npy")
    calib = np.load(EXAMPLES / "digits_calib.npy")

    def accuracy(graph):
        return float((run_int(graph, x).argmax(1) == y).mean())

    pruned, _ = compress_graph(quantized, density=0.2)
    refit, _ = compress_graph(quantized, density=0.2, calib=calib)
    assert accuracy(pruned) < 0.6 and accuracy(refit) > 0.92
    # no more weights than pruning kept (weight sharing may round a small cluster to 0)
    assert all((layer.weight_q != 0).mean() <= 0.2
               for layer in refit.layers if isinstance(layer, Dense))


def test_kmeans_is_deterministic_and_finds_clusters():
    values = np.array([-1.0, -1.1, -0.9, 0.5, 0.45, 0.55, 2.0, 2.1])
    c = kmeans_1d(values, 3)
    assert np.allclose(c, [-1.0, 0.5, 2.05])
    assert np.array_equal(c, kmeans_1d(values, 3))


@pytest.mark.parametrize("bits", [2, 3, 4])
def test_shared_weights_keep_zeros_and_use_the_codebook(bits):
    rng = np.random.default_rng(bits)
    w = prune_magnitude(rng.standard_normal((20, 30)), 0.2)
    codebook, index, scale = share_weights(w, bits)
    assert len(codebook) == 1 << bits and codebook[0] == 0
    assert np.array_equal(index == 0, w == 0)
    assert np.abs(codebook).max() == 127
    # each weight goes to its nearest shared value
    shared = codebook[index] * scale
    assert np.abs(shared - w)[w != 0].max() < (np.abs(w).max() / (1 << bits)) * 1.5


def test_compressed_dense_is_an_ordinary_quantized_layer():
    # One scale per layer, weight_q = codebook[index], and the integer bias/requant that
    # lower_integer gives for that scale.
    layer, qin, enc = random_layer(40, 24, 0.25, codebook_bits=4, pes=4, seed=3)
    assert np.all(layer.weight_scale == layer.weight_scale[0])
    assert np.array_equal(layer.weight_q, enc.decode())
    assert len(set(layer.requant.multiplier.tolist())) == 1
    expected_bias = np.rint(layer.bias / (qin.scale * layer.weight_scale[0]))
    assert np.array_equal(layer.bias_q, expected_bias)
    assert np.count_nonzero(layer.weight_q) <= round(0.25 * 40 * 24)


def test_storage_is_under_one_bit_per_weight_at_ten_percent():
    # EIE's budget: 4-bit index + 4-bit relative index per non-zero (0.8 bits per weight),
    # padding, and column counts of 3 bits with an escape to 3 more (4-bit counts would leave
    # this at 1.0 bit per weight).
    for seed in range(3):
        _, _, enc = random_layer(256, 256, 0.1, codebook_bits=4, pes=8, seed=seed)
        bits = enc.storage_bits()
        assert enc.count_bits == 4 and enc.count_split() == (3, 3)
        assert bits["per_weight"] <= 0.98


@pytest.fixture(scope="module")
def digits_mlp():
    from hoarfrost.gen.onnx_import import import_onnx
    from hoarfrost.gen.quantize import quantize

    q = quantize(import_onnx(EXAMPLES / "digits_mlp.onnx"),
                 np.load(EXAMPLES / "digits_calib.npy"), 8)
    compressed, encodings = compress_graph(q, codebook_bits=4, pes=8)
    return q, compressed, encodings


def run_sparse_graph(graph, encodings, x):
    """The compressed graph with every Dense layer run by golden_sparse on its encoding."""
    values = {graph.input: graph.quant[graph.input].quantize(x)}
    for layer in graph.layers:
        args = [values[t] for t in layer.inputs]
        qins = [graph.quant[t] for t in layer.inputs]
        if isinstance(layer, Dense):
            values[layer.output] = sparse_dense_int(args[0], encodings[layer.name], layer,
                                                    qins[0])
        else:
            values[layer.output] = run_layer_int(layer, args, qins)
    return values[graph.output]


def test_compressed_mlp_accuracy_equals_its_golden_model(digits_mlp):
    # All 360 test digits: the encodings walked by golden_sparse give the very outputs of the
    # compressed graph in the dense golden model, hence the same accuracy; weight sharing into
    # 16 values costs the pruned model (almost) nothing.
    quantized, compressed, encodings = digits_mlp
    x = np.load(EXAMPLES / "digits_test_x.npy")
    y = np.load(EXAMPLES / "digits_test_y.npy")
    dense_out = run_int(compressed, x)
    sparse_out = run_sparse_graph(compressed, encodings, x)
    assert np.array_equal(sparse_out, dense_out)
    acc_sparse = float((sparse_out.argmax(1) == y).mean())
    acc_golden = float((dense_out.argmax(1) == y).mean())
    acc_quantized = float((run_int(quantized, x).argmax(1) == y).mean())
    assert acc_sparse == acc_golden
    assert acc_sparse >= acc_quantized - 0.01
    for name, enc in encodings.items():
        assert np.array_equal(enc.decode(), compressed.layers[
            [l.name for l in compressed.layers].index(name)].weight_q)


@pytest.mark.parametrize("bad", [{"pes": 0}, {"codebook": np.array([1, 2, 3, 4])},
                                 {"codebook": np.arange(5)}])
def test_encode_rejects_bad_arguments(bad):
    kwargs = {"index": np.zeros((3, 3), dtype=int), "codebook": np.array([0, 1, 2, 3]),
              "pes": 2, **bad}
    with pytest.raises(HoarfrostError):
        encode(**kwargs)


@pytest.mark.parametrize("option, value", [("--rows", "0"), ("--density", "1.5"),
                                           ("--act-density", "-0.1"), ("--pes", "0"),
                                           ("--codebook-bits", "5")])
def test_bench_rejects_bad_options(capsys, option, value):
    from hoarfrost.gen.cli import main

    args = {"--rows": "8", "--cols": "8", "--density": "0.5", "--act-density": "0.5",
            "--pes": "2", option: value}
    argv = ["bench", "sparse"] + [w for k, v in args.items() for w in (k, v)]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and option in err and value in err
