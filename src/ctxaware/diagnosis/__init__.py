"""The paper's Section 2 diagnosis on (base, instruct) model pairs, one module per experiment:

- `roles`: the prompts of the experiments and the role of each prompt token (user, assistant, BOS, template);
  the attention of the first answer token; retrieval heads (Eq. 3);
- `template_study`: NIH with and without the chat template (Figure 2, Table 7);
- `allocation`: attention allocation at the first answer token (Figures 3 and 4);
- `steering`: post-hoc attention steering of user tokens (Table 1, Eq. 1);
- `gather` (torch-free): the per-pair csvs into the tables and figures.

Models load with the instrumented attention (ctxaware.attention; plain sdpa when nothing is steered or captured,
soft-capping handled for Gemma-2). This file holds only the vocabulary the modules share, so importing the
torch-free `gather` imports no ML library.
"""

ROLES = ("user", "assistant", "bos")  # template tokens are the fourth kind, excluded and renormalised away
# variant -> (model role, use_chat_template, with response prefix): Table 7's columns
VARIANTS = {
    "base": ("base", False, True),
    "no_template": ("instruct", False, True),
    "template_prefix": ("instruct", True, True),
    "template_no_prefix": ("instruct", True, False),
    "no_template_no_prefix": ("instruct", False, False),  # beyond Table 7: plain text, the bare question last
}
