"""Writes the single-digit addition datasets shipped next to this file (deterministic).

    python -m examples.data.make_addition

- ``addition_train.jsonl``: 80 of the 100 sums ``a+b=`` (prompt) -> ``a+b`` (completion);
- ``addition_eval.jsonl``: the other 20, held out;
- ``addition_dpo.jsonl``: the training prompts with the right sum chosen and an off-by-one or
  off-by-ten sum rejected.

The answer is checkable, so the same files serve SFT, GRPO (verifiable reward), DPO and
evaluation (exact-match accuracy).
"""

from __future__ import annotations

import json
import random
from pathlib import Path

HERE = Path(__file__).parent


def main() -> None:
    rng = random.Random(20240601)
    pairs = [(a, b) for a in range(10) for b in range(10)]
    rng.shuffle(pairs)
    train, held_out = pairs[:80], pairs[80:]

    def row(a: int, b: int) -> dict[str, str]:
        return {"prompt": f"{a}+{b}=", "completion": str(a + b)}

    def write(name: str, rows: list[dict[str, str]]) -> None:
        with open(HERE / name, "w") as fh:
            fh.writelines(json.dumps(r) + "\n" for r in rows)

    write("addition_train.jsonl", [row(a, b) for a, b in train])
    write("addition_eval.jsonl", [row(a, b) for a, b in held_out])
    dpo = []
    for a, b in train:
        wrong = a + b + rng.choice([-1, 1, 10])
        wrong = wrong if wrong >= 0 else a + b + 1
        dpo.append({"prompt": f"{a}+{b}=", "chosen": str(a + b), "rejected": str(wrong)})
    write("addition_dpo.jsonl", dpo)


if __name__ == "__main__":
    main()
