"""cmmc: Contrastive Multi-Modal Clustering (CMMC / MFLVC), a reproducible reference implementation."""

from cmmc.config import Config, make_config
from cmmc.data import Dataset, list_datasets, load_dataset, load_views_file
from cmmc.estimator import CMMC
from cmmc.metrics import evaluate
from cmmc.train import Trainer

__version__ = "0.1.0"
__all__ = [
    "CMMC",
    "Config",
    "Dataset",
    "Trainer",
    "evaluate",
    "list_datasets",
    "load_dataset",
    "load_views_file",
    "make_config",
]
