"""The paper's COCO table (FPC / RPS x Ignore / Negative / Negative-ASL / CSL), behind reproduce.py.

* `protocols` - what runs: the rows (``ROWS``), the paper's numbers, the embedded and COCO protocols,
  the CSL threshold rule;
* `runner` - how it runs: one resumable ``train.py`` process per cell;
* `report` - what comes out: ``results.{json,csv,md,png}`` and the prior-ranking table.
"""

from src.reproduce.protocols import (
    PAPER_RESULTS,
    ROWS,
    Protocol,
    Row,
    coco_protocol,
    embedded_protocol,
    protocol_rows,
    select_columns,
    select_rows,
    share_threshold,
    threshold_rule,
    user_train_flags,
)
from src.reproduce.report import write_reports
from src.reproduce.runner import CellFailed, cell_environment, run_table

__all__ = [
    "PAPER_RESULTS", "ROWS", "CellFailed", "Protocol", "Row", "cell_environment", "coco_protocol",
    "embedded_protocol", "protocol_rows", "run_table", "select_columns", "select_rows", "share_threshold",
    "threshold_rule", "user_train_flags", "write_reports",
]
