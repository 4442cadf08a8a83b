"""model_from_json on mutated real-Keras JSON: a model, or a TemplateError
(UnsupportedKerasFeature / KerasModelError) naming the problem; never a crash."""
import copy
import glob
import json
import os

from hypothesis import given
from hypothesis import strategies as st

from bws.templates import keras
from bws.templates.errors import TemplateError

FIXTURES = sorted(glob.glob(os.path.join(os.path.dirname(__file__), "..", "tests", "templates", "fixtures", "*.json")))
DOCUMENTS = [json.load(open(path, encoding="utf-8")) for path in FIXTURES]

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-2**40, 2**40) | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda children: st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=8), children, max_size=3),
    max_leaves=8,
)


def _paths(value, prefix=()):
    if prefix:
        yield prefix
    if isinstance(value, dict):
        for key, child in value.items():
            yield from _paths(child, prefix + (key,))
    elif isinstance(value, list):
        for index, child in enumerate(value):
            yield from _paths(child, prefix + (index,))


def _load(text):
    try:
        model = keras.models.model_from_json(text)
    except TemplateError as exc:
        assert str(exc)
        return
    model.summary(print_fn=lambda line: None)
    keras.models.model_from_json(model.to_json())


@given(st.data())
def test_one_value_replaced(data):
    document = copy.deepcopy(data.draw(st.sampled_from(DOCUMENTS)))
    path = data.draw(st.sampled_from(list(_paths(document))))
    target = document
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = data.draw(json_values)
    _load(json.dumps(document))


@given(st.binary(max_size=300))
def test_arbitrary_bytes(data):
    _load(data)
