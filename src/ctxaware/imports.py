"""Importing a model file that an installed package ships (`package:<module>/<file>.gguf`) as a plain transformers
model directory, once per run (rule import_model; README: The real model).

transformers reads GGUF files with the `gguf` package and dequantizes them to fp32, but refuses to save such a
model ("quantized with gguf and is not serializable"): the import builds a plain model from the same config
without the quantization entry, copies every weight into it (all keys must match) and saves that, with the
tokenizer and its chat template. Loading the import takes a fraction of a second; the GGUF, about 20 s.
"""

from __future__ import annotations

import json
from pathlib import Path

from ctxaware.modeling import MODEL_INFO


def import_package_model(source: str, out_dir: str, system_message: str = "template", dtype: str = "fp32") -> dict:
    """Write the model of `source` (package:<module>/<path>.gguf) to out_dir, its weights in fp32 and `dtype`
    (imported_models.dtype) the precision every job loads it in; returns its model info."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    from ctxaware.sources import resolve

    path = Path(resolve(source, "model source"))
    if path.suffix != ".gguf":
        raise ValueError(f"model source {source!r}: only GGUF files are imported from packages")
    directory, name = str(path.parent), path.name
    tokenizer = AutoTokenizer.from_pretrained(directory, gguf_file=name)
    loaded = AutoModelForCausalLM.from_pretrained(directory, gguf_file=name, dtype=torch.float32)
    settings = {k: v for k, v in loaded.config.to_dict().items() if k != "quantization_config"}
    config = AutoConfig.for_model(**settings)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(loaded.state_dict(), strict=True)  # every key, or an error naming the missing ones
    model.generation_config = loaded.generation_config
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    info = {
        "imported_from": source,
        "gguf_file": name,
        "architecture": type(model).__name__,
        "parameters": sum(p.numel() for p in model.parameters()),
        "system_message": system_message,
        "dtype": dtype,
    }
    (Path(out_dir) / MODEL_INFO).write_text(json.dumps(info, indent=1) + "\n")
    print(f"imported {source}: {info['architecture']}, {info['parameters']:,} parameters, to {out_dir}")
    return info
