"""Training: the shared epoch loop, its Tune wrapper, the original model, one file per strategy."""

from trainables.finetune import Finetune
from trainables.fix_decoder import FixDecoder
from trainables.learn_others import LearnOthers
from trainables.max_loss import MaxLoss
from trainables.noisy_label import NoisyLabel
from trainables.random_encoder import RandomEncoder
from trainables.salun import SalUn
from trainables.strategy import Strategy

#: Strategy name -> class. Adding a strategy: one file here and one line below.
STRATEGIES: dict[str, type[Strategy]] = {
    cls.name: cls for cls in (NoisyLabel, MaxLoss, RandomEncoder, LearnOthers, FixDecoder, Finetune, SalUn)
}
