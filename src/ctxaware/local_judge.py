"""A local transformers judge for MT-Bench (evaluation.mtbench.judge.backend: local)."""

from __future__ import annotations

import torch

from ctxaware.chat import prepare_tokenizer
from ctxaware.modeling import load_model

RATINGS = tuple(range(1, 11))


class LocalJudge:
    """Judges with a causal LM on this machine.

    mode="generate": greedy free text, parsed for [[n]] like any judge (no rating -> failed).
    mode="constrained": the judge's answer is forced to start with "Rating: [[" and the rating is the n in 1..10
    whose continuation "n]]" the judge finds most likely; always parsable, useful for small judges.
    """

    def __init__(self, model_path: str, mode: str = "generate", max_new_tokens: int = 512):
        self.model, tokenizer = load_model(model_path)
        self.tokenizer = prepare_tokenizer(tokenizer)
        self.mode, self.max_new_tokens = mode, max_new_tokens

    def _prompt_ids(self, messages: list[dict]) -> list[int]:
        text = self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    @torch.inference_mode()
    def judge(self, messages: list[dict]) -> str:
        device = next(self.model.parameters()).device
        prompt = self._prompt_ids(messages)
        if self.mode == "generate":
            output = self.model.generate(
                torch.tensor([prompt], device=device),
                max_new_tokens=self.max_new_tokens,
                do_sample=False,
                pad_token_id=self.tokenizer.pad_token_id,
            )
            return self.tokenizer.decode(output[0, len(prompt) :], skip_special_tokens=True)
        prefix = prompt + self.tokenizer("Rating: [[", add_special_tokens=False)["input_ids"]
        best, best_logprob = None, -float("inf")
        for rating in RATINGS:
            continuation = self.tokenizer(f"{rating}]]", add_special_tokens=False)["input_ids"]
            ids = torch.tensor([prefix + continuation], device=device)
            logprobs = torch.log_softmax(self.model(ids).logits[0, len(prefix) - 1 : -1].float(), dim=-1)
            total = logprobs.gather(1, ids[0, len(prefix) :, None]).sum().item()
            if total > best_logprob:
                best, best_logprob = rating, total
        return f"Rating: [[{best}]]"
