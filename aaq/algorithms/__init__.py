"""Built-in algorithms; importing this package registers them."""
from aaq.algorithms import default  # noqa: F401  (registers DefaultQuantization)
from aaq.algorithms.base import Algorithm, algorithms, register_algorithm, run_algorithm

__all__ = ["Algorithm", "algorithms", "register_algorithm", "run_algorithm"]
from aaq.algorithms import accuracy_aware  # noqa: F401
from aaq.algorithms import tuning  # noqa: F401  (registers Tuning)
