"""Where strategies meet their search spaces: the registry, one Optuna define-by-run space per
strategy (``spaces.py``), and the searcher that runs every strategy's search in one study."""

from search_spaces import spaces  # noqa: F401  (registers every built-in strategy with its space)
from search_spaces.registry import (
    STRATEGIES,
    Registered,
    check_config,
    classes_of,
    register,
    space_for,
    spaces_of,
)
from search_spaces.space import DefineByRun, SearchSpace, numeric_bounds, starting_point

__all__ = [
    "STRATEGIES",
    "DefineByRun",
    "Registered",
    "SearchSpace",
    "check_config",
    "classes_of",
    "numeric_bounds",
    "register",
    "space_for",
    "spaces_of",
    "starting_point",
]
