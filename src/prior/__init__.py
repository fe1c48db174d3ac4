"""The class prior of CSL's selective mode: its file, its estimation, and how well it ranks the classes.

The prior of class c is the fraction of training images that contain it, P(c). CSL estimates it from
the stage-1 model (trained with ``--partial_loss_mode ignore``) as the mean predicted probability over
the training images::

    prior[c] = (1 / N) * sum_i sigmoid(model(x_i))[c]

- the file (`src.prior.csv_format`): the paper's ``Classes,avg_pred`` CSV, `write_prior_csv` /
  `read_prior_csv` (``PRIOR_CSV_COLUMNS``);
- the accumulator (`src.prior.accumulator`): `ComputePrior`, the running mean of the predictions, with a
  state that can be checkpointed and summed over torch.distributed ranks;
- the rank statistics (`src.prior.ranking`): Spearman's rho and top-k lists against the true frequencies.

The clean pass that produces an estimate from a model (`src.engine.compute_prior_from_model`) and the
command (``python -m src.prior``) sit above this package: it imports neither the engine nor the models.
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
