"""A Ray-distributed hyperparameter study of machine unlearning for 3D brain-MRI segmentation.

The modules here are the commands a user types: ``launch`` (a study), ``forget`` (a deletion
request), ``replay`` (one trial again, without Ray) and ``bench`` (where the time goes); ``cli`` reads
their command lines before anything heavy loads, and holds their console scripts. The
subpackages are the floors they stand on, none of which imports ``trainables``,
``search_spaces`` or ``analysis``: ``config`` (settings, schedule, errors), ``cohort`` (the
data), ``model`` (the network), ``metrics`` (the figures) and ``run`` (the run directory,
its formats and storage, the results table, the cluster).
"""

from importlib import metadata

try:
    __version__ = metadata.version("mri-unlearning-study")
except metadata.PackageNotFoundError:  # a checkout that is not installed
    __version__ = "0+unknown"
