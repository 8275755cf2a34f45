"""Constrained decoding: a JSON answer decoded under the task's schema cannot hold a key outside its fields."""

from __future__ import annotations

import json
from typing import Any

from slmloop.manifest import TaskConfig
from slmloop.predict.constrain import answer_schema

TASK = TaskConfig(
    type="extraction", instruction="Extract the city and the date.", fields=["city", "date"], answer="json"
)
ROWS = [{"text": t, "output": {}} for t in ("fly to paris on monday", "rain in oslo", "meet bob", "x y z", "boston")]


def inside(tok: Any, schema: dict[str, Any], text: str) -> bool:
    """Whether ``text`` is (a prefix of) an answer the schema allows, whatever its spacing."""
    import llguidance
    import llguidance.hf

    grammar = llguidance.LLMatcher.grammar_from_json_schema(schema, defaults={"whitespace_flexible": True})
    matcher = llguidance.LLMatcher(llguidance.hf.from_tokenizer(tok), grammar)
    return all(matcher.consume_token(t) for t in tok(text, add_special_tokens=False)["input_ids"])


def test_the_schema_holds_the_fields_and_the_required_ones() -> None:
    schema = answer_schema(TASK.model_copy(update={"required": ["city"]}))
    assert schema["properties"].keys() == {"city", "date"} and schema["additionalProperties"] is False
    assert schema["required"] == ["city"]
    given = {"type": "object", "properties": {"city": {"enum": ["paris", "oslo"]}}}
    assert answer_schema(TASK, given) is given


def test_a_constrained_answer_holds_only_the_task_fields_through_transformers(tiny_model) -> None:
    import torch

    from slmloop.models.catalog import ResolvedModel
    from slmloop.models.loading import load_causal_lm, load_tokenizer
    from slmloop.predict.answers import answer_rows
    from slmloop.predict.engines import LocalEngine

    ref = ResolvedModel("tiny", str(tiny_model), "local")
    engine = LocalEngine(load_causal_lm(ref, torch.float32), load_tokenizer(ref))
    schema = answer_schema(TASK)

    def ask(constrained: bool, budget: int, task: TaskConfig = TASK) -> list[Any]:
        return answer_rows(
            task,
            "full",
            "generate",
            engine,
            ROWS,
            batch_size=5,
            max_new_tokens=budget,
            schema=answer_schema(task) if constrained else None,
        )

    free, held = ask(False, 48), ask(True, 48)
    # the random model left to itself writes what the schema does not allow; held to it, never
    assert not all(inside(engine.tokenizer, schema, a.raw) for a in free)
    assert_whole_objects(held, 48)
    # a required field and a budget too small for it: each answer still ends as a whole object
    short = ask(True, 10, TASK.model_copy(update={"required": ["city"]}))
    assert_whole_objects(short, 10)
    assert any(a.scores["new_tokens"] == 10 for a in short), [a.raw for a in short]  # cut off, then closed
    assert all("city" in json.loads(a.raw) for a in short)


def assert_whole_objects(answers: list[Any], budget: int) -> None:
    """Every answer is a whole JSON object of the task's fields, those that ran out of budget included."""
    for a in answers:
        obj = json.loads(a.raw)  # strictly: nothing repaired on the way
        assert isinstance(obj, dict) and set(obj) <= {"city", "date"}, a.raw


def test_an_answer_cut_off_by_its_budget_ends_at_its_last_complete_field(tiny_model) -> None:
    from slmloop.models.catalog import ResolvedModel
    from slmloop.models.loading import load_tokenizer
    from slmloop.predict.constrain import close_answer

    tok = load_tokenizer(ResolvedModel("tiny", str(tiny_model), "local"))
    schema = answer_schema(TASK)
    assert close_answer(tok, schema, '{"city": "oslo"}') == '{"city": "oslo"}'  # whole: left as it is
    assert close_answer(tok, schema, '{"city": "oslo", "date": "mon') == '{"city": "oslo"}'  # the cut field goes
    assert close_answer(tok, schema, '{"ci') == "{}"
    assert close_answer(tok, schema, "sunny in oslo") is None  # not an answer in the schema: nothing to close
    required = answer_schema(TASK.model_copy(update={"required": ["city"]}))
    assert close_answer(tok, required, '{"city": "os') == '{"city": "os"}'  # a required field ends where it is
    assert close_answer(tok, required, '{"city"') == '{"city": null}'
    enum = {"type": "object", "properties": {"city": {"enum": ["paris", "oslo"]}}, "required": ["city"]}
    assert close_answer(tok, enum, '{"city": "pa') == '{"city": "paris"}'  # the only value the schema allows


def copies(raw: str, request: str) -> bool:
    """Whether an inline answer is its request copied (a prefix of it, if cut off), marked only with the task's
    fields around its words (any case), and marks after it."""
    import re

    from slmloop.predict.inline import MARK

    if any(m.group(1) not in {"city", "date"} for m in MARK.finditer(raw)):
        return False
    plain = re.sub(r" ?\[[^\]]*$", "", MARK.sub(lambda m: m.group(2), raw)).lower()  # an unclosed mark: cut off
    return plain.startswith(request.lower()) or request.lower().startswith(plain)


def test_an_inline_answer_copies_its_request_and_marks_only_the_fields_through_transformers(tiny_model) -> None:
    import torch

    from slmloop.models.catalog import ResolvedModel
    from slmloop.models.loading import load_causal_lm, load_tokenizer
    from slmloop.predict.answers import answer_rows
    from slmloop.predict.engines import LocalEngine

    ref = ResolvedModel("tiny", str(tiny_model), "local")
    engine = LocalEngine(load_causal_lm(ref, torch.float32), load_tokenizer(ref))
    inline = TASK.model_copy(update={"answer": "inline"})

    def ask(constrained: bool) -> list[Any]:
        schema = answer_schema(inline) if constrained else None
        return answer_rows(inline, "compact", "generate", engine, ROWS, batch_size=5, max_new_tokens=24, schema=schema)

    free, held = ask(False), ask(True)
    assert not any(copies(a.scores["model_text"], r["text"]) for a, r in zip(free, ROWS, strict=True))
    for a, r in zip(held, ROWS, strict=True):
        assert copies(a.scores["model_text"], r["text"]), a.scores["model_text"]
        assert set(json.loads(a.raw)) <= {"city", "date"}
