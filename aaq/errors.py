"""Errors that carry where the fault is, so the CLI can print one line and pick an exit code.

Bad input (spec, model, data, plugin) maps to exit code 2; anything else is 1.
"""
from __future__ import annotations


class AaqError(Exception):
    """Base of every error aaq raises on purpose."""

    exit_code = 1


class BadInputError(AaqError):
    """The user's input is wrong: the run cannot go on until it is fixed."""

    exit_code = 2


class SpecError(BadInputError):
    """A spec that does not parse or validate.

    ``problems`` holds one ``(json_path, message)`` pair per fault so that every
    fault is reported at once, not just the first.
    """

    def __init__(self, problems: list[tuple[str, str]] | str, source: str | None = None) -> None:
        if isinstance(problems, str):
            problems = [("", problems)]
        self.problems = list(problems)
        self.source = source
        super().__init__(self._render())

    def _render(self) -> str:
        where = f"{self.source}: " if self.source else ""
        lines = [f"{path}: {msg}" if path else msg for path, msg in self.problems]
        if len(lines) == 1:
            return where + lines[0]
        return where + f"{len(lines)} problems\n" + "\n".join("  " + line for line in lines)


class ModelError(BadInputError):
    """A model that cannot be loaded, checked or quantized; names the node when there is one."""

    def __init__(self, message: str, node: str | None = None) -> None:
        self.node = node
        super().__init__(f"node {node!r}: {message}" if node else message)


class DataError(BadInputError):
    """Data that does not fit the model or the metric; names the sample when there is one."""

    def __init__(self, message: str, sample_index: int | None = None) -> None:
        self.sample_index = sample_index
        super().__init__(f"sample {sample_index}: {message}" if sample_index is not None else message)


class PluginError(BadInputError):
    """A plugin that cannot be registered or loaded; names the plugin and where it came from."""

    def __init__(self, message: str, name: str, source: str | None = None) -> None:
        self.reason = message
        self.name = name
        self.source = source
        origin = f" (from {source})" if source else ""
        super().__init__(f"plugin {name!r}{origin}: {message}")


class ReportError(BadInputError):
    """A report.json that cannot be shown: not JSON (truncated), or not a report this aaq can read."""

    def __init__(self, message: str, path: str | None = None) -> None:
        self.path = path
        super().__init__(f"{path}: {message}" if path else message)
