"""aaq's Tuning loop with Optuna's ``GPSampler`` as its strategy: the reference ``bayesian`` is compared with.

Runs in the benchmark-only virtual environment ``benchmarks/out/venv-gp`` (Optuna with
torch: ``GPSampler`` needs torch, which is why aaq's ``bayesian`` is its own numpy +
scipy GP and not this). The strategy is aaq's ``bayesian`` with one change: the next
config is the one ``GPSampler`` asks for (the nearest untried one when it points at a
config already tried), on the same candidates, losses, seed and first config. Writes
what ``bench_tuning.py`` reads of an aaq run.

Usage (the benchmark calls it):  python optuna_gp_side.py --spec SPEC.json --out-json OUT.json --out-dir DIR
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
    ap.add_argument("--spec", required=True, type=Path)
    ap.add_argument("--out-json", required=True, type=Path)
    ap.add_argument("--out-dir", required=True, type=Path)
    ap.add_argument("--log", type=Path)
    args = ap.parse_args(argv)
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


if __name__ == "__main__":
    raise SystemExit(main())
