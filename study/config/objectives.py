"""What a search maximises: two ratios of the original model's Dice, under one of two views.

``reference`` (the default): the reference study's, forget as much as possible
(``forget_drop``) while keeping retain Dice (``retain_kept``). ``retrain-match``: forget as
much as a model retrained without the forget subjects does: ``retrain_match = 1 -
|forget Dice - the retrain reference's| / the original's forget Dice`` (1: exactly the
retrain reference's forget Dice; lower both for remembering and for over-forgetting).
Both objectives of both views are maximised and share one scale, so fronts, knees and
hypervolumes are computed the same way.
"""

from __future__ import annotations

OBJECTIVES: dict[str, tuple[str, str]] = {
    "reference": ("forget_drop", "retain_kept"),
    "retrain-match": ("retrain_match", "retain_kept"),
}
