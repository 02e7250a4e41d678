"""VNN-LIB 1.0 reading and writing, with VNN-COMP semantics.

A VNN-LIB file declares inputs ``X_0..X_{n-1}`` and outputs ``Y_0..Y_{m-1}`` and asserts a formula
that describes the **unsafe** set: the property *holds* iff no input satisfying the input
constraints is mapped by the network to outputs satisfying the output constraints (the SMT query
is unsatisfiable); a satisfying assignment is a counterexample.

Reading converts the conjunction of all ``assert`` commands to disjunctive normal form. In every
disjunct the atoms over inputs only must be single-variable bounds (they form an axis-aligned box)
and the atoms over outputs only become the rows ``C y <= d`` of one unsafe :class:`Clause`.
Disjuncts with the same box are grouped into one :class:`Spec` (order of first appearance), and
the file becomes a :class:`Property` that holds iff every spec holds.

Arithmetic is exact: every literal is read as a ``fractions.Fraction`` (``0.1`` is ``1/10``) and the
linear terms are combined, scaled and divided in rationals, so ``(<= (+ Y_0 1e16) (+ 1e16 1))`` is
``Y_0 <= 1``. Only the final bounds are rounded to float64, each in the direction that keeps proofs
sound: input bounds *outward* (lower bounds down, upper bounds up, so the float box contains the
exact box) and output rows ``C y <= d`` to the *nearest* float (the engine subtracts that
representation error, ``u |C| |y| + u |d|``, itself; rounding here as well would count it twice). The
exact rationals are kept in :attr:`Spec.exact_input` (an :class:`~certify.spec.ExactBox`) and
:attr:`Clause.exact`, with the strictness of every comparison: proofs use the float closure (a
closed set containing the strict one), while a counterexample must satisfy the exact, strict
statement. A constant whose float64 rounding overflows is an error.

Supported syntax: ``(declare-const X_i Real)`` / ``(declare-const Y_j Real)``, ``;`` comments,
``(assert F)`` where ``F`` nests ``and``/``or`` over comparisons ``<= >= < >`` (chains such as
``(<= a b c)`` are conjunctions) of linear terms built from ``+``, ``-`` (unary and n-ary), ``*``
by constants, numeric literals (``1``, ``-0.5``, ``2.5e-3``, SMT-style ``(- 0.5)``) and declared
variables. ``check-sat``, ``get-model``, ``exit`` and the ``set-*`` commands are ignored.

Counterexamples use the VNN-COMP format ``((X_0 v) ... (Y_0 v) ...)``, optionally preceded by
the word ``sat``.
"""
from __future__ import annotations

import gzip
import itertools
import math
import re
from fractions import Fraction
from pathlib import Path
from typing import Union

import numpy as np
import torch

from .errors import ShapeError, SpecError
from .sets import Box, LpBall
from .spec import Clause, ExactBox, Property, Spec, round_float

PathLike = Union[str, Path]

#: The largest DNF a file may expand to.
MAX_DISJUNCTS = 100_000

_TOKEN_RE = re.compile(r"[ \t\r\f\v]+|(\n)|(;[^\n]*)|(\()|(\))|([^\s();]+)")
_NUMBER_RE = re.compile(r"[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE]([+-]?\d+))?\Z")
#: Decimal exponents beyond this magnitude are rejected (the exact value would need huge integers).
MAX_EXPONENT = 10_000
_NUMBERISH_RE = re.compile(r"[+-]?\.?\d")
_VAR_RE = re.compile(r"([XY])_(\d+)\Z")
_LESS = frozenset({"<=", "<"})
_STRICT = frozenset({"<", ">"})
_COMPARISONS = _LESS | {">=", ">"}
_IGNORED_COMMANDS = frozenset({"check-sat", "get-model", "exit", "set-logic", "set-info", "set-option"})
_TOP_COMMANDS = frozenset({"assert", "declare-const"}) | _IGNORED_COMMANDS


# --------------------------------------------------------------------------------------------
# S-expressions
# --------------------------------------------------------------------------------------------


class _Atom:
    __slots__ = ("text", "line")

    def __init__(self, text: str, line: int):
        self.text, self.line = text, line


class _List:
    __slots__ = ("items", "line")

    def __init__(self, line: int):
        self.items: list = []
        self.line = line


_Node = Union[_Atom, _List]


def _show(node: _Node, limit: int = 60) -> str:
    """Source-like text of a node, shortened for messages."""
    if isinstance(node, _Atom):
        return node.text
    parts: list[str] = []
    size = 0
    for item in node.items:
        text = _show(item, limit)
        parts.append(text)
        size += len(text) + 1
        if size > limit:
            break
    text = "(" + " ".join(parts) + ")"
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _parse_sexprs(text: str, path: str) -> tuple[list[_Node], int]:
    """Top-level S-expressions of ``text`` and its number of lines (for end-of-file errors)."""
    line = 1
    top: list[_Node] = []
    stack: list[_List] = []
    for m in _TOKEN_RE.finditer(text):
        kind = m.lastindex
        if kind is None or kind == 2:  # whitespace, comment
            continue
        if kind == 1:
            line += 1
        elif kind == 3:
            node = _List(line)
            (stack[-1].items if stack else top).append(node)
            stack.append(node)
        elif kind == 4:
            if not stack:
                raise SpecError("unbalanced parentheses: ')' without a matching '('", path, line)
            stack.pop()
        else:
            word = m.group(5)
            if len(stack) > 1 and not stack[-1].items and word in _TOP_COMMANDS:
                opened = stack[0]
                raise SpecError(
                    f"unbalanced parentheses: '(' opened here is not closed before "
                    f"'({word}' on line {line}",
                    path,
                    opened.line,
                )
            (stack[-1].items if stack else top).append(_Atom(word, line))
    if stack:
        raise SpecError("unbalanced parentheses: '(' opened here is never closed", path, stack[0].line)
    if text.endswith("\n") and line > 1:
        line -= 1  # the last line that has content
    return top, line


def _read_text(path: PathLike) -> str:
    p = Path(path)
    if not p.is_file():
        raise SpecError("no such file", str(path))
    try:
        if p.name.endswith(".gz"):
            with gzip.open(p, "rb") as f:
                data = f.read()
        else:
            data = p.read_bytes()
    except (OSError, EOFError) as exc:
        raise SpecError(f"cannot read file: {exc}", str(path)) from None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise SpecError("not UTF-8 text", str(path), line) from None


def _write_text(path: PathLike, text: str) -> None:
    p = Path(path)
    data = text.encode("utf-8")
    if p.name.endswith(".gz"):
        with open(p, "wb") as raw, gzip.GzipFile(fileobj=raw, mode="wb", mtime=0) as gz:
            gz.write(data)
    else:
        p.write_bytes(data)


def _stem(path: PathLike) -> str:
    name = Path(path).name
    if name.endswith(".gz"):
        name = name[:-3]
    if name.endswith(".vnnlib"):
        return name[: -len(".vnnlib")]
    return Path(name).stem


# --------------------------------------------------------------------------------------------
# Terms and formulas
# --------------------------------------------------------------------------------------------

# A linear term is (coefficients, constant) with coefficients keyed by ("X", i) / ("Y", j); all
# numbers are exact rationals (Fraction, or int where they are small integers).
_Term = tuple[dict, Fraction]
# Atoms after classification (plain tuples, there are many), values exact:
#   ("x", i, is_upper, value, strict, line)   meaning X_i <= value (is_upper) or X_i >= value (< / > if strict)
#   ("y", {j: c}, d, strict, line)            meaning sum_j c * Y_j <= d (< if strict)


class _Reader:
    """Per-file parsing state (variables declared so far); one instance per file."""

    def __init__(self, path: str):
        self.path = path
        self.vars: dict[str, tuple[str, int]] = {}
        self.decl_line: dict[tuple[str, int], int] = {}

    def error(self, message: str, line: int | None) -> SpecError:
        return SpecError(message, self.path, line)

    # ---- terms ----------------------------------------------------------------------------

    def number(self, node: _Atom, match: re.Match | None = None) -> Fraction:
        """The exact value of a numeric literal; an error if its float64 rounding overflows (or its
        exponent exceeds :data:`MAX_EXPONENT`)."""
        text = node.text
        match = match or _NUMBER_RE.match(text)
        exponent = match.group(1) if match else None
        if exponent is not None and abs(int(exponent)) > MAX_EXPONENT:
            if any(ch in "123456789" for ch in text[: match.start(1)]):
                raise self.error(f"number out of range: {text!r}", node.line)
            return Fraction(0)
        value = Fraction(text)
        if math.isinf(round_float(value)):
            raise self.error(f"number out of range: {text!r}", node.line)
        return value

    def term(self, node: _Node) -> _Term:
        if isinstance(node, _Atom):
            text = node.text
            m = _NUMBER_RE.match(text)
            if m:
                return {}, self.number(node, m)
            if _NUMBERISH_RE.match(text):
                raise self.error(f"expected a number, got {text!r}", node.line)
            var = self.vars.get(text)
            if var is not None:
                return {var: 1}, 0
            if _VAR_RE.match(text):
                raise self.error(f"use of undeclared variable {text!r}", node.line)
            raise self.error(f"expected a number or a variable (X_<int>, Y_<int>), got {text!r}", node.line)
        if not node.items:
            raise self.error("expected a term, got '()'", node.line)
        head, args = node.items[0], node.items[1:]
        op = head.text if isinstance(head, _Atom) else None
        if op not in ("+", "-", "*"):
            raise self.error(
                f"expected an arithmetic term (+, -, * or a number or variable), got {_show(node)!r}", node.line
            )
        if not args:
            raise self.error(f"'{op}' needs at least one argument", node.line)
        terms = [self.term(a) for a in args]
        if op == "+":
            return _sum(terms, [1] * len(terms))
        if op == "-":
            if len(terms) == 1:
                return _scale(terms[0], -1)
            return _sum(terms, [1] + [-1] * (len(terms) - 1))
        # '*': all factors but one must be constants
        factor = 1
        variable: _Term | None = None
        for arg, t in zip(args, terms):
            if t[0]:
                if variable is not None:
                    raise self.error(f"expected a number after '*', got {_show(arg)!r}", arg.line)
                variable = t
            else:
                factor *= t[1]
        if variable is None:
            return {}, factor
        return _scale(variable, factor)

    # ---- formulas -------------------------------------------------------------------------

    def compare(self, node: _List, op: str, args: list[_Node]) -> list:
        if len(args) < 2:
            raise self.error(f"'{op}' needs two arguments, got {len(args)}", node.line)
        terms = [self.term(a) for a in args]
        strict = op in _STRICT
        out = []
        for a, b in zip(terms, terms[1:]):
            lhs, rhs = (a, b) if op in _LESS else (b, a)
            coefs = dict(lhs[0])
            for k, c in rhs[0].items():
                coefs[k] = coefs.get(k, 0) - c
            out.append(self.classify(coefs, rhs[1] - lhs[1], strict, node))
        return out

    def classify(self, coefs: dict, bound: Fraction, strict: bool, node: _List):
        """``sum coefs * vars <= bound`` (``<`` if ``strict``), all exact, as an input bound, an output row
        or a constant truth value. Checks that the float64 roundings used later are finite."""
        xs = [(k[1], c) for k, c in coefs.items() if k[0] == "X" and c != 0]
        ys = {k[1]: c for k, c in coefs.items() if k[0] == "Y"}
        if xs and any(c != 0 for c in ys.values()):
            raise self.error(
                f"mixed input/output constraint {_show(node)!r}: an atom may mention X or Y variables, not both",
                node.line,
            )
        if xs:
            if len(xs) > 1:
                raise self.error(
                    f"general linear constraints over inputs are not supported: {_show(node)!r} "
                    "(expected a bound on a single X variable)",
                    node.line,
                )
            i, c = xs[0]
            value = Fraction(bound) / c  # exact: c * X_i <= b is X_i <= b / c (c > 0) or X_i >= b / c
            upper = c > 0
            if math.isinf(round_float(value, 1 if upper else -1)):
                raise self.error(f"input bound out of range in {_show(node)!r}", node.line)
            return ("x", i, upper, value, strict, node.line)
        if ys:
            if math.isinf(round_float(bound)) or any(math.isinf(round_float(c)) for c in ys.values()):
                raise self.error("constant out of range in comparison", node.line)
            return ("y", ys, bound, strict, node.line)
        return 0 < bound if strict else 0 <= bound

    def dnf(self, node: _Node) -> list[tuple]:
        """The formula as a list of disjuncts, each a tuple of atoms (empty list: false)."""
        if isinstance(node, _Atom):
            if node.text == "true":
                return [()]
            if node.text == "false":
                return []
            raise self.error(f"expected a formula (a comparison, 'and' or 'or'), got {node.text!r}", node.line)
        if not node.items:
            raise self.error("expected a formula, got '()'", node.line)
        head, args = node.items[0], node.items[1:]
        op = head.text if isinstance(head, _Atom) else None
        if op == "and" or op == "or":
            if not args:
                raise self.error(f"'{op}' needs at least one argument", node.line)
            parts = [self.dnf(a) for a in args]
            if op == "and":
                return _conjoin(parts, [a.line for a in args], self)
            out: list[tuple] = []
            for part in parts:
                out.extend(part)
                if len(out) > MAX_DISJUNCTS:
                    raise self.error(f"more than {MAX_DISJUNCTS} disjuncts in disjunctive normal form", node.line)
            return out
        if op in _COMPARISONS:
            atoms = []
            for atom in self.compare(node, op, args):
                if atom is False:
                    return []
                if atom is not True:
                    atoms.append(atom)
            return [tuple(atoms)]
        raise self.error(
            f"unknown operator {_show(head)!r}: expected one of <=, >=, <, >, and, or", node.line
        )

    # ---- commands -------------------------------------------------------------------------

    def declare(self, node: _List) -> None:
        items = node.items
        if len(items) != 3 or not all(isinstance(i, _Atom) for i in items):
            raise self.error(f"expected (declare-const <name> Real), got {_show(node)!r}", node.line)
        name, sort = items[1], items[2]
        m = _VAR_RE.match(name.text)
        if not m:
            raise self.error(
                f"variable names must be X_<int> (inputs) or Y_<int> (outputs), got {name.text!r}", name.line
            )
        if sort.text != "Real":
            raise self.error(f"expected sort 'Real' for {name.text}, got {sort.text!r}", sort.line)
        key = (m.group(1), int(m.group(2)))
        if key in self.decl_line:
            raise self.error(
                f"{name.text} is declared twice (first on line {self.decl_line[key]})", name.line
            )
        self.decl_line[key] = name.line
        self.vars[name.text] = key

    def count(self, kind: str, last_line: int, what: str = "declared") -> int:
        """Number of declared variables of a kind, checking indices are 0..n-1."""
        indices = sorted(i for k, i in self.decl_line if k == kind)
        for expected, got in enumerate(indices):
            if got != expected:
                raise self.error(
                    f"{kind}_{expected} is not {what}: {kind} variables must be {kind}_0..{kind}_<n-1> "
                    f"without gaps (found {kind}_{got})",
                    self.decl_line[(kind, got)],
                )
        if not indices:
            io = "input" if kind == "X" else "output"
            raise self.error(f"no {io} variables {what} (expected {kind}_0, {kind}_1, ...)", last_line)
        return len(indices)


def _sum(terms: list[_Term], signs: list[int]) -> _Term:
    """``sum_t sign_t * term_t`` in exact arithmetic."""
    coefs: dict = {}
    const = 0
    for (tc, tk), s in zip(terms, signs):
        for k, c in tc.items():
            coefs[k] = coefs.get(k, 0) + s * c
        const += s * tk
    return coefs, const


def _scale(term: _Term, factor) -> _Term:
    """``factor * term`` in exact arithmetic."""
    return {k: c * factor for k, c in term[0].items()}, term[1] * factor


def _conjoin(parts: list[list[tuple]], lines: list[int], reader: _Reader) -> list[tuple]:
    """DNF of a conjunction: the product of the parts, keeping atom order, linear in the output."""
    size = 1
    for part, line in zip(parts, lines):
        if not part:
            return []
        size *= len(part)
        if size > MAX_DISJUNCTS:
            raise reader.error(f"more than {MAX_DISJUNCTS} disjuncts in disjunctive normal form", line)
    segments: list[list[tuple]] = []
    block: list = []
    for part in parts:
        if len(part) == 1:
            block.extend(part[0])
        else:
            if block:
                segments.append([tuple(block)])
                block = []
            segments.append(part)
    if block or not segments:
        segments.append([tuple(block)])
    if len(segments) == 1:
        return segments[0]
    return [tuple(itertools.chain.from_iterable(combo)) for combo in itertools.product(*segments)]


# --------------------------------------------------------------------------------------------
# Reading
# --------------------------------------------------------------------------------------------


def read_vnnlib(path: PathLike, n_inputs: int | None = None, n_outputs: int | None = None) -> Property:
    """Read a ``.vnnlib`` (or ``.vnnlib.gz``) file into a :class:`Property` (see the module docstring).

    Raises :class:`SpecError` (with ``path`` and ``line``) for malformed or unsupported files and
    :class:`ShapeError` if ``n_inputs``/``n_outputs`` are given and differ from the declarations.
    """
    source = str(path)
    text = _read_text(path)
    nodes, last_line = _parse_sexprs(text, source)
    reader = _Reader(source)
    parts: list[list[tuple]] = []
    part_lines: list[int] = []
    for node in nodes:
        if not isinstance(node, _List):
            raise reader.error(f"expected a command in parentheses, got {node.text!r}", node.line)
        if not node.items or not isinstance(node.items[0], _Atom):
            raise reader.error(f"expected a command such as (assert ...), got {_show(node)!r}", node.line)
        command = node.items[0].text
        if command == "declare-const":
            reader.declare(node)
        elif command == "assert":
            if len(node.items) != 2:
                raise reader.error(f"expected (assert <formula>), got {_show(node)!r}", node.line)
            try:
                parts.append(reader.dnf(node.items[1]))
            except RecursionError:
                raise reader.error("formula nested too deeply", node.line) from None
            part_lines.append(node.line)
        elif command not in _IGNORED_COMMANDS:
            raise reader.error(
                f"unknown command {command!r}: expected declare-const or assert", node.line
            )
    n_in = reader.count("X", last_line)
    n_out = reader.count("Y", last_line)
    if n_inputs is not None and n_inputs != n_in:
        raise ShapeError(f"{source}: number of inputs (expected by caller vs declared in file)", n_inputs, n_in)
    if n_outputs is not None and n_outputs != n_out:
        raise ShapeError(f"{source}: number of outputs (expected by caller vs declared in file)", n_outputs, n_out)
    disjuncts = _conjoin(parts, part_lines, reader) if parts else []
    if parts and not disjuncts:
        false_line = next((ln for part, ln in zip(parts, part_lines) if not part), part_lines[0])
        raise reader.error("the asserted formula is always false (no disjunct can hold)", false_line)
    if not any(atom[0] == "y" for disjunct in disjuncts for atom in disjunct):
        raise reader.error("no output constraints: the file must assert something about Y variables", last_line)
    return _build_property(reader, disjuncts, n_in, n_out, source)


def _build_property(reader: _Reader, disjuncts: list[tuple], n_in: int, n_out: int, source: str) -> Property:
    """Group the disjuncts by exact input box (bounds and strictness) and build one spec per box.

    Per variable the tightest bound wins (at equal values a strict bound beats a non-strict one); a
    box is empty, and its disjunct dropped, when ``lower > upper`` or ``lower == upper`` with a strict
    end. The float box is the exact box rounded outward (closed), see the module docstring.
    """
    groups: dict[tuple, list[list]] = {}
    boxes: dict[tuple, tuple[list, list, list, list]] = {}
    first_empty: tuple[int, int] | None = None  # (variable, line) of the first empty box
    dropped = 0
    for disjunct in disjuncts:
        lo: list = [None] * n_in
        hi: list = [None] * n_in
        lo_strict = [False] * n_in
        hi_strict = [False] * n_in
        lo_line = [0] * n_in
        hi_line = [0] * n_in
        rows = []
        for atom in disjunct:
            if atom[0] == "x":
                _, i, upper, value, strict, line = atom
                if upper:
                    if hi[i] is None or value < hi[i] or (value == hi[i] and strict and not hi_strict[i]):
                        hi[i], hi_strict[i], hi_line[i] = value, strict, line
                elif lo[i] is None or value > lo[i] or (value == lo[i] and strict and not lo_strict[i]):
                    lo[i], lo_strict[i], lo_line[i] = value, strict, line
            else:
                rows.append(atom)
        for bounds, which in ((lo, "lower"), (hi, "upper")):
            if None in bounds:
                i = bounds.index(None)
                raise reader.error(f"X_{i} has no {which} bound", reader.decl_line[("X", i)])
        empty = [k for k in range(n_in) if lo[k] > hi[k] or (lo[k] == hi[k] and (lo_strict[k] or hi_strict[k]))]
        if empty:
            dropped += 1
            if first_empty is None:
                i = empty[0]
                first_empty = (i, max(lo_line[i], hi_line[i]))
            continue
        # integer pairs: hashing a Fraction is slow, and a key is hashed once per disjunct
        key = (tuple((v.numerator, v.denominator) for v in lo), tuple((v.numerator, v.denominator) for v in hi),
               tuple(lo_strict), tuple(hi_strict))
        clauses = groups.get(key)
        if clauses is None:
            clauses = groups[key] = []
            boxes[key] = (lo, hi, lo_strict, hi_strict)
        clauses.append(rows)
    if not groups:
        i, line = first_empty if first_empty else (0, None)
        raise reader.error(
            f"every input box is empty (e.g. X_{i} has lower bound > upper bound): the property is vacuous",
            line,
        )
    stem = _stem(source)
    specs = []
    for k, (key, clauses) in enumerate(groups.items()):
        lo, hi, lo_strict, hi_strict = boxes[key]
        lo_f = [round_float(v, -1) for v in lo]  # outward: the float box contains the exact box
        hi_f = [round_float(v, +1) for v in hi]
        box = Box(torch.tensor([lo_f], dtype=torch.float64), torch.tensor([hi_f], dtype=torch.float64))
        exact_box = ExactBox((tuple(lo),), (tuple(hi),), (tuple(lo_strict),), (tuple(hi_strict),))
        unsafe = tuple(_clause(rows, n_out) for rows in clauses)
        specs.append(Spec(box, unsafe, stem if len(groups) == 1 else f"{stem}[{k}]", exact_box))
    meta = {"disjuncts": len(disjuncts), "empty_boxes_dropped": dropped}
    return Property(name=stem, specs=tuple(specs), source=source, meta=meta)


def _clause(rows: list, n_out: int) -> Clause:
    """One unsafe clause from its exact rows: ``C``, ``d`` rounded to the nearest float64 (the engine
    covers that representation error), the rationals and strictness kept in ``Clause.exact``."""
    zero = Fraction(0)
    if not rows:  # no output atom: every output is unsafe (the row 0 <= 0)
        exact_rows = (((zero,) * n_out, zero, False),)
        return Clause(torch.zeros(1, 1, n_out, dtype=torch.float64), torch.zeros(1, 1, dtype=torch.float64),
                      (exact_rows,))
    C = np.zeros((1, len(rows), n_out))
    d = np.zeros((1, len(rows)))
    exact_rows = []
    for r, (_, coefs, bound, strict, _line) in enumerate(rows):
        row = [zero] * n_out
        for j, c in coefs.items():
            row[j] = Fraction(c)
            C[0, r, j] = round_float(c)
        d[0, r] = round_float(bound)
        exact_rows.append((tuple(row), Fraction(bound), strict))
    return Clause(torch.from_numpy(C), torch.from_numpy(d), (tuple(exact_rows),))


# --------------------------------------------------------------------------------------------
# Writing
# --------------------------------------------------------------------------------------------


def _exact_box_of(spec: Spec, index: int) -> list[list[tuple]]:
    """Per instance, the exact ``(lower, lower_strict, upper, upper_strict)`` of every input: the spec's
    exact set when it is a box (or an L-inf ball, whose intersection with its clip box is a box),
    else its float box taken exactly."""
    s = spec.input
    if not (isinstance(s, Box) or (isinstance(s, LpBall) and s.p == math.inf)):
        raise SpecError(
            f"VNN-LIB can only express boxes: spec {index} ({spec.name or 'unnamed'}) has input set "
            f"{type(s).__name__}" + (f" with p={s.p}" if isinstance(s, LpBall) else "")
        )
    region = spec.exact_input
    if region is None:
        if isinstance(s, Box):
            _finite(_flat_floats(s.lower) + _flat_floats(s.upper), f"the input box of spec {index}")
        else:
            _finite(_flat_floats(s.center) + _flat_floats(s.eps), f"the input ball of spec {index}")
        region = spec.exact_set()
    return [region.intervals(b) for b in range(spec.batch_size)]


def _is_decimal(q: Fraction) -> bool:
    """Whether ``q`` has a finite decimal expansion (its denominator is ``2^a 5^b``)."""
    den = q.denominator
    for f in (2, 5):
        while den % f == 0:
            den //= f
    return den == 1


def _num(q) -> str:
    """The exact decimal text of a rational with a finite decimal expansion (every float has one):
    ``0.6``, ``-3.0``, ``0.1000000000000000055511151231257827021181583404541015625``."""
    q = Fraction(q)
    sign = "-" if q < 0 else ""
    num, den = abs(q.numerator), q.denominator
    twos = (den & -den).bit_length() - 1
    rest, fives = den >> twos, 0
    while rest % 5 == 0:
        rest //= 5
        fives += 1
    if rest != 1:
        raise ValueError(f"{q} has no finite decimal expansion")
    k = max(twos, fives)  # q * 10^k is an integer
    digits = str(num * 10**k // den)
    if k == 0:
        return f"{sign}{digits}.0"
    digits = digits.rjust(k + 1, "0")
    return f"{sign}{digits[:-k]}.{digits[-k:]}"


def _integral_scale(values: list[Fraction]) -> int:
    """1 if every value is a finite decimal, else the lcm of the denominators (a positive factor that
    makes the atom's numbers integers, so it can be written exactly)."""
    if all(_is_decimal(v) for v in values):
        return 1
    scale = 1
    for v in values:
        scale = scale * v.denominator // math.gcd(scale, v.denominator)
    return scale


def _bound_atoms(i: int, interval: tuple) -> tuple[str, str]:
    """The exact atoms ``X_i <= upper`` and ``X_i >= lower`` (strict where recorded)."""
    lo, lo_strict, hi, hi_strict = interval
    out = []
    for value, strict, ops in ((hi, hi_strict, ("<=", "<")), (lo, lo_strict, (">=", ">"))):
        op = ops[1] if strict else ops[0]
        scale = _integral_scale([value])
        if scale == 1:
            out.append(f"({op} X_{i} {_num(value)})")
        else:
            out.append(f"({op} (* {_num(scale)} X_{i}) {_num(value * scale)})")
    return out[0], out[1]


def _row_atom(coefs: tuple, d: Fraction, strict: bool) -> str:
    """The exact atom ``sum_j coefs[j] Y_j <= d`` (``<`` if strict)."""
    op = "<" if strict else "<="
    nz = [(j, Fraction(c)) for j, c in enumerate(coefs) if c != 0]
    scale = _integral_scale([c for _, c in nz] + [Fraction(d)])
    if scale != 1:
        nz = [(j, c * scale) for j, c in nz]
        d = d * scale
    if not nz:
        return f"({op} (* 0.0 Y_0) {_num(d)})"
    if len(nz) == 1:
        j, c = nz[0]
        if c == 1:
            return f"({op} Y_{j} {_num(d)})"
        if c == -1:
            return f"({'>' if strict else '>='} Y_{j} {_num(-d)})"
    if len(nz) == 2 and d == 0 and {nz[0][1], nz[1][1]} == {1, -1}:
        (a, ca), (b, _) = nz
        return f"({op} Y_{a} Y_{b})" if ca == 1 else f"({op} Y_{b} Y_{a})"
    terms = [f"Y_{j}" if c == 1 else f"(* {_num(c)} Y_{j})" for j, c in nz]
    lhs = terms[0] if len(terms) == 1 else "(+ " + " ".join(terms) + ")"
    return f"({op} {lhs} {_num(d)})"


def _finite(values: list[float], what: str) -> None:
    if not all(math.isfinite(v) for v in values):
        raise SpecError(f"VNN-LIB needs finite numbers: {what} contains inf or nan")


def write_vnnlib(prop: Property, path: PathLike, comment: str | None = None) -> None:
    """Write ``prop`` as VNN-LIB (gzip-compressed when ``path`` ends in ``.gz``).

    Every instance of every spec becomes one (box, clauses) group. One group is written as
    per-input bound asserts plus one output disjunction; several groups as a single disjunction of
    ``(and <box atoms> <clause atoms>)`` over all (group, clause) pairs, which
    :func:`read_vnnlib` groups back by box.

    What is written is the *exact* statement: ``Spec.exact_input`` and ``Clause.exact`` when present
    (strict comparisons as ``<``/``>``), else the float tensors taken at their exact binary values.
    Numbers are exact decimals (every float has one; ``0.1`` as a float is written with all its 55
    digits); an atom with a non-decimal rational such as ``1/3`` is multiplied by the lcm of its
    denominators (``(<= (* 3.0 X_0) 1.0)``). Reading the file back gives the same exact statement,
    hence the same float tensors.
    """
    if not prop.specs:
        raise SpecError("cannot write a property without specs", str(path))
    n_in, n_out = prop.specs[0].n_inputs, prop.specs[0].n_outputs
    groups: list[tuple[list[tuple], list[tuple]]] = []
    for k, spec in enumerate(prop.specs):
        if spec.n_inputs != n_in or spec.n_outputs != n_out:
            raise ShapeError(f"spec {k} of property {prop.name!r}: (inputs, outputs)", (n_in, n_out),
                             (spec.n_inputs, spec.n_outputs))
        boxes = _exact_box_of(spec, k)
        for c in spec.unsafe:
            if c.exact is None:
                _finite(_flat_floats(c.C) + _flat_floats(c.d), f"an output clause of spec {k}")
        for b in range(spec.batch_size):
            groups.append((boxes[b], [c.exact_rows(b) for c in spec.unsafe]))

    out: list[str] = []
    if comment:
        out.extend("; " + line for line in comment.splitlines())
        out.append("")
    out.extend(f"(declare-const X_{i} Real)" for i in range(n_in))
    out.append("")
    out.extend(f"(declare-const Y_{j} Real)" for j in range(n_out))
    out.append("")

    def box_atoms(box: list[tuple]) -> list[tuple[str, str]]:
        return [_bound_atoms(i, interval) for i, interval in enumerate(box)]

    def clause_atoms(rows: tuple) -> list[str]:
        return [_row_atom(*row) for row in rows]

    if len(groups) == 1:
        box, clauses = groups[0]
        out.append("; input box")
        for upper, lower in box_atoms(box):
            out.append(f"(assert {upper})")
            out.append(f"(assert {lower})")
        out.append("")
        out.append("; unsafe outputs")
        if len(clauses) == 1 and len(clauses[0]) == 1:
            out.append(f"(assert {clause_atoms(clauses[0])[0]})")
        else:
            out.append("(assert (or")
            out.extend("    (and " + " ".join(clause_atoms(rows)) + ")" for rows in clauses)
            out.append("))")
    else:
        out.append("; (input box, unsafe outputs) pairs")
        out.append("(assert (or")
        for box, clauses in groups:
            atoms = " ".join(f"{upper} {lower}" for upper, lower in box_atoms(box))
            for rows in clauses:
                out.append(f"    (and {atoms} " + " ".join(clause_atoms(rows)) + ")")
        out.append("))")
    _write_text(path, "\n".join(out) + "\n")


# --------------------------------------------------------------------------------------------
# Counterexamples
# --------------------------------------------------------------------------------------------


def read_counterexample(path: PathLike) -> tuple[np.ndarray, np.ndarray]:
    """Read a VNN-COMP counterexample ``((X_0 v) ... (Y_0 v) ...)`` (optionally after ``sat``,
    optionally gzipped); returns ``(x, y)`` as float64 arrays in index order."""
    source = str(path)
    nodes, last_line = _parse_sexprs(_read_text(path), source)
    reader = _Reader(source)
    if nodes and isinstance(nodes[0], _Atom):
        word = nodes[0].text
        if word.lower() != "sat":
            raise reader.error(f"expected 'sat' or '(', got {word!r}", nodes[0].line)
        nodes = nodes[1:]
    if len(nodes) != 1 or not isinstance(nodes[0], _List):
        line = nodes[1].line if len(nodes) > 1 else (nodes[0].line if nodes else last_line)
        raise reader.error("expected one parenthesised list of (X_i value) / (Y_j value) pairs", line)
    values: dict[str, dict[int, float]] = {"X": {}, "Y": {}}
    lines: dict[tuple[str, int], int] = {}
    for item in nodes[0].items:
        if not isinstance(item, _List) or len(item.items) != 2 or not isinstance(item.items[0], _Atom):
            raise reader.error(f"expected (X_i value) or (Y_j value), got {_show(item)!r}", item.line)
        name = item.items[0]
        m = _VAR_RE.match(name.text)
        if not m:
            raise reader.error(f"expected a variable X_<int> or Y_<int>, got {name.text!r}", name.line)
        coefs, value = reader.term(item.items[1])
        if coefs:
            raise reader.error(f"expected a number, got {_show(item.items[1])!r}", item.line)
        key = (m.group(1), int(m.group(2)))
        if key in lines:
            raise reader.error(f"{name.text} is given twice (first on line {lines[key]})", name.line)
        lines[key] = name.line
        values[key[0]][key[1]] = round_float(value)  # the nearest float64, as float() did
    reader.decl_line = lines
    out = []
    for kind in ("X", "Y"):
        n = reader.count(kind, last_line, "given")
        out.append(np.array([values[kind][i] for i in range(n)], dtype=np.float64))
    return out[0], out[1]


def _flat_floats(v) -> list[float]:
    if isinstance(v, torch.Tensor):
        v = v.detach().to("cpu", torch.float64).numpy()
    return np.asarray(v, dtype=np.float64).reshape(-1).tolist()


def format_counterexample(x, y) -> str:
    """The VNN-COMP counterexample text for input ``x`` and output ``y`` (any shape, flattened)."""
    lines = [f"(X_{i} {v!r})" for i, v in enumerate(_flat_floats(x))]
    lines += [f"(Y_{j} {v!r})" for j, v in enumerate(_flat_floats(y))]
    return "(" + "\n".join(lines) + ")\n"
