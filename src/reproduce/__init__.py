"""The paper's COCO table behind reproduce.py: `protocols` (what runs: rows, paper numbers, protocols,
threshold rule), `identity` (what a run is, and when its result is reused), `runner` (one train.py process
per cell), `report` (results.{json,csv,md,png}), `mechanism` (what CSL's top-k ignored), `sweep`."""
