"""Cheap reference models: the bar a fine-tuned SLM must clear to be worth shipping.

Each baseline is fitted on the same training split as the fine-tuned model and
answers gold rows in the same shape (a label with probabilities, a JSON object,
a text), so it is scored with the same metrics, CIs and paired tests
(``slmloop eval --model baseline:NAME``).

    classification   tfidf-lr    TF-IDF (words + character n-grams) + logistic regression
                     minilm-lr   MiniLM sentence embeddings + logistic regression
    extraction       crf         a CRF sequence tagger (reading MiniLM clusters of the request and its
                                 words) for fields whose values are spans of the input, TF-IDF +
                                 logistic regression for the other fields
                     knn         the output of the most similar training input (MiniLM)
    generation/chat  knn
"""

from slmloop.baselines.base import BASELINES, FittedBaseline, baselines_for, fit_baseline

__all__ = ["BASELINES", "FittedBaseline", "baselines_for", "fit_baseline"]
