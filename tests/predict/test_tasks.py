from __future__ import annotations

import pytest

from slmloop.manifest import TaskConfig
from slmloop.predict.tasks import input_text, parse_prediction, prompt_messages, target_text

CLS = TaskConfig(type="classification", instruction="Classify.", labels=["spam", "not spam", "ham"])


@pytest.mark.parametrize(
    ("answer", "expected"),
    [
        ("spam", "spam"),
        ("SPAM", "spam"),
        ("not spam.", "not spam"),  # longest label first
        ("Label: ham", "ham"),
        ("it is spam, clearly", "spam"),
        ("I think this is not spam", "not spam"),
        ("spammy", ""),  # a word containing a label is not that label
        ("", ""),
    ],
)
def test_parse_classification(answer: str, expected: str) -> None:
    assert parse_prediction(CLS, answer) == expected


def test_messages_put_instruction_and_labels_in_the_system_turn() -> None:
    msgs = prompt_messages(CLS, {"text": "hello", "label": "ham"})
    assert msgs[0]["role"] == "system" and "Labels: spam, not spam, ham." in msgs[0]["content"]
    assert msgs[-1] == {"role": "user", "content": "hello"}
    assert target_text(CLS, {"text": "hello", "label": "ham"}) == "ham"


def test_extraction_and_chat_shapes() -> None:
    ext = TaskConfig(type="extraction", fields=["name"])
    assert target_text(ext, {"text": "Bo", "output": {"name": "Bo"}}) == '{"name": "Bo"}'
    chat = TaskConfig(type="chat")
    row = {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}
    assert prompt_messages(chat, row) == [{"role": "user", "content": "hi"}]
    assert target_text(chat, row) == "hello" and input_text(chat, row) == "hi"
