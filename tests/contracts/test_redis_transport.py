"""The Redis transport that reuses one client: messages still go through, in priority
order, are acknowledged, and a replaced connection pool gets a new client."""

from kombu import Connection, Exchange, Queue

from contracts.celery_config import celery_config, create_celery_app
from contracts.redis_transport import TRANSPORT, Channel
from contracts.settings import CommonSettings


def test_redis_brokers_use_it_and_others_keep_their_own():
    def transport(url: str) -> object:
        return celery_config(CommonSettings(redis_url=url))["broker_transport"]

    assert transport("redis://127.0.0.1:6379/0") == TRANSPORT
    # kombu sets its TLS defaults by the rediss scheme: that broker keeps kombu's transport.
    assert transport("rediss://127.0.0.1:6380/0") is None
    amqp = CommonSettings(redis_url="redis://x", broker_url="amqp://guest@localhost//")
    assert celery_config(amqp)["broker_transport"] is None


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
