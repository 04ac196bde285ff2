"""The graph toolkit: index lookups, subgraph reads, naming, initializer clean-up, edits, group borders."""
from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from aaq.quantization.graph import (FLOAT, INT8_REGION_OPS, GraphEditor, GraphIndex, constant_value,
                                    drop_unused_initializers, group_neighbours, names_used_in_subgraphs, unique_name)


def value(name: str) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, TensorProto.FLOAT, None)


def init(name: str, array) -> onnx.TensorProto:
    return numpy_helper.from_array(np.asarray(array), name)


def small_graph() -> onnx.GraphProto:
    """x -> mul(x, w) -> m -> add(m, three) -> y;  m is read twice by sq = Mul(m, m); ``bias`` is an input's default."""
    nodes = [
        helper.make_node("Constant", [], ["three"], name="const", value_float=3.0),
        helper.make_node("Mul", ["x", "w"], ["m"], name="mul"),
        helper.make_node("Add", ["m", "three"], ["y"], name="add"),
        helper.make_node("Mul", ["m", "m"], ["sq"], name="sq"),
        helper.make_node("Add", ["sq", "bias"], ["z"], name="add_bias"),
    ]
    inits = [init("w", np.float32(2.0)), init("bias", np.float32(1.0)), init("steps", np.int64(4))]
    return helper.make_graph(nodes, "small", [value("x"), value("bias")], [value("y"), value("z")], inits)


def test_the_index_finds_producers_readers_and_initializers() -> None:
    index = GraphIndex(small_graph())
    assert index.producer["m"].name == "mul" and "x" not in index.producer
    assert index.readers["m"] == [("add", 0), ("sq", 0), ("sq", 1)]  # once per input that reads it
    assert [n.name for n in index.reader_nodes("m")] == ["add", "sq", "sq"]
    assert index.reader_nodes("nothing") == []
    assert list(index.order) == ["const", "mul", "add", "sq", "add_bias"]
    assert set(index.initializers) == {"w", "bias", "steps"}
    assert set(index.constants) == {"w", "steps"}  # an initializer that is also an input is a default
    assert index.is_initializer("bias") and not index.is_initializer("m")
    assert index.initializer_array("steps") == 4
    assert index.graph_inputs == {"x", "bias"} and index.graph_outputs == {"y", "z"}
    assert index.fetchable == {"x", "bias", "three", "m", "y", "sq", "z"}
    assert index.tensor_names == index.fetchable | {"w", "steps"}


def test_constant_values_are_float32_initializers_and_constant_nodes() -> None:
    index = GraphIndex(small_graph())
    assert index.float_constant("w") == np.float32(2.0) and index.scalar("three") == 3.0
    assert index.float_constant("bias") is None  # the caller may feed another value
    assert index.float_constant("steps") is None  # not float32
    assert index.float_constant("m") is None and index.scalar("x") is None
    ints = helper.make_node("Constant", [], ["k"], value_ints=[1, 2])
    assert constant_value(ints).dtype == np.int64 and list(constant_value(ints)) == [1, 2]
    assert constant_value(helper.make_node("Relu", ["a"], ["b"])) is None


def test_sole_reader_is_none_for_several_readers_a_graph_output_or_a_subgraph_read() -> None:
    graph = small_graph()
    index = GraphIndex(graph)
    assert index.sole_reader("sq").name == "add_bias"
    assert index.sole_reader("m") is None  # three reads
    assert index.sole_reader("y") is None  # a graph output, read by nobody
    body = helper.make_graph([helper.make_node("Identity", ["sq"], ["inner"])], "body", [], [value("inner")])
    graph.node.append(helper.make_node("If", ["cond"], ["branch"], name="if", then_branch=body, else_branch=body))
    assert GraphIndex(graph).sole_reader("sq") is None  # the If body reads it too


def test_reader_lookups_do_not_need_node_names() -> None:
    """``has_hardswish`` matches on a user's model before ``prepare`` names its nodes."""
    graph = small_graph()
    for node in graph.node:
        node.name = ""
    index = GraphIndex(graph)
    assert index.sole_reader("sq").op_type == "Add" and index.sole_reader("sq").input[1] == "bias"
    assert [n.op_type for n in index.reader_nodes("m")] == ["Add", "Mul", "Mul"]


def test_names_used_in_subgraphs_are_found_recursively() -> None:
    inner = helper.make_graph([helper.make_node("Add", ["deep", "i"], ["o"])], "inner", [value("i")], [value("o")])
    loop = helper.make_node("Loop", ["", "", "carried"], ["out"], body=inner)
    then = helper.make_graph([loop, helper.make_node("Relu", ["shallow"], ["r"])], "then", [], [value("r")])
    other = helper.make_graph([helper.make_node("Neg", ["other"], ["n"])], "else", [], [value("n")])
    graph = helper.make_graph([helper.make_node("If", ["cond"], ["res"], then_branch=then, else_branch=other)],
                              "outer", [value("cond")], [value("res")])
    assert names_used_in_subgraphs(graph) == {"", "carried", "shallow", "deep", "i", "other"}
    assert {"deep", "shallow", "other", "res"} <= GraphIndex(graph).protected


def test_unique_name_takes_the_first_free_suffix_and_reserves_it() -> None:
    taken = {"a", "a_1"}
    assert unique_name("b", taken) == "b"
    assert unique_name("a", taken) == "a_2"
    assert unique_name("a", taken) == "a_3"
    assert taken == {"a", "a_1", "a_2", "a_3", "b"}


def test_drop_unused_initializers_keeps_inputs_outputs_and_subgraph_reads() -> None:
    body = helper.make_graph([helper.make_node("Identity", ["read_inside"], ["o"])], "body", [], [value("o")])
    nodes = [helper.make_node("Add", ["x", "read"], ["y"]),
             helper.make_node("If", ["cond"], ["branch"], then_branch=body, else_branch=body)]
    inits = [init(n, np.float32(0)) for n in ("read", "read_inside", "unused", "default", "exported")]
    graph = helper.make_graph(nodes, "g", [value("x"), value("cond"), value("default")],
                              [value("y"), value("branch"), value("exported")], inits)
    drop_unused_initializers(graph)
    assert [i.name for i in graph.initializer] == ["read", "read_inside", "default", "exported"]


def test_the_editor_adds_initializers_and_rebuilds_the_node_list_on_commit() -> None:
    graph = small_graph()
    editor = GraphEditor(graph)
    assert editor.add_initializer(np.zeros(2, np.float32), "w") == "w_1"  # "w" is taken
    assert editor.new_name("m") == "m_1" and editor.new_name("m") == "m_2"
    assert editor.new_node_name("mul") == "mul_1"
    editor.fold_into_initializer(editor.nodes["const"], np.float32(3.0))
    assert editor.scalar("three") == 3.0 and "three" in editor.constants
    assert [n.name for n in graph.node][0] == "const"  # removed nodes stay until commit
    relu = helper.make_node("Relu", ["sq"], ["z"], name="relu")
    removed = editor.commit({"add_bias": [relu]})
    assert removed == {"const": "Constant"}
    assert [n.name for n in graph.node] == ["mul", "add", "sq", "relu"]
    assert {i.name for i in graph.initializer} >= {"w_1", "three"}


def borders() -> onnx.ModelProto:
    """x -> c1 -> Relu -> MaxPool -> c2 -> Sigmoid -> c3 -> y;  c2 -> y2 (a graph output)."""
    w = init("w", np.ones((4, 4, 1, 1), np.float32))
    nodes = [helper.make_node("Conv", ["x", "w"], ["a"], name="c1"),
             helper.make_node("Relu", ["a"], ["b"], name="relu"),
             helper.make_node("MaxPool", ["b"], ["c"], name="pool", kernel_shape=[1, 1]),
             helper.make_node("Conv", ["c", "w"], ["y2"], name="c2"),
             helper.make_node("Sigmoid", ["y2"], ["s"], name="sigmoid"),
             helper.make_node("Conv", ["s", "w"], ["y"], name="c3")]
    graph = helper.make_graph(nodes, "borders", [value("x")], [value("y"), value("y2")], [w])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])


def test_group_neighbours_walk_through_int8_region_ops_and_end_in_float() -> None:
    assert {"Relu", "MaxPool"} <= INT8_REGION_OPS and "Sigmoid" not in INT8_REGION_OPS
    got = group_neighbours(borders(), {0: ("c1",), 1: ("c2",), 2: ("c3",)})
    assert sorted(got[0], key=str) == sorted([FLOAT, 1], key=str)  # graph input; c2 through Relu and MaxPool
    assert sorted(got[1], key=str) == sorted([0, FLOAT, FLOAT], key=str)  # graph output y2, the Sigmoid
    assert sorted(got[2], key=str) == [FLOAT, FLOAT]  # the Sigmoid, graph output y
    merged = group_neighbours(borders(), {0: ("c1", "c2"), 2: ("c3",)})
    assert sorted(merged[0], key=str) == [FLOAT, FLOAT, FLOAT]  # a group's own members are no border


def test_an_omitted_optional_output_leads_nowhere() -> None:
    """``""`` names no tensor: a MaxPool without indices does not border a Resize without roi."""
    model = borders()
    pool = next(n for n in model.graph.node if n.name == "pool")
    pool.output.append("")
    model.graph.initializer.append(init("scales", np.ones(4, np.float32)))
    model.graph.input.append(value("z"))
    model.graph.node.extend([helper.make_node("Resize", ["z", "", "scales"], ["r"], name="resize"),
                             helper.make_node("Conv", ["r", "w"], ["q"], name="c4")])
    got = group_neighbours(model, {0: ("c1",), 1: ("c2",), 3: ("c4",)})
    assert sorted(got[0], key=str) == sorted([FLOAT, 1], key=str)
