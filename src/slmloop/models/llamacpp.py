"""A GGUF file run by llama.cpp (``llama-cpp-python``): completes rendered prompts, greedily by default.

One implementation for the two places that run GGUF: the parity check at export
(:mod:`slmloop.release.parity`) and the ``llamacpp`` serving engine
(:mod:`slmloop.serve.engine`). Prompts arrive rendered with the release's own
tokenizer and chat template; special tokens in them are parsed, not spelled out.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable, Iterable
from typing import Any

__all__ = ["LlamaCpp", "llama_cpp_available"]


def llama_cpp_available() -> bool:
    return importlib.util.find_spec("llama_cpp") is not None


class LlamaCpp:
    def __init__(self, path: str, stop_ids: Iterable[int] = (), n_ctx: int = 4096, threads: int | None = None) -> None:
        from llama_cpp import Llama

        self.llm = Llama(model_path=path, n_ctx=n_ctx, n_threads=threads, verbose=False)
        self.stop = {self.llm.token_eos(), *stop_ids}
        self.path, self.threads = path, threads
        self._scorer: Any = None  # a context keeping every position's logits (continuation_logprobs)

    def complete(
        self,
        prompt: str,
        max_tokens: int,
        temperature: float = 0.0,
        emit: Callable[[int], None] | None = None,
        json_texts: list[str] | None = None,
        stop: Callable[[], bool] | None = None,
        rule: Any = None,
    ) -> tuple[str, int]:
        """(answer text, new tokens); ``emit`` sees each new token id (the stop token excluded); ``stop()``
        True ends the answer where it is (nobody waits for it any more).

        ``json_texts`` (the text of every token id): the answer is a JSON object, opened by its
        first token and done when it closes, as :func:`slmloop.models.inference.generate` does. ``rule``: a
        grammar the answer follows, the same object :func:`~slmloop.models.inference.generate` takes per row
        (``allowed()``: a bool per token id; ``feed(token)``: True once the answer is complete), so both
        engines decode under one grammar engine and one schema.
        """
        import numpy as np
        from llama_cpp import LogitsProcessorList

        from slmloop.models.inference import JsonObjectEnd

        tokens = self.llm.tokenize(prompt.encode("utf-8"), add_bos=False, special=True)
        out: list[int] = []
        greedy = temperature == 0
        processors, end = None, None
        if json_texts is not None:
            end = JsonObjectEnd(json_texts)
            opens = np.array(JsonObjectEnd.opens(json_texts))

            def first_opens(ids: Any, scores: Any) -> Any:
                if len(ids) > len(tokens):
                    return scores
                n = min(len(opens), len(scores))
                masked = np.full_like(scores, -np.inf)
                masked[:n] = np.where(opens[:n], scores[:n], -np.inf)
                return masked

            processors = LogitsProcessorList([first_opens])
        if rule is not None:

            def inside(ids: Any, scores: Any) -> Any:
                ok = rule.allowed()
                n = min(len(ok), len(scores))
                masked = np.full_like(scores, -np.inf)
                masked[:n] = np.where(ok[:n], scores[:n], -np.inf)
                return masked

            processors = LogitsProcessorList([inside])
        for t in self.llm.generate(
            tokens,
            top_k=1 if greedy else 40,
            top_p=1.0,
            temp=temperature,
            repeat_penalty=1.0,
            reset=True,
            logits_processor=processors,
        ):
            if t in self.stop or len(out) >= max_tokens or (stop is not None and stop()):
                break
            out.append(t)
            if emit is not None:
                emit(t)
            if (end is not None and end.feed(t)) or (rule is not None and rule.feed(t)):
                break
        return self.llm.detokenize(out).decode("utf-8", errors="replace").strip(), len(out)

    def continuation_logprobs(self, prompts: list[str], continuations: list[str]) -> list[float]:
        """Summed log-probability of each continuation's tokens after its prompt (tokenised apart, as
        :func:`slmloop.models.inference.continuation_logprobs` does).

        Runs on a second context that keeps every position's logits (the generating one keeps only the
        last), made on the first call and sized for the longest sequence seen.
        """
        seqs = []
        for p, c in zip(prompts, continuations, strict=True):
            head = self.llm.tokenize(p.encode("utf-8"), add_bos=False, special=True)
            tail = self.llm.tokenize(c.encode("utf-8"), add_bos=False, special=False)
            seqs.append((head, tail))
        scorer = self._scorer_for(max((len(h) + len(t) for h, t in seqs), default=1))
        out = []
        for head, tail in seqs:
            self._continue(scorer, head, tail)
            out.append(_summed_logprob(scorer, len(head), tail))
        return out

    def rank(self, prompts: list[list[int]], labels: list[list[int]]) -> list[list[float]]:
        """log P(label | prompt) of every label (token ids, each ending with its stop token) after every
        prompt (token ids), with the full-vocabulary softmax, as
        :func:`slmloop.models.inference.rank_labels` scores them (every label, no pruning).

        Labels are visited in token order, so a prefix two labels share ("alarm_" in alarm_set /
        alarm_query) is evaluated once per prompt, and the prompt's prefix shared with the one before
        (system message, label list) stays in the cache.
        """
        longest = max((len(x) for x in labels), default=1)
        scorer = self._scorer_for(max((len(p) for p in prompts), default=1) + longest)
        order = sorted(range(len(labels)), key=lambda j: labels[j])
        out = []
        for prompt in prompts:
            row = [0.0] * len(labels)
            for j in order:
                self._continue(scorer, prompt, labels[j][:-1])
                row[j] = _summed_logprob(scorer, len(prompt), labels[j])
            out.append(row)
        return out

    def _scorer_for(self, need: int) -> Any:
        """The scoring context (every position's logits kept), grown to hold ``need`` tokens."""
        if self._scorer is None or self._scorer.n_ctx() < need:
            from llama_cpp import Llama

            if self._scorer is not None:
                self._scorer.close()
            size = max(256, 1 << (need - 1).bit_length())
            self._scorer = Llama(
                model_path=self.path, n_ctx=size, n_batch=size, n_threads=self.threads, logits_all=True, verbose=False
            )
        return self._scorer

    @staticmethod
    def _continue(scorer: Any, head: list[int], tail: list[int]) -> None:
        """Make the scoring context hold ``head + tail``, evaluating only what differs from what it holds."""
        tokens = [*head, *tail]
        held = scorer.input_ids[: scorer.n_tokens].tolist()
        same = 0
        for a, b in zip(held, tokens, strict=False):
            if a != b:
                break
            same += 1
        scorer.n_tokens = min(same, len(tokens))
        if scorer.n_tokens == len(tokens) and tokens:  # all held: the last position's logits are still there
            return
        scorer.eval(tokens[scorer.n_tokens :])

    def close(self) -> None:
        self.llm.close()
        if self._scorer is not None:
            self._scorer.close()


def _summed_logprob(scorer: Any, start: int, tail: list[int]) -> float:
    """Summed log-probability of ``tail`` placed at ``start`` (the logits before each of its tokens)."""
    import numpy as np

    logits = np.asarray(scorer.scores[start - 1 : start + len(tail) - 1], dtype=np.float64)
    top = logits.max(axis=-1, keepdims=True)
    logp = logits - top - np.log(np.exp(logits - top).sum(axis=-1, keepdims=True))
    return float(logp[np.arange(len(tail)), tail].sum())
