"""bayesian and tpe (seeded, driven by what they are told), the sigopt plugin point, and their spec errors."""
from __future__ import annotations

import json
import logging
import sys

import numpy as np
import onnx
import pytest

from aaq import Pipeline
from aaq.cli import main
from aaq.tuning import model_based
from aaq.tuning.gp import GaussianProcess, expected_improvement
from aaq.tuning.monitor import CRITERION_MET, ExitPolicy, Monitor, Trial
from aaq.tuning.objectives import ObjectiveSet
from aaq.tuning.sigopt import SigOptStrategy
from aaq.tuning.space import TrialConfig, TuningSpace
from aaq.tuning.strategies import StrategyContext, strategies
from helpers import MLP_SPACE, mlp_case, tuning_spec

SPACE = TuningSpace.from_params({"model_wise": {"activation": {"algorithm": ["minmax", "kl", "percentile"]}}},
                                (100, 300))
TOKEN = "tok-3f9a61c2-never-in-any-output"


def verdict(config: TrialConfig) -> tuple[bool, float, float]:
    """A made-up case: (passed, criterion score, model size). Per-channel kl at 300 samples is the one that passes;
    the score falls with each choice that is right, so a model of it can walk there."""
    right = [config.sampling_size == 300, config.weight_granularity == "per_channel",
             config.activation_algorithm == "kl", config.activation_scheme == "asym"]
    passed = all(right[:3])
    return passed, (-0.5 if passed else 1.0 - 0.25 * sum(right)), 100.0 - 10 * sum(right)


def drive(name: str, seed: int, trials: int = 12, options: dict | None = None) -> list[TrialConfig]:
    """The algorithm's loop against ``verdict``, the exit policy left out: the configs proposed, in order."""
    context = StrategyContext(SPACE, seed, units=lambda c: [], rank=lambda c, m: [])
    strategy = strategies.get(name)(context, **(options or {}))
    monitor = Monitor(ExitPolicy(timeout=60, max_trials=0), ObjectiveSet.from_params("modelsize", None))
    proposed = []
    while len(proposed) < trials and (config := strategy.propose(monitor)) is not None:
        passed, score, size = verdict(config)
        trial = Trial(len(proposed) + 1, config, passed, True, {"top1": (0.9, 0.9)}, (score, score), 0.9,
                      {"modelsize": size} if passed else {})
        monitor.record(trial)
        strategy.tell(trial)
        proposed.append(config)
    return proposed


@pytest.mark.parametrize("name", ["bayesian", "tpe"])
def test_the_same_seed_and_results_give_the_same_trials(name) -> None:
    first, again, other = drive(name, 9527), drive(name, 9527), drive(name, 1)
    assert first == again and first != other
    assert len(set(first)) == len(first) and first[0] == SPACE.quantize_configs()[0]
    # walked to the end, each config of the space comes once and then the strategy has nothing left
    walked = drive(name, 9527, trials=100)
    assert sorted(map(repr, walked)) == sorted(map(repr, SPACE.quantize_configs()))


def test_bayesian_follows_its_model_to_the_passing_config() -> None:
    # 24 configs and one passes: the GP gets there well before a walk in order (at 24) would
    found = [drive("bayesian", seed, trials=24).index(next(c for c in SPACE.quantize_configs() if verdict(c)[0]))
             for seed in (1, 2, 3)]
    assert max(found) < 16, found


def test_the_gp_interpolates_and_expected_improvement_prefers_the_promising_side() -> None:
    x = np.linspace(0, 1, 6)[:, None]
    y = (x[:, 0] - 0.7) ** 2
    gp = GaussianProcess().fit(x, y)
    mean, std = gp.predict(x)
    assert np.allclose(mean, y, atol=0.02) and np.all(std < 0.05)
    grid = np.array([[0.05], [0.7]])
    mean, std = gp.predict(grid)
    ei = expected_improvement(mean, std, float(y.min()))
    assert ei[1] > ei[0] >= 0


@pytest.fixture(scope="module")
def mlp_root(tmp_path_factory):
    return mlp_case(tmp_path_factory.mktemp("mlp"))


@pytest.mark.parametrize("name", ["bayesian", "tpe"])
def test_the_strategy_finds_a_config_meeting_the_criterion(name, mlp_root) -> None:
    params = {**MLP_SPACE, "strategy": {"name": name}, "accuracy_criterion": {"absolute": 0.02},
              "objective": "modelsize", "exit_policy": {"timeout": 0, "max_trials": 20}}
    result = Pipeline(tuning_spec(mlp_root, params), progress=False).run()
    summary = result.algorithms[-1].summary
    assert summary["exit"] == CRITERION_MET and result.target_met, [t["accuracy"] for t in summary["trials"]]
    best = summary["best"]["config"]
    assert best["weight"]["granularity"] == "per_channel" and best["sampling_size"] == 64
    assert best["fallback"] == [] and len(summary["trials"]) < 24
    assert all(t["config"]["fallback"] == [] for t in summary["trials"])  # no fallback dtypes, as INC


def test_a_missing_extra_is_a_spec_error_naming_it(mlp_root, tmp_path, capsys, monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "optuna", None)  # what an environment without Optuna gives
    with pytest.raises(ImportError, match=r"aaq\[tuning\]"):
        model_based.import_optuna()
    spec_file = tmp_path / "spec.json"
    spec_file.write_text(json.dumps(tuning_spec(mlp_root, {"strategy": {"name": "tpe"}})))
    assert main(["validate", str(spec_file)]) == 2
    err = capsys.readouterr().err
    assert "compression.algorithms[0].params.strategy.name" in err and "pip install 'aaq[tuning]'" in err, err
    monkeypatch.delitem(sys.modules, "optuna")
    spec_file.write_text(json.dumps(tuning_spec(mlp_root, {"strategy": {"name": "bayesian"}})))
    assert main(["validate", str(spec_file)]) == 0  # bayesian is numpy + scipy: no extra


BAD = {
    "bayesian without a bound": ({"name": "bayesian"}, {"timeout": 0, "max_trials": 0},
                                 "params.exit_policy.max_trials", "needs a bound"),
    "tpe without a bound": ({"name": "tpe"}, {"timeout": 0, "max_trials": 0},
                            "params.exit_policy.max_trials", "needs a bound"),
    "bad n_initial": ({"name": "bayesian", "n_initial": 0}, {}, "params.strategy.n_initial", "integer >= 1"),
    "unknown tpe option": ({"name": "tpe", "n_startup": 3}, {}, "params.strategy", "takes no option 'n_startup'"),
    "sigopt without a plugin": ({"name": "sigopt", "sigopt_api_token": TOKEN, "sigopt_project_id": "p"}, {},
                                "params.strategy.name", "sigopt_api_token and sigopt_project_id are required"),
    "sigopt without a project": ({"name": "sigopt", "sigopt_api_token": TOKEN}, {},
                                 "params.strategy.sigopt_project_id", "is required by the sigopt strategy"),
    "sigopt with a bad name": ({"name": "sigopt", "sigopt_api_token": TOKEN, "sigopt_project_id": "p",
                                "sigopt_experiment_name": 7}, {}, "params.strategy.sigopt_experiment_name",
                               "non-empty string"),
}


@pytest.mark.parametrize("name", sorted(BAD))
def test_bad_strategy_params_are_spec_errors_with_their_path(name, mlp_root, tmp_path, capsys) -> None:
    strategy, exit_policy, path, phrase = BAD[name]
    params = {"strategy": strategy, **({"exit_policy": exit_policy} if exit_policy else {})}
    spec_file = tmp_path / "spec.json"
    spec_file.write_text(json.dumps(tuning_spec(mlp_root, params)))
    assert main(["validate", str(spec_file)]) == 2
    err = capsys.readouterr().err
    assert f"compression.algorithms[0].{path}" in err and phrase in err, err
    assert TOKEN not in err
    if name == "sigopt without a plugin":
        assert "plugin point" in err and "aaq.strategies" in err


class FakeSigOpt(SigOptStrategy):
    """A SigOpt plugin as a package would ship it, minus the service: the quantize configs in order."""

    name = "sigopt"

    def propose(self, monitor: Monitor):
        return next((c for c in self.context.space.quantize_configs() if not monitor.seen(c)), None)


def test_a_sigopt_plugin_runs_and_its_token_is_written_nowhere(mlp_root, tmp_path, capsys, monkeypatch) -> None:
    monkeypatch.setitem(strategies._entries, "sigopt", FakeSigOpt)  # as its entry point would register it
    monkeypatch.setitem(strategies._sources, "sigopt", "distribution aaq-sigopt-test")
    params = {**MLP_SPACE, "strategy": {"name": "sigopt", "sigopt_api_token": TOKEN, "sigopt_project_id": "p1"},
              "accuracy_criterion": {"absolute": 0.02}, "exit_policy": {"timeout": 0, "max_trials": 3}}
    spec_file = tmp_path / "spec.json"
    spec_file.write_text(json.dumps(tuning_spec(mlp_root, params)))
    out = tmp_path / "out"
    assert main(["run", str(spec_file), "--output-dir", str(out), "--no-progress", "--log-level", "DEBUG"]) in (0, 3)
    report = json.loads((out / "report.json").read_text())
    assert report["algorithms"][0]["summary"]["strategy"] == "sigopt"
    assert len(report["algorithms"][0]["summary"]["trials"]) == 3
    assert report["spec"]["compression"]["algorithms"][0]["params"]["strategy"]["sigopt_api_token"] == "<redacted>"
    assert report["algorithms"][0]["params"]["strategy"]["sigopt_project_id"] == "p1"
    written = {p.name: p.read_text(errors="replace") for p in out.rglob("*") if p.is_file() and p.suffix != ".onnx"}
    assert {"report.json", "aaq.log", "tuning_history.jsonl"} <= set(written)
    assert [name for name, text in written.items() if TOKEN in text] == []
    captured = capsys.readouterr()
    assert TOKEN not in captured.out + captured.err


def test_optuna_stays_quiet(caplog) -> None:
    with caplog.at_level(logging.INFO):
        drive("tpe", 3, trials=8)
    assert not [r for r in caplog.records if r.name.startswith("optuna")]


def test_the_layers_kept_float_for_speed_are_timed_once_for_all_configs(tmp_path, caplog) -> None:
    from models import depthwise_block, labeled_data

    onnx.save(depthwise_block(), str(tmp_path / "model.onnx"))
    x, y = labeled_data(depthwise_block, n=64)
    np.savez(tmp_path / "data.npz", x=x, y=y)
    params = {"strategy": {"name": "exhaustive"}, "accuracy_criterion": {"absolute": 1.0}, "objective": "modelsize",
              "base_params": {"latency_budget": 2}, "exit_policy": {"timeout": 600, "max_trials": 4}}
    with caplog.at_level(logging.INFO, logger="aaq"):
        summary = Pipeline(tuning_spec(tmp_path, params), progress=False).run().algorithms[-1].summary
    assert len({json.dumps(t["config"], sort_keys=True) for t in summary["trials"]}) == 4
    timed = [r.getMessage() for r in caplog.records if r.getMessage().startswith("latency-aware: depthwise")]
    assert len(timed) == 1, timed  # 4 model-wise configs (2 schemes x 2 granularities), one timing


def test_latency_is_measured_once_per_model_structure_and_dominated_configs_are_not_evaluated(mlp_root) -> None:
    params = {**MLP_SPACE, "strategy": {"name": "exhaustive"}, "accuracy_criterion": {"absolute": 0.02},
              "objective": "performance", "exit_policy": {"timeout": 600, "max_trials": 24}}
    result = Pipeline(tuning_spec(mlp_root, params), progress=False).run()
    summary = result.algorithms[-1].summary
    trials, best = summary["trials"], summary["best"]
    assert result.target_met and len(trials) == 24
    # per-channel and per-tensor weights are two structures; schemes, range algorithms and sizes change values only
    values = {t["objectives"]["performance"] for t in trials if t["objectives"]}
    assert len(values) <= 2
    skipped = [t for t in trials if t["stopped"] == "dominated"]
    assert skipped and all(t["accuracy"] is None and t["metrics"] == {} and not t["passed"] for t in skipped)
    assert all(t["objectives"]["performance"] >= best["objectives"]["performance"] for t in skipped)
    assert all(t["trial"] > best["trial"] or t["objectives"]["performance"] > best["objectives"]["performance"]
               for t in skipped)
    passing = [t for t in trials if t["passed"]]
    assert best["trial"] == min(passing, key=lambda t: (t["objectives"]["performance"], t["trial"]))["trial"]
    assert summary["evaluations"]["full"] < 24  # the dominated ones cost no evaluation
