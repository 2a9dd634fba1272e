"""Dense retrieval: an embedding model (transformers, on the CPU or GPU) turns questions and passages into
vectors; the nearest passages are found by their cosine. Optional: without a model the search is lexical.

`knowledge.embedding` is a name below (fetched with `python -m llm download NAME`), a hub id already in the
Hugging Face cache, or a folder. A sentence-transformers folder says its own pooling (1_Pooling/config.json)
and prompts (config_sentence_transformers.json); the names below carry BAAI's and intfloat's."""

from __future__ import annotations

import json
import logging
import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import NotReadyError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class EmbeddingModel:
    repo_id: str
    query_prefix: str = ""
    passage_prefix: str = ""
    size_mb: int = 0


EMBEDDINGS = {
    "bge-small-zh": EmbeddingModel("BAAI/bge-small-zh-v1.5", "为这个句子生成表示以用于检索相关文章：",
                                   "", 95),
    "bge-small-en": EmbeddingModel("BAAI/bge-small-en-v1.5",
                                   "Represent this sentence for searching relevant passages: ", "", 130),
    "multilingual-e5-small": EmbeddingModel("intfloat/multilingual-e5-small", "query: ", "passage: ", 470),
}
BATCH = 32
MAX_TOKENS = 512


class Embedder:
    """One embedding model, loaded once; `embed` is thread-safe (one batch at a time)."""

    def __init__(self, spec: str):
        known = EMBEDDINGS.get(spec)
        self.name = spec
        self.folder = _folder(known.repo_id if known else spec, spec)
        pooling, prompts = _sentence_transformers_options(self.folder)
        self.pooling = pooling
        self.query_prefix = known.query_prefix if known else prompts.get("query", "")
        self.passage_prefix = known.passage_prefix if known else prompts.get("passage", "")
        import torch
        from transformers import AutoModel, AutoTokenizer

        self._torch = torch
        self.device = "cuda" if torch.cuda.is_available() else "cpu"
        self.tokenizer = AutoTokenizer.from_pretrained(self.folder)
        self.model = AutoModel.from_pretrained(self.folder).to(self.device).eval()
        self._lock = threading.Lock()

    def embed(self, texts: list[str], query: bool = False) -> np.ndarray:
        """Unit vectors (float32, one row per text)."""
        prefix = self.query_prefix if query else self.passage_prefix
        rows = []
        with self._lock, self._torch.inference_mode():
            for start in range(0, len(texts), BATCH):
                batch = [prefix + t for t in texts[start:start + BATCH]]
                enc = self.tokenizer(batch, padding=True, truncation=True, max_length=MAX_TOKENS,
                                     return_tensors="pt").to(self.device)
                hidden = self.model(**enc).last_hidden_state
                if self.pooling == "mean":
                    mask = enc["attention_mask"].unsqueeze(-1).to(hidden.dtype)
                    pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1)
                else:
                    pooled = hidden[:, 0]
                pooled = self._torch.nn.functional.normalize(pooled.float(), dim=-1)
                rows.append(pooled.cpu().numpy())
        return np.concatenate(rows) if rows else np.zeros((0, 1), dtype=np.float32)


def _folder(where: str, spec: str) -> Path:
    """The model's folder: `where` itself, or its snapshot in the Hugging Face cache (never a download)."""
    path = Path(where).expanduser()
    if path.is_dir():
        return path
    try:
        from huggingface_hub import snapshot_download

        from ..download import hub_location

        return Path(snapshot_download(where, local_files_only=True, cache_dir=hub_location()[1]))
    except Exception as e:  # noqa: BLE001 - not in the cache, or not a hub id: the fix is the same
        fetch = f"python -m llm download {spec}" if spec in EMBEDDINGS else \
            f"use one of {', '.join(EMBEDDINGS)} (python -m llm download NAME), or a model folder"
        raise NotReadyError(f"the embedding model {spec!r} is not here", fix=fetch) from e


def _sentence_transformers_options(folder: Path) -> tuple[str, dict]:
    """("cls" or "mean", prompts) as a sentence-transformers folder states them; else CLS, no prompts."""
    pooling, prompts = "cls", {}
    try:
        conf = json.loads((folder / "1_Pooling" / "config.json").read_text("utf-8"))
        pooling = "mean" if conf.get("pooling_mode_mean_tokens") and not conf.get("pooling_mode_cls_token") \
            else "cls"
    except (OSError, ValueError):
        pass
    try:
        prompts = json.loads((folder / "config_sentence_transformers.json").read_text("utf-8")).get("prompts")
    except (OSError, ValueError):
        pass
    return pooling, prompts if isinstance(prompts, dict) else {}


class Vectors:
    """The passages' vectors held in memory for search, reloaded when the index changes."""

    def __init__(self):
        self.ids = np.zeros(0, dtype=np.int64)
        self.matrix = np.zeros((0, 1), dtype=np.float32)
        self.generation = -1

    def load(self, rows: list[tuple[int, bytes]], generation: int) -> None:
        self.ids = np.array([r[0] for r in rows], dtype=np.int64)
        self.matrix = np.stack([np.frombuffer(r[1], dtype=np.float32) for r in rows]) if rows else \
            np.zeros((0, 1), dtype=np.float32)
        self.generation = generation

    def nearest(self, query: np.ndarray, k: int) -> list[tuple[int, float]]:
        """(passage id, cosine) of the k nearest, nearest first."""
        if not len(self.ids):
            return []
        sims = self.matrix @ query
        top = np.argpartition(-sims, min(k, len(sims) - 1))[:k]
        top = top[np.argsort(-sims[top])]
        return [(int(self.ids[i]), float(sims[i])) for i in top]
