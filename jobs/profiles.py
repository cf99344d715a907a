"""Entry point for `ray job submit -- python jobs/profiles.py generate|embed --config FILE [k=v ...]`,
e.g. `--config configs/profiles_ml100k.yaml`.

RLMRec's profile jobs (arXiv 2310.15950): `generate` writes the LLM profiles (items, then users),
`embed` their sentence embeddings (`--text metadata`: the no-LLM ablation)."""

import sys

from raylrec.cli import main

if __name__ == "__main__":
    sys.exit(main(["profiles", *sys.argv[1:]]))
