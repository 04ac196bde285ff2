"""Plugin algorithms registered in-process by decorator, as a user's module would."""
from __future__ import annotations

from dataclasses import dataclass

from aaq import Algorithm, register_algorithm


@register_algorithm("TagModel")
class TagModel(Algorithm):
    """Writes a metadata entry into a copy of the current model: a trivial but observable step."""

    @dataclass(frozen=True)
    class Params:
        key: str = "aaq.tag"
        value: str = "tagged"
        repeat: int = 1

    schema = {
        "type": "object",
        "additionalProperties": False,
        "properties": {
            "key": {"type": "string", "default": "aaq.tag", "description": "metadata key"},
            "value": {"type": "string", "default": "tagged", "description": "metadata value"},
            "repeat": {"type": "integer", "minimum": 1, "maximum": 5, "default": 1,
                       "description": "how many times the value is repeated"},
        },
    }

    def run(self, state, engine):
        import onnx

        model = onnx.ModelProto()
        model.CopyFrom(state.model)
        entry = model.metadata_props.add()
        entry.key, entry.value = self.params.key, self.params.value * self.params.repeat
        state.model = model
        self.summary = {"tagged": entry.key}
        return state


@register_algorithm("DeclareTarget")
class DeclareTarget(Algorithm):
    """Records an accuracy target as met or missed, to exercise the pipeline's outcome paths."""

    @dataclass(frozen=True)
    class Params:
        met: bool = True

    schema = {"type": "object", "additionalProperties": False,
              "properties": {"met": {"type": "boolean", "default": True, "description": "the outcome"}}}

    def run(self, state, engine):
        state.targets["declared"] = self.params.met
        return state
