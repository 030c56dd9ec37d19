"""ctxaware: context-dependency indicators for instruction fine-tuning (Wang et al., 2024)."""

IND_TOKEN = "[IND]"
