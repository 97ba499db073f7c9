"""Textbook FedAvg on a linear-regression task, with the API pieces wired by hand.

Ten clients each hold a slice of a synthetic ``y = x w + b + noise`` problem. The
server averages their local SGD updates weighted by example counts; the global
model converges to the centralized least-squares solution.

Run: python examples/linear_regression_fedavg.py
"""

from __future__ import annotations

import torch

from securefl import ClientConfig, SecureClient, SecureServer, ServerConfig
from securefl.data import load_linreg, partition
from securefl.models import build_model, get_flat


def main(rounds: int = 20, clients: int = 10, seed: int = 0) -> dict[str, float]:
    data = load_linreg(seed=seed)
    parts = partition(data.y_train, clients, method="iid", seed=seed)

    def model_fn() -> torch.nn.Module:
        return build_model("linreg", data.input_shape, 0, seed=seed)

    fleet = [
        SecureClient(
            f"client-{k}",
            data.x_train[idx],
            data.y_train[idx],
            model_fn=model_fn,
            task="regression",
            config=ClientConfig(local_epochs=1, batch_size=16, lr=0.05),
        )
        for k, idx in enumerate(parts)
    ]
    server = SecureServer(
        model_fn(),
        config=ServerConfig(rounds=rounds),
        num_clients=clients,
        eval_data=(data.x_test, data.y_test),
        task="regression",
    )
    for r in range(1, rounds + 1):
        res = server.run_round(r, fleet)
        print(f"round {r:>2}  test MSE {res.loss:.5f}  bytes up {res.bytes_up}")

    # the centralized least-squares solution, for comparison
    x1 = torch.cat([data.x_train, torch.ones(len(data.x_train), 1)], dim=1).double()
    solution = torch.linalg.lstsq(x1, data.y_train.double()).solution.squeeze(1)
    w = get_flat(server.model).double()  # [weights..., bias]
    distance = float((w - solution).norm() / solution.norm())
    x1_test = torch.cat([data.x_test, torch.ones(len(data.x_test), 1)], dim=1).double()
    lstsq_mse = float(((x1_test @ solution - data.y_test.double().squeeze(1)) ** 2).mean())
    print(f"FedAvg test MSE {res.loss:.5f} vs least squares {lstsq_mse:.5f}; relative distance {distance:.4f}")
    return {"mse": res.loss, "lstsq_mse": lstsq_mse, "distance": distance}


if __name__ == "__main__":
    main()
