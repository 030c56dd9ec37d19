"""The model organism: a small synthetic world, its corpora and a tiny Llama pretrained on them on the CPU, on which
the paper's phenomenon is measurable (the embedded default of the workflow).

- `world`: entities and their facts (some memorised), sentences, questions, filler text; deterministic from a seed.
- `corpus`: the plain-text pretraining documents, the SFT conversations (with ground-truth labels) in the three
  real schemas, and the held-out evaluation sets in the SQuAD / QuAC / DROP / MT-Bench / haystack schemas.
- `pretraining`: the word-level tokenizer and the pretraining of the base model (plain text, no chat template).
"""

# What the world rule writes under its directory (the Snakefile reads these names; nothing heavy is imported here).
SFT_FILES = {"sharegpt": "sft/sharegpt.json", "ultrachat": "sft/ultrachat.jsonl", "wizardlm": "sft/wizardlm.json"}
EVAL_FILES = {
    "squad": "eval/squad.jsonl",
    "quac": "eval/quac.jsonl",
    "drop": "eval/drop.jsonl",
    "mtbench": "eval/mtbench.jsonl",
    "mtbench_reference": "eval/mtbench_reference.jsonl",
}
