"""The event hub on a real Redis: a stream that does not read keeps only the newest state
of each step (every state carries the whole text so far), in the order they came."""

import asyncio
import json

import redis.asyncio as aioredis

from app.events import EventHub


def test_a_stream_that_does_not_read_keeps_one_state_per_step(redis_url: str):
    async def scenario() -> None:
        client = aioredis.Redis.from_url(redis_url)
        hub = EventHub(client)
        await hub.start()
        try:
            async with hub.subscription(["meta-a", "meta-b"]) as inbox:
                text = ""
                for n in range(400):  # a long generation's updates, each with all its text
                    text += f"token{n} " * 10
                    state = {"status": "PROGRESS", "result": {"current": n, "text": text}}
                    await client.publish("meta-a", json.dumps(state))
                    if n == 10:
                        await client.publish("meta-b", json.dumps({"status": "STARTED"}))
                await client.publish("meta-b", json.dumps({"status": "SUCCESS", "result": {}}))
                await asyncio.sleep(0.5)  # the hub has read them all by now
                assert hub.pending() == len(inbox) == 2
                first, second = await inbox.get(), await inbox.get()
                assert first[0] == "meta-a"
                assert json.loads(first[1])["result"] == {"current": 399, "text": text}
                assert second[0] == "meta-b"
                assert json.loads(second[1])["status"] == "SUCCESS"
                assert len(inbox) == 0
        finally:
            await hub.stop()
            await client.aclose()

    asyncio.run(scenario())
