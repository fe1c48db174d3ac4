"""The paper's COCO table (FPC / RPS x Ignore / Negative / Negative-ASL / CSL), behind reproduce.py.

* `protocols` - what runs: the rows (``ROWS``), the paper's numbers, the embedded and COCO protocols,
  the CSL threshold rule;
* `identity` - what a run is: its recorded settings and the rule for reusing its result;
* `runner` - how it runs: one ``train.py`` process per cell;
* `report` - what comes out: ``results.{json,csv,md,png}`` and the prior-ranking table;
* `mechanism` - what CSL's top-k ignored; `sweep` - the regime sweep.
"""
