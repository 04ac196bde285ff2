"""Built-in algorithms; importing this package registers them."""
from aaq.algorithms.base import Algorithm, algorithms, register_algorithm, run_algorithm

__all__ = ["Algorithm", "algorithms", "register_algorithm", "run_algorithm"]
