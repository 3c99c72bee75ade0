"""Training: one file per strategy, the shared epoch loop, one trial and the function that runs
it, the models of the original recipe, and the Tune wrapper with its checkpoint bookkeeping."""
