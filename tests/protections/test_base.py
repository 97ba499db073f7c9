"""The protection seam: the exchange counts bytes, refusals and dropouts."""

import torch

from securefl.exceptions import BudgetExhaustedError, ClientDropout
from securefl.protections import Exchange, Plaintext
from securefl.server import SecureServer
from securefl.config import ServerConfig


class Echo:
    def __init__(self, cid, behaviour=None):
        self.client_id = cid
        self.behaviour = behaviour
        self.calls = 0

    def handle(self, message):
        self.calls += 1
        if self.behaviour == "refuse":
            raise BudgetExhaustedError(self.client_id, 1.0, 2.0, 1.5)
        if self.behaviour == "drop":
            raise ClientDropout(self.client_id)
        return message + b"!"


def test_exchange_counts_bytes_and_remembers_who_is_gone():
    ex = Exchange(1, drop_at={"c": 2})
    a, r, d, c = Echo("a"), Echo("r", "refuse"), Echo("d", "drop"), Echo("c")
    assert ex.send(a, b"xyz") == b"xyz!"
    assert ex.send(r, b"xyz") is None and ex.send(d, b"xyz") is None
    assert ex.send(c, b"1") == b"1!"
    assert ex.send(c, b"2") is None  # simulated dropout at its second message
    assert ex.send(c, b"3") is None and c.calls == 1  # never asked again
    assert ex.send(r, b"again") is None and r.calls == 1
    assert ex.refused == ["r"] and ex.dropped == ["d", "c"]
    assert ex.bytes_down == 3 * 3 + 2 and ex.bytes_up == 4 + 2


def test_server_dropout_draws_stages_and_round_survives():
    model = torch.nn.Linear(3, 1)
    server = SecureServer(model, config=ServerConfig(dropout=0.5), num_clients=40)

    class Client:
        def __init__(self, i):
            self.client_id = f"c{i}"

        def fit(self, message):
            return Plaintext().seal(torch.ones(4), {"weight": 1.0}, {"round": 1})

    clients = [Client(i) for i in range(40)]
    drops = server.draw_dropouts(clients)
    assert 8 <= len(drops) <= 32 and set(drops.values()) == {1}  # plaintext: one stage
    res = server.run_round(1, clients)
    assert res.aborted is None
    assert res.participants + len(res.dropped) == 40 and 0 < len(res.dropped) < 40
    assert torch.allclose(server.weights, torch.cat([model.weight.detach().flatten(), model.bias.detach()]))
