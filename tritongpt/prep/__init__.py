"""Text to token files: data/NAME/train.bin, val.bin (flat uint16/uint32 token ids) and meta.json.

    prep.prepare("shakespeare_char", out_dir="data")   # -> "data/shakespeare_char"
    ds = prep.load("data/shakespeare_char")           # ds.train, ds.val, ds.encode, ds.decode
"""

from tritongpt.prep.dataset import Dataset, load, prep_command
from tritongpt.prep.errors import DatasetError
from tritongpt.prep.pipeline import RECIPES, prepare

__all__ = ["Dataset", "DatasetError", "RECIPES", "load", "prep_command", "prepare"]
