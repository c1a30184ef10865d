"""Property tests: random input never escapes a share and never crashes the API."""

from __future__ import annotations

import json

import pytest
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from appliance.api.app import create_app
from appliance.box import open_box
from appliance.broker.scope import Shares
from appliance.config import ApprovalSettings, Config, Limits
from appliance.errors import ScopeError
from appliance.intents import VERBS
from tests.pairing import credential

SEGMENT = st.one_of(
    st.sampled_from(["..", ".", "", "a", "Inbox", "x.pdf", "\x00", "a\\b", " ", "\u202e"]),
    st.text(max_size=12),
)
RESOURCES = st.one_of(
    st.text(max_size=60),
    st.lists(SEGMENT, max_size=6).map(lambda parts: "share:docs/" + "/".join(parts)),
    st.lists(SEGMENT, max_size=4).map(lambda parts: "/".join(parts)),
)


@pytest.fixture(scope="module")
def shares(tmp_path_factory: pytest.TempPathFactory) -> Shares:
    root = tmp_path_factory.mktemp("share")
    return Shares({"docs": root}, Limits())


@given(resource=RESOURCES)
@settings(max_examples=400, suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_parse_refuses_or_gives_one_canonical_spelling(shares: Shares, resource: str) -> None:
    try:
        target = shares.parse(resource)
    except ScopeError as e:
        assert e.reason
        return
    assert target.share == "docs"
    for part in target.parts:
        assert part not in ("", ".", "..") and "/" not in part and "\x00" not in part
    assert shares.parse(target.canonical) == target


JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=12,
)
INTENT = st.fixed_dictionaries(
    {"verb": st.one_of(st.sampled_from(VERBS), st.text(max_size=10)), "resource": RESOURCES},
    optional={
        "params": st.dictionaries(
            st.sampled_from(["to", "name", "content", "max_bytes", "x"]), JSON, max_size=3
        ),
        "provenance": st.dictionaries(
            st.sampled_from(["resource", "params.to"]),
            st.sampled_from(["requester", "content", "model"]),
        ),
    },
)
BODIES = st.one_of(JSON, st.fixed_dictionaries({"intents": st.lists(INTENT, max_size=4)}))


@pytest.fixture(scope="module")
def api(tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("api")
    share = root / "share"
    (share / "Inbox").mkdir(parents=True)
    (share / "Inbox" / "a.pdf").write_bytes(b"%PDF")
    broker = open_box(
        Config(
            state_dir=root / "state",
            shares={"docs": share},
            dev=True,
            keystore="dev",
            limits=Limits(requests_per_second=1e6, burst=1_000_000),
            approvals=ApprovalSettings(queue_size=2),
        )
    )
    http = TestClient(create_app(broker))
    http.headers["Authorization"] = "Bearer " + credential(broker, "fuzz")
    yield http, share
    broker.close()


@given(body=BODIES)
@settings(
    max_examples=250, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
def test_random_plans_get_an_answer_never_a_crash(api, body: object) -> None:
    http, share = api
    r = http.post(
        "/v1/intents", content=json.dumps(body), headers={"content-type": "application/json"}
    )
    assert r.status_code in (200, 202, 400, 403, 409, 413, 422, 429), r.text
    answer = r.json()
    assert "plan_id" in answer or (answer["code"] and answer["reason"])
    # Nothing was approved, so nothing changed: the Inbox is as it was.
    assert (share / "Inbox" / "a.pdf").read_bytes() == b"%PDF"
