"""Fix Decoder: the Noisy Label objective with the decoder frozen at the original model.

Only the encoder (conv1..layer4) learns; ``conv_seg`` keeps its weights and its BatchNorm
statistics, so forgetting has to happen in the features.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from study.model import MedicalNetSegmentation
from trainables.noisy_label import NoisyLabel


@dataclass(kw_only=True, eq=False)
class FixDecoder(NoisyLabel):
    name = "fix_decoder"

    def frozen_modules(self, model: MedicalNetSegmentation) -> list[nn.Module]:
        return [model.conv_seg]
