"""Whole models in from ONNX: :func:`from_onnx_model` builds a cybn model from an ONNX
graph of the batch-normalized CNN families (chains, residual adds, concatenated branches,
channel split and shuffle, squeeze-and-excitation) by walking its series-parallel
structure. Needs the ``onnx`` package (``pip install cybn[onnx]``), imported when called;
the model it builds runs on cybn alone (no ONNX Runtime).
"""

from __future__ import annotations

import numpy as np

from . import nn
from .onnx_export import HARDSIGMOID

__all__ = ["from_onnx_model"]


def _channels(layer, c):
    """The channel count after ``layer`` for ``c`` channels in (None where unknown)."""
    if isinstance(layer, nn.Sequential):
        for m in layer:
            c = _channels(m, c)
        return c
    if type(layer) is nn.Conv2d:
        return layer.out_channels
    if type(layer) is nn.Linear:
        return layer.out_features
    if type(layer) is nn.ChannelSlice:
        return layer.stop - layer.start
    if type(layer) is nn.Concat:
        sizes = [_channels(b, c) for b in layer]
        return None if None in sizes else sum(sizes)
    if type(layer) is nn.Residual:
        for _, m in layer.body_items():
            c = _channels(m, c)
        return c
    if type(layer) is nn.Flatten:
        return None
    return c


_SKIPPED = ("Identity", "Dropout")  # identities at inference


class _Reader:
    """The graph as tensors (names) and nodes, with what each node reaches, and the walk
    that turns its series-parallel structure into Sequential, Residual and Concat."""

    def __init__(self, onnx, graph, channels_last: bool, dtype):
        self.onnx = onnx
        self.cl = bool(channels_last)
        consts = {t.name for t in graph.initializer}
        self.input = [i.name for i in graph.input if i.name not in consts][0]
        self.outputs = {o.name for o in graph.output}
        self.consts = {t.name: onnx.numpy_helper.to_array(t) for t in graph.initializer}
        # shape arithmetic (Shape, Gather, Unsqueeze, Concat, ...) written by exporters for
        # a dynamic batch: the entries known without the input, None for the others
        self.meta: dict = {}
        self.found: dict = {}  # tensor: (rank, channels) found by the walk
        self.dims: dict = {}  # the static dimensions (None where symbolic) of the tensors
        for info in list(graph.value_info) + list(graph.input) + list(graph.output):
            shape = info.type.tensor_type.shape
            if info.type.tensor_type.HasField("shape"):
                self.dims[info.name] = [d.dim_value if d.HasField("dim_value") else None
                                        for d in shape.dim]
        nodes = []
        for n in graph.node:
            if n.op_type == "Constant":
                self.consts[n.output[0]] = self._constant_value(n)
            elif n.op_type == "Identity" and n.input[0] in self.consts:
                # exporters share equal weights through Identity nodes
                self.consts[n.output[0]] = self.consts[n.input[0]]
            elif n.op_type == "Shape" or (any(t in self.meta for t in n.input) and all(
                    not t or t in self.meta or t in self.consts for t in n.input)):
                self.meta[n.output[0]] = n  # evaluated when read: see _known
            else:
                nodes.append(n)
        self.nodes = nodes
        self.producers = {o: n for n in nodes for o in n.output}
        self.index = {id(n): i for i, n in enumerate(nodes)}
        self.consumers: dict = {}
        for n in nodes:
            for t in self.data_inputs(n):
                self.consumers.setdefault(t, []).append(n)
        # the nodes reachable from each tensor (through its consumers), by index
        self.below: dict = {}
        for n in reversed(nodes):
            reach = {self.index[id(n)]}
            for t in n.output:
                reach |= self.tensor_reach(t)
            self.below[id(n)] = reach
        floats = [v.dtype for v in self.consts.values() if v.dtype.kind == "f"]
        self.dtype = np.dtype(dtype) if dtype is not None else \
            (floats[0] if floats else np.dtype(np.float32))

    def tensor_reach(self, t: str) -> set:
        reach: set = set()
        for c in self.consumers.get(t, []):
            reach |= self.below[id(c)]
        return reach

    def _constant_value(self, n) -> np.ndarray:
        for a in n.attribute:
            if a.name == "value":
                return self.onnx.numpy_helper.to_array(a.t)
            if a.name in ("value_float", "value_int", "value_floats", "value_ints"):
                return np.asarray(self.onnx.helper.get_attribute_value(a))
        raise self.error(n, "a Constant without a tensor value")

    def _known(self, t: str):
        """A shape tensor's entries (a list, None where unknown), or None."""
        if t in self.consts:
            return [int(v) for v in np.ravel(self.consts[t])]
        return self._shape_value(self.meta[t]) if t in self.meta else None

    def tensor_dims(self, t: str):
        """A tensor's dimensions (None where not known statically): shape inference's, with
        the rank and channel count the walk has found."""
        dims = self.dims.get(t)
        found = self.found.get(t)
        if found is not None and (dims is None or len(dims) != found[0] or dims[1] is None):
            dims = [None] * found[0]
            if found[0] > 1:
                dims[1] = found[1]
        return dims

    def _shape_value(self, n):
        """The entries of a shape-arithmetic node's output that are known statically."""
        op, ins = n.op_type, [self._known(t) if t else None for t in n.input]
        if op == "Shape":  # the input's dimensions that shape inference knows
            dims = self.tensor_dims(n.input[0])
            if dims is None:
                return None
            a = self.attrs(n)
            return dims[a.get("start", 0):a.get("end", len(dims))]
        if op in ("Identity", "Cast", "Squeeze", "Unsqueeze") and ins[0] is not None:
            return list(ins[0])
        if op == "Concat" and all(v is not None for v in ins):
            return [x for v in ins for x in v]
        if op == "Gather" and ins[1] is not None:  # entries of a shape: one per index
            return [None if ins[0] is None else ins[0][i] for i in ins[1]]
        arithmetic = {"Add": lambda a, b: a + b, "Sub": lambda a, b: a - b,
                      "Mul": lambda a, b: a * b, "Div": lambda a, b: a // b}
        if op in arithmetic and ins[0] is not None and ins[1] is not None \
                and len(ins[0]) == len(ins[1]):
            f = arithmetic[op]
            return [None if a is None or b is None else f(a, b) for a, b in zip(*ins)]
        return None

    # ----- small helpers --------------------------------------------------------------
    def data_inputs(self, n) -> list:
        return [t for t in n.input if t and t not in self.consts and t not in self.meta]

    def attrs(self, n) -> dict:
        return {a.name: self.onnx.helper.get_attribute_value(a) for a in n.attribute}

    def const(self, n, i: int, default=None):
        if len(n.input) <= i or not n.input[i]:
            return default
        if n.input[i] not in self.consts:
            raise self.error(n, f"its input {i} ({n.input[i]}) is computed, cybn needs a "
                                f"constant there")
        return self.consts[n.input[i]]

    def array(self, value) -> np.ndarray:
        return np.array(value, dtype=self.dtype)

    @staticmethod
    def error(n, why: str) -> TypeError:
        return TypeError(f"from_onnx_model: node {n.name or '(unnamed)'} ({n.op_type}): {why}")

    def leads_to(self, hop, u: str) -> bool:
        """Whether tensor u is a hop's own output or computed below it (hop: see hops)."""
        n, k = hop
        if u in (n.output if k is None else (n.output[k],)):
            return True
        return u in self.producers and self.index[id(self.producers[u])] in self.hop_reach(hop)

    def only_consumer(self, t: str):
        """The one node that reads tensor t, or None where t has several readers (or is
        the graph's output)."""
        readers = self.consumers.get(t, [])
        return readers[0] if len(readers) == 1 and t not in self.outputs else None

    # ----- the walk ---------------------------------------------------------------------
    def chain(self, t: str, stop: str, rank: int, first=None) -> tuple:
        """The layers that compute tensor ``stop`` from tensor ``t`` (``first``: the node
        to take first, where t has several readers), and the rank they end at."""
        layers: list = []
        while t != stop:
            hops = self.hops(t, stop) if first is None else [first]
            first = None
            if not hops:
                raise TypeError(f"from_onnx_model: tensor {t} does not lead to {stop}")
            node, k = hops[0]
            before = t
            if len(hops) == 1 and k is None and len(self.data_inputs(node)) == 1:
                layer, t, rank = self.convert(node, rank)
            else:
                layer, t, rank = self.merge(t, hops, rank)
            dims = self.tensor_dims(before)
            c = dims[1] if dims is not None and len(dims) > 1 else None
            self.found[t] = (rank, c if layer is None else _channels(layer, c))
            if layer is not None:
                layers.append(layer)
        return layers, rank

    def hops(self, t: str, stop: str) -> list:
        """The ways on from tensor t towards stop: (node, None) for a reader of t, or
        (split node, k) for output k of a Split that reads t."""
        hops = []
        for n in self.consumers.get(t, []):
            ways = range(len(n.output)) if n.op_type == "Split" else (None,)
            hops += [(n, k) for k in ways if self.leads_to((n, k), stop)]
        return hops

    def hop_reach(self, hop) -> set:
        n, k = hop
        return self.below[id(n)] if k is None else self.tensor_reach(n.output[k])

    def merge(self, t: str, hops: list, rank: int) -> tuple:
        """Branches from tensor t that meet again: a residual add, a concatenation, a
        product (SiLU, squeeze-and-excitation); returns (layer, the tensor after, rank)."""
        common = set.intersection(*[self.hop_reach(h) for h in hops])
        if len(hops) == 1 and hops[0][1] is None:  # one reader taking t more than once
            common = {self.index[id(hops[0][0])]}
        if not common:
            raise TypeError(f"from_onnx_model: the readers of tensor {t} never meet again "
                            f"(a graph with several outputs is not a cybn model)")
        join = self.nodes[min(common)]
        branches, ranks = [], []
        for u in self.data_inputs(join):
            if u == t:
                branches.append([])
                ranks.append(rank)
                continue
            mine = [h for h in hops if self.leads_to(h, u)]
            if len(mine) != 1:
                raise self.error(join, f"its input {u} is not computed from {t} alone")
            node, k = mine[0]
            if k is None:
                layers, r = self.chain(t, u, rank, first=mine[0])
            else:  # a Split output: its channel range, then the branch
                head = self.split_slice(node, k)
                self.found[node.output[k]] = (rank, head.stop - head.start)
                layers, r = self.chain(node.output[k], u, rank)
                layers = [head] + layers
            branches.append(layers)
            ranks.append(r)
        return self.join(join, branches, ranks)

    def split_slice(self, n, k: int):
        a = self.attrs(n)
        if a.get("axis", 0) != 1:
            raise self.error(n, f"splits axis {a.get('axis', 0)}; cybn splits channels (1)")
        sizes = self.const(n, 1)
        if sizes is None:
            sizes = a.get("split")
        if sizes is None:
            raise self.error(n, "an even split needs the channel count; give split sizes")
        start = int(np.sum(sizes[:k]))
        return nn.ChannelSlice(start, start + int(sizes[k]), channels_last=self.cl)

    def seq(self, layers: list):
        if not layers:
            return nn.Identity()
        return layers[0] if len(layers) == 1 else nn.Sequential(*layers)

    def join(self, n, branches: list, ranks: list) -> tuple:
        out = n.output[0]
        if n.op_type == "Add" and len(branches) == 2:
            a, b = branches
            body, short = (a, b) if len(a) >= len(b) else (b, a)
            activation = None
            relu = self.only_consumer(out)
            if relu is not None and relu.op_type == "Relu":
                activation, out = "relu", relu.output[0]
            layer = nn.Residual(self.seq(body), self.seq(short) if short else None,
                                activation)
            return layer, out, ranks[0]
        if n.op_type == "Concat":
            axis = self.attrs(n).get("axis")
            if axis not in (1, -3 if ranks[0] == 4 else 1):
                raise self.error(n, f"concatenates along axis {axis}; cybn joins channels (1)")
            return nn.Concat(*[self.seq(b) for b in branches], channels_last=self.cl), out, \
                ranks[0]
        if n.op_type == "Mul" and len(branches) == 2 and [] in branches:
            other = branches[1] if branches[0] == [] else branches[0]
            if len(other) == 1 and type(other[0]) is nn.Sigmoid:
                return nn.SiLU(), out, ranks[0]
            se = self.squeeze_excitation(other)
            if se is not None:
                return se, out, ranks[0]
        raise self.error(n, "branches joined in a way cybn has no layer for (it knows a "
                            "residual Add, a channel Concat, x * sigmoid(x) and "
                            "squeeze-and-excitation)")

    def squeeze_excitation(self, layers: list):
        """layers = [global average pool, 1x1 conv, activation, 1x1 conv, sigmoid or
        hardsigmoid] as a SqueezeExcitation, or None."""
        if len(layers) != 5 or type(layers[0]) is not nn.AdaptiveAvgPool2d \
                or layers[0].output_size != (1, 1):
            return None
        _, fc1, act, fc2, scale = layers
        if not (type(fc1) is nn.Conv2d and type(fc2) is nn.Conv2d and fc1.activation is None
                and fc2.activation is None and fc1.kernel_size == (1, 1)
                and fc2.kernel_size == (1, 1) and type(scale) in (nn.Sigmoid, nn.Hardsigmoid)):
            return None
        se = nn.SqueezeExcitation(fc1.in_channels, fc1.out_channels, activation=act,
                                  scale_activation=scale, channels_last=self.cl,
                                  dtype=self.dtype)
        se.fc1, se.fc2 = fc1, fc2
        return se

    # ----- one node (or a few, for the patterns) ------------------------------------------
    def convert(self, n, rank: int) -> tuple:
        """(layer or None, the tensor after it, the rank after it)."""
        op, out = n.op_type, n.output[0]
        a = self.attrs(n)
        if op in _SKIPPED:
            return None, out, rank
        method = getattr(self, f"op_{op}", None)
        if method is None:
            raise self.error(n, "cybn has no layer for this operator")
        return method(n, a, rank)

    def op_Conv(self, n, a, rank):
        weight = self.const(n, 1)
        if weight.ndim != 4:
            raise self.error(n, f"a {weight.ndim - 2}-D convolution; cybn's Conv2d is 2-D")
        k = tuple(a.get("kernel_shape", weight.shape[2:]))
        dil = tuple(a.get("dilations", (1, 1)))
        stride = tuple(a.get("strides", (1, 1)))
        pads = self.pads(n, a, k, dil, stride)
        bias = self.const(n, 2)
        layer = nn.Conv2d(weight.shape[1] * a.get("group", 1), weight.shape[0], k, stride, pads,
                          bias=bias is not None, channels_last=self.cl, dtype=self.dtype,
                          groups=a.get("group", 1), dilation=dil)
        layer.weight.data = self.array(weight)
        if bias is not None:
            layer.bias.data = self.array(bias)
        return layer, n.output[0], 4

    def pads(self, n, a, k, dil, stride) -> tuple:
        auto = a.get("auto_pad", b"NOTSET")
        auto = auto.decode() if isinstance(auto, bytes) else auto
        if auto == "VALID":
            return (0, 0)
        if auto in ("SAME_UPPER", "SAME_LOWER"):
            extents = [d * (kk - 1) for kk, d in zip(k, dil)]
            if any(e % 2 for e in extents) or any(s != 1 for s in stride):
                raise self.error(n, f"{auto} padding that is not symmetric")
            return tuple(e // 2 for e in extents)
        p = list(a.get("pads", (0, 0, 0, 0)))
        if p[:2] != p[2:]:
            raise self.error(n, f"asymmetric pads {p}; cybn pads both sides alike")
        return tuple(p[:2])

    def op_BatchNormalization(self, n, a, rank):
        if a.get("training_mode", 0):
            raise self.error(n, "training_mode=1; export the model in eval mode")
        scale, shift, mean, var = (self.const(n, i) for i in (1, 2, 3, 4))
        cls = nn.BatchNorm2d if rank == 4 else nn.BatchNorm1d
        kwargs = {"channels_last": self.cl} if cls is nn.BatchNorm2d else {}
        layer = cls(len(scale), eps=float(a.get("epsilon", 1e-5)),
                    momentum=1.0 - float(a.get("momentum", 0.9)), dtype=self.dtype, **kwargs)
        layer.weight.data = self.array(scale)
        layer.bias.data = self.array(shift)
        layer.running_mean[...] = mean
        layer.running_var[...] = var
        return layer.eval(), n.output[0], rank

    def op_Gemm(self, n, a, rank):
        if a.get("transA", 0):
            raise self.error(n, "transA=1 (the batch on the second axis)")
        weight = self.const(n, 1) * a.get("alpha", 1.0)
        if not a.get("transB", 0):
            weight = weight.T
        bias = self.const(n, 2)
        layer = nn.Linear(weight.shape[1], weight.shape[0], bias=bias is not None,
                          dtype=self.dtype)
        layer.weight.data = self.array(weight)
        if bias is not None:
            bias = np.broadcast_to(bias * a.get("beta", 1.0), (weight.shape[0],))
            layer.bias.data = self.array(bias)
        return layer, n.output[0], 2

    def op_MatMul(self, n, a, rank):
        weight = self.const(n, 1)
        if weight.ndim != 2 or rank != 2:
            raise self.error(n, "a product that is not (N, in) @ (in, out)")
        layer = nn.Linear(weight.shape[0], weight.shape[1], bias=False, dtype=self.dtype)
        layer.weight.data = self.array(weight.T)
        out = n.output[0]
        add = self.only_consumer(out)
        if add is not None and add.op_type == "Add" and len(self.data_inputs(add)) == 1:
            bias = self.consts[[t for t in add.input if t != out][0]]
            layer = nn.Linear(weight.shape[0], weight.shape[1], dtype=self.dtype)
            layer.weight.data = self.array(weight.T)
            layer.bias.data = self.array(np.broadcast_to(bias, (weight.shape[1],)))
            out = add.output[0]
        return layer, out, 2

    def op_Relu(self, n, a, rank):
        return nn.ReLU(), n.output[0], rank

    def op_Clip(self, n, a, rank):
        lo = self.const(n, 1, a.get("min"))
        hi = self.const(n, 2, a.get("max"))
        lo, hi = (None if v is None else float(np.ravel(v)[0]) for v in (lo, hi))
        if lo == 0.0 and hi == 6.0:
            layer = nn.ReLU6()
        elif lo == 0.0 and hi is None:
            layer = nn.ReLU()
        elif lo is not None and hi is not None:
            layer = nn.Hardtanh(lo, hi)
        else:
            raise self.error(n, f"clips to [{lo}, {hi}] (one bound only)")
        return layer, n.output[0], rank

    def op_Sigmoid(self, n, a, rank):
        return nn.Sigmoid(), n.output[0], rank

    def op_Tanh(self, n, a, rank):
        return nn.Tanh(), n.output[0], rank

    def op_HardSigmoid(self, n, a, rank):
        alpha, beta = a.get("alpha", 0.2), a.get("beta", 0.5)
        if not np.allclose((alpha, beta), HARDSIGMOID, rtol=1e-6, atol=0):
            raise self.error(n, f"alpha={alpha}, beta={beta}; cybn's Hardsigmoid is PyTorch's "
                                f"(1/6, 1/2)")
        return nn.Hardsigmoid(), n.output[0], rank

    def op_HardSwish(self, n, a, rank):
        return nn.Hardswish(), n.output[0], rank

    def op_LeakyRelu(self, n, a, rank):
        return nn.LeakyReLU(a.get("alpha", 0.01)), n.output[0], rank

    def op_Gelu(self, n, a, rank):
        approximate = a.get("approximate", b"none")
        approximate = approximate.decode() if isinstance(approximate, bytes) else approximate
        return nn.GELU(approximate), n.output[0], rank

    def _pool_args(self, n, a):
        k = tuple(a["kernel_shape"])
        if len(k) != 2:
            raise self.error(n, f"{len(k)}-D pooling; cybn pools 2-D")
        stride = tuple(a.get("strides", (1, 1)))
        dil = tuple(a.get("dilations", (1, 1)))
        return k, stride, self.pads(n, a, k, dil, stride), dil, bool(a.get("ceil_mode", 0))

    def op_MaxPool(self, n, a, rank):
        if len(n.output) > 1 and n.output[1]:
            raise self.error(n, "it returns indices")
        k, stride, pads, dil, ceil = self._pool_args(n, a)
        return nn.MaxPool2d(k, stride, pads, dil, ceil_mode=ceil, channels_last=self.cl), \
            n.output[0], 4

    def op_AveragePool(self, n, a, rank):
        k, stride, pads, dil, ceil = self._pool_args(n, a)
        if dil != (1, 1):
            raise self.error(n, "dilated average pooling")
        return nn.AvgPool2d(k, stride, pads, ceil, bool(a.get("count_include_pad", 0)),
                            channels_last=self.cl), n.output[0], 4

    def op_GlobalAveragePool(self, n, a, rank):
        return nn.AdaptiveAvgPool2d(1, channels_last=self.cl), n.output[0], 4

    def op_GlobalMaxPool(self, n, a, rank):
        return nn.AdaptiveMaxPool2d(1, channels_last=self.cl), n.output[0], 4

    def op_ReduceMean(self, n, a, rank):
        axes = self.const(n, 1, a.get("axes"))
        if rank != 4 or axes is None or sorted(int(x) % 4 for x in axes) != [2, 3]:
            raise self.error(n, "a mean over other axes than the image's (2, 3)")
        pool = nn.AdaptiveAvgPool2d(1, channels_last=self.cl)
        if a.get("keepdims", 1):
            return pool, n.output[0], 4
        return nn.Sequential(pool, nn.Flatten(channels_last=self.cl)), n.output[0], 2

    def op_Flatten(self, n, a, rank):
        if a.get("axis", 1) != 1:
            raise self.error(n, f"flattens from axis {a.get('axis')}; cybn keeps the batch axis")
        return nn.Flatten(channels_last=self.cl), n.output[0], 2

    def op_Reshape(self, n, a, rank):
        shape = self._known(n.input[1])
        if shape is None:
            raise self.error(n, "a reshape to a shape computed from the input")
        if len(shape) == 2 and (shape[1] == -1 or shape[0] == 0):
            return nn.Flatten(channels_last=self.cl), n.output[0], 2
        # channel shuffle: (N, g, C / g, H, W) -> transposed (0, 2, 1, 3, 4) -> (N, C, H, W)
        tr = self.only_consumer(n.output[0])
        back = None if tr is None else self.only_consumer(tr.output[0])
        if len(shape) == 5 and shape[1] and rank == 4 and tr is not None \
                and tr.op_type == "Transpose" \
                and list(self.attrs(tr).get("perm", [])) == [0, 2, 1, 3, 4] \
                and back is not None and back.op_type == "Reshape":
            return nn.ChannelShuffle(shape[1], channels_last=self.cl), back.output[0], 4
        raise self.error(n, f"a reshape to {shape} (cybn knows flattening and channel "
                            f"shuffle)")

    def op_Gather(self, n, a, rank):
        perm = np.asarray(self.const(n, 1)).ravel()
        c = len(perm)
        if a.get("axis", 0) == 1 and rank == 4:
            for g in range(2, c + 1):
                if c % g == 0 and np.array_equal(
                        perm, np.arange(c).reshape(g, c // g).T.reshape(-1)):
                    return nn.ChannelShuffle(g, channels_last=self.cl), n.output[0], 4
        raise self.error(n, "a gather that is not a channel shuffle")

    def op_Transpose(self, n, a, rank):
        """The layout transposes to_onnx writes around a channels-last model: NHWC -> NCHW
        at the input, NCHW -> NHWC at an image output or before a Flatten in (H, W, C)
        order."""
        perm = list(a.get("perm", []))
        if self.cl and perm == [0, 3, 1, 2] and n.input[0] == self.input:
            return None, n.output[0], 4
        if self.cl and perm == [0, 2, 3, 1]:
            if n.output[0] in self.outputs:
                return None, n.output[0], 4
            flat = self.only_consumer(n.output[0])
            if flat is not None and flat.op_type == "Flatten" and \
                    self.attrs(flat).get("axis", 1) == 1:
                return nn.Flatten(channels_last=False), flat.output[0], 2
        raise self.error(n, f"a transpose {perm} (cybn knows the channels-last input and "
                            f"output transposes of to_onnx)")

    def op_Slice(self, n, a, rank):
        starts, ends, axes, steps = (self._known(n.input[i]) if len(n.input) > i and
                                     n.input[i] else default
                                     for i, default in ((1, None), (2, None), (3, [0]),
                                                        (4, [1])))
        if not all(v is not None and len(v) == 1 and v[0] is not None
                   for v in (starts, ends, axes, steps)) \
                or axes[0] % rank != 1 or steps[0] != 1:
            raise self.error(n, "a slice that is not one channel range")
        if ends[0] > 2**40:  # "to the end"
            ends = [(self.tensor_dims(n.input[0]) or [None, None])[1]]
            if ends[0] is None:
                raise self.error(n, "a channel range to an end that is not known")
        return nn.ChannelSlice(int(starts[0]), int(ends[0]), channels_last=self.cl), \
            n.output[0], rank


def from_onnx_model(model, *, channels_last: bool | None = None, dtype=None):
    """A cybn model (in eval mode) that computes what an ONNX graph computes.

    Parameters
    ----------
    model : onnx.ModelProto, path or bytes
        One input and one output. The operators of the batch-normalized CNN families:
        Conv, BatchNormalization, Relu, Clip, Sigmoid, HardSigmoid, HardSwish, LeakyRelu,
        Tanh, Gelu, Mul (x * sigmoid(x), squeeze-and-excitation), Add (residual),
        Concat and Split (channels), Reshape + Transpose + Reshape or Gather (channel
        shuffle), Slice (a channel range), MaxPool, AveragePool, GlobalAveragePool,
        GlobalMaxPool, ReduceMean over the image, Gemm, MatMul (+ Add), Flatten, Reshape
        to (N, -1), Dropout and Identity. Shapes as constants, or as the shape arithmetic
        (Shape, Gather, Unsqueeze, Concat, ...) exporters write for a dynamic batch.
    channels_last : bool, optional
        Build the model for (N, H, W, C) input (the graph's NCHW weights are used as they
        are; Flatten keeps the graph's (C, H, W) order). By default, as the graph's input:
        channels-last where it starts with a transpose to NCHW (as :func:`to_onnx` writes
        a channels-last model), else channels-first.
    dtype : numpy dtype, optional
        Of the parameters and buffers (default: the graph's weights').

    Returns
    -------
    Module
        Sequential, Residual (an Add of two branches, with a following Relu fused), Concat,
        ChannelSlice, ChannelShuffle, SqueezeExcitation and single layers, in eval mode,
        runnable without ONNX Runtime; training mode works too (BatchNorm layers then use
        batch statistics, as usual).

    Raises
    ------
    TypeError
        The first node cybn cannot build, named with its operator and why.
    """
    from .interop import _onnx_model

    onnx, proto = _onnx_model(model)
    graph = proto.graph
    consts = {t.name for t in graph.initializer}
    inputs = [i for i in graph.input if i.name not in consts]
    if len(inputs) != 1 or len(graph.output) != 1:
        raise TypeError(f"from_onnx_model: the graph has {len(inputs)} inputs and "
                        f"{len(graph.output)} outputs; a cybn model has one of each")
    name = inputs[0].name
    if channels_last is None:
        first = [n for n in graph.node if name in n.input]
        channels_last = len(first) == 1 and first[0].op_type == "Transpose" and \
            [a.ints for a in first[0].attribute if a.name == "perm"] == [[0, 3, 1, 2]]
    try:  # the tensors' static shapes (channel counts) for shape arithmetic
        graph = onnx.shape_inference.infer_shapes(proto, data_prop=True).graph
    except Exception:  # noqa: BLE001 (a graph shape inference rejects: read it as it is)
        pass
    reader = _Reader(onnx, graph, channels_last, dtype)
    dims = inputs[0].type.tensor_type.shape.dim
    rank = len(dims) if dims else 4
    layers, _ = reader.chain(name, graph.output[0].name, rank)
    return nn.Sequential(*layers).eval()
