"""The server's side of the Flower transport: remote clients behind a Flower Grid.

A :class:`RemoteClient` is a :class:`~securefl.protections.base.ClientLike` whose
``fit`` and ``handle`` travel as Flower messages (``message_type="query"``, one
``ConfigRecord`` named ``securefl`` holding the method and the securefl wire
message as bytes) to the SuperNode that runs that client. :class:`FlowerExchange`
delivers each protocol stage's messages to all of its clients at once
(:meth:`~securefl.protections.base.Exchange.send_many`), so a stage costs one
network round trip, not one per client; counting, refusals and dropouts go
through the same :class:`~securefl.protections.base.Exchange` rules as in process.

A node that does not answer within the stage timeout, or for which Flower returns
an error (the node is gone), is a dropout (:class:`~securefl.exceptions.ClientDropout`);
what the protection does next is the protection's rule, as in the simulation.
"""

from __future__ import annotations

import json
import time
from typing import Any, Sequence

from flwr.app import ConfigRecord, Message, RecordDict

from securefl import exceptions as E
from securefl.protections.base import ClientLike, Exchange

__all__ = ["FlowerExchange", "FlowerLink", "RemoteClient", "RECORD"]

#: the name of the record that carries securefl's bytes in a Flower message
RECORD = "securefl"
#: seconds between two pulls of a stage's replies (SuperNodes poll every 3 s themselves)
_POLL = 0.5


def _error(reply: dict[str, Any], cid: str) -> Exception:
    """The exception a node reported, rebuilt on the server's side."""
    name, text = str(reply.get("error", "")), str(reply.get("message", ""))
    if reply.get("status") == "refused":
        spent, would_be, budget = (list(reply.get("budget") or []) + [0.0, 0.0, 0.0])[:3]
        return E.BudgetExhaustedError(cid, float(spent), float(would_be), float(budget))
    cls = getattr(E, name, None)
    if isinstance(cls, type) and issubclass(cls, E.SecureFLError) and cls not in (E.BudgetExhaustedError, E.ClientDropout):
        try:
            return cls(text)
        except TypeError:  # an error class with a richer constructor
            pass
    return E.ProtocolError(f"client {cid} failed: {name}: {text}")


class FlowerLink:
    """Messages to and from the SuperNodes of one run, through a Flower Grid."""

    def __init__(self, grid: Any, *, timeout: float) -> None:
        self.grid = grid
        self.timeout = float(timeout)
        #: client id -> the spend it last reported (sample-level DP)
        self.spend: dict[str, dict[str, Any]] = {}
        #: wall time of every stage (first message pushed -> last reply pulled or timeout)
        self.stage_seconds: list[float] = []

    def call_many(self, items: Sequence[tuple[int, str, bytes]], group: str = "") -> list[tuple[dict[str, Any], bytes] | Exception]:
        """Send ``(node_id, method, payload)`` requests at once; per request, the
        node's (reply header, body), or a :class:`ClientDropout` for no answer in time."""
        if not items:
            return []
        t0 = time.monotonic()
        msgs = [
            self.grid.create_message(RecordDict({RECORD: ConfigRecord({"method": method, "payload": payload})}),
                                     "query", int(node), group)
            for node, method, payload in items
        ]
        ids = list(self.grid.push_messages(msgs))
        pending = {mid: i for i, mid in enumerate(ids) if mid}
        out: list[Any] = [E.ClientDropout(f"node {items[i][0]} did not answer in {self.timeout:g} s") for i in range(len(items))]
        while pending and time.monotonic() - t0 < self.timeout:
            for reply in self.grid.pull_messages(list(pending)):
                i = pending.pop(reply.metadata.reply_to_message_id, None)
                if i is not None:
                    out[i] = self._open(reply, items[i][0])
            if pending:
                time.sleep(_POLL)
        self.stage_seconds.append(time.monotonic() - t0)
        return out

    def _open(self, reply: Message, node: int) -> tuple[dict[str, Any], bytes] | Exception:
        if reply.has_error():
            return E.ClientDropout(f"node {node}: {reply.error.reason}")
        rec = reply.content.config_records.get(RECORD) if reply.has_content() else None
        if rec is None:
            return E.ClientDropout(f"node {node} sent no {RECORD} record")
        try:
            header = json.loads(str(rec.get("header", "")))
        except ValueError:
            return E.ClientDropout(f"node {node} sent an unreadable reply header")
        if not isinstance(header, dict):
            return E.ClientDropout(f"node {node} sent an unreadable reply header")
        return header, bytes(rec.get("payload", b""))

    def unwrap(self, outcome: tuple[dict[str, Any], bytes] | Exception) -> bytes | Exception:
        """A reply's body, or the exception it stands for; remembers reported spend."""
        if isinstance(outcome, Exception):
            return outcome
        header, body = outcome
        cid = str(header.get("client", ""))
        if isinstance(header.get("spend"), dict):
            self.spend[cid] = header["spend"]
        if header.get("status") != "ok":
            return _error(header, cid)
        return body

    def max_spend(self) -> tuple[float | None, float | None]:
        """Sample-level DP: the largest epsilon the clients reported (as the simulation
        reads the largest from its shared ledger)."""
        if not self.spend:
            return None, None
        eps = [s.get("epsilon") for s in self.spend.values() if s.get("epsilon") is not None]
        rdp = [s.get("epsilon_rdp") for s in self.spend.values() if s.get("epsilon_rdp") is not None]
        return (max(eps) if eps else None), (max(rdp) if rdp else None)


class RemoteClient:
    """A client on a SuperNode, as the server's protocols see it."""

    def __init__(self, link: FlowerLink, node_id: int, client_id: str) -> None:
        self.link = link
        self.node_id = int(node_id)
        self.client_id = str(client_id)

    def _call(self, method: str, message: bytes) -> bytes:
        outcome = self.link.unwrap(self.link.call_many([(self.node_id, method, message)])[0])
        if isinstance(outcome, Exception):
            raise outcome
        return outcome

    def fit(self, message: bytes) -> bytes:
        return self._call("fit", message)

    def handle(self, message: bytes) -> bytes:
        return self._call("handle", message)


class FlowerExchange(Exchange):
    """An :class:`Exchange` whose stages go to every remote client at once."""

    def send_many(self, requests: Sequence[tuple[ClientLike, bytes]], *, method: str = "handle") -> list[bytes | None]:
        remote = [isinstance(c, RemoteClient) for c, _ in requests]
        if not requests or not all(remote):
            return super().send_many(requests, method=method)
        admitted = [i for i, (c, m) in enumerate(requests) if self.admit(c.client_id, m)]
        link = requests[0][0].link  # type: ignore[attr-defined]
        items = [(requests[i][0].node_id, method, requests[i][1]) for i in admitted]  # type: ignore[attr-defined]
        outcomes = link.call_many(items, group=str(self.round))
        out: list[bytes | None] = [None] * len(requests)
        errors: list[Exception] = []
        for i, outcome in zip(admitted, outcomes):
            try:
                out[i] = self.settle(requests[i][0].client_id, link.unwrap(outcome))
            except Exception as exc:  # noqa: BLE001 - raised below, after every reply is counted
                errors.append(exc)
        if errors:
            raise errors[0]
        return out
