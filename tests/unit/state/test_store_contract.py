"""The ResponseStore contract, on every backend (SQLite and Redis, see conftest.py)."""

from __future__ import annotations

import asyncio
import time

from gptoss.state import StoredResponse


def record(response_id: str, owner: str = "alice", *, age: float = 0.0, text: str = "hello") -> StoredResponse:
    created = time.time() - age
    return StoredResponse(
        id=response_id,
        owner=owner,
        created_at=created,
        response={"id": response_id, "object": "response", "created_at": int(created), "output_text": text},
        input_items=[{"id": f"msg_{response_id}", "type": "message", "role": "user", "content": text}],
        history=[{"type": "message", "role": "user", "content": text}, {"type": "message", "role": "assistant"}],
    )


async def test_put_then_get_returns_the_same_record(make_store):
    store = make_store()
    rec = record("resp_1", text='héllo ✓ \x00 quotes " and \\')
    await store.put(rec)
    assert await store.get("resp_1", "alice") == rec
    assert await store.get("resp_2", "alice") is None


async def test_put_replaces_a_record_with_the_same_id(make_store):
    store = make_store()
    await store.put(record("resp_1", text="first"))
    await store.put(record("resp_1", text="second"))
    got = await store.get("resp_1", "alice")
    assert got is not None and got.response["output_text"] == "second"
    assert (await store.usage())[0] == 1


async def test_delete_removes_it_once(make_store):
    store = make_store()
    await store.put(record("resp_1"))
    assert await store.delete("resp_1", "alice") is True
    assert await store.get("resp_1", "alice") is None
    assert await store.delete("resp_1", "alice") is False
    assert await store.usage() == (0, 0)


async def test_another_owner_sees_nothing_and_deletes_nothing(make_store):
    store = make_store()
    await store.put(record("resp_1", "alice"))
    assert await store.get("resp_1", "bob") is None
    assert await store.get("resp_1", "") is None
    assert await store.delete("resp_1", "bob") is False
    assert await store.get("resp_1", "alice") is not None  # untouched


async def test_the_same_id_under_two_owners_are_two_records(make_store):
    store = make_store()
    await store.put(record("resp_1", "alice", text="a"))
    await store.put(record("resp_1", "bob", text="b"))
    assert (await store.get("resp_1", "alice")).response["output_text"] == "a"
    assert (await store.get("resp_1", "bob")).response["output_text"] == "b"
    # Owners whose names run into the id do not collide either.
    await store.put(record("x:resp", "a", text="c"))
    assert await store.get("resp", "a:x") is None


async def test_a_record_past_retention_is_not_returned(make_store):
    store = make_store(retention_seconds=3600)
    await store.put(record("resp_old", age=3601))
    await store.put(record("resp_new", age=3500))
    assert await store.get("resp_old", "alice") is None
    assert await store.delete("resp_old", "alice") is False
    assert await store.get("resp_new", "alice") is not None


async def test_a_record_expires_when_its_retention_ends(make_store):
    store = make_store(retention_seconds=2.0)
    await store.put(record("resp_1", age=0.5))
    assert await store.get("resp_1", "alice") is not None
    await asyncio.sleep(1.6)
    assert await store.get("resp_1", "alice") is None


async def test_over_the_size_cap_the_oldest_are_evicted(make_store):
    size = len(str(record("resp_0")))  # about one record's JSON bytes
    store = make_store(max_bytes=int(3.5 * size))
    for i in range(6):
        await store.put(record(f"resp_{i}", age=100 - i))  # resp_0 is the oldest
    present = [i for i in range(6) if await store.get(f"resp_{i}", "alice") is not None]
    assert present[-1] == 5 and present == list(range(6 - len(present), 6)), present
    assert 2 <= len(present) <= 4
    count, used = await store.usage()
    assert count == len(present) and 0 < used <= store.max_bytes


async def test_a_record_larger_than_the_cap_is_kept_alone(make_store):
    store = make_store(max_bytes=10)
    await store.put(record("resp_1", age=1))
    await store.put(record("resp_2"))
    assert await store.get("resp_1", "alice") is None
    assert await store.get("resp_2", "alice") is not None
    assert (await store.usage())[0] == 1


async def test_a_new_store_on_the_same_location_sees_the_records(make_store):
    first, rec = make_store(), record("resp_1")
    await first.put(rec)
    await first.close()
    second = make_store()  # a restarted server, or another replica
    assert await second.get("resp_1", "alice") == rec


async def test_concurrent_puts_all_land_and_are_accounted(make_store):
    a, b = make_store(), make_store()  # two store objects: two processes or replicas on one location
    records = [record(f"resp_{i}", owner=f"key{i % 3}", text="x" * i) for i in range(60)]
    await asyncio.gather(*((a if i % 2 else b).put(r) for i, r in enumerate(records)))
    for r in records:
        assert await a.get(r.id, r.owner) == r
    count, used = await b.usage()
    assert count == 60
    await asyncio.gather(*(a.delete(r.id, r.owner) for r in records[:30]))
    count, after = await b.usage()
    assert count == 30 and 0 < after < used
    await asyncio.gather(*(b.delete(r.id, r.owner) for r in records[30:]))
    assert await a.usage() == (0, 0)
