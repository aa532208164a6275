"""The Celery broker transport: kombu's Redis transport, safe to close after Redis died.

When the broker connection drops, the Celery consumer first ``collect``s the connection
(kombu ``Connection.collect``: the transport forgets its client) and then closes it. If
the channel was waiting in BRPOP with messages delivered but not acknowledged (a task
running under ``acks_late``), that close tries to hand the messages back to Redis, and
kombu builds a Redis client from the forgotten client: ``AttributeError: 'NoneType'
object has no attribute 'hostname'``. That is not a connection error, so the worker
treats it as unrecoverable and exits instead of reconnecting (celery/kombu#582 is the
same trace).

Here a channel whose transport was already collected answers with a Redis
``ConnectionError``, which kombu and Celery treat as the lost connection it is: the
worker reconnects in place. The messages it could not hand back stay in Redis' unacked
set, where kombu restores them after the visibility timeout; a deployment's message
delivered twice is harmless (deployments run under their advisory lock and claim each
step with a conditional update), and beat's sweep requeues a deployment that waits.
"""

from __future__ import annotations

from kombu.transport import redis as kombu_redis
from redis.exceptions import ConnectionError as RedisConnectionError


class Channel(kombu_redis.Channel):
    def _connparams(self, asynchronous=False):
        if self.connection is None or self.connection.client is None:
            raise RedisConnectionError("the broker connection was closed")
        return super()._connparams(asynchronous=asynchronous)


class Transport(kombu_redis.Transport):
    Channel = Channel
