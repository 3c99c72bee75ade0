"""Finetune (reference): keep training on the retain subjects only; forget subjects are never fed.

Forgetting here is only what the model loses by not seeing the forget subjects again.
"""

from __future__ import annotations

from dataclasses import dataclass

from trainables.strategy import Strategy


@dataclass(kw_only=True, eq=False)
class Finetune(Strategy):
    name = "finetune"
    uses_forget = False
