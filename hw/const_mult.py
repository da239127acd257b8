"""Multiplication by constants as shift-and-add: canonical signed digits and adder graphs.

A frozen layer multiplies every activation by weights known when the hardware is generated.
Such a product needs no multiplier: ``x * 7`` is ``(x << 3) - x``, one subtractor. Writing each
constant in canonical signed digits (CSD: digits -1, 0, +1, no two adjacent non-zero) uses the
fewest non-zero digits of any signed-digit form, so the fewest adders. When one activation
meets many constants (the same window element times every output channel's weight), the odd
parts of those constants ("fundamentals", ``3x``, ``5x``, ``7x`` ...) are built once and shared:
a *multiple constant multiplication* adder graph. Every product is then a fundamental, shifted
and signed, which costs no logic at all.

:class:`AdderGraph` is the netlist-independent description: nodes that are inputs or two-input
adders/subtractors of shifted operands, each with its exact value range (so every wire is as
narrow as it can be and nothing can overflow) and its adder depth (for pipelining). It is
turned into Amaranth logic by :meth:`AdderGraph.elaborate`, with pipeline registers inserted
evenly over the adder depth. :class:`ConstMultiplier` is the smallest user: ``y = x * c``.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable, Sequence

from amaranth import Module, Signal, signed
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

__all__ = ["csd", "csd_cost", "Term", "AdderGraph", "ConstMultiplier", "signed_width"]


def csd(value: int) -> list[tuple[int, int]]:
    """Canonical signed digits of ``value``: ``[(shift, sign), ...]`` from the LSB up.

    ``sum(sign << shift) == value``, signs are +1/-1, and no two shifts are adjacent.
    """
    digits = []
    shift = 0
    while value:
        if value & 1:
            # value mod 4 == 3 takes digit -1 (and carries), == 1 takes +1: the CSD rule.
            digit = 2 - (value & 3)
            digits.append((shift, digit))
            value -= digit
        value >>= 1
        shift += 1
    return digits


def csd_cost(value: int) -> int:
    """Adders a lone CSD multiplication by ``value`` costs (non-zero digits minus one)."""
    return max(len(csd(value)) - 1, 0)


def signed_width(lo: int, hi: int) -> int:
    """Bits of the narrowest two's complement signal holding every integer in ``[lo, hi]``."""
    width = 1
    while not (-(1 << width - 1) <= lo and hi < (1 << width - 1)):
        width += 1
    return width


def _odd_part(value: int) -> tuple[int, int]:
    shift = (value & -value).bit_length() - 1
    return value >> shift, shift


@dataclasses.dataclass(frozen=True)
class Term:
    """A signed, shifted graph node: the value ``sign * (node << shift)``."""

    node: int
    shift: int = 0
    sign: int = 1


@dataclasses.dataclass
class _Node:
    # kind "in": an input; "add": sa*(a << ka) + sb*(b << kb); "const": a + const.
    kind: str
    a: int = -1
    b: int = -1
    ka: int = 0
    kb: int = 0
    sa: int = 1
    sb: int = 1
    const: int = 0
    lo: int = 0
    hi: int = 0
    depth: int = 0
    # Linear form over the inputs (input index -> integer coefficient): gives the exact range.
    form: dict = dataclasses.field(default_factory=dict)


class AdderGraph:
    """A shift-and-add network over integer inputs of known ranges.

    Parameters
    ----------
    input_ranges : sequence of (int, int)
        ``(lo, hi)`` of every input; input ``k`` is node ``k``.

    Members
    -------
    nodes : list
        Inputs first, then adders in creation (topological) order.
    """

    def __init__(self, input_ranges: Sequence[tuple[int, int]]):
        self._ranges = [(int(lo), int(hi)) for lo, hi in input_ranges]
        self.nodes: list[_Node] = []
        for k, (lo, hi) in enumerate(self._ranges):
            self.nodes.append(_Node("in", lo=lo, hi=hi, form={k: 1}))
        self._adds: dict[tuple, int] = {}

    # --- construction ----------------------------------------------------------------------

    def _range(self, form: dict, const: int = 0) -> tuple[int, int]:
        lo = hi = const
        for k, coef in form.items():
            a, b = self._ranges[k]
            lo += min(coef * a, coef * b)
            hi += max(coef * a, coef * b)
        return lo, hi

    def _new(self, node: _Node) -> int:
        node.lo, node.hi = self._range(node.form, node.const)
        self.nodes.append(node)
        return len(self.nodes) - 1

    def add(self, a: Term, b: Term) -> Term:
        """One adder: ``a + b``. The result's common power of two and sign stay in the Term,
        so the adder itself never carries constant low zeros or a redundant negation."""
        shift = min(a.shift, b.shift)
        sign = 1
        sa, sb = a.sign, b.sign
        if sa < 0 and sb < 0:
            sa, sb, sign = 1, 1, -1
        key = (a.node, a.shift - shift, sa, b.node, b.shift - shift, sb)
        if key not in self._adds:
            na, nb = self.nodes[a.node], self.nodes[b.node]
            form = dict()
            for src, scale in ((na.form, sa << (a.shift - shift)), (nb.form, sb << (b.shift - shift))):
                for k, coef in src.items():
                    form[k] = form.get(k, 0) + coef * scale
            form = {k: c for k, c in form.items() if c}
            self._adds[key] = self._new(_Node(
                "add", a=a.node, b=b.node, ka=a.shift - shift, kb=b.shift - shift, sa=sa, sb=sb,
                depth=max(na.depth, nb.depth) + 1, form=form))
        return Term(self._adds[key], shift, sign)

    def add_const(self, term: Term, const: int) -> int:
        """One adder: the node ``term + const`` (the term's shift and sign applied)."""
        if const == 0 and term.shift == 0 and term.sign == 1:
            return term.node
        src = self.nodes[term.node]
        form = {k: c * (term.sign << term.shift) for k, c in src.form.items()}
        # A positive shift alone is wiring, not an adder.
        kind = "shift" if const == 0 and term.sign > 0 else "const"
        return self._new(_Node(kind, a=term.node, ka=term.shift, sa=term.sign, const=int(const),
                               depth=src.depth + (kind == "const"), form=form))

    def sum(self, terms: Iterable[Term]) -> Term | None:
        """Sum of ``terms`` as a balanced tree (least adder depth); ``None`` if empty."""
        level = list(terms)
        if not level:
            return None
        while len(level) > 1:
            # Shallow operands first, so deep fundamentals meet the tree late.
            level.sort(key=lambda t: self.nodes[t.node].depth)
            nxt = [self.add(level[i], level[i + 1]) for i in range(0, len(level) - 1, 2)]
            if len(level) % 2:
                nxt.append(level[-1])
            level = nxt
        return level[0]

    def multiply(self, term: Term, constant: int) -> Term | None:
        """``term * constant`` by CSD; ``None`` for a zero constant."""
        return self.sum(Term(term.node, term.shift + s, term.sign * d) for s, d in csd(constant))

    def multiple_constants(self, node: int, constants: Iterable[int]) -> dict[int, Term]:
        """Products of input ``node`` with every constant, sharing odd fundamentals.

        Returns a dict constant -> Term (zero constants are left out). Each odd fundamental
        ``f`` is made with one adder from two earlier ones (``f = |(a << i) +- (b << j)|``, the
        distance-1 step of the RAG-n heuristic) when possible, else by its CSD from ``x``.
        """
        constants = sorted({int(c) for c in constants if c})
        odd = sorted({_odd_part(abs(c))[0] for c in constants}, key=lambda f: (csd_cost(f), f))
        built: dict[int, Term] = {1: Term(node)}
        for f in odd:
            if f in built:
                continue
            built[f] = self._one_adder(built, f) or self._csd_fundamental(built, f, node)
        products = {}
        for c in constants:
            f, shift = _odd_part(abs(c))
            t = built[f]
            products[c] = Term(t.node, t.shift + shift, t.sign * (1 if c > 0 else -1))
        return products

    def _one_adder(self, built: dict[int, Term], f: int) -> Term | None:
        limit = f.bit_length() + 1
        for a, ta in built.items():
            for b, tb in built.items():
                for i in range(limit + 1):
                    # f = (a << i) + b, (a << i) - b, b - (a << i); odd f needs b odd, unshifted.
                    for sa, sb in ((1, 1), (1, -1), (-1, 1)):
                        if sa * (a << i) + sb * b == f:
                            return self.add(Term(ta.node, ta.shift + i, ta.sign * sa),
                                            Term(tb.node, tb.shift, tb.sign * sb))
        return None

    def _csd_fundamental(self, built: dict[int, Term], f: int, node: int) -> Term:
        # Accumulate digits from the LSB; every partial sum is odd and is kept for reuse.
        digits = csd(f)
        acc = Term(node, digits[0][0], digits[0][1])
        value = digits[0][1] << digits[0][0]
        for shift, sign in digits[1:]:
            acc = self.add(acc, Term(node, shift, sign))
            value += sign << shift
            if value > 0 and value & 1 and value not in built:
                built[value] = acc
        return acc

    # --- queries -----------------------------------------------------------------------------

    def width(self, node: int) -> int:
        n = self.nodes[node]
        return signed_width(n.lo, n.hi)

    def value_range(self, node: int) -> tuple[int, int]:
        return self.nodes[node].lo, self.nodes[node].hi

    def used(self, outputs: Iterable[int]) -> list[int]:
        """Adder nodes (not inputs, not wiring) that ``outputs`` depend on, in topological order."""
        return [k for k in self._reachable(outputs) if self.nodes[k].kind != "shift"]

    def _reachable(self, outputs: Iterable[int]) -> list[int]:
        seen = set()
        stack = list(outputs)
        while stack:
            k = stack.pop()
            if k in seen:
                continue
            seen.add(k)
            n = self.nodes[k]
            stack += [x for x in (n.a, n.b) if x >= 0]
        return sorted(k for k in seen if self.nodes[k].kind != "in")

    def adder_widths(self, outputs: Iterable[int]) -> list[int]:
        """Output width of every adder ``outputs`` need: the adders switched per evaluation."""
        return [self.width(k) for k in self.used(outputs)]

    def depth(self, outputs: Iterable[int]) -> int:
        return max((self.nodes[k].depth for k in outputs), default=0)

    def _stage_of(self, needed: Sequence[int], stages: int) -> dict[int, int]:
        # Adder depth d in 1..top goes to stage (d-1)*stages//top: levels spread evenly.
        top = max([self.nodes[k].depth for k in needed] + [1])
        stage_of = {}
        for k in range(len(self.nodes)):
            d = self.nodes[k].depth
            stage_of[k] = 0 if d == 0 else min((d - 1) * stages // top, stages - 1)
        return stage_of

    def register_bits(self, outputs: Sequence[int], *, stages: int) -> int:
        """Bits of the pipeline registers :meth:`elaborate` makes (loaded once per evaluation)."""
        needed = self._reachable(outputs)
        stage_of = self._stage_of(needed, stages)
        last_use = {}
        for k in needed:
            n = self.nodes[k]
            for op in (n.a, n.b):
                if op >= 0:
                    last_use[op] = max(last_use.get(op, 0), stage_of[k])
        for k in outputs:
            last_use[k] = stages - 1
        return sum(self.width(k) * max(s - stage_of[k], 0) for k, s in last_use.items())

    # --- hardware ----------------------------------------------------------------------------

    def elaborate(self, m: Module, inputs: Sequence, outputs: Sequence[int], *, stages: int,
                  enable, name: str = "ag") -> list:
        """Build the logic for ``outputs`` in module ``m``; return their values.

        ``inputs`` are the Amaranth values of the input nodes, valid in pipeline stage 0. The
        adders are spread evenly over ``stages`` stages by their depth; a register (clock
        enable ``enable``) closes every stage but the last, so the returned values are
        combinational in stage ``stages - 1``: ``stages - 1`` cycles after their inputs.
        """
        needed = self._reachable(outputs)
        stage_of = self._stage_of(needed, stages)
        comb = {k: inputs[k] for k in range(len(self._ranges))}
        delayed: dict[tuple[int, int], object] = {}
        loads = []

        def at(k: int, stage: int):
            if stage == stage_of[k]:
                return comb[k]
            if (k, stage) not in delayed:
                reg = Signal(signed(self.width(k)), name=f"{name}_n{k}_s{stage}")
                loads.append(reg.eq(at(k, stage - 1)))
                delayed[(k, stage)] = reg
            return delayed[(k, stage)]

        for k in needed:
            n = self.nodes[k]
            s = stage_of[k]
            a = at(n.a, s)
            a = a << n.ka if n.ka else a
            a = -a if n.sa < 0 else a
            if n.kind == "add":
                b = at(n.b, s)
                b = b << n.kb if n.kb else b
                value = a - b if n.sb < 0 else a + b
            elif n.kind == "shift":
                value = a
            else:
                value = a + n.const
            # Plain expressions, no wire per node: the exact range says the top bits Amaranth's
            # widening adds are copies of the sign, so the slice loses nothing. (Fewer signals
            # also keep generation time down: a layer has thousands of adders.)
            width = self.width(k)
            comb[k] = value if len(value) == width else value[:width].as_signed()
        results = [at(k, stages - 1) for k in outputs]
        with m.If(enable):
            m.d.sync += loads
        return results


class ConstMultiplier(wiring.Component):
    """``product = x * constant`` as CSD shift-and-add, combinational.

    Parameters
    ----------
    constant : int
        The constant factor.
    width : int
        Width of the signed input ``x``.

    Members
    -------
    x : ``In(signed(width))``
        The operand.
    product : ``Out(signed(...))``
        ``x * constant``, exactly (width from the product's range).
    adders : int
        Adders used (attribute, not a port).
    """

    def __init__(self, constant: int, width: int = 8):
        if not isinstance(constant, int):
            raise TypeError(f"Constant must be an integer, not {constant!r}")
        self._constant = constant
        self._width = width
        lo, hi = -(1 << width - 1), (1 << width - 1) - 1
        self._graph = AdderGraph([(lo, hi)])
        term = self._graph.multiply(Term(0), constant)
        self._out = None if term is None else self._graph.add_const(term, 0)
        plo, phi = sorted((constant * lo, constant * hi))
        self.adders = 0 if self._out is None else len(self._graph.used([self._out]))
        super().__init__({
            "x": In(signed(width)),
            "product": Out(signed(signed_width(plo, phi))),
        })

    def elaborate(self, platform):
        m = Module()
        if self._out is not None:
            (value,) = self._graph.elaborate(m, [self.x], [self._out], stages=1, enable=1)
            m.d.comb += self.product.eq(value)
        return m
