"""The Redis transport that reuses one client: messages still go through, in priority
order, are acknowledged, and a replaced connection pool gets a new client; a message
its consumer holds is not delivered again while the consumer keeps extending it."""

import time

from kombu import Connection, Exchange, Queue
from kombu.transport import redis as kombu_redis

from contracts.celery_config import celery_config, create_celery_app
from contracts.redis_transport import TRANSPORT, Channel, Transport
from contracts.settings import CommonSettings


def test_redis_brokers_use_it_under_their_own_scheme_and_others_keep_theirs():
    def transport(url: str) -> tuple[type, str]:
        app = create_celery_app("scheme-test", CommonSettings(redis_url=url))
        with app.connection_for_write() as connection:
            return type(connection.transport), connection.as_uri()

    cls, uri = transport("redis://127.0.0.1:6379/0")
    assert cls is Transport
    assert uri.startswith("redis://")  # what Flower and celery inspect go by
    # kombu sets its TLS defaults by the rediss scheme: that broker keeps kombu's transport.
    assert transport("rediss://127.0.0.1:6380/0")[0] is kombu_redis.Transport
    amqp = CommonSettings(redis_url="redis://x", broker_url="amqp://guest@localhost//")
    assert celery_config(amqp)["broker_url"].startswith("amqp://")


def test_one_client_carries_publishes_deliveries_and_acks(redis_url: str):
    app = create_celery_app("transport-test", CommonSettings(redis_url=redis_url))
    exchange = Exchange("transport-test", type="direct")
    queue = Queue("transport-test", exchange, routing_key="transport-test")
    with app.connection_for_write() as connection:
        channel = connection.channel()
        assert isinstance(channel, Channel)
        producer = connection.Producer(channel)
        for priority, body in ((5, "later"), (0, "first"), (5, "last")):
            producer.publish(
                body, exchange=exchange, routing_key="transport-test",
                declare=[queue], priority=priority,
            )  # fmt: skip
        with channel.conn_or_acquire() as first, channel.conn_or_acquire() as second:
            assert first is second

        received = []
        bound = queue(channel)
        while (message := bound.get(no_ack=False)) is not None:
            received.append(message.payload)
            message.ack()
        assert received == ["first", "later", "last"]
        with channel.conn_or_acquire() as client:
            # Nothing left unacknowledged, so nothing would be delivered again.
            assert client.zcard(channel.unacked_index_key) == 0
            assert client.hlen(channel.unacked_key) == 0
        channel.close()


def test_a_new_pool_gets_a_new_client(redis_url: str):
    with Connection(redis_url, transport=TRANSPORT) as connection:
        channel = connection.channel()
        with channel.conn_or_acquire() as before:
            assert before.ping()
        channel._disconnect_pools()  # what kombu does after a fork or a lost connection
        with channel.conn_or_acquire() as after:
            assert after is not before
            assert after.connection_pool is channel.pool
            assert after.ping()
        channel.close()


def test_a_held_message_is_not_delivered_again_until_its_holder_stops_extending(
    redis_url: str,
):
    options = {"visibility_timeout": 1}
    exchange = Exchange("held-test", type="direct")
    queue = Queue("held-test", exchange, routing_key="held-test")
    with (
        Connection(redis_url, transport=TRANSPORT, transport_options=options) as holder,
        Connection(redis_url, transport=TRANSPORT, transport_options=options) as other,
    ):
        held_channel, other_channel = holder.channel(), other.channel()
        holder.Producer(held_channel).publish(
            "job", exchange=exchange, routing_key="held-test", declare=[queue]
        )
        message = queue(held_channel).get(no_ack=False)
        assert message is not None and message.payload == "job"
        for _ in range(3):  # three visibility timeouts, extended along the way
            time.sleep(0.6)
            assert held_channel.qos.extend_visibility() == 1
            other_channel.qos.restore_visible(interval=1)
        assert queue(other_channel).get(no_ack=False) is None  # not delivered twice

        time.sleep(1.2)  # the holder went quiet (as a killed worker does)
        other_channel.qos.restore_visible(interval=1)
        again = queue(other_channel).get(no_ack=False)
        assert again is not None and again.payload == "job"
        again.ack()
        assert held_channel.qos.extend_visibility() == 1  # it still thinks it holds it...
        with other_channel.conn_or_acquire() as client:
            # ...but a restored message is not put back in the index by its late stamp.
            assert client.zcard(other_channel.unacked_index_key) == 0
        held_channel.close()
        other_channel.close()
