"""Cut the shipped gold slice from the PandaLM test set (nanoGPT's data/<set>/prepare.py habit).

    python data/gold/pandalm/prepare.py /path/to/pandalm   # the folder with testset-v1.json,
                                                           # gpt-3.5-turbo-testset-v1.json and LICENSE

The rule, so the slice can be rebuilt and checked: in the order of ``idx``, the
first 60 items whose three annotators reached a non-tie majority, whose texts
are all strings, and whose instruction, input and both responses total under
600 characters (short items keep the demo's CPU labelling to about a minute).
Rows are copied unchanged, and GPT-3.5's verdicts on the same ``idx`` beside them.
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

N_ITEMS = 60
MAX_CHARS = 600
HERE = Path(__file__).resolve().parent


def majority(row: dict) -> int:
    votes = [int(row[f"annotator{j}"]) for j in (1, 2, 3)]
    return next((v for v in (1, 2) if votes.count(v) >= 2), 0)


def keep(row: dict) -> bool:
    texts = [row["instruction"], row.get("input") or "", row["response1"], row["response2"]]
    return majority(row) != 0 and all(isinstance(t, str) for t in texts) and sum(map(len, texts)) < MAX_CHARS


def main(src: Path) -> None:
    items = json.loads((src / "testset-v1.json").read_text(encoding="utf-8"))
    verdicts = {r["idx"]: r for r in json.loads((src / "gpt-3.5-turbo-testset-v1.json").read_text(encoding="utf-8"))}
    chosen = [r for r in sorted(items, key=lambda r: r["idx"]) if keep(r)][:N_ITEMS]
    (HERE / "testset-slice.json").write_text(json.dumps(chosen, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    (HERE / "gpt-3.5-turbo-slice.json").write_text(json.dumps([verdicts[r["idx"]] for r in chosen], indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    shutil.copyfile(src / "LICENSE", HERE / "LICENSE")
    print(f"wrote {len(chosen)} items (idx {chosen[0]['idx']}..{chosen[-1]['idx']}) to {HERE}")


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else HERE.parents[3] / "shared" / "data" / "pandalm"))
