"""A GGUF file run by llama.cpp (``llama-cpp-python``): completes rendered prompts, greedily by default.

One implementation for the two places that run GGUF: the parity check at export
(:mod:`slmloop.release.parity`) and the ``llamacpp`` serving engine
(:mod:`slmloop.serve.engine`). Prompts arrive rendered with the release's own
tokenizer and chat template; special tokens in them are parsed, not spelled out.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable, Iterable

__all__ = ["LlamaCpp", "llama_cpp_available"]


def llama_cpp_available() -> bool:
    return importlib.util.find_spec("llama_cpp") is not None


class LlamaCpp:
    def __init__(self, path: str, stop_ids: Iterable[int] = (), n_ctx: int = 4096, threads: int | None = None) -> None:
        from llama_cpp import Llama

        self.llm = Llama(model_path=path, n_ctx=n_ctx, n_threads=threads, verbose=False)
        self.stop = {self.llm.token_eos(), *stop_ids}

    def complete(
        self, prompt: str, max_tokens: int, temperature: float = 0.0, emit: Callable[[int], None] | None = None
    ) -> tuple[str, int]:
        """(answer text, new tokens); ``emit`` sees each new token id (the stop token excluded)."""
        tokens = self.llm.tokenize(prompt.encode("utf-8"), add_bos=False, special=True)
        out: list[int] = []
        greedy = temperature == 0
        for t in self.llm.generate(
            tokens, top_k=1 if greedy else 40, top_p=1.0, temp=temperature, repeat_penalty=1.0, reset=True
        ):
            if t in self.stop or len(out) >= max_tokens:
                break
            out.append(t)
            if emit is not None:
                emit(t)
        return self.llm.detokenize(out).decode("utf-8", errors="replace").strip(), len(out)

    def close(self) -> None:
        self.llm.close()
