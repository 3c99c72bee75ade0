"""Training: the shared epoch loop, its Tune wrapper, the original model, one file per strategy."""

from search_spaces import spaces
from trainables.finetune import Finetune
from trainables.fix_decoder import FixDecoder
from trainables.learn_others import LearnOthers
from trainables.max_loss import MaxLoss
from trainables.noisy_label import NoisyLabel
from trainables.random_encoder import RandomEncoder
from trainables.registry import STRATEGIES, register
from trainables.salun import SalUn

# Adding a strategy: one file here and one line below, naming its search space.
register(NoisyLabel, spaces.noisy_label)
register(MaxLoss, spaces.max_loss)
register(RandomEncoder, spaces.random_encoder)
register(LearnOthers, spaces.learn_others)
register(FixDecoder, spaces.fix_decoder)
register(Finetune, spaces.finetune)
register(SalUn, spaces.salun)

__all__ = ["STRATEGIES", "register"]
