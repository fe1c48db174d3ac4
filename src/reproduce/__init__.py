"""The paper's COCO table behind reproduce.py: what runs (`protocols`), when a result is reused
(`identity`), the train.py processes (`runner`), the reports (`report`, `mechanism`), the regime `sweep`."""
