"""kombu transport ``edge``: every broker operation over HTTP(S) to the edge API.

URL
    ``edge+https://:TOKEN@host[:port][/prefix]`` (or ``edge+http://`` on a trusted
    network). The token may be left out when ``EDGE_KOMBU_TOKEN`` or the shared
    secret ``AIRFLOW__CORE__INTERNAL_API_SECRET_KEY`` is set. Import
    :mod:`edge_kombu` first (or set ``broker_transport`` to
    ``edge_kombu.transport.kombu:Transport``) so kombu knows the ``edge`` scheme.

Transport options (``broker_transport_options``)
    ``token``, ``secret``: the credential, instead of the URL or the environment.
    ``client_name``: name shown on the server (default: the host name).
    ``polling_max_wait``: seconds one long-poll may wait on the server (default 10).
    ``connect_retries`` (3), ``read_timeout`` (30): HTTP behaviour
    (:class:`~edge_kombu.transport.settings.ClientSettings`).
    ``reconnect_timeout``: seconds a reconnecting connection probes the API before it
    leaves the retrying to Celery's back-off (default: as long as it takes).

TLS (``broker_use_ssl``)
    ``ca_certs``: CA bundle to verify the server; ``cert_reqs=ssl.CERT_NONE`` turns
    verification off; ``certfile``/``keyfile``: client certificate.

Features
    ============================  =========================================
    exchange types                direct, topic, fanout (routed on the server)
    queue arguments               ``x-expires``, ``x-message-ttl``; message
                                  ``expiration`` and ``priority``
    acknowledgements              server-side leases: ack deletes, reject
                                  requeues, a silent consumer's leases are
                                  released and redelivered
    consuming                     one long-poll per drain for every queue of
                                  the connection, no client-side sleep
    weights                       ``pool_slots`` header; a consume asks only
                                  for messages that fit the free slots
    remote control, events        yes (fanout + topic routing on the server)
    reconnects                    the consumer session outlives the connection:
                                  acks made across a reconnect settle
                                  (:mod:`~edge_kombu.transport.sessions`); a
                                  reconnect probes the API about once a second
                                  (:mod:`~edge_kombu.transport.probe`)
    ============================  =========================================

``Connection.drain_events(timeout=T)`` waits up to T seconds, as kombu's callers expect
(remote-control replies are collected until the first timeout), while the long-poll
goes on in the background. In a Celery worker it returns early when the loop has work
queued (acks, control commands: see :mod:`edge_kombu.worker.loop`) or the worker is
stopping.
"""

from __future__ import annotations

import logging
import queue as queue_mod
import socket
import sys
import threading
import time
import uuid
import weakref
from dataclasses import dataclass
from queue import Empty

from kombu.transport import virtual
from kombu.transport.base import to_rabbitmq_queue_arguments
from kombu.transport.virtual.base import queue_declare_ok_t
from kombu.utils.objects import cached_property

from edge_kombu import errors
from edge_kombu.protocol import MAX_BATCH, MAX_HELD, pool_slots
from edge_kombu.transport import node, probe, sessions
from edge_kombu.transport.acks import AckSender
from edge_kombu.transport.client import EdgeClient, call_without_new_fields, client_for
from edge_kombu.transport.settings import ClientSettings

log = logging.getLogger(__name__)

#: Seconds one long-poll may wait on the server.
DEFAULT_POLLING_MAX_WAIT = 10.0
#: ``drain_events`` waits in slices of this many seconds, checking between two whether
#: the Celery worker it serves is stopping (its loop must see that between two calls).
DRAIN_SLICE = 0.1
#: Most no_ack messages (remote control, events) one consume returns.
DEFAULT_BATCH = 100
#: Longest a closing channel waits for its queued acks to be sent.
ACK_FLUSH_TIMEOUT = 15.0
#: Seconds a transient message that reached no queue of a direct or topic exchange keeps
#: further transient ones with the same exchange and routing key from being sent. Every
#: Celery worker publishes a ``worker-heartbeat`` event each 2 s, bound to nothing unless
#: a monitor runs; a monitor that starts misses at most this long of such events.
UNROUTED_TTL = 10.0


class SlotQoS(virtual.QoS):
    """Prefetch counted in slots; acks and rejects settle leases on the server.

    ``prefetch_count`` is the slot budget of the channel (Celery sets it to
    concurrency x prefetch multiplier); a message weighs its ``pool_slots``.
    """

    def __init__(self, channel, prefetch_count: int = 0) -> None:
        super().__init__(channel, prefetch_count)
        self._weights: dict[str, int] = {}
        self._used = 0
        self._lock = threading.Lock()
        self._acks = AckSender(lambda tags: channel.settle("ack", tags), MAX_BATCH)

    def append(self, message, delivery_tag) -> None:
        super().append(message, delivery_tag)
        weight = pool_slots(message.headers)
        with self._lock:
            self._weights[delivery_tag] = weight
            self._used += weight

    def _release(self, delivery_tag) -> None:
        with self._lock:
            self._used -= self._weights.pop(delivery_tag, 0)

    def free_slots(self) -> int | None:
        """Slots left for new messages, or None when unlimited."""
        if not self.prefetch_count:
            return None
        return max(self.prefetch_count - self._used, 0)

    def can_consume(self) -> bool:
        free = self.free_slots()
        return free is None or free > 0

    def can_consume_max_estimate(self):
        return self.free_slots()

    # Slots are freed before the server hears of it: the server answers the session's
    # waiting consume on ack, and the next consume must already see the free slots.

    def ack(self, delivery_tag) -> None:
        self._release(delivery_tag)
        super().ack(delivery_tag)
        self._acks.add(delivery_tag)  # sent in the background, batched (see acks.py)

    def restore_unacked_once(self, stderr=None):
        # Queued acks go out before the rest is requeued and the session is closed: a
        # finished task must not be delivered again.
        if self.restore_at_shutdown:
            self._acks.flush(ACK_FLUSH_TIMEOUT)
        return super().restore_unacked_once(stderr)

    def reject(self, delivery_tag, requeue: bool = False) -> None:
        self._release(delivery_tag)
        self._quick_ack(delivery_tag)
        self.channel.settle("reject", [delivery_tag], requeue=requeue)

    def restore_unacked(self):
        """Give every unacknowledged message back to the server in one request."""
        self._flush()
        tags = list(self._delivered)
        self._delivered.clear()
        with self._lock:
            self._weights.clear()
            self._used = 0
        if tags:
            try:
                self.channel.settle("reject", tags, requeue=True)
            except (errors.EdgeError, OSError) as exc:
                # Not lost: the server releases the leases when the session expires.
                log.info("could not requeue %d message(s) now (%s); the server will "
                         "redeliver them when this session expires", len(tags), exc)
        return []


@dataclass(frozen=True)
class ConsumeSpec:
    queues: dict  # name -> no_ack
    max_slots: int | None
    total_slots: int | None = None

    def as_request(self, session: str, wait: float) -> dict:
        request = {
            "session": session,
            "queues": [{"name": q, "no_ack": no_ack} for q, no_ack in self.queues.items()],
            "wait": wait,
            "max_slots": self.max_slots,
            "total_slots": self.total_slots,
            "max_messages": min(MAX_BATCH, DEFAULT_BATCH + (self.max_slots or 0)),
        }
        worker = node.current()
        if worker is not None:
            request["node"] = worker  # a plain Celery worker is registered from it
        return request


#: Most sessions a declare names as this process's own (the protocol's bound).
MAX_OWN_SESSIONS = 8


#: Where :func:`_publish_id` keeps a publish's id between attempts (never sent inside it).
_PUBLISH_ID_PROPERTY = "_edge_publish_id"


class Channel(virtual.Channel):
    QoS = SlotQoS
    supports_fanout = True

    def __init__(self, connection, **kwargs) -> None:
        super().__init__(connection, **kwargs)
        self._no_ack_queues: set[str] = set()
        # kombu clears ``connection`` on close; a late ack from the pool still needs it.
        self.transport = connection

    @property
    def api(self) -> EdgeClient:
        return self.transport.api

    # -- declarations ------------------------------------------------------------------

    def exchange_declare(self, exchange=None, type="direct", durable=False, auto_delete=False,
                         arguments=None, nowait=False, passive=False):
        if exchange and not passive:
            self.transport.exchange_types[exchange] = type or "direct"
        self.api.call("exchange/declare", {
            "name": exchange or "", "type": type or "direct", "durable": bool(durable),
            "auto_delete": bool(auto_delete), "arguments": arguments or None,
            "passive": bool(passive),
        })

    def exchange_delete(self, exchange, if_unused=False, nowait=False):
        self.api.call("exchange/delete", {"name": exchange})

    def queue_declare(self, queue=None, passive=False, durable=False, exclusive=False,
                      auto_delete=False, arguments=None, nowait=False, **kwargs):
        queue = queue or f"amq.gen-{uuid.uuid4()}"
        body = {
            "name": queue, "durable": bool(durable), "exclusive": bool(exclusive),
            "auto_delete": bool(auto_delete), "arguments": arguments or None,
            "passive": bool(passive),
        }
        # After a lost connection, the session this process carries on still consumes
        # (Celery's mailbox queue): the answer must not count it as another consumer, or
        # Celery warns that another node uses this worker's mailbox.
        earlier = sessions.waiting_ids(self.transport.identity)
        if earlier:
            body["own_sessions"] = [self.transport.session_id, *earlier][:MAX_OWN_SESSIONS]
        answer = call_without_new_fields(self.api, "queue/declare", body, ("own_sessions",))
        return queue_declare_ok_t(queue, answer["messages"], answer["consumers"])

    def queue_delete(self, queue, if_unused=False, if_empty=False, **kwargs):
        return self.api.call("queue/delete", {
            "name": queue, "if_unused": bool(if_unused), "if_empty": bool(if_empty),
        })["messages"]

    def queue_bind(self, queue, exchange=None, routing_key="", arguments=None, **kwargs):
        self.api.call("queue/bind", {
            "queue": queue, "exchange": exchange or "amq.direct", "routing_key": routing_key or "",
        })

    def queue_unbind(self, queue, exchange=None, routing_key="", arguments=None, **kwargs):
        self.api.call("queue/unbind", {
            "queue": queue, "exchange": exchange or "amq.direct", "routing_key": routing_key or "",
        })

    def queue_purge(self, queue, **kwargs):
        return self.api.call("queue/purge", {"name": queue})["messages"]

    def prepare_queue_arguments(self, arguments, **kwargs):
        return to_rabbitmq_queue_arguments(arguments, **kwargs)

    def after_reply_message_received(self, queue):
        self.queue_delete(queue)

    # -- publishing and consuming ------------------------------------------------------

    def basic_publish(self, message, exchange, routing_key, **kwargs):
        self._inplace_augment_message(message, exchange, routing_key)
        mandatory = bool(kwargs.get("mandatory"))
        # Not for fanout (remote control broadcasts): a worker may bind its queue any time.
        droppable = (not mandatory and message["properties"].get("delivery_mode") == 1
                     and self.transport.exchange_types.get(exchange) in ("direct", "topic"))
        unrouted = self.transport.unrouted
        key = (exchange, routing_key)
        if droppable and unrouted.get(key, 0.0) > time.monotonic():
            return  # a transient message nobody would receive: what a broker does with it
        publish_id = _publish_id(message)
        answer = self.api.call("publish", {
            "exchange": exchange or "", "routing_key": routing_key or "",
            "message": _without_publish_id(message), "mandatory": mandatory,
            "publish_id": publish_id,
        })
        if droppable and not answer.get("routed"):
            unrouted[key] = time.monotonic() + UNROUTED_TTL

    def basic_consume(self, queue, no_ack, callback, consumer_tag, **kwargs):
        if no_ack:
            self._no_ack_queues.add(queue)
        super().basic_consume(queue, no_ack, callback, consumer_tag, **kwargs)
        self.transport.consumers_changed()

    def basic_cancel(self, consumer_tag):
        queue = self._tag_to_queue.get(consumer_tag)
        super().basic_cancel(consumer_tag)
        if queue is not None and queue not in self._active_queues:
            self._no_ack_queues.discard(queue)
        self.transport.consumers_changed()

    def basic_qos(self, prefetch_size=0, prefetch_count=0, apply_global=False):
        grew = prefetch_count == 0 or prefetch_count > (self.qos.prefetch_count or 0)
        super().basic_qos(prefetch_size, prefetch_count, apply_global)
        if grew:
            self.transport.consumers_changed()

    def basic_get(self, queue, no_ack=False, **kwargs):
        free = None if no_ack else self.qos.free_slots()
        if free == 0:
            return None
        if not no_ack:
            self.transport.claim_session()
        answer = self.api.call("consume", {
            "session": self.transport.session_id, "queues": [{"name": queue, "no_ack": no_ack}],
            "wait": 0, "max_slots": None if no_ack else free, "max_messages": 1,
        })
        if not answer["messages"]:
            return None
        message = self.Message(answer["messages"][0]["message"], channel=self)
        if not no_ack:
            self.qos.append(message, message.delivery_tag)
        return message

    def settle(self, verb: str, tags: list, requeue: bool = False) -> None:
        transport = self.transport
        body = {"session": transport.session_id, "delivery_tags": tags}
        if verb == "reject":
            body["requeue"] = requeue
        try:
            self.api.call(verb, body, retry=not transport.closing)
        except errors.NotFound as exc:
            log.warning("%s of %d message(s) had no effect: %s", verb, len(tags), exc.message)
        except errors.SessionClosed as exc:
            transport.session.closed = True
            log.warning("%s of %d message(s) had no effect: %s (the server has given them "
                        "to another consumer)", verb, len(tags), exc.message)
        except (errors.EdgeConnectionError, errors.ServiceUnavailable) as exc:
            # Keep the settlement: the poller sends it again before its next consume, so
            # a message whose task finished is not left leased to this session forever.
            transport.defer_settlement(verb, body)
            log.warning("%s of %d message(s) deferred until the edge API answers again: %s",
                        verb, len(tags), exc.message)

    def consume_spec(self) -> tuple[dict, int | None]:
        """Queues this channel can take messages from now, and its free slots."""
        if self.closed or not self._consumers:
            return {}, None
        free = self.qos.free_slots()
        queues = {}
        for name in list(self._active_queues):
            no_ack = name in self._no_ack_queues
            if no_ack or free is None or free > 0:
                queues[name] = no_ack
        return queues, free

    # -- hooks of the virtual base, served by the API ---------------------------------

    def _get(self, queue, timeout=None):
        message = self.basic_get(queue, no_ack=True)
        if message is None:
            raise Empty()
        return message.serializable()

    def _put(self, queue, message, **kwargs):
        self.basic_publish(message, "", queue, **kwargs)

    def _purge(self, queue):
        return self.queue_purge(queue)

    def _size(self, queue):
        return self.api.call("queue/declare", {"name": queue, "passive": True})["messages"]

    def _delete(self, queue, *args, **kwargs):
        self.queue_delete(queue)

    def _new_queue(self, queue, **kwargs):
        self.queue_declare(queue, **kwargs)

    def _has_queue(self, queue, **kwargs):
        try:
            self._size(queue)
        except errors.NotFound:
            return False
        return True

    def _put_fanout(self, exchange, message, routing_key, **kwargs):
        self.basic_publish(message, exchange, routing_key, **kwargs)

    def _restore(self, message):
        self.settle("reject", [message.delivery_tag], requeue=True)

    def _restore_at_beginning(self, message):
        self._restore(message)


class LongPoller(threading.Thread):
    """Runs the connection's long-polls in the background; ``get`` hands batches over.

    The worker's loop asks for events every two seconds; letting each of those
    calls open its own short poll would cost the server a request per worker
    every two seconds. Instead one poll of up to ``polling_max_wait`` seconds is
    kept open, and the loop just collects what it brought.
    """

    def __init__(self, transport: Transport) -> None:
        super().__init__(name="edge-kombu-long-poll", daemon=True)
        self.transport = transport
        self.results: queue_mod.Queue = queue_mod.Queue()
        self.delivered = threading.Event()
        self.changed = threading.Event()
        self.stopped = threading.Event()
        self.in_flight = False

    def get(self, timeout: float | None) -> list | None:
        """The next batch of messages; None when nudged; raises TimeoutError (socket.timeout)."""
        try:
            item = self.results.get(timeout=timeout)
        except queue_mod.Empty:
            raise TimeoutError() from None
        if isinstance(item, BaseException):
            self.stopped.set()
            raise item
        return item

    def nudge(self) -> None:
        """Make the draining thread return now (it has other work queued)."""
        self.results.put(None)

    def batch_delivered(self) -> None:
        self.delivered.set()

    def run(self) -> None:
        transport = self.transport
        while not self.stopped.is_set():
            self.changed.clear()  # before reading the spec: a change after it is seen below
            spec = transport.consume_spec()
            if not spec.queues:
                self.changed.wait(transport.polling_max_wait)
                continue
            wait = transport.polling_max_wait
            try:
                if any(not no_ack for no_ack in spec.queues.values()):
                    transport.claim_session()
                transport.flush_deferred_settlements()
                self.in_flight = True
                if self.changed.is_set():
                    # Consumers changed since the spec was read, and consumers_changed()
                    # saw no poll in flight to wake: read the spec again.
                    continue
                answer = call_without_new_fields(
                    transport.api, "consume", spec.as_request(transport.session_id, wait),
                    ("node",), timeout=wait + transport.api.read_timeout,
                )
            except errors.SessionClosed as exc:
                if transport.renew_session():
                    continue
                self.results.put(exc)
                return
            except BaseException as exc:  # handed to the draining thread, which raises it
                self.results.put(exc)
                return
            finally:
                self.in_flight = False
            messages = answer["messages"]
            if messages and not self.stopped.is_set():
                self.delivered.clear()
                self.results.put(messages)
                while not self.delivered.wait(1.0):
                    if self.stopped.is_set():
                        return

    def stop(self) -> None:
        self.stopped.set()
        self.changed.set()
        self.delivered.set()


def _publish_id(message: dict) -> str:
    """This publish's id, the same in every resend of it.

    kombu's ``Producer.publish(retry=True)`` builds the message again for each attempt, but
    around the same ``properties`` dict: the id kept there outlives the attempts.
    """
    return message["properties"].setdefault(_PUBLISH_ID_PROPERTY, uuid.uuid4().hex)


def _without_publish_id(message: dict) -> dict:
    """The message as stored: the id travels beside it, not in it."""
    properties = {k: v for k, v in message["properties"].items() if k != _PUBLISH_ID_PROPERTY}
    return dict(message, properties=properties)


class Transport(virtual.Transport):
    Channel = Channel

    driver_type = "edge"
    driver_name = "edge-http"
    polling_interval = None
    default_port = None
    can_parse_url = False

    implements = virtual.Transport.implements.extend(
        asynchronous=False,
        exchange_type=frozenset(["direct", "topic", "fanout"]),
        heartbeats=False,
    )

    connection_errors = virtual.Transport.connection_errors + (
        errors.EdgeConnectionError,
        errors.SessionClosed,
        errors.ServiceUnavailable,
        ConnectionError,
        socket.timeout,
    )
    channel_errors = virtual.Transport.channel_errors + (errors.NotFound, errors.Conflict)

    def __init__(self, client, **kwargs) -> None:
        super().__init__(client, **kwargs)
        _LIVE_TRANSPORTS.add(self)
        self.session = sessions.ConsumerSession()
        options = client.transport_options or {}
        self.polling_max_wait = float(options.get("polling_max_wait", DEFAULT_POLLING_MAX_WAIT))
        timeout = options.get("reconnect_timeout")
        self.reconnect_timeout = None if timeout is None else float(timeout)
        self._poller: LongPoller | None = None
        self._poller_lock = threading.Lock()
        self.closing = False
        self.exchange_types: dict[str, str] = {}  # as declared through this connection
        self.unrouted: dict[tuple[str, str], float] = {}  # (exchange, key) -> skip until

    @cached_property
    def client_settings(self) -> ClientSettings:
        """The API client's settings, from this connection's URL, options and ``ssl``."""
        client = self.client
        return ClientSettings.from_kombu(_api_url(client), client.transport_options, client.ssl,
                                         connect_timeout=client.connect_timeout)

    @cached_property
    def api(self) -> EdgeClient:
        return client_for(self.client_settings)

    @cached_property
    def identity(self) -> tuple:
        """Who this connection is to the server: connections of one identity share sessions."""
        s = self.client_settings
        return (s.url, s.token, s.token_file, s.secret, s.client_name)

    @property
    def session_id(self) -> str:
        return self.session.id

    def establish_connection(self):
        if sessions.lost_before(self.identity):
            # A consuming connection of this process was lost: wait for the API here,
            # probing often, rather than in Celery's growing back-off.
            hello = probe.hello_when_back(self.api.call, stopping=_celery_worker_stopping,
                                          timeout=self.reconnect_timeout,
                                          where=f"the edge API at {self.api.base_url}")
        else:
            hello = self.api.call("hello")
        self.polling_max_wait = min(self.polling_max_wait, float(hello["max_wait"]))
        return super().establish_connection()

    def claim_session(self) -> None:
        """Before the first consume with acknowledgements: carry on the session a lost
        connection of this process left behind, if any (see :mod:`sessions`)."""
        if self.session.acking:
            return
        earlier = sessions.take_over(self.identity)
        if earlier is not None:
            self.session = earlier
            self._resume(earlier)
        self.session.acking = True

    def _resume(self, session: sessions.ConsumerSession) -> None:
        """Settle what ``session`` owes, then tell the server which of its messages this
        process still holds: the others were leased by consumes whose answer was lost with
        the old connection, and go back to their queues now."""
        self.flush_deferred_settlements()
        for channel in session.earlier_channels:
            if channel._qos is not None:
                channel._qos._acks.flush(ACK_FLUSH_TIMEOUT)
        held = [tag for channel in session.earlier_channels if channel._qos is not None
                for tag in list(channel._qos._delivered)]
        if len(held) > MAX_HELD:
            log.warning("holding %d messages, more than the %d a resume names; the rest "
                        "will be delivered again", len(held), MAX_HELD)
        try:
            answer = self.api.call("session/resume",
                                   {"session": session.id, "held": held[:MAX_HELD]})
        except errors.SessionClosed as exc:
            session.closed = True
            self.session = sessions.ConsumerSession()
            log.warning("edge session %s could not be carried on: %s", session.id, exc.message)
            return
        except errors.NotFound as exc:  # a server older than session/resume
            log.warning("carried on edge session %s without reconciling its leases (%s): a "
                        "message whose delivery was lost with the connection stays leased "
                        "until this connection closes", session.id, exc.message)
            return
        # Channels left with nothing unsettled will not ack again: no need to keep them
        # across further reconnects.
        session.earlier_channels[:] = [ch for ch in session.earlier_channels
                                       if ch._qos is not None and ch._qos._delivered]
        log.info("carried on edge session %s of a lost connection: %d message(s) still held, "
                 "%d never received and redelivered", session.id, len(held) - len(
                     answer["unknown"]), answer["released"])

    def consume_spec(self) -> ConsumeSpec:
        queues: dict = {}
        limits, totals = [], []
        for channel in list(self.channels):
            channel_queues, free = channel.consume_spec()
            queues.update(channel_queues)
            if free is not None and any(not no_ack for no_ack in channel_queues.values()):
                limits.append(free)
                totals.append(channel.qos.prefetch_count)
        return ConsumeSpec(queues, min(limits) if limits else None, min(totals) if totals else None)

    def renew_session(self) -> bool:
        """Open a new session after the server expired ours, if it held no leases.

        A publisher that consumed once (a ``ping`` reply) and then only published for
        longer than the lease timeout finds its session expired; nothing was lost, so
        it carries on. With leases the error stands: the connection must be renewed.
        """
        self.session.closed = True
        for channel in list(self.channels):
            qos = channel._qos
            if qos is not None:
                qos._flush()  # acked tags leave ``_delivered`` lazily
                if qos._delivered:
                    return False
        log.info("edge session %s expired while idle; opening a new one", self.session_id)
        self.session = sessions.ConsumerSession()
        return True

    def defer_settlement(self, verb: str, body: dict) -> None:
        self.session.deferred.append((verb, body))

    def flush_deferred_settlements(self, *, retry: bool = True) -> None:
        """Send acks/rejects that failed while the API was unreachable (oldest first)."""
        deferred = self.session.deferred
        while deferred:
            verb, body = deferred[0]
            try:
                self.api.call(verb, body, retry=retry)
            except (errors.NotFound, errors.SessionClosed) as exc:
                log.warning("deferred %s had no effect: %s", verb, exc.message)
            deferred.popleft()
            log.info("deferred %s of %d message(s) done", verb, len(body["delivery_tags"]))

    def _settle_before_close(self) -> None:
        """Send what the session still owes the server: acks queued on the channels of
        earlier connections (tasks that finished meanwhile) and deferred settlements."""
        for channel in self.session.earlier_channels:
            if channel._qos is not None:
                channel._qos._acks.flush(ACK_FLUSH_TIMEOUT)
        self.flush_deferred_settlements(retry=False)

    def consumers_changed(self) -> None:
        """Cut a waiting long-poll short: it asked with queues or capacity now stale."""
        poller = self._poller
        if poller is None or not poller.is_alive():
            return
        poller.changed.set()
        if poller.in_flight:
            try:
                self.api.call("session/wake", {"session": self.session_id})
            except errors.EdgeError as exc:
                log.debug("session wake failed: %s", exc)

    def drain_events(self, connection, timeout=None):
        with self._poller_lock:
            poller = self._poller
            if poller is None or (poller.stopped.is_set() and poller.results.empty()):
                self._poller = LongPoller(self)
                self._poller.start()
            poller = self._poller
        messages = self._next_batch(poller, timeout)
        if messages is None:
            return
        try:
            for item in messages:
                self._deliver(item["message"], item["queue"])
        finally:
            poller.batch_delivered()

    @staticmethod
    def _next_batch(poller: LongPoller, timeout: float | None) -> list | None:
        """Wait up to ``timeout`` for messages, in slices: None when nudged, and
        ``socket.timeout`` at the deadline or as soon as the Celery worker is stopping."""
        if timeout is None:
            return poller.get(None)
        deadline = time.monotonic() + timeout
        while True:
            try:
                return poller.get(max(0.0, min(DRAIN_SLICE, deadline - time.monotonic())))
            except TimeoutError:
                if time.monotonic() >= deadline or _celery_worker_stopping():
                    raise

    def nudge(self) -> None:
        """Return from the current ``drain_events`` so the caller's loop runs its queued work.

        Celery's worker loop runs acknowledgements queued by the pool between two
        ``drain_events`` calls; the pool nudges so an ack is not held back for a
        whole drain slice.
        """
        poller = self._poller
        if poller is not None and not poller.stopped.is_set():
            poller.nudge()

    def _stop_poller(self) -> None:
        if self._poller is not None:
            self._poller.stop()

    def close_connection(self, connection):
        self._stop_poller()
        self.closing = True  # one attempt per call from here: the server expires the rest
        try:
            super().close_connection(connection)  # this connection's acks sent, the rest back
            self._settle_before_close()
            self.api.call("session/close", {"session": self.session_id}, retry=False, timeout=5)
        except (errors.EdgeError, OSError) as exc:
            log.info("closing edge session: %s (the server expires it)", exc)
        finally:
            self.api.close()

    def _collect(self, connection):
        """Drop a dead connection without talking to the server; its session waits for the
        process's next connection (the server expires it if none comes)."""
        self._stop_poller()
        for channel in list(self.channels):
            if channel._qos is not None:
                channel._qos.restore_at_shutdown = False
        sessions.leave(self.identity, self.session, list(self.channels))
        self.channels = []
        self.api.close()

    @property
    def default_connection_params(self):
        return {"hostname": "localhost"}


_LIVE_TRANSPORTS: weakref.WeakSet[Transport] = weakref.WeakSet()


def nudge_consumers() -> None:
    """Nudge every edge connection of this process that is being drained."""
    for transport in list(_LIVE_TRANSPORTS):
        transport.nudge()


def _celery_worker_stopping() -> bool:
    """True once this process's Celery worker was asked to stop (warm or cold)."""
    state = sys.modules.get("celery.worker.state")  # loaded only in a worker
    if state is None:
        return False
    # As celery.worker.state.maybe_shutdown reads them: 0 is an exit code, False is unset.
    return any(flag is not None and flag is not False
               for flag in (state.should_stop, state.should_terminate))


def _api_url(client) -> str:
    """The API's URL from the kombu connection (``edge+`` URLs keep it whole in hostname)."""
    hostname = client.hostname or "localhost"
    if "://" in hostname:
        return hostname
    scheme = "https" if client.ssl else "http"
    netloc = hostname if not client.port else f"{hostname}:{client.port}"
    if client.password:
        netloc = f":{client.password}@{netloc}"
    vhost = (client.virtual_host or "/").strip("/")
    return f"{scheme}://{netloc}/{vhost}" if vhost else f"{scheme}://{netloc}"

