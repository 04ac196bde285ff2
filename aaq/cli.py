"""``aaq run | validate | list | schema``: argument parsing, printing and exit codes, no logic.

Exit codes: 0 done and every accuracy target met; 2 bad input (spec, model, data,
plugin); 3 finished but a target was not met (the best model is still written);
1 anything else. A failure prints one line; the traceback only at debug level.
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Callable, Sequence

from aaq.errors import AaqError

logger = logging.getLogger("aaq.cli")

EXIT_OK, EXIT_ERROR, EXIT_BAD_INPUT, EXIT_TARGET_MISSED = 0, 1, 2, 3
LOG_FILE = "aaq.log"


def _cmd_run(args: argparse.Namespace) -> int:
    """Quantize the spec's model; write the model, report.json and the log."""
    from aaq.pipeline import Pipeline

    pipeline = Pipeline(args.spec, progress=not args.no_progress)
    out_dir = Path(args.output_dir) if args.output_dir else _default_output_dir(pipeline.spec)
    out_dir.mkdir(parents=True, exist_ok=True)
    file_handler = logging.FileHandler(out_dir / LOG_FILE, mode="w", encoding="utf-8")
    file_handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.getLogger("aaq").addHandler(file_handler)
    try:
        result = pipeline.run(output_dir=out_dir)
        model_path = result.save(out_dir)
    finally:
        logging.getLogger("aaq").removeHandler(file_handler)
        file_handler.close()
    for record in result.algorithms:
        if record.summary.get("headline"):
            print(f"{record.name}: {record.summary['headline']}")
    for name, m in result.metrics.items():
        print(m.describe(name))
    print(f"model: {model_path}")
    print(f"report: {out_dir / 'report.json'}")
    if not result.target_met:
        print("accuracy target NOT met: the best model found was written (see report.json)")
        return EXIT_TARGET_MISSED
    return EXIT_OK


def _cmd_validate(args: argparse.Namespace) -> int:
    """Check a spec (schema, plugin names, files, cross-references) without running a model."""
    from aaq.spec.validate import load_spec

    spec = load_spec(args.spec)  # the same checks as ``run``
    print(f"{args.spec}: valid ({len(spec.resolved['compression']['algorithms'])} algorithms)")
    return EXIT_OK


def _cmd_list(args: argparse.Namespace) -> int:
    """List registered algorithms, metrics, datasets, tuning strategies and objectives, with where each comes from."""
    from aaq.algorithms.base import algorithms
    from aaq.engine.datasets import datasets
    from aaq.engine.metrics import metrics
    from aaq.tuning.objectives import objectives
    from aaq.tuning.strategies import strategies

    for title, registry in (("algorithms", algorithms), ("metrics", metrics), ("datasets", datasets),
                            ("strategies", strategies), ("objectives", objectives)):
        print(f"{title}:")
        for name in registry.names():
            print(f"  {name:<32} {registry.source(name)}")
    return EXIT_OK


def _cmd_schema(args: argparse.Namespace) -> int:
    """Print the JSON Schema of the spec, or of one algorithm's params."""
    from aaq.algorithms.base import algorithms
    from aaq.schemas import load_schema

    schema = algorithms.get(args.name).schema if args.name else load_schema("spec")
    print(json.dumps(schema, indent=2))
    return EXIT_OK


def _default_output_dir(spec) -> Path:
    configured = spec.resolved.get("output", {}).get("dir")
    return Path(configured) if configured else Path("aaq-results") / spec.model_name


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="aaq", description="Accuracy-aware post-training quantization "
                                                             "for ONNX models.")
    parser.add_argument("--log-level", default="INFO",
                        choices=["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"])
    sub = parser.add_subparsers(dest="command", required=True)
    commands: dict[str, Callable[[argparse.Namespace], int]] = {
        "run": _cmd_run, "validate": _cmd_validate, "list": _cmd_list, "schema": _cmd_schema}
    for name, handler in commands.items():
        cmd = sub.add_parser(name, help=handler.__doc__, description=handler.__doc__)
        cmd.set_defaults(handler=handler)
        cmd.add_argument("--log-level", default=argparse.SUPPRESS,
                         choices=["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"])
        if name in ("run", "validate"):
            cmd.add_argument("spec", help="the JSON spec file")
        if name == "run":
            cmd.add_argument("--output-dir", help="where to write the model, report.json and the log "
                                                  "(default: the spec's output.dir, else aaq-results/NAME)")
            cmd.add_argument("--no-progress", action="store_true", help="no progress bars")
        if name == "schema":
            cmd.add_argument("name", nargs="?", help="an algorithm name; omit for the spec's envelope")
    return parser


class _TqdmHandler(logging.StreamHandler):
    """Log lines through ``tqdm.write`` so they do not shred an active progress bar."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            from tqdm import tqdm

            tqdm.write(self.format(record), file=sys.stderr)
        except Exception:
            self.handleError(record)


def _configure_logging(level: str) -> None:
    root = logging.getLogger("aaq")
    root.setLevel(level)
    if not any(isinstance(h, _TqdmHandler) for h in root.handlers):
        handler = _TqdmHandler()
        handler.setFormatter(logging.Formatter("%(levelname)s %(message)s"))
        root.addHandler(handler)


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    _configure_logging(args.log_level)
    try:
        return args.handler(args)
    except AaqError as exc:
        logger.debug("traceback", exc_info=True)
        print(f"aaq: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except BrokenPipeError:  # the reader went away (``aaq list | head``): nothing left to say
        sys.stderr.close()
        return EXIT_OK
    except KeyboardInterrupt:
        print("aaq: interrupted; nothing half-written was left", file=sys.stderr)
        return 130
    except Exception as exc:  # the promise: one line, traceback only at debug level
        logger.debug("traceback", exc_info=True)
        print(f"aaq: internal error: {type(exc).__name__}: {exc} (run with --log-level DEBUG for the "
              f"traceback)", file=sys.stderr)
        return EXIT_ERROR
