"""Copies of a model whose graph outputs include intermediate tensors (what statistics and ``run`` read).

Cached by (model digest, names) in a small LRU, since the statistics pass asks the same again.
"""
from __future__ import annotations

import difflib
from collections import OrderedDict
from typing import Sequence

import onnx

from aaq.engine.session import model_bytes
from aaq.errors import ModelError
from aaq.quantization.graph import GraphIndex


class AugmentedModels:
    """At most ``capacity`` augmented copies, least recently used dropped first."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._hits: OrderedDict[tuple[str, tuple[str, ...]], tuple[bytes, str, set[str]]] = OrderedDict()

    def get(self, data: bytes, digest: str, names: Sequence[str]) -> tuple[bytes, str, set[str]]:
        """A model whose graph outputs include ``names`` (a copy when some are intermediate), its digest
        and the original graph output names; a name the model does not have is a ``ModelError``."""
        key = (digest, tuple(names))
        hit = self._hits.get(key)
        if hit is not None:
            self._hits.move_to_end(key)
            return hit
        model = onnx.load_from_string(data)
        graph = model.graph
        graph_outputs = {o.name for o in graph.output}
        known = GraphIndex(graph).fetchable
        present = set(graph_outputs)
        for name in names:
            if name in present:
                continue
            if name not in known:
                near = difflib.get_close_matches(name, sorted(known), n=3)
                hint = f"; nearest: {', '.join(map(repr, near))}" if near else ""
                raise ModelError(f"no tensor {name!r} in the model (not an output of any node nor an input{hint})")
            graph.output.append(onnx.ValueInfoProto(name=name))
            present.add(name)
        if present == graph_outputs:
            hit = (data, digest, graph_outputs)
        else:
            hit = (*model_bytes(model), graph_outputs)
        self._hits[key] = hit
        if len(self._hits) > self.capacity:
            self._hits.popitem(last=False)
        return hit
