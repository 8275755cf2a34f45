"""Loading tokenizers and causal LMs (with or without a LoRA adapter), chat formatting.

Heavy imports (torch, transformers, peft) happen inside functions so that
``slmloop --help`` stays instant.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

from slmloop.errors import ModelError
from slmloop.models.catalog import ResolvedModel
from slmloop.models.quiet import quiet_transformers

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

__all__ = [
    "CHATML_TEMPLATE",
    "TEMPLATE_OPTIONS",
    "EncodedExample",
    "chat_text",
    "count_parameters",
    "encode_conversation",
    "encode_example",
    "fold_turns",
    "hardware_bf16",
    "load_causal_lm",
    "load_tokenizer",
    "pick_dtype",
    "render_prompt",
    "turn_end",
]

#: used when a tokenizer ships no chat template (base models)
CHATML_TEMPLATE = (
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content']"
    " + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}"
    "{% endif %}"
)


@lru_cache(maxsize=1)
def hardware_bf16() -> bool:
    """True when bf16 matrix math is fast here: CUDA with bf16, or a CPU with AVX512-BF16/AMX."""
    import torch

    if torch.cuda.is_available():
        return bool(torch.cuda.is_bf16_supported())
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def pick_dtype(precision: str) -> torch.dtype:
    import torch

    if precision == "bf16" or (precision == "auto" and hardware_bf16()):
        return torch.bfloat16
    return torch.float32


def _hub_error(spec: str, exc: Exception) -> ModelError:
    return ModelError(
        f"cannot load model {spec!r}: {str(exc).splitlines()[0] if str(exc) else exc!r}",
        hint="Offline? Use a catalog name (smollm2-135m-instruct) or a local folder; "
        "a hub id needs the Hugging Face hub (or its files in the HF cache).",
    )


def load_tokenizer(model: ResolvedModel) -> PreTrainedTokenizerBase:
    from transformers import AutoTokenizer

    try:
        with quiet_transformers():
            tok = AutoTokenizer.from_pretrained(model.path, revision=model.revision)
    except (OSError, ValueError) as exc:
        raise _hub_error(model.spec, exc) from None
    if tok.eos_token is None:
        raise ModelError(
            f"the tokenizer of {model.spec!r} has no EOS token, so a fine-tuned model could not stop",
            hint="Use an instruct/chat model, or set eos_token in tokenizer_config.json.",
        )
    if not getattr(tok, "chat_template", None):
        tok.chat_template = CHATML_TEMPLATE
    end = turn_end(tok)
    if end is not None and end != tok.eos_token:
        # answers end where the template ends a turn (Gemma's <end_of_turn>, Phi-3's <|end|>): training
        # appends it, ranking scores it, decoding and the GGUF stop on it
        tok.eos_token = end
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok


#: what every chat template is rendered with: no reasoning block before an answer (Qwen3, SmolLM3: the answer
#: is trained and scored right after the prompt, the empty block is part of the prompt), and a fixed day for
#: templates that take one (Llama 3.x would print today's), so a prompt is the same at training, evaluation
#: and serving time
TEMPLATE_OPTIONS: dict[str, Any] = {"enable_thinking": False, "date_string": "26 Jul 2024"}


def chat_text(tok: PreTrainedTokenizerBase, messages: list[dict[str, str]], *, add_generation_prompt: bool) -> str:
    """``messages`` through the model's chat template (:data:`TEMPLATE_OPTIONS`).

    A template that refuses the conversation's shape (Gemma 2 has no system role; Gemma refuses two user
    turns in a row) gets it folded as the model's own templates fold it: the system message leads the first
    user turn, consecutive turns of one role are joined. Refused even so: a :class:`ModelError`."""
    from jinja2.exceptions import TemplateError

    def render(conversation: list[dict[str, str]]) -> str:
        text = tok.apply_chat_template(
            conversation, tokenize=False, add_generation_prompt=add_generation_prompt, **TEMPLATE_OPTIONS
        )
        return str(text)

    try:
        return render(messages)
    except TemplateError as exc:
        folded = fold_turns(messages)
        if folded == messages:
            raise _template_error(exc) from None
        try:
            return render(folded)
        except TemplateError as again:
            raise _template_error(again) from None


def _template_error(exc: Exception) -> ModelError:
    return ModelError(
        f"the model's chat template refuses the conversation: {exc}",
        hint="Chat rows must alternate user and assistant turns after an optional system message.",
    )


def fold_turns(messages: list[dict[str, str]]) -> list[dict[str, str]]:
    """The conversation with its system message leading the first user turn and consecutive turns of one
    role joined by a blank line: the shape every chat template accepts."""
    out: list[dict[str, str]] = []
    system = [m["content"] for m in messages if m["role"] == "system"]
    for m in messages:
        if m["role"] == "system":
            continue
        if out and out[-1]["role"] == m["role"]:
            out[-1] = {"role": m["role"], "content": out[-1]["content"] + "\n\n" + m["content"]}
        else:
            out.append({"role": m["role"], "content": m["content"]})
    if system:
        lead = "\n\n".join(system)
        if out and out[0]["role"] == "user":
            out[0] = {"role": "user", "content": lead + "\n\n" + out[0]["content"]}
        else:
            out.insert(0, {"role": "user", "content": lead})
    return out


def turn_end(tok: PreTrainedTokenizerBase) -> str | None:
    """The special token the chat template closes an assistant turn with (None: none found)."""
    probe = [{"role": "user", "content": "ping"}, {"role": "assistant", "content": "pong"}]
    try:
        text = chat_text(tok, probe, add_generation_prompt=False)
    except ModelError:
        return None
    cut = text.rfind("pong")
    if cut < 0:
        return None
    specials = set(tok.all_special_ids) | set(getattr(tok, "added_tokens_decoder", {}) or {})
    for i in tok(text[cut + len("pong") :], add_special_tokens=False)["input_ids"]:
        if i in specials:
            return str(tok.convert_ids_to_tokens(i))
        if str(tok.decode([i])).strip():  # text after the answer before any special token: no turn end to take
            return None
    return None


#: the models told, in this process, that they run through transformers' plain paths
_TOLD: set[str] = set()


def _plain_paths_notice(model: ResolvedModel) -> Any:
    """The model's config; a model whose architecture slmloop's fast paths do not reproduce exactly
    (:func:`~slmloop.models.attention.inexact_features`) is answered and trained through transformers'
    plain paths instead (exact, slower), and the user is told so once."""
    from rich.console import Console
    from transformers import AutoConfig

    from slmloop.models.attention import inexact_features

    try:
        with quiet_transformers():
            config = AutoConfig.from_pretrained(model.path, revision=model.revision)
    except (OSError, ValueError) as exc:
        raise _hub_error(model.spec, exc) from None
    found = inexact_features(config)
    if found and model.path not in _TOLD:
        _TOLD.add(model.path)
        arch = ", ".join(getattr(config, "architectures", None) or [config.model_type])
        Console(stderr=True).print(
            f"note: {model.spec} ({arch}) uses {' and '.join(found)}; slmloop runs it through transformers' "
            "plain attention (exact, but slower: no shared prompt prefix, no packed passes, every label scored "
            "as its own sequence)",
            markup=False,
            highlight=False,
        )
    return config


def _attention_for(config: Any, wanted: str) -> str:
    """``wanted``, or eager attention where SDPA cannot compute the model (attention soft-capping)."""
    if getattr(config, "attn_logit_softcapping", None):
        return "eager"
    return wanted


def load_causal_lm(
    model: ResolvedModel,
    dtype: torch.dtype,
    *,
    adapter: str | Path | None = None,
    merge: bool = True,
    attn_implementation: str = "sdpa",
) -> PreTrainedModel:
    """Load the base model, optionally with a LoRA adapter.

    ``merge=True`` adds the adapter into the weights in fp32 and casts once to
    ``dtype`` — exactly what ``slmloop export`` ships, and as fast as the base
    model. ``merge=False`` keeps the adapter as separate (fp32) layers.
    """
    import torch
    from transformers import AutoModelForCausalLM

    load_dtype = torch.float32 if adapter is not None and merge else dtype
    config = _plain_paths_notice(model)
    try:
        with quiet_transformers():
            lm: Any = AutoModelForCausalLM.from_pretrained(
                model.path,
                config=config,  # read once, above
                revision=model.revision,
                dtype=load_dtype,
                attn_implementation=_attention_for(config, attn_implementation),
            )
    except (OSError, ValueError) as exc:
        raise _hub_error(model.spec, exc) from None
    if adapter is not None:
        from peft import PeftModel

        adapter = Path(adapter)
        if not (adapter / "adapter_config.json").exists():
            raise ModelError(
                f"{adapter} holds no LoRA adapter (adapter_config.json is missing)",
                hint="The run may have failed before saving; `slmloop runs` shows its status.",
            )
        with quiet_transformers():
            lm = PeftModel.from_pretrained(lm, str(adapter))
            if merge:
                lm = lm.merge_and_unload()
                # cast the weights only: buffers such as rotary frequencies stay fp32, as a direct load
                # in ``dtype`` keeps them; tied weights stay tied. requires_grad is restored as a plain
                # load has it: PyTorch multiplies a sliced 3-D input by a frozen weight through a slow
                # batched copy (without this the LM head is far slower at generation time)
                for p in lm.parameters():
                    p.data = p.data.to(dtype)
                    p.requires_grad_(True)
                lm.config.dtype = dtype
    lm.eval()
    return lm


def render_prompt(tok: PreTrainedTokenizerBase, messages: list[dict[str, str]]) -> str:
    """The model's own chat template, ready for the assistant's answer."""
    return chat_text(tok, messages, add_generation_prompt=True)


@dataclass
class EncodedExample:
    input_ids: list[int]
    #: [start, end) token ranges the loss is computed on (the assistant's answers)
    spans: list[tuple[int, int]]
    truncated: bool
    #: tokens of the answer that did not fit (preflight refuses a run where any row loses answer tokens)
    answer_cut: int = 0
    #: the length the example would have had without truncation
    full_length: int = 0

    @property
    def prompt_len(self) -> int:
        """Index of the first answer token; everything before it is prompt."""
        return self.spans[0][0]


def _answer_ids(tok: PreTrainedTokenizerBase, completion: str) -> tuple[list[int], str]:
    """Token ids of one answer up to and including EOS (appended if the template has none)."""
    eos_text = tok.eos_token
    cut = completion.find(eos_text) if eos_text else -1
    text = completion[: cut + len(eos_text)] if cut >= 0 else completion
    ids: list[int] = tok(text, add_special_tokens=False)["input_ids"]
    if tok.eos_token_id not in ids:
        ids = [*ids, tok.eos_token_id]
    else:
        ids = ids[: ids.index(tok.eos_token_id) + 1]
    return ids, text


def encode_example(
    tok: PreTrainedTokenizerBase,
    messages: list[dict[str, str]],
    answer: str,
    max_length: int,
) -> EncodedExample:
    """Tokenize prompt and answer separately, exactly as inference will see them.

    The answer ends with the tokenizer's EOS (the template's end-of-turn for
    chat models) so an exported model stops; anything the template adds after
    it (a newline) is dropped. Too long: the prompt is cut from the left.
    """
    prompt = render_prompt(tok, messages)
    full = chat_text(tok, [*messages, {"role": "assistant", "content": answer}], add_generation_prompt=False)
    completion = full[len(prompt) :] if full.startswith(prompt) else answer
    prompt_ids: list[int] = tok(prompt, add_special_tokens=False)["input_ids"]
    answer_ids, _ = _answer_ids(tok, completion)
    length = len(prompt_ids) + len(answer_ids)
    truncated, cut = False, 0
    if length > max_length:
        truncated = True
        keep = max(max_length - len(answer_ids), max_length // 4)
        prompt_ids = prompt_ids[-keep:]
        cut = max(0, len(answer_ids) - (max_length - len(prompt_ids)))
        answer_ids = answer_ids[: max_length - len(prompt_ids)]
    n = len(prompt_ids)
    return EncodedExample(prompt_ids + answer_ids, [(n, n + len(answer_ids))], truncated, cut, length)


def encode_conversation(
    tok: PreTrainedTokenizerBase, messages: list[dict[str, str]], max_length: int
) -> EncodedExample:
    """A multi-turn chat with the loss on *every* assistant turn.

    Each turn is rendered with the model's template and tokenized piece by piece
    (prompt so far, then the answer), so every answer is scored in exactly the
    context inference would give it. Templates that do not extend their own
    output turn by turn, and conversations longer than ``max_length``, fall back
    to the last assistant turn alone.
    """
    turns = [i for i, m in enumerate(messages) if m["role"] == "assistant"]
    last = turns[-1]
    ids: list[int] = []
    spans: list[tuple[int, int]] = []
    done = ""
    for i in turns:
        prompt = render_prompt(tok, messages[:i])
        full = chat_text(tok, messages[: i + 1], add_generation_prompt=False)
        if not prompt.startswith(done) or not full.startswith(prompt):
            return encode_example(tok, messages[:last], messages[last]["content"], max_length)
        ids += tok(prompt[len(done) :], add_special_tokens=False)["input_ids"]
        answer, text = _answer_ids(tok, full[len(prompt) :])
        spans.append((len(ids), len(ids) + len(answer)))
        ids += answer
        done = prompt + text
    if len(ids) > max_length:
        return encode_example(tok, messages[:last], messages[last]["content"], max_length)
    return EncodedExample(ids, spans, False, 0, len(ids))


def count_parameters(model: Any) -> tuple[int, int]:
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return total, trainable
