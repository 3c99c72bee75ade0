"""Training: the shared epoch loop, its Tune wrapper, the original model, one file per strategy."""

from trainables.max_loss import MaxLoss
from trainables.noisy_label import NoisyLabel
from trainables.strategy import Strategy

#: Strategy name -> class. Adding a strategy: one file here and one line below.
STRATEGIES: dict[str, type[Strategy]] = {cls.name: cls for cls in (NoisyLabel, MaxLoss)}
