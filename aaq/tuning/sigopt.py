"""``sigopt``: INC's SigOpt strategy as a plugin point, since the SigOpt service needs an account and a network.

aaq ships no SigOpt client. A package that does registers a subclass of
``SigOptStrategy`` under the name ``sigopt`` (``@register_strategy("sigopt")``, or an
``aaq.strategies`` entry point ``sigopt = package.module:Class``). Whether or not one
is installed, the options are checked before any inference, as INC names them:
``sigopt_api_token`` and ``sigopt_project_id`` are required, ``sigopt_experiment_name``
is optional (default ``nc-tune``). The token is a credential: no message quotes it,
and report.json shows it redacted (``aaq.report.redact``).
"""
from __future__ import annotations

from typing import Any, ClassVar

from aaq.tuning.strategies import Strategy

NAME = "sigopt"
REQUIRED = ("sigopt_api_token", "sigopt_project_id")
OPTIONAL = ("sigopt_experiment_name",)
DEFAULT_EXPERIMENT = "nc-tune"
TOKEN = "sigopt_api_token"

Problem = tuple[str, str]


def option_problems(options: dict[str, Any]) -> list[Problem]:
    """Missing or mistyped SigOpt options; the token's value is never quoted."""
    problems = []
    for key in REQUIRED:
        if key not in options:
            problems.append((f"strategy.{key}", f"is required by the sigopt strategy ({', '.join(REQUIRED)} "
                                                f"are required; {OPTIONAL[0]} is optional)"))
    for key in (*REQUIRED, *OPTIONAL):
        value = options.get(key)
        if key in options and not (isinstance(value, str) and value.strip()):
            shown = "a value that is not one" if key == TOKEN else repr(value)
            problems.append((f"strategy.{key}", f"must be a non-empty string, got {shown}"))
    return problems


def missing_plugin_problems(options: dict[str, Any]) -> list[Problem]:
    """What a spec naming ``sigopt`` is told when no plugin provides it."""
    return [("strategy.name", "'sigopt' is a plugin point: no installed package provides it. Install a SigOpt "
                              "strategy plugin (a package registering a subclass of aaq.tuning.sigopt.SigOptStrategy "
                              "under the 'aaq.strategies' entry point 'sigopt'; it needs the sigopt client and "
                              "access to the SigOpt service); sigopt_api_token and sigopt_project_id are required")
            ] + option_problems(options)


class SigOptStrategy(Strategy):
    """The base a SigOpt plugin subclasses: INC's options, checked here, the token kept out of every output."""

    options: ClassVar[tuple[str, ...]] = (*REQUIRED, *OPTIONAL)
    secret_options: ClassVar[tuple[str, ...]] = (TOKEN,)

    @classmethod
    def option_problems(cls, options: dict[str, Any]) -> list[Problem]:
        return option_problems(options)

    @property
    def experiment_name(self) -> str:
        return str(self.options.get("sigopt_experiment_name") or DEFAULT_EXPERIMENT)
