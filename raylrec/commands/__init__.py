"""The ``raylrec`` command's verbs, one module per family, each registering its own sub-parser
(``register(sub)``) and its ``cmd_*`` functions. Every command checks its config and inputs
before it starts Ray.

raylrec demo                                   the main job on the embedded default
raylrec data prepare --config FILE [k=v ...]   prepare a dataset (dotted overrides)
raylrec data stats PATH                        statistics of a prepared dataset
raylrec data synth --out PATH [--events N]     write a synthetic interaction log
raylrec train-cf --config FILE [--local] [--init-from BUNDLE]  train a CF encoder, export its CF bundle
raylrec train --config FILE [--local]          train an LLM method, export its model bundle
raylrec tune --space FILE --config FILE        a Ray Tune sweep (ASHA; re-run the name to resume)
raylrec tune report EXPERIMENT                 draw a finished sweep to PNG files
raylrec tune confirm --config C --tuned T      retrain both with 3 seeds, compare on held-out data
raylrec score --config FILE [--date D]         top-K recommendations for every user, published
raylrec nightly --config FILE --date D         prepare -> refresh CF -> score -> publish, idempotent
raylrec recs read ROOT [--date D] [--user U]   read published recommendations (checksums verified)
raylrec recs eval ROOT --dataset D [--split S]  Recall/NDCG@K of published lists vs held-out items
raylrec recs dates ROOT                        the published dates under ROOT
raylrec profiles generate --config FILE [--local]  RLMRec's LLM profiles of items and users, resumable
raylrec profiles embed --config FILE           sentence embeddings of the profiles (--text metadata: no LLM)
raylrec config docs                            the configuration reference, generated from the models

Overrides: ``--set key=value`` (repeatable) or a bare ``key=value``, e.g. ``train.epochs=5``.
"""

from __future__ import annotations

import argparse
import importlib

from raylrec import __version__

__all__ = ["FAMILIES", "build_parser"]

# The verb families, in the order ``raylrec --help`` lists them.
FAMILIES = ("demo", "train", "tune", "score", "recs", "profiles", "config", "data")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="raylrec",
        description="Ray-distributed training and batch scoring of LLM recommenders.",
        epilog="\n\n".join(__doc__.split("\n\n")[1:]),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"raylrec {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)
    for family in FAMILIES:
        importlib.import_module(f"raylrec.commands.{family}").register(sub)
    return parser
