"""Text to token files: data/NAME/train.bin, val.bin (flat uint16/uint32 token ids) and meta.json."""

from prep.dataset import Dataset, DatasetError, load

__all__ = ["Dataset", "DatasetError", "load"]
