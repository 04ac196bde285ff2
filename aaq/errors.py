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
        """At most ``MAX_PROBLEMS`` lines of at most ``MAX_LINE`` characters: a spec with a million
        faults gets a readable message, not hundreds of megabytes of it."""
        where = f"{self.source}: " if self.source else ""
        shown = self.problems[:MAX_PROBLEMS]
        lines = [_clip(f"{path}: {msg}" if path else msg) for path, msg in shown]
        if len(self.problems) == 1:
            return where + lines[0]
        more = len(self.problems) - len(shown)
        tail = [f"  ... and {more} more"] if more else []
        return where + f"{len(self.problems)} problems\n" + "\n".join(["  " + line for line in lines] + tail)


MAX_PROBLEMS = 50
"""How many problems a SpecError prints; the rest are counted."""
MAX_LINE = 500
"""How many characters of one problem it prints."""


def _clip(text: str) -> str:
    text = str(text)
    return text if len(text) <= MAX_LINE else text[:MAX_LINE - 3] + "..."


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


class Interrupted(KeyboardInterrupt):
    """SIGINT, SIGTERM or SIGHUP reached the run: Ctrl-C's KeyboardInterrupt, carrying which signal.

    An algorithm that can stop with a usable best model so far raises it with ``state``
    (the pipeline state of that model; its record is added by ``run_algorithm``); the
    pipeline then raises it again with ``result``, which the CLI publishes as a pair
    marked ``"interrupted": true``. Both stay None when nothing worth writing exists.
    """

    def __init__(self, signum: int = 2, *, state: object = None, result: object = None) -> None:
        super().__init__(signum)
        self.signum = signum
        self.state = state
        self.result = result

    @classmethod
    def of(cls, exc: BaseException, **kwargs: object) -> "Interrupted":
        """``exc`` (a plain KeyboardInterrupt is SIGINT) as an ``Interrupted`` carrying ``kwargs``."""
        return cls(int(getattr(exc, "signum", 2)), **kwargs)

    @property
    def signal_name(self) -> str:
        import signal

        try:
            return signal.Signals(self.signum).name
        except ValueError:  # pragma: no cover
            return f"signal {self.signum}"
