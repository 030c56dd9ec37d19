"""Shared by the sharded-scoring tests of both scores (Eq. 2 and the likelihood ratio)."""

from ctxaware.scoring import plan_conversation


def record_plans(monkeypatch, module) -> list[str]:
    """The ids of the conversations `module` builds scoring plans for from now on (its `plan_conversation`
    wrapped); clear the list to count again."""
    built: list[str] = []

    def recording(tokenizer, conversation, max_length, compat="none", truncation="none"):
        built.append(str(conversation["id"]))
        return plan_conversation(tokenizer, conversation, max_length, compat, truncation)

    monkeypatch.setattr(module, "plan_conversation", recording)
    return built
