"""The threaded exchange: concurrent, yet counted and ordered like the serial one."""

import threading
import time

import pytest
import torch

from securefl.cli import main
from securefl.config import ServerConfig
from securefl.exceptions import BudgetExhaustedError, ClientDropout, ConfigTypeError, ConfigValueError, ProtocolError
from securefl.privacy import ledger as ledger_module
from securefl.privacy.events import Mechanism
from securefl.privacy.ledger import PrivacyLedger
from securefl.protections.base import Exchange
from securefl.protections.threaded import ThreadedExchange, check_workers, exchange_factory


class Scripted:
    """A client whose answers are scripted: bytes, or an exception to raise; later
    clients answer sooner, so threads finish out of request order."""

    def __init__(self, cid: str, outcomes: list, delay: float = 0.0, barrier: threading.Barrier | None = None):
        self.client_id, self.outcomes, self.delay, self.barrier = cid, list(outcomes), delay, barrier
        self.threads: list[int] = []

    def _answer(self, message: bytes) -> bytes:
        self.threads.append(torch.get_num_threads())
        if self.barrier is not None:
            self.barrier.wait()  # only passes if the other client runs at the same time
        time.sleep(self.delay)
        out = self.outcomes.pop(0)
        if isinstance(out, Exception):
            raise out
        return out + message[:1]

    fit = handle = _answer


def _clients(barrier=None):
    refusal = BudgetExhaustedError("c2", 1.0, 2.0, 1.5)
    script = {
        "c0": [b"a" * 10, b"x" * 3],
        "c1": [ClientDropout("gone")],
        "c2": [refusal],
        "c3": [b"b" * 7, b"y" * 5],  # simulated dropout at its 2nd message
        "c4": [b"c" * 2, b"z"],
        "c5": [b"d" * 4, b"w" * 9],  # simulated dropout at its 1st message
    }
    return [Scripted(cid, out, delay=0.02 * (6 - k)) for k, (cid, out) in enumerate(script.items())]


def _run(exchange):
    clients = _clients()
    first = exchange.send_many([(c, b"m" * (k + 1)) for k, c in enumerate(clients)], method="fit")
    second = exchange.send_many([(c, b"n" * 3) for c in clients])
    state = (exchange.bytes_up, exchange.bytes_down, exchange.refused, exchange.dropped, exchange._asked)
    return first, second, state


def test_same_replies_counts_and_order_as_serial():
    drop_at = {"c3": 2, "c5": 1}
    serial = _run(Exchange(1, drop_at))
    threaded = _run(ThreadedExchange(1, drop_at, workers=3))
    assert threaded == serial
    assert serial[2][3] == ["c1", "c5", "c3"]  # dropped, in the serial order
    assert serial[0][0] == b"a" * 10 + b"m" and serial[1][1:3] == [None, None]


def test_stage_runs_concurrently():
    barrier = threading.Barrier(2, timeout=5)
    clients = [Scripted(f"c{k}", [b"ok"], barrier=barrier) for k in range(2)]
    replies = ThreadedExchange(1, workers=2).send_many([(c, b"!") for c in clients])
    assert replies == [b"ok!", b"ok!"]
    with pytest.raises(threading.BrokenBarrierError):  # the serial exchange deadlocks on it
        Exchange(1).send_many([(Scripted("s0", [b"ok"], barrier=threading.Barrier(2, timeout=0.2)), b"!")])


def test_error_is_raised_and_nothing_after_it_is_counted():
    def fresh():
        return [Scripted("a", [b"12345"]), Scripted("b", [ProtocolError("bad")], delay=0.05), Scripted("c", [b"zz"])]

    serial, threaded = Exchange(1), ThreadedExchange(1, workers=3)
    for ex in (serial, threaded):
        with pytest.raises(ProtocolError, match="bad"):
            ex.send_many([(c, b"mm") for c in fresh()])
    assert (threaded.bytes_up, threaded.bytes_down, threaded._asked) == (serial.bytes_up, serial.bytes_down, serial._asked)
    assert serial._asked == {"a": 1, "b": 1}


def test_torch_threads_split_among_workers_and_restored():
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        clients = [Scripted(f"c{k}", [b"ok"]) for k in range(3)]
        ThreadedExchange(1, workers=2).send_many([(c, b"!") for c in clients])
        assert [c.threads for c in clients] == [[1], [1], [1]]
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)


def test_workers_validated():
    assert exchange_factory(1) is Exchange and isinstance(exchange_factory(3)(1), ThreadedExchange)
    assert check_workers(4) == 4
    for bad in (0, -1, 2.0, True, 10**6):
        with pytest.raises(ConfigValueError, match="workers"):
            check_workers(bad)
    with pytest.raises(ConfigValueError, match="workers"):
        ServerConfig(workers=0)
    with pytest.raises(ConfigTypeError, match="workers"):
        ServerConfig(workers="2")


def test_cli_refuses_bad_workers(capsys, tmp_path):
    assert main(["train", "--workers", "0", "--out", str(tmp_path), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "--workers" in err and "0" in err


def test_ledger_appends_from_threads_keep_the_chain(tmp_path, monkeypatch):
    real = ledger_module.round_time

    def slow():  # widens the window between reading the chain's length and its last hash
        time.sleep(0.01)
        return real()

    monkeypatch.setattr(ledger_module, "round_time", slow)
    ledger = PrivacyLedger(tmp_path / "ledger.json", delta=1e-5)

    def record(k):
        for r in range(1, 4):
            ledger.record(subject=f"c{k}", round=r, mechanism=Mechanism.DP_SGD, noise_multiplier=1.0, sample_rate=0.1, steps=2)

    threads = [threading.Thread(target=record, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    loaded = PrivacyLedger.load(tmp_path / "ledger.json")  # verifies the hash chain
    assert [e["seq"] for e in loaded.entries] == list(range(12))
