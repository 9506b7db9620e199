"""`/api/v1/admin/users` (bearer ADMIN_API_KEY): create, read, update, delete and list users with
the CLI's rules, errors in the §8 shape, keys only masked, changes applied by every gateway."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest

from agent_gateway.domain import mask_key
from tests.conftest import SECRET, GatewayProcess, new_user
from tests.stores.test_profile_changes import answered_within, status

pytestmark = pytest.mark.xdist_group("admin_users")  # one worker: its gateway starts once, not on each

ADMIN_KEY = "admin-key-for-users-tests-2b7c"
KEY = "sk-user-key-for-api-tests-9a1f"


class Admin:
    """The admin API of one gateway, as a platform backend calls it."""

    def __init__(self, gw: GatewayProcess, key: str = ADMIN_KEY) -> None:
        self.client = httpx.Client(base_url=f"{gw.url}/api/v1/admin", headers={"Authorization": f"Bearer {key}"})

    def __getattr__(self, method: str) -> Any:
        return getattr(self.client, method)

    def close(self) -> None:
        self.client.close()


@pytest.fixture(scope="module")
def gw(launch_gateway: Callable[..., GatewayProcess]) -> GatewayProcess:
    return launch_gateway(ADMIN_API_KEY=ADMIN_KEY)


@pytest.fixture
def admin(gw: GatewayProcess) -> Iterator[Admin]:
    client = Admin(gw)
    yield client
    client.close()


def error_of(response: httpx.Response, status_code: int) -> dict[str, Any]:
    assert response.status_code == status_code, response.text
    error: dict[str, Any] = response.json()["error"]
    assert set(error) == {"message", "type", "code", "param", "request_id"}
    assert error["request_id"] == response.headers["x-request-id"]
    return error


def test_create_read_update_delete(admin: Admin, gw: GatewayProcess) -> None:
    user_id = new_user()
    created = admin.post("/users", json={"id": user_id, "litellm_key": KEY, "allowed_models": ["gpt-4o", "a"]})
    assert created.status_code == 201, created.text
    assert created.headers["location"] == f"/api/v1/admin/users/{user_id}"
    user = created.json()
    assert user.pop("created_at")
    assert user == {
        "id": user_id,
        "allowed_models": ["a", "gpt-4o"],
        "monthly_limit": None,
        "litellm_key_hint": mask_key(KEY),
    }
    assert status(gw, user_id, "gpt-4o") == 200  # this gateway applied it at once

    assert admin.get(f"/users/{user_id}").json() == created.json()
    changed = admin.patch(f"/users/{user_id}", json={"monthly_limit": 1000, "allowed_models": None})
    assert changed.status_code == 200
    assert (changed.json()["monthly_limit"], changed.json()["allowed_models"]) == (1000, None)
    unlimited = admin.patch(f"/users/{user_id}", json={"monthly_limit": None}).json()
    assert (unlimited["monthly_limit"], unlimited["allowed_models"]) == (None, None)  # the rest stays
    rekeyed = admin.patch(f"/users/{user_id}", json={"litellm_key": "sk-another-key-0000"}).json()
    assert rekeyed["litellm_key_hint"] == "sk-…0000"

    assert admin.delete(f"/users/{user_id}").status_code == 204
    assert status(gw, user_id, "gpt-4o") == 403
    assert error_of(admin.get(f"/users/{user_id}"), 404)["code"] == "no_such_user"
    assert error_of(admin.delete(f"/users/{user_id}"), 404)["code"] == "no_such_user"
    assert error_of(admin.patch(f"/users/{user_id}", json={"monthly_limit": 1}), 404)["code"] == "no_such_user"


def test_a_taken_id_is_refused_and_the_first_user_stays(admin: Admin) -> None:
    user_id = new_user()
    admin.post("/users", json={"id": user_id, "litellm_key": KEY, "monthly_limit": 5})
    error = error_of(admin.post("/users", json={"id": user_id, "litellm_key": "sk-other-key-1234"}), 400)
    assert (error["type"], error["code"]) == ("invalid_request_error", "already_exists")
    assert admin.get(f"/users/{user_id}").json()["monthly_limit"] == 5


def test_a_uuid_is_one_user_in_any_spelling(admin: Admin) -> None:
    user_id = str(uuid.uuid4())
    created = admin.post("/users", json={"id": user_id.upper(), "litellm_key": KEY}).json()
    assert created["id"] == user_id
    assert admin.get(f"/users/{user_id.replace('-', '').upper()}").json()["id"] == user_id
    assert admin.delete(f"/users/{user_id.upper()}").status_code == 204


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"id": "bad id", "litellm_key": KEY}, "id"),
        ({"id": "a" * 129, "litellm_key": KEY}, "id"),
        ({"id": "{user}"}, "litellm_key"),  # no key, and no LITELLM_MASTER_KEY to make one
        ({"id": "{user}", "litellm_key": "sk key with spaces"}, "litellm_key"),
        ({"id": "{user}", "litellm_key": ""}, "litellm_key"),
        ({"id": "{user}", "litellm_key": KEY, "allowed_models": []}, "allowed_models"),
        ({"id": "{user}", "litellm_key": KEY, "allowed_models": [" "]}, "allowed_models"),
        ({"id": "{user}", "litellm_key": KEY, "allowed_models": "gpt-4o"}, "allowed_models"),
        ({"id": "{user}", "litellm_key": KEY, "monthly_limit": -1}, "monthly_limit"),
        ({"id": "{user}", "litellm_key": KEY, "monthly_limit": "5"}, "monthly_limit"),
        ({"id": "{user}", "litellm_key": KEY, "monthly_limit": 5.5}, "monthly_limit"),
        ({"id": "{user}", "litellm_key": KEY, "monthly_limit": True}, "monthly_limit"),
        ({"id": "{user}", "litellm_key": KEY, "admin": True}, "admin"),
        ({"litellm_key": KEY}, "id"),
    ],
)
def test_bad_input_is_a_400_naming_the_field_and_changes_nothing(
    admin: Admin, body: dict[str, Any], param: str
) -> None:
    user_id = new_user()
    body = {name: (user_id if value == "{user}" else value) for name, value in body.items()}
    before = admin.get("/users", params={"limit": 500}).json()["total"]
    error = error_of(admin.post("/users", json=body), 400)
    assert (error["type"], error["param"]) == ("invalid_request_error", param)
    assert KEY not in error["message"]
    assert admin.get("/users", params={"limit": 500}).json()["total"] == before


def test_bad_changes_are_refused_and_change_nothing(admin: Admin) -> None:
    user_id = new_user()
    before = admin.post("/users", json={"id": user_id, "litellm_key": KEY, "monthly_limit": 7}).json()
    for body, param in [
        ({}, None),
        ({"monthly_limit": -5}, "monthly_limit"),
        ({"allowed_models": []}, "allowed_models"),
        ({"litellm_key": None}, "litellm_key"),
        ({"id": "someone-else"}, "id"),
    ]:
        assert error_of(admin.patch(f"/users/{user_id}", json=body), 400)["param"] == param
    bad_json = admin.patch(f"/users/{user_id}", content=b"{not json", headers={"Content-Type": "application/json"})
    assert error_of(bad_json, 400)["code"] == "invalid_json"
    assert error_of(admin.patch(f"/users/{user_id}", content=b"[]"), 400)["type"] == "invalid_request_error"
    assert admin.get(f"/users/{user_id}").json() == before


def test_the_admin_key_is_required(gw: GatewayProcess) -> None:
    user_id = new_user()
    for key in (None, "wrong", SECRET):
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        url = f"{gw.url}/api/v1/admin/users"
        for response in (
            httpx.get(url, headers=headers),
            httpx.post(url, headers=headers, json={"id": user_id, "litellm_key": KEY}),
            httpx.delete(f"{url}/{user_id}", headers=headers),
        ):
            error = error_of(response, 401)
            assert error["type"] == "authentication_error"
            assert response.headers["www-authenticate"].startswith("Bearer")
    assert status(gw, user_id) == 403  # nothing was created


def test_the_users_api_is_off_without_an_admin_key(gateway: GatewayProcess) -> None:
    response = httpx.get(f"{gateway.url}/api/v1/admin/users", headers={"Authorization": "Bearer anything"})
    assert error_of(response, 404)["type"] == "not_found_error"


def test_pages_walk_every_user_once(admin: Admin) -> None:
    prefix = f"p-{uuid.uuid4().hex[:8]}"
    made = [f"{prefix}-{n}" for n in range(5)]
    for user_id in reversed(made):
        admin.post("/users", json={"id": user_id, "litellm_key": KEY})
    seen: list[str] = []
    cursor = None
    total = None
    while True:
        page = admin.get("/users", params={"limit": 2, **({"cursor": cursor} if cursor else {})}).json()
        assert len(page["data"]) <= 2
        seen += [user["id"] for user in page["data"]]
        total = page["total"]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == sorted(seen) and len(seen) == len(set(seen)) == total
    assert [user_id for user_id in seen if user_id.startswith(prefix)] == made
    assert all(KEY not in str(user) for user in seen)


@pytest.mark.parametrize(
    ("params", "param"),
    [
        ({"limit": 0}, "limit"),
        ({"limit": 501}, "limit"),
        ({"cursor": "%%%"}, "cursor"),
        ({"cursor": "bm90IGFuIGlkIQ"}, "cursor"),
        ({"limit": "x"}, "limit"),
    ],
)
def test_bad_page_requests_are_400(admin: Admin, params: dict[str, Any], param: str) -> None:
    assert error_of(admin.get("/users", params=params), 400)["param"] == param


def test_the_full_key_never_leaves_the_api(admin: Admin, gw: GatewayProcess) -> None:
    user_id = new_user()
    key = f"sk-distinctive-{uuid.uuid4().hex}"
    answers = [
        admin.post("/users", json={"id": user_id, "litellm_key": key}),
        admin.get(f"/users/{user_id}"),
        admin.get("/users", params={"limit": 500}),
        admin.patch(f"/users/{user_id}", json={"litellm_key": key + "x"}),
        admin.post("/users", json={"id": user_id, "litellm_key": key}),
        admin.get("/openapi.json"),
    ]
    assert status(gw, user_id) == 200
    admin.delete(f"/users/{user_id}")
    everything = "\n".join([*(answer.text for answer in answers), gw.logs()])
    assert key not in everything and key[3:-4] not in everything


def test_a_change_through_the_api_reaches_other_gateways_within_1_s(gateway_factory: Any) -> None:
    one = gateway_factory(ADMIN_API_KEY=ADMIN_KEY)
    two = gateway_factory(DATABASE_URL=one.database_url)
    admin = Admin(one)
    try:
        user_id = new_user()
        assert status(two, user_id) == 403  # remembered as unknown for 5 s
        admin.post("/users", json={"id": user_id, "litellm_key": KEY})
        assert answered_within(1.0, lambda: status(two, user_id) == 200)
        admin.delete(f"/users/{user_id}")
        assert status(one, user_id) == 403  # the instance that made the change, at once
        assert answered_within(1.0, lambda: status(two, user_id) == 403)
    finally:
        admin.close()


def test_with_redis_a_change_through_the_api_reaches_other_gateways_at_once(
    gateway_factory: Any, redis_url: str
) -> None:
    one = gateway_factory(ADMIN_API_KEY=ADMIN_KEY, REDIS_URL=redis_url, PROFILE_POLL_SECONDS="30")
    two = gateway_factory(DATABASE_URL=one.database_url, REDIS_URL=redis_url, PROFILE_POLL_SECONDS="30")
    admin = Admin(one)
    try:
        user_id = new_user()
        admin.post("/users", json={"id": user_id, "litellm_key": KEY})
        assert answered_within(0.25, lambda: status(two, user_id) == 200)
        admin.patch(f"/users/{user_id}", json={"allowed_models": ["gpt-4o"]})
        assert answered_within(0.25, lambda: status(two, user_id, "gpt-4o-mini") == 403)
        admin.delete(f"/users/{user_id}")
        assert answered_within(0.25, lambda: status(two, user_id, "gpt-4o") == 403)
    finally:
        admin.close()


def test_the_api_is_described_with_examples(gw: GatewayProcess) -> None:
    spec = httpx.get(f"{gw.url}/openapi.json").json()
    users = spec["paths"]["/api/v1/admin/users"]
    assert set(users) == {"get", "post"}
    assert set(spec["paths"]["/api/v1/admin/users/{user_id}"]) == {"get", "patch", "delete"}
    assert "post" in spec["paths"]["/api/v1/admin/users/{user_id}/rotate-key"]
    schemas = spec["components"]["schemas"]
    for name in ("User", "UserPage", "NewUser", "UserChanges", "Usage"):
        assert schemas[name].get("examples"), name
    assert users["post"]["security"] == [{"adminKey": []}]
    assert spec["components"]["securitySchemes"]["adminKey"]["scheme"] == "bearer"
    assert {"400", "401", "404"} <= set(users["post"]["responses"])
