"""aaq's Tuning loop with Optuna's ``GPSampler`` as its strategy: the reference ``bayesian`` is compared with.

Runs in the benchmark-only virtual environment ``benchmarks/out/venv-gp`` (Optuna with
torch: ``GPSampler`` needs torch, which is why aaq's ``bayesian`` is its own numpy +
scipy GP and not this). The strategy is aaq's ``bayesian`` with one change: the next
config is the one ``GPSampler`` asks for (the nearest untried one when it points at a
config already tried), on the same candidates, losses, seed and first config. Writes
what ``bench_tuning.py`` reads of an aaq run.

``--replay TABLE.json``: no model run; each strategy (aaq's ``bayesian``, this one, ``tpe``,
``random``) against a recorded landscape (every config's verdict and accuracy, from an
``exhaustive`` run with ``objective: accuracy``), once per seed: the trial at which it
first reaches the table's best config.

Usage (the benchmark calls it):  python optuna_gp_side.py --spec SPEC.json --out-json OUT.json --out-dir DIR
                                 python optuna_gp_side.py --replay TABLE.json --out-json OUT.json [--seeds 20]
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path
from typing import Any, Optional

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

import optuna  # noqa: E402

import aaq  # noqa: E402
from aaq.tuning.model_based import ModelBased, losses  # noqa: E402
from aaq.tuning.monitor import Monitor  # noqa: E402
from aaq.tuning.space import TrialConfig  # noqa: E402
from aaq.tuning.strategies import register_strategy  # noqa: E402

N_STARTUP = 3  # aaq bayesian's n_initial


@register_strategy("optuna_gp")
class OptunaGP(ModelBased):
    """Optuna's GPSampler through ask/tell, on an in-memory study rebuilt from the monitor's history."""

    def propose(self, monitor: Monitor) -> Optional[TrialConfig]:
        first, unseen = self.first_or_none(monitor)
        if first is not None or not unseen:
            return first
        dists = {f: optuna.distributions.CategoricalDistribution(values) for f, values in self.dims}
        seed = int(self.rng_for(monitor).integers(2 ** 31))
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        sampler = optuna.samplers.GPSampler(seed=seed, n_startup_trials=N_STARTUP)
        study = optuna.create_study(direction="minimize", sampler=sampler)
        study.add_trials([optuna.trial.create_trial(params={f: getattr(t.config, f) for f, _ in self.dims},
                                                    distributions=dists, value=value)
                          for t, value in zip(monitor.trials, losses(monitor))])
        return self.nearest_unseen(study.ask(dists).params, unseen)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--spec", type=Path)
    ap.add_argument("--out-json", required=True, type=Path)
    ap.add_argument("--out-dir", type=Path)
    ap.add_argument("--log", type=Path)
    ap.add_argument("--replay", type=Path, help="a recorded landscape: compare the strategies on it instead")
    ap.add_argument("--seeds", type=int, default=20)
    args = ap.parse_args(argv)
    if args.replay:
        args.out_json.write_text(json.dumps(replay(args.replay, args.seeds)))
        return 0
    if args.log:
        handler = logging.FileHandler(args.log, mode="w")
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        logging.getLogger("aaq").addHandler(handler)
        logging.getLogger("aaq").setLevel(logging.INFO)
    spec = json.loads(args.spec.read_text())
    started = time.perf_counter()
    result = aaq.Pipeline(spec, progress=False).run()
    wall = time.perf_counter() - started
    model_path = result.save(args.out_dir)
    out: dict[str, Any] = {"tool": "gp-optuna", "model": str(model_path), "found": True, "wall_seconds": wall,
                           "target_met_reported": result.target_met, "summary": result.algorithms[-1].summary,
                           "optuna": optuna.__version__, "evaluations": {"full": None}}
    args.out_json.write_text(json.dumps(out, default=str))
    return 0



def replay(table_path: Path, seeds: int) -> dict[str, Any]:
    """Each strategy against a recorded landscape (config -> trial), ``seeds`` times: the trial at which it
    first proposes a config of the table's best accuracy (among the passing ones)."""
    from aaq.tuning.monitor import ExitPolicy, Trial
    from aaq.tuning.objectives import ObjectiveSet
    from aaq.tuning.space import TuningSpace
    from aaq.tuning.strategies import StrategyContext, strategies

    table = json.loads(table_path.read_text())
    space = TuningSpace.from_params(table["tuning_space"], table["sampling_sizes"])
    by_key = {json.dumps(t["config"], sort_keys=True): t for t in table["trials"]}
    objective = ObjectiveSet.from_params(table["objective"], None)
    best_value = max(t["accuracy"] for t in by_key.values() if t["passed"])
    out: dict[str, Any] = {}
    for name in ("bayesian", "optuna_gp", "tpe", "random"):
        found = []
        for seed in range(seeds):
            strategy = strategies.get(name)(StrategyContext(space, seed, units=lambda c: [], rank=lambda c, m: []))
            monitor = Monitor(ExitPolicy(timeout=3600, max_trials=0), objective)
            at = None
            for number in range(1, len(by_key) + 1):
                config = strategy.propose(monitor)
                if config is None:
                    break
                key = json.dumps(config.as_dict(), sort_keys=True)
                t = by_key[key]
                value = next(iter(t["metrics"].values()))
                score = table["float"] - (value[1] if isinstance(value, list) else value) - table["allowed"]
                trial = Trial(number, config, t["passed"], True, {}, (score, score), t["accuracy"],
                              {table["objective"]: t["accuracy"]} if t["passed"] else {})
                monitor.record(trial)
                strategy.tell(trial)
                if t["passed"] and t["accuracy"] == best_value and at is None:
                    at = number
            found.append(at)
        out[name] = {"trials_to_best": found, "mean": sum(found) / len(found), "worst": max(found)}
    return out


if __name__ == "__main__":
    raise SystemExit(main())
