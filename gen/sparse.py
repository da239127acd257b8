"""Pruning, weight sharing and EIE's compressed encoding of fully connected layers.

A compressed layer goes through three steps (Han et al., "EIE", ISCA 2016, and "Deep
Compression", ICLR 2016):

1. **Pruning** by magnitude to a target density (:func:`prune_magnitude`), or keeping the zeros
   of an already pruned model.
2. **Weight sharing**: the non-zero weights of a layer are clustered by 1-D k-means
   (:func:`kmeans_1d`, deterministic: centroids start evenly spread over the weights' range)
   into ``2**bits - 1`` centroids. Codebook entry 0 is reserved for the value 0, which only the
   padding entries of the encoding use.
3. **Encoding** (:class:`SparseEncoding`): row ``r`` belongs to processing element ``r % pes``;
   each PE stores its rows column by column (CSC). An entry is a 4-bit *relative index* (the
   number of zero rows skipped since the previous entry of the column, or since the column's
   first local row) and a codebook index. A gap longer than 15 rows is bridged by a padding
   entry (relative index 15, codebook index 0, value 0).

Column pointers are stored as per-column entry *counts*, not as absolute pointers: activations
stream in column order, every column passes the engine's front end, so a running sum of the
counts yields each column's start address for free. The counts are small (about 3.5 at 10%
density over 32 rows per PE), so each is stored in ``main`` bits (e.g. 3) where the all-ones
value is an escape: such a column's count is that value plus an extension of ``ext`` bits kept
in a second, short list read in order (:meth:`SparseEncoding.count_split`). At 10% density this
is about 3.1 bits per column per PE instead of EIE's 16-bit pointers.

Integer contract: the codebook holds int8 values on **one** per-layer scale, so a compressed
layer is an ordinary quantized :class:`~hoarfrost.gen.ir.Dense` whose ``weight_q`` is
``codebook[index]`` and whose ``weight_scale`` entries are all equal; its ``bias_q`` and
``requant`` come from :func:`hoarfrost.gen.quantize.lower_integer`. The golden model
(:func:`hoarfrost.sim.golden.dense_int`) therefore runs a compressed layer unchanged.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np

from hoarfrost.gen.errors import HoarfrostError
from hoarfrost.gen.ir import Dense, Graph, QParams
from hoarfrost.gen.quantize import lower_integer

__all__ = [
    "REL_BITS", "CODEBOOK_BITS", "SparseEncoding", "prune_magnitude", "kmeans_1d",
    "share_weights", "encode", "compress_dense", "compress_graph", "encode_shared",
]

#: Bits of a relative row index: gaps up to 15 zero rows fit, longer ones need padding.
REL_BITS = 4
#: Codebook sizes supported: 2**bits entries, entry 0 reserved for zero.
CODEBOOK_BITS = (2, 3, 4)
#: Bits of one codebook value (int8 on the layer's scale).
CODEBOOK_VALUE_BITS = 8
MAX_REL = (1 << REL_BITS) - 1


def prune_magnitude(weight: np.ndarray, density: float) -> np.ndarray:
    """Zero all but the ``round(density * size)`` largest-magnitude weights of a layer.

    Ties are broken by position (a stable sort), so the result is deterministic.
    """
    if not 0.0 <= density <= 1.0:
        raise HoarfrostError(f"density must be in [0, 1], not {density!r}")
    weight = np.asarray(weight)
    keep = int(round(density * weight.size))
    flat = weight.reshape(-1)
    order = np.argsort(-np.abs(flat), kind="stable")
    mask = np.zeros(flat.size, dtype=bool)
    mask[order[:keep]] = True
    return np.where(mask, flat, 0).reshape(weight.shape).astype(weight.dtype)


def refit_pruned(weight: np.ndarray, bias: np.ndarray, pruned: np.ndarray,
                 inputs: np.ndarray, ridge: float = 1e-3) -> tuple[np.ndarray, np.ndarray]:
    """Re-fit a pruned layer's surviving weights and its bias to the dense layer's outputs.

    For each output ``j``, the weights ``pruned[j]`` kept (its non-zeros) and ``bias[j]`` are
    solved by least squares so that ``inputs @ w + b`` is as close as it can be to the dense
    ``inputs @ weight[j] + bias[j]`` on the given inputs (rows of ``inputs``: the layer's input
    vectors, e.g. its activations on the calibration data). Magnitude pruning alone drops the
    pruned weights' contribution; this moves it onto the weights that stay (the layer-wise
    reconstruction of optimal brain surgeon / SparseGPT, solved exactly for a linear layer),
    with no labels and no retraining. ``ridge`` (times the mean squared input) regularizes
    the solve when there are few inputs. Returns ``(weight, bias)``, zeros where ``pruned``
    has them.
    """
    weight, bias = np.asarray(weight, np.float64), np.asarray(bias, np.float64)
    inputs = np.asarray(inputs, np.float64).reshape(len(inputs), -1)
    target = inputs @ weight.T + bias
    out_w, out_b = np.zeros_like(weight), bias.copy()
    scale = ridge * max(float(np.mean(inputs ** 2)), 1e-12) * len(inputs)
    for j in range(weight.shape[0]):
        kept = np.flatnonzero(pruned[j])
        a = np.hstack([inputs[:, kept], np.ones((len(inputs), 1))])
        penalty = np.full(len(kept) + 1, scale)
        penalty[-1] = 0.0                       # the bias is not shrunk
        solution = np.linalg.solve(a.T @ a + np.diag(penalty), a.T @ target[:, j])
        out_w[j, kept], out_b[j] = solution[:-1], solution[-1]
    return out_w, out_b


def kmeans_1d(values: np.ndarray, k: int, iterations: int = 50) -> np.ndarray:
    """Lloyd's k-means of 1-D ``values`` into ``k`` centroids, linear initialisation.

    Centroids start evenly spaced over ``[min, max]`` (Deep Compression found this keeps the
    large, rare weights better than random or density-based starts). A centroid left without
    members keeps its place. Returns the ``k`` centroids sorted ascending (float64).
    """
    values = np.asarray(values, dtype=np.float64).reshape(-1)
    if values.size == 0:
        return np.zeros(k)
    centroids = np.linspace(values.min(), values.max(), k)
    for _ in range(iterations):
        # Nearest centroid; centroids stay sorted, so the midpoints split the line.
        label = np.searchsorted((centroids[1:] + centroids[:-1]) / 2, values)
        sums = np.bincount(label, weights=values, minlength=k)
        counts = np.bincount(label, minlength=k)
        new = np.where(counts > 0, sums / np.maximum(counts, 1), centroids)
        new = np.sort(new)
        if np.array_equal(new, centroids):
            break
        centroids = new
    return centroids


def share_weights(weight: np.ndarray, bits: int) -> tuple[np.ndarray, np.ndarray, float]:
    """Cluster the non-zero entries of ``weight`` (real values) into an int8 codebook.

    Returns ``(codebook, index, scale)``: ``codebook`` has ``2**bits`` int values with
    ``codebook[0] == 0``; ``index`` has ``weight``'s shape, 0 exactly where ``weight`` is 0;
    the shared weight is ``codebook[index] * scale``.
    """
    if bits not in CODEBOOK_BITS:
        raise HoarfrostError(f"codebook bits must be one of 2, 3, 4, not {bits!r}")
    weight = np.asarray(weight, dtype=np.float64)
    nonzero = weight != 0
    centroids = kmeans_1d(weight[nonzero], (1 << bits) - 1)
    peak = float(np.abs(centroids).max()) if nonzero.any() else 0.0
    scale = float(np.float32(peak / 127.0)) if peak > 0 else 1.0
    codebook = np.concatenate([[0], np.clip(np.rint(centroids / scale), -127, 127)])
    codebook = codebook.astype(np.int64)
    index = np.zeros(weight.shape, dtype=np.int64)
    if nonzero.any():
        mids = (centroids[1:] + centroids[:-1]) / 2
        index[nonzero] = 1 + np.searchsorted(mids, weight[nonzero])
    return codebook, index, scale


@dataclass(frozen=True, eq=False)
class SparseEncoding:
    """One layer in EIE's compressed form.

    Parameters
    ----------
    rows, cols : int
        Shape of the weight matrix (outputs, inputs).
    pes : int
        Processing elements; row ``r`` is row ``r // pes`` of PE ``r % pes``.
    index_bits : int
        Bits of a codebook index (the codebook has ``2**index_bits`` entries).
    codebook : numpy.ndarray
        ``2**index_bits`` int8 weight values; entry 0 is 0.
    rel : tuple of numpy.ndarray
        Per PE, the relative row index of every entry, all columns concatenated.
    index : tuple of numpy.ndarray
        Per PE, the codebook index of every entry (0 only for padding).
    counts : numpy.ndarray
        ``(pes, cols)`` entries of each column in each PE (the stored pointers).
    """

    rows: int
    cols: int
    pes: int
    index_bits: int
    codebook: np.ndarray
    rel: tuple
    index: tuple
    counts: np.ndarray

    def pe_rows(self, pe: int) -> int:
        """Number of rows PE ``pe`` owns."""
        return len(range(pe, self.rows, self.pes))

    @property
    def local_rows(self) -> int:
        """Rows of the largest PE (``ceil(rows / pes)``)."""
        return -(-self.rows // self.pes)

    def pointers(self, pe: int) -> np.ndarray:
        """Start of each column's entries in PE ``pe``'s memory, plus the end (``cols + 1``)."""
        return np.concatenate([[0], np.cumsum(self.counts[pe])]).astype(np.int64)

    @property
    def entries(self) -> int:
        """Stored entries over all PEs, padding included."""
        return int(self.counts.sum())

    @property
    def padding(self) -> int:
        """Padding entries (codebook index 0) over all PEs."""
        return int(sum(int((idx == 0).sum()) for idx in self.index))

    @property
    def count_bits(self) -> int:
        """Bits of one stored column count (pointer delta)."""
        return max(1, int(self.counts.max(initial=0)).bit_length())

    @property
    def ptr_bits(self) -> int:
        """Bits of an address into the largest PE's entry memory."""
        return max(1, int(self.counts.sum(axis=1).max(initial=0)).bit_length())

    def count_split(self) -> tuple[int, int]:
        """``(main_bits, ext_bits)`` of the stored counts, the split with the fewest bits.

        A count below ``2**main_bits - 1`` is stored as is; a larger one as the escape
        ``2**main_bits - 1`` plus ``count - escape`` in ``ext_bits`` bits (0: no escapes).
        """
        flat = self.counts.reshape(-1)
        best = (self.pes * self.cols * self.count_bits, self.count_bits, 0)
        for main in range(1, self.count_bits):
            escape = (1 << main) - 1
            over = flat[flat >= escape]
            if not over.size:
                ext = 0
            else:
                ext = max(1, int(over.max() - escape).bit_length())
            bits = flat.size * main + over.size * ext
            if bits < best[0]:
                best = (bits, main, ext)
        return best[1], best[2]

    def count_memories(self, pe: int) -> tuple[list[int], list[int]]:
        """PE ``pe``'s stored counts: one ``main`` word per column, one ``ext`` word per
        escaped column, in column order (see :meth:`count_split`)."""
        main_bits, ext_bits = self.count_split()
        escape = (1 << main_bits) - 1
        counts = [int(c) for c in self.counts[pe]]
        if not ext_bits:
            return counts, []
        main = [min(c, escape) for c in counts]
        return main, [c - escape for c in counts if c >= escape]

    def storage_bits(self) -> dict:
        """Storage of this layer's weights, in bits, and per original weight.

        Entries cost ``index_bits + REL_BITS`` each (padding included), pointers
        ``main_bits`` per column per PE plus ``ext_bits`` per escaped column (see
        :meth:`count_split`), the codebook ``2**index_bits`` int8 values.
        """
        entry_bits = self.entries * (self.index_bits + REL_BITS)
        main_bits, ext_bits = self.count_split()
        escapes = sum(len(self.count_memories(pe)[1]) for pe in range(self.pes))
        pointer_bits = self.pes * self.cols * main_bits + escapes * ext_bits
        codebook_bits = (1 << self.index_bits) * CODEBOOK_VALUE_BITS
        total = entry_bits + pointer_bits + codebook_bits
        return {
            "entries": entry_bits, "pointers": pointer_bits, "codebook": codebook_bits,
            "total": total, "per_weight": total / (self.rows * self.cols),
        }

    def decode_index(self) -> np.ndarray:
        """The ``(rows, cols)`` codebook index matrix this encoding stores."""
        index = np.zeros((self.rows, self.cols), dtype=np.int64)
        for pe in range(self.pes):
            ptr = self.pointers(pe)
            for col in range(self.cols):
                local = -1
                for k in range(ptr[col], ptr[col + 1]):
                    local += int(self.rel[pe][k]) + 1
                    if self.index[pe][k]:
                        index[local * self.pes + pe, col] = self.index[pe][k]
        return index

    def decode(self) -> np.ndarray:
        """The ``(rows, cols)`` int weight matrix ``codebook[index]``."""
        return self.codebook[self.decode_index()]


def encode(index: np.ndarray, codebook: np.ndarray, pes: int) -> SparseEncoding:
    """Encode a ``(rows, cols)`` codebook index matrix (0 = pruned) for ``pes`` PEs."""
    index = np.asarray(index, dtype=np.int64)
    if index.ndim != 2:
        raise HoarfrostError(f"weight index must be a matrix, not shape {index.shape!r}")
    if not isinstance(pes, (int, np.integer)) or pes < 1:
        raise HoarfrostError(f"number of PEs must be a positive integer, not {pes!r}")
    codebook = np.asarray(codebook, dtype=np.int64)
    bits = int(len(codebook)).bit_length() - 1
    if len(codebook) != 1 << bits or bits not in CODEBOOK_BITS or codebook[0] != 0:
        raise HoarfrostError(f"codebook must have 4, 8 or 16 entries starting with 0, "
                             f"not {codebook.tolist()!r}")
    if index.min(initial=0) < 0 or index.max(initial=0) >= len(codebook):
        raise HoarfrostError(f"weight index out of the codebook's range 0..{len(codebook) - 1}")
    rows, cols = index.shape
    rels, idxs = [], []
    counts = np.zeros((pes, cols), dtype=np.int64)
    for pe in range(pes):
        mine = index[pe::pes]                       # this PE's rows, local order
        rel, idx = [], []
        for col in range(cols):
            before = len(rel)
            last = -1
            for local in np.flatnonzero(mine[:, col]):
                gap = int(local) - last - 1
                while gap > MAX_REL:                # bridge a long run of zeros
                    rel.append(MAX_REL)
                    idx.append(0)
                    gap -= MAX_REL + 1
                rel.append(gap)
                idx.append(int(mine[local, col]))
                last = int(local)
            counts[pe, col] = len(rel) - before
        rels.append(np.array(rel, dtype=np.int64))
        idxs.append(np.array(idx, dtype=np.int64))
    return SparseEncoding(rows, cols, pes, bits, codebook, tuple(rels), tuple(idxs), counts)


def _real_weight(layer: Dense) -> np.ndarray:
    if layer.weight is not None:
        return np.asarray(layer.weight, dtype=np.float64)
    return layer.weight_q.astype(np.float64) * np.asarray(layer.weight_scale)[:, None]


def compress_dense(layer: Dense, q_in: QParams, q_out: QParams, *, codebook_bits: int = 4,
                   density: float | None = None, pes: int = 8,
                   refit_inputs: np.ndarray | None = None) -> tuple[Dense, SparseEncoding]:
    """Prune, weight-share and encode a quantized :class:`Dense` layer.

    Parameters
    ----------
    layer : Dense
        A quantized fully connected layer (float ``weight`` and ``bias`` are used when present).
    q_in, q_out : QParams
        Quantization of the layer's input and output tensors.
    codebook_bits : int
        2, 3 or 4: a codebook of ``2**codebook_bits`` entries.
    density : float, optional
        Prune by magnitude to this fraction of non-zero weights; ``None`` keeps the zeros the
        layer already has (an already pruned model).
    pes : int
        Processing elements the encoding interleaves rows over.
    refit_inputs : ndarray, optional
        The layer's float input vectors ``(N, cols)`` on calibration data: with ``density``,
        the kept weights and the bias are re-fitted to the dense layer's outputs on them
        (:func:`refit_pruned`) before weight sharing.

    Returns
    -------
    (Dense, SparseEncoding)
        The weight-shared layer (``weight_q == codebook[index]``, one ``weight_scale`` value,
        ``bias_q``/``requant`` from :func:`lower_integer`) and its encoding.
    """
    if not isinstance(layer, Dense) or layer.weight_q is None:
        raise HoarfrostError(f"layer {getattr(layer, 'name', layer)!r} is not a quantized Dense")
    weight = _real_weight(layer)
    rows = weight.shape[0]
    bias = np.zeros(rows) if layer.bias is None else np.asarray(layer.bias, dtype=np.float64)
    if density is not None:
        pruned = prune_magnitude(weight, density)
        if refit_inputs is None:
            weight = pruned
        else:
            weight, bias = refit_pruned(weight, bias, pruned, refit_inputs)
    codebook, index, scale = share_weights(weight, codebook_bits)
    weight_q = codebook[index]
    shared = dataclasses.replace(
        layer, weight=(weight_q * scale).astype(np.float32), bias=bias,
        weight_q=weight_q, weight_scale=np.full(rows, scale), weight_bits=8,
        bias_q=None, requant=None)
    lower_integer(Graph(layer.inputs[0], layer.output, {}, [shared],
                        {layer.inputs[0]: q_in, layer.output: q_out}))
    return shared, encode(index, codebook, pes)


def compress_graph(graph: Graph, *, codebook_bits: int = 4, density: float | None = None,
                   pes: int = 8, names=None,
                   calib: np.ndarray | None = None) -> tuple[Graph, dict[str, SparseEncoding]]:
    """Compress every :class:`Dense` layer of a quantized graph (see :func:`compress_dense`),
    or only those named in ``names``.

    With ``calib`` (model inputs, float or int8) and ``density``, each pruned layer is re-fitted
    (:func:`refit_pruned`) to its dense outputs on the calibration data, its inputs taken from
    the integer model with the layers before it already compressed, so a later layer also
    makes up for an earlier one's error.

    Returns a new graph, runnable by :func:`hoarfrost.sim.golden.run_int`, and the encodings
    keyed by layer name. Other layers are shared with ``graph`` unchanged.
    """
    from hoarfrost.sim.golden import run_int

    if not graph.is_quantized:
        raise HoarfrostError(f"model {graph.name!r} is not quantized")

    def with_layers(layers):
        return Graph(graph.input, graph.output, dict(graph.shapes), list(layers),
                     dict(graph.quant), graph.name, graph.input_dtype, dict(graph.extra))

    layers, encodings = list(graph.layers), {}
    for i, layer in enumerate(graph.layers):
        if isinstance(layer, Dense) and (names is None or layer.name in names):
            inputs = None
            if calib is not None and density is not None:
                tensor = layer.inputs[0]
                q = run_int(with_layers(layers), calib, keep_all=True)[tensor]
                inputs = graph.quant[tensor].dequantize(q).reshape(len(q), -1)
            layers[i], encodings[layer.name] = compress_dense(
                layer, graph.quant[layer.inputs[0]], graph.quant[layer.output],
                codebook_bits=codebook_bits, density=density, pes=pes, refit_inputs=inputs)
    return with_layers(layers), encodings


def encode_shared(layer: Dense, pes: int) -> SparseEncoding:
    """The encoding of a layer already weight-shared (by :func:`compress_dense`), read back
    from its integer weights alone, e.g. after a round trip through a QDQ file.

    The codebook is the layer's distinct non-zero ``weight_q`` values (entry 0 stays 0, unused
    entries are 0 too), in the smallest of :data:`CODEBOOK_BITS` that holds them. Centroids
    that rounded to the same int8 value share an entry; one that rounded to 0 is no entry at
    all: the products are the same, so the engine still equals ``dense_int`` on ``layer``.
    """
    weight_q = np.asarray(layer.weight_q, dtype=np.int64)
    values = np.unique(weight_q[weight_q != 0])
    bits = next((b for b in CODEBOOK_BITS if len(values) < 1 << b), None)
    if bits is None:
        raise HoarfrostError(f"layer {layer.name!r} has {len(values)} distinct weights, a "
                             f"codebook holds at most {(1 << CODEBOOK_BITS[-1]) - 1}: it is not "
                             f"weight-shared")
    codebook = np.zeros(1 << bits, dtype=np.int64)
    codebook[1:1 + len(values)] = values
    index = np.where(weight_q != 0, 1 + np.searchsorted(values, weight_q), 0)
    return encode(index, codebook, pes)


def random_activations(rng: np.random.Generator, count: int, cols: int, act_density: float,
                       zero_point: int) -> np.ndarray:
    """``(count, cols)`` int8 inputs of which a fraction ``act_density`` differ from
    ``zero_point`` (exactly ``round(act_density * cols)`` per vector, at random places)."""
    if not 0.0 <= act_density <= 1.0:
        raise HoarfrostError(f"activation density must be in [0, 1], not {act_density!r}")
    x = np.full((count, cols), zero_point, dtype=np.int64)
    live = int(round(act_density * cols))
    choices = np.array([v for v in range(-128, 128) if v != zero_point])
    for n in range(count):
        where = rng.permutation(cols)[:live]
        x[n, where] = rng.choice(choices, live)
    return x.astype(np.int8)


def random_layer(rows: int, cols: int, density: float, *, codebook_bits: int = 4,
                 pes: int = 8, seed: int = 0) -> tuple[Dense, QParams, SparseEncoding]:
    """A synthetic compressed layer: Gaussian weights pruned to ``density``, weight-shared,
    with a random bias and an output quantization fitted to its outputs on random inputs.

    Returns ``(layer, q_in, encoding)`` as :func:`compress_dense` does.
    """
    from hoarfrost.gen.quantize import quantize_weights, range_qparams

    for name, value in (("rows", rows), ("cols", cols)):
        if not isinstance(value, (int, np.integer)) or value < 1:
            raise HoarfrostError(f"--{name} must be a positive integer, not {value!r}")
    rng = np.random.default_rng(seed)
    weight = prune_magnitude(rng.standard_normal((rows, cols)) * 0.1, density)
    bias = rng.standard_normal(rows) * 0.1
    q_in = QParams(0.02, int(rng.integers(-20, 21)))
    # Fit the output range to what random inputs produce, so outputs are not all clamped.
    x = q_in.dequantize(rng.integers(-128, 128, (64, cols)))
    y = x @ weight.T + bias
    q_out = range_qparams(y.min(), y.max())
    weight_q, scale = quantize_weights(weight, 8)
    layer = Dense("random", ["x"], "y", weight=weight.astype(np.float32),
                  bias=bias.astype(np.float32), weight_q=weight_q, weight_scale=scale,
                  weight_bits=8)
    layer, enc = compress_dense(layer, q_in, q_out, codebook_bits=codebook_bits, pes=pes)
    return layer, q_in, enc
