"""Graph access for every module that reads or edits an ONNX graph: one index, one editor, a few helpers.

``GraphIndex`` looks things up by name: nodes, producers, readers, initializers,
constant values, graph inputs and outputs, names read inside subgraphs. It is built
once per graph and not kept in step with edits: the passes that edit a graph
(``GraphEditor``, ``simplify``, ``prepare``) read the graph as it was when the index
was built, which is what their matching wants.

Node names are keys of ``nodes`` and ``order`` and of the ``readers`` edges, so those
need unique names (``prepare`` gives every node one); ``producer``, ``reader_nodes``
and ``sole_reader`` do not, and work on a user's model as it comes.

``group_neighbours`` walks the graph the way ONNX Runtime's QDQ fusion groups it
into INT8 regions; the accuracy search orders its candidates by that.
"""
from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np
import onnx
from onnx import helper, numpy_helper

FLOAT = "<float>"
"""A neighbour of a group that runs in float: a float op, a graph input or a graph output."""

INT8_REGION_OPS = frozenset({"Relu", "Clip", "MaxPool", "Reshape", "Flatten", "Transpose", "Squeeze", "Unsqueeze",
                             "Identity", "Split", "Slice", "Pad", "Resize", "DepthToSpace", "SpaceToDepth"})
"""Ops that run inside an INT8 region in ONNX Runtime's QDQ fusion (no dequantize needed around them).

Walking through them finds a group's neighbours; any other op that is not a layer runs in float.
"""


class GraphIndex:
    """Producers, readers, initializers and constants of a graph, looked up by tensor or node name."""

    def __init__(self, graph: onnx.GraphProto) -> None:
        self.graph = graph
        self.nodes = {node.name: node for node in graph.node}
        self.order = {node.name: i for i, node in enumerate(graph.node)}
        self.initializers = {init.name: init for init in graph.initializer}
        self.graph_inputs = {i.name for i in graph.input}
        self.graph_outputs = {o.name for o in graph.output}
        # an initializer that is also a graph input is only a default: the caller may feed another value
        self.constants = {name: init for name, init in self.initializers.items() if name not in self.graph_inputs}
        self.producer = {out: node for node in graph.node for out in node.output if out}
        self.readers: dict[str, list[tuple[str, int]]] = {}
        self._reader_nodes: dict[str, list[onnx.NodeProto]] = {}
        for node in graph.node:
            for i, name in enumerate(node.input):
                if name:
                    self.readers.setdefault(name, []).append((node.name, i))
                    self._reader_nodes.setdefault(name, []).append(node)
        self.subgraph_names = names_used_in_subgraphs(graph)
        # tensors read outside this graph's nodes: a rewrite must keep them as they are
        self.protected = self.graph_outputs | self.subgraph_names

    @property
    def fetchable(self) -> set[str]:
        """Tensors a session of this graph can return: graph inputs and node outputs (not initializers)."""
        return self.graph_inputs | set(self.producer)

    @property
    def tensor_names(self) -> set[str]:
        """Every tensor name the graph defines: graph inputs, initializers and node outputs."""
        return self.graph_inputs | set(self.initializers) | set(self.producer)

    def is_initializer(self, name: str) -> bool:
        return name in self.initializers

    def initializer_array(self, name: str) -> np.ndarray:
        return numpy_helper.to_array(self.initializers[name])

    def reader_nodes(self, tensor: str) -> list[onnx.NodeProto]:
        """The nodes reading ``tensor``, once per input that reads it, in graph order."""
        return self._reader_nodes.get(tensor, [])

    def sole_reader(self, tensor: str) -> onnx.NodeProto | None:
        """The only node reading ``tensor``, when nothing outside the nodes (an output, a subgraph) reads it."""
        readers = self.reader_nodes(tensor)
        if len(readers) != 1 or tensor in self.protected:
            return None
        return readers[0]

    def float_constant(self, name: str) -> np.ndarray | None:
        """The value of ``name`` when it is a float32 constant: an initializer or a ``Constant`` node's output."""
        init = self.constants.get(name)
        if init is not None:
            return numpy_helper.to_array(init) if init.data_type == onnx.TensorProto.FLOAT else None
        producer = self.producer.get(name)
        if producer is not None and producer.op_type == "Constant":
            value = constant_value(producer)
            return value if value is not None and value.dtype == np.float32 else None
        return None

    def scalar(self, name: str) -> float | None:
        """``float_constant(name)`` when it holds exactly one value."""
        value = self.float_constant(name)
        return float(value.reshape(-1)[0]) if value is not None and value.size == 1 else None


class GraphEditor(GraphIndex):
    """A ``GraphIndex`` that also records edits: new initializers and names now, node removals at ``commit``.

    Initializers are added to the graph at once (and to ``constants``); removed nodes
    stay in the graph until ``commit`` rebuilds the node list, so a pass can keep
    walking the graph it matched on. Removal is by node name: names must be unique.
    """

    def __init__(self, graph: onnx.GraphProto) -> None:
        super().__init__(graph)
        self.names = self.tensor_names
        self.node_names = set(self.nodes)
        self.removed: dict[str, str] = {}

    def add_initializer(self, array: np.ndarray, base: str) -> str:
        """A new initializer holding ``array``, named ``base`` or ``base_<k>``; its name."""
        name = unique_name(base, self.names)
        self._store(numpy_helper.from_array(array, name))
        return name

    def fold_into_initializer(self, node: onnx.NodeProto, value: np.ndarray) -> None:
        """Replace ``node`` by an initializer of its (only) output's name holding ``value``."""
        self._store(numpy_helper.from_array(np.asarray(value), node.output[0]))
        self.remove([node])

    def new_name(self, base: str) -> str:
        """A tensor name the graph does not use yet (reserved from now on)."""
        return unique_name(base, self.names)

    def new_node_name(self, base: str) -> str:
        """A node name the graph does not use yet (reserved from now on)."""
        return unique_name(base, self.node_names)

    def remove(self, nodes: Sequence[onnx.NodeProto]) -> None:
        for node in nodes:
            self.removed[node.name] = node.op_type

    def commit(self, replacements: Mapping[str, Sequence[onnx.NodeProto]] | None = None) -> dict[str, str]:
        """Rebuild the node list without the removed nodes, ``replacements[name]`` in place of ``name``.

        Returns the removed nodes, name -> op type.
        """
        replacements = replacements or {}
        if self.removed or replacements:
            kept = []
            for node in self.graph.node:
                if node.name in replacements:
                    kept.extend(replacements[node.name])
                elif node.name not in self.removed:
                    kept.append(node)
            del self.graph.node[:]
            self.graph.node.extend(kept)
        return self.removed

    def _store(self, init: onnx.TensorProto) -> None:
        self.graph.initializer.append(init)
        self.initializers[init.name] = init
        self.constants[init.name] = init


def names_used_in_subgraphs(graph: onnx.GraphProto) -> set[str]:
    """Every name read inside the subgraphs (If/Loop/Scan bodies) of ``graph``'s nodes, recursively."""
    used: set[str] = set()
    for node in graph.node:
        for attr in node.attribute:
            for sub in ([attr.g] if attr.HasField("g") else []) + list(attr.graphs):
                used.update(name for n in sub.node for name in n.input)
                used |= names_used_in_subgraphs(sub)
    return used


def constant_value(node: onnx.NodeProto) -> np.ndarray | None:
    """The value of a ``Constant`` node (``value`` or a float/int attribute), else ``None``."""
    if node.op_type != "Constant" or node.domain not in ("", "ai.onnx") or len(node.attribute) != 1:
        return None
    attr = node.attribute[0]
    if attr.name == "value":
        return numpy_helper.to_array(attr.t)
    simple = {"value_float": np.float32, "value_floats": np.float32, "value_int": np.int64,
              "value_ints": np.int64}
    if attr.name in simple:
        return np.asarray(helper.get_attribute_value(attr), dtype=simple[attr.name])
    return None


def unique_name(name: str, taken: set[str]) -> str:
    """``name``, or ``name_1``, ``name_2``... whichever ``taken`` lacks; the result is added to ``taken``."""
    candidate, k = name, 1
    while candidate in taken:
        candidate, k = f"{name}_{k}", k + 1
    taken.add(candidate)
    return candidate


def drop_unused_initializers(graph: onnx.GraphProto) -> None:
    """Remove initializers no node (or subgraph) reads and that are not graph inputs or outputs."""
    used = {name for node in graph.node for name in node.input} | names_used_in_subgraphs(graph)
    used |= {o.name for o in graph.output} | {i.name for i in graph.input}
    kept = [i for i in graph.initializer if i.name in used]
    if len(kept) != len(graph.initializer):
        del graph.initializer[:]
        graph.initializer.extend(kept)


def prefix_model(model: onnx.ModelProto, tensors: Sequence[str]) -> onnx.ModelProto:
    """A copy of ``model`` cut to the nodes ``tensors`` (float) depend on, with them as its outputs.

    What a statistics pass on a few tensors needs to run (the weight-range search's
    early waves): the rest of the graph is never executed. A model with subgraphs, or
    a tensor that is no node's output, is returned whole (copied).
    """
    out = onnx.ModelProto()
    out.CopyFrom(model)
    graph = out.graph
    producer = {name: node for node in graph.node for name in node.output if name}
    if names_used_in_subgraphs(graph) or any(t not in producer for t in tensors):
        return out
    keep, stack = set(), [producer[t] for t in tensors]
    while stack:
        node = stack.pop()
        if id(node) in keep:
            continue
        keep.add(id(node))
        stack.extend(producer[i] for i in node.input if i in producer)
    kept = [n for n in graph.node if id(n) in keep]
    del graph.node[:]
    graph.node.extend(kept)
    del graph.output[:]
    graph.output.extend(helper.make_tensor_value_info(t, onnx.TensorProto.FLOAT, None) for t in dict.fromkeys(tensors))
    drop_unused_initializers(graph)
    return out  # every graph input stays: the engine feeds them all


def group_neighbours(model: onnx.ModelProto, groups: Mapping[str, Sequence[str]]) -> dict[str, list[str]]:
    """For each group, the groups (or ``FLOAT`` for a float op, graph input or output) it borders.

    ``model`` is the float graph whose node names the groups use. The walk passes
    through ``INT8_REGION_OPS`` that belong to no group, up the inputs and down the
    outputs; one entry per border crossed.
    """
    owner = {node: gid for gid, nodes in groups.items() for node in nodes}
    index = GraphIndex(model.graph)
    result: dict[str, list[str]] = {}
    for gid, nodes in groups.items():
        found: list[str] = []
        seen = set(nodes)
        stack = [(index.nodes[n], d) for n in nodes if n in index.nodes for d in ("up", "down")]
        while stack:
            node, direction = stack.pop()
            if direction == "up":
                inputs = [t for t in node.input if t and t not in index.initializers]
                nxt = [index.producer.get(t) for t in inputs]
                ends = sum(1 for t in inputs if t not in index.producer)
            else:
                nxt = [r for t in node.output if t for r in index.reader_nodes(t)]
                ends = sum(1 for t in node.output if t in index.graph_outputs)
            found += [FLOAT] * ends
            for other in nxt:
                if other is None or other.name in seen:
                    continue
                seen.add(other.name)
                if other.name in owner:
                    found.append(owner[other.name])
                elif other.op_type in INT8_REGION_OPS:
                    stack.append((other, direction))
                else:
                    found.append(FLOAT)
        result[gid] = found
    return result
