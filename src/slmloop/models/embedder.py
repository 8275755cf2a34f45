"""Sentence embeddings (MiniLM by default) with a per-text on-disk cache.

Leakage checks and drift monitoring embed the same training and gold rows again
and again, in different groupings; the cache stores one vector per (model, text)
in a small SQLite file, so only texts never seen before are embedded.
"""

from __future__ import annotations

import hashlib
import sqlite3
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

from slmloop.models.catalog import resolve_model

if TYPE_CHECKING:
    import numpy as np

__all__ = ["embed", "word_vectors"]


@lru_cache(maxsize=2)
def _model(path: str) -> Any:
    from sentence_transformers import SentenceTransformer

    from slmloop.models.quiet import quiet_transformers

    with quiet_transformers():
        return SentenceTransformer(path, device="cpu")


def _encode(path: str, texts: list[str]) -> np.ndarray:
    import numpy as np

    from slmloop.models.quiet import quiet_transformers

    with quiet_transformers():
        out = _model(path).encode(
            texts, batch_size=64, normalize_embeddings=True, show_progress_bar=False, convert_to_numpy=True
        )
    return np.asarray(out, dtype=np.float32)


def embed(texts: list[str], spec: str = "all-minilm-l6-v2", cache_dir: Path | None = None) -> np.ndarray:
    """Unit-normalised float32 embeddings, one row per text."""
    import numpy as np

    path = resolve_model(spec).path
    if not texts:
        return np.zeros((0, 0), dtype=np.float32)
    if cache_dir is None:
        return _encode(path, texts)
    cache_dir.mkdir(parents=True, exist_ok=True)
    db = cache_dir / f"{hashlib.sha256(path.encode()).hexdigest()[:16]}.sqlite"
    keys = [hashlib.sha256(t.encode("utf-8")).hexdigest() for t in texts]
    with sqlite3.connect(db, timeout=60) as con:
        con.execute("CREATE TABLE IF NOT EXISTS vec (key TEXT PRIMARY KEY, v BLOB)")
        found: dict[str, bytes] = {}
        unique = list(dict.fromkeys(keys))
        for i in range(0, len(unique), 900):  # SQLite's parameter limit
            chunk = unique[i : i + 900]
            marks = ",".join("?" * len(chunk))
            found.update(con.execute(f"SELECT key, v FROM vec WHERE key IN ({marks})", chunk).fetchall())
        missing = [k for k in unique if k not in found]
        if missing:
            first = {k: t for k, t in zip(keys, texts, strict=True)}
            vectors = _encode(path, [first[k] for k in missing])
            rows = [(k, v.tobytes()) for k, v in zip(missing, vectors, strict=True)]
            con.executemany("INSERT OR REPLACE INTO vec VALUES (?, ?)", rows)
            found.update(rows)
    return np.stack([np.frombuffer(found[k], dtype=np.float32) for k in keys])


def word_vectors(words: list[str], spec: str = "all-minilm-l6-v2") -> np.ndarray:
    """Unit-normalised static vectors of single words: the mean of the embedder's input embeddings of each
    word's pieces (no forward pass; a word the tokenizer gives no piece gets a zero vector)."""
    import numpy as np

    model = _model(resolve_model(spec).path)
    table = model[0].auto_model.get_input_embeddings().weight.detach().float().numpy()
    pieces = model.tokenizer(words, add_special_tokens=False)["input_ids"] if words else []
    out = np.zeros((len(words), table.shape[1]), dtype=np.float32)
    for i, ids in enumerate(pieces):
        if ids:
            v = table[ids].mean(axis=0)
            out[i] = v / (np.linalg.norm(v) or 1.0)
    return out
