"""Constrained decoding: a JSON answer decoded under the task's schema cannot hold a key outside its fields."""

from __future__ import annotations

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
    from slmloop.predict.parsing import parse_json_object

    ref = ResolvedModel("tiny", str(tiny_model), "local")
    engine = LocalEngine(load_causal_lm(ref, torch.float32), load_tokenizer(ref))
    schema = answer_schema(TASK)

    def ask(constrained: bool) -> list[Any]:
        return answer_rows(
            TASK,
            "full",
            "generate",
            engine,
            ROWS,
            batch_size=5,
            max_new_tokens=48,
            schema=schema if constrained else None,
        )

    free, held = ask(False), ask(True)
    # the random model left to itself writes what the schema does not allow; held to it, never
    assert not all(inside(engine.tokenizer, schema, a.raw) for a in free)
    assert all(inside(engine.tokenizer, schema, a.raw) for a in held)
    for a in held:
        obj = parse_json_object(a.raw)
        if a.scores["new_tokens"] < 48:  # finished: a whole object of the task's fields
            assert obj is not None and set(obj) <= {"city", "date"}, a.raw
    assert any(a.scores["new_tokens"] < 48 for a in held)
