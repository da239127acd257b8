"""Which fully connected layers run on the accelerator's sparse engines, and in what form.

``hoarfrost compile MODEL --sparse N`` puts the last ``N`` fully connected (:class:`Dense`)
layers of the model on zero-skipping sparse engines (:class:`~hoarfrost.hw.sparse_matvec.
SparseMatVec`, one per layer, weights on chip). Before compiling, those layers are pruned (to
``--sparse-density``, or keeping the zeros the model has) and weight-shared to a codebook
(:func:`hoarfrost.gen.sparse.compress_dense`); the compressed graph is what ``model_q.onnx``
holds, so the golden model ``sim`` checks against has the engines' exact integer weights.
After the QDQ round trip the engines' encodings are read back from those integers
(:func:`hoarfrost.gen.sparse.encode_shared`), so OUT/ needs nothing but model_q.onnx to
rebuild them.
"""

from __future__ import annotations

from hoarfrost.gen.errors import HoarfrostError
from hoarfrost.gen.ir import Dense, Graph
from hoarfrost.gen.sparse import compress_graph, encode_shared

__all__ = ["sparse_layer_names", "compress_for_engines", "engine_layers"]


def sparse_layer_names(graph: Graph, count: int) -> list[str]:
    """The last ``count`` fully connected layers of ``graph`` (in graph order, engine 0
    first); a :class:`HoarfrostError` naming ``--sparse`` when there are not that many."""
    if isinstance(count, bool) or not isinstance(count, int) or count < 1:
        raise HoarfrostError(f"--sparse must be a positive number of fully connected layers, "
                             f"not {count!r}")
    dense = [layer.name for layer in graph.layers if isinstance(layer, Dense)]
    if not dense:
        raise HoarfrostError(f"--sparse {count}: model {graph.name!r} has no fully connected "
                             f"(Gemm/MatMul) layer on the back end for the sparse engine")
    if count > len(dense):
        raise HoarfrostError(f"--sparse {count}: model {graph.name!r} has only {len(dense)} "
                             f"fully connected layer(s) on the back end "
                             f"({', '.join(map(repr, dense))})")
    return dense[-count:]


def compress_for_engines(graph: Graph, names, *, density: float | None = None,
                         codebook_bits: int = 4, pes: int = 8, calib=None) -> Graph:
    """``graph`` with the layers ``names`` pruned to ``density`` (None: keep their zeros) and
    weight-shared to ``2**codebook_bits`` codebook entries; other layers unchanged. With
    ``calib`` (the calibration inputs) the pruned layers' kept weights and biases are re-fitted
    to the dense layers' outputs on them (:func:`hoarfrost.gen.sparse.refit_pruned`)."""
    if density is not None and not 0.0 < density <= 1.0:
        raise HoarfrostError(f"--sparse-density must be in (0, 1], not {density!r}")
    compressed, _ = compress_graph(graph, codebook_bits=codebook_bits, density=density, pes=pes,
                                   names=set(names), calib=calib)
    return compressed


def engine_layers(graph: Graph, names, pes: int) -> list[tuple]:
    """Per sparse engine, ``(SparseEncoding, Dense, QParams of its input)`` for the
    (weight-shared) layers ``names`` of ``graph``, as the accelerator and the ISA simulator
    take them."""
    layers = {layer.name: layer for layer in graph.layers}
    return [(encode_shared(layers[name], pes), layers[name],
             graph.quant[layers[name].inputs[0]]) for name in names]
