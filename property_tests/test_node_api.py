"""The API's request router and JSON codec on arbitrary input: a handler or
a 4xx ApiError naming the problem, never a crash."""
import json

from hypothesis import given, strategies as st

from bws.node.api import ApiError, from_json, route, to_json
from bws.spec import containers as C
from bws.spec.presets import DEVNET

segments = st.one_of(
    st.sampled_from(["status", "health", "peers", "metrics", "prometheus", "gossip", "block", "account", "task", "tx",
                     "reveal", "", "..", "%00"]),
    st.text(max_size=70),
    st.integers(0, 2**70).map(str),
    st.binary(min_size=20, max_size=32).map(bytes.hex),
)
queries = st.one_of(
    st.just(""),
    st.builds(lambda key, value: f"?{key}={value}", st.sampled_from(["format", "x", ""]),
              st.sampled_from(["prometheus", "json", ""])),
    st.text(max_size=30).map(lambda text: "?" + text),
)
paths = st.builds(lambda parts, query: "/" + "/".join(parts) + query, st.lists(segments, max_size=4), queries)
bodies = st.one_of(
    st.binary(max_size=200),
    st.builds(lambda key, value: json.dumps({key: value}).encode(),
              st.sampled_from(["transaction", "block", "tensors", "x"]), st.one_of(st.text(max_size=40), st.integers(), st.none())),
)


@given(st.sampled_from(["GET", "POST", "PUT", "DELETE", "PATCH"]), paths, bodies)
def test_router_answers_a_handler_or_a_client_error(method, path, body):
    try:
        handler = route(method, path, body)
    except ApiError as error:
        assert 400 <= error.status < 500 and error.message
        return
    assert callable(handler)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-2**70, 2**70) | st.text(max_size=12),
    lambda children: st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=12), children, max_size=3),
    max_leaves=15,
)


@given(json_values)
def test_from_json_refuses_garbage_with_value_or_type_error(value):
    try:
        from_json(C.GenesisConfig, value)
    except (ValueError, TypeError):
        pass


@given(st.data())
def test_from_json_refuses_mutated_documents(data):
    genesis = C.GenesisConfig(config=DEVNET, timestamp=5, accounts=[C.GenesisAccount(address=b"\x01" * 20, balance=3)],
                              stakes=[], tasks=[])
    document = to_json(genesis)
    target = data.draw(st.sampled_from([document, document["config"], document["accounts"][0]]))
    key = data.draw(st.sampled_from(sorted(target)))
    target[key] = data.draw(json_values)
    try:
        value = from_json(C.GenesisConfig, document)
    except (ValueError, TypeError):
        return
    assert isinstance(value, C.GenesisConfig)
