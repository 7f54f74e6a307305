"""python -m tritongpt.prep NAME [options]: prepare a dataset in OUT_DIR/NAME. See --help."""

import argparse
import sys

from tritongpt.prep.errors import DatasetError
from tritongpt.prep.pipeline import RECIPES, prepare

EXAMPLES = """examples:
  python -m tritongpt.prep shakespeare_char
  python -m tritongpt.prep shakespeare --input ../shared/data/tinyshakespeare.txt
  python -m tritongpt.prep fineweb_edu --limit 100000
  python -m tritongpt.prep text --input 'notes/*.md' --name notes --tokenizer char
"""


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, not the usage block
        print(f"prep: error: {message} (see python -m tritongpt.prep --help)", file=sys.stderr)
        sys.exit(2)


def main(argv=None):
    p = _Parser(
        prog="python -m tritongpt.prep",
        description="Turn text into token files: OUT_DIR/NAME/train.bin, val.bin and meta.json.",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("dataset", choices=RECIPES, help="what to prepare")
    p.add_argument("--input", help="a local file or glob instead of the download (required for text)")
    p.add_argument("--name", dest="out_name", help="the dataset's folder name (default: the dataset; required for text)")
    p.add_argument("--tokenizer", choices=("char", "gpt2"), help="for text: char or gpt2 (default gpt2)")
    p.add_argument("--out_dir", default="data", help="where dataset folders go (default: data)")
    p.add_argument("--val_fraction", type=float, help="share of the text held out for validation (default 0.1)")
    p.add_argument("--val_docs", type=int, help="web corpora: documents held out (default 4000, at most limit/10)")
    p.add_argument("--seed", type=int, default=1337, help="web corpora: seed of the shuffled order (default 1337)")
    p.add_argument("--limit", type=int, help="web corpora: take only N documents (the first of the shuffled stream)")
    p.add_argument("--num_proc", type=int, help="processes that tokenize (default: all cores)")
    p.add_argument("--block_size", type=int, default=1024, help="each split must hold block_size + 1 tokens (default 1024)")
    p.add_argument("--dtype", choices=("auto", "uint16", "uint32"), default="auto", help="token id type (default auto)")
    p.add_argument("--force", action="store_true", help="replace an existing dataset")
    p.add_argument("--quiet", action="store_true", help="no progress bar or summary")
    args = vars(p.parse_args(argv))
    try:
        prepare(args.pop("dataset"), **args)
    except KeyboardInterrupt:
        print("prep: error: interrupted; the partial files were removed and any earlier dataset is unchanged, "
              "run the command again", file=sys.stderr)
        return 130
    except (DatasetError, OSError) as e:
        print(f"prep: error: {' '.join(str(e).split())}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
