"""The class prior of CSL's selective mode: its file, its running estimate, and how well it ranks classes.

The prior of class c is the fraction of training images that contain it, P(c); CSL estimates it as the
mean predicted probability of the stage-1 model (``--partial_loss_mode ignore``) over the training
images, ``prior[c] = (1 / N) * sum_i sigmoid(model(x_i))[c]``. Here: the ``Classes,avg_pred`` CSV
(`csv_format`), the running mean `ComputePrior` (`accumulator`) and the rank statistics against the true
frequencies (`ranking`). The clean pass that runs a model (`src.engine.compute_prior_from_model`) and
``python -m src.prior`` sit above: this package imports neither the engine nor models nor datasets.
"""

from src.prior.accumulator import ComputePrior
from src.prior.csv_format import PRIOR_CSV_COLUMNS, read_prior_csv, write_prior_csv
from src.prior.ranking import (
    average_ranks,
    naive_estimates,
    rank_report,
    rank_statistics,
    spearman,
    top_classes,
)

__all__ = [
    "PRIOR_CSV_COLUMNS",
    "ComputePrior",
    "average_ranks",
    "naive_estimates",
    "rank_report",
    "rank_statistics",
    "read_prior_csv",
    "spearman",
    "top_classes",
    "write_prior_csv",
]
