"""Dataset layout, import and verification."""
from lmkreg.dataset.layout import Dataset, DatasetSpec, check_case_id, find_dataset, open_dataset

__all__ = ["Dataset", "DatasetSpec", "check_case_id", "find_dataset", "open_dataset"]
