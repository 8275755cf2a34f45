"""How a model is asked a task row and how its answer is read.

Every stage that puts a row to a model — evaluation, serving, the export parity check,
distillation, the training recipe's validation metric — asks through this room:

- :mod:`~slmloop.predict.tasks`: a row as chat messages, and the answer a model is taught to write;
- :mod:`~slmloop.predict.inline`: inline extraction answers (values marked in the request);
- :mod:`~slmloop.predict.companion`: the companion index saved beside an adapter — the nearest
  training rows a model reads after a request, the label prior and the span prior;
- :mod:`~slmloop.predict.tagger`: the CRF tagger the span prior (and the ``crf`` baseline) reads with;
- :mod:`~slmloop.predict.spans`: the span prior, weighing the tagger's reading against the model's;
- :mod:`~slmloop.predict.abstain`: a classifier's abstention ("none of these" when it is unsure);
- :mod:`~slmloop.predict.parsing`: reading an answer (the JSON object, the (field, value) pairs);
- :mod:`~slmloop.predict.targets`: what a model reference (``base``, ``run-3``, ``v2``) means;
- :mod:`~slmloop.predict.answers`: the one answering path, with the engine as a parameter.
"""

from slmloop import lazy_api

__all__, __getattr__ = lazy_api(
    __name__,
    {
        "ModelAnswer": "answers",
        "answer_rows": "answers",
        "resolve_mode": "answers",
        "Abstention": "abstain",
        "Companion": "companion",
        "load_companion": "companion",
        "prompt_messages": "tasks",
        "target_text": "tasks",
        "ModelTarget": "targets",
        "load_target": "targets",
        "resolve_target": "targets",
    },
)
