"""The class prior of CSL's selective mode, P(c) estimated as the mean sigmoid prediction of the stage-1
model over the training images: its ``Classes,avg_pred`` file, its running mean and its rank statistics.
The clean pass and ``python -m src.prior`` sit above; this package imports no engine, model or dataset.
"""

from src.prior.accumulator import ComputePrior
from src.prior.csv_format import PRIOR_CSV_COLUMNS, prior_file_stem, read_prior_csv, write_prior_csv
from src.prior.ranking import (
    average_ranks,
    naive_estimates,
    rank_report,
    rank_statistics,
    spearman,
    top_classes,
)

