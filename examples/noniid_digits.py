"""How label skew hurts FedAvg on digits, and what server optimizers recover.

Partitions: IID, Dirichlet(alpha=0.1) and two label shards
per client (McMahan et al. 2017). Server optimizers: FedAvg, FedAvgM, FedAdam
(Reddi et al. 2021).

Run: python examples/noniid_digits.py
"""

from __future__ import annotations

from securefl import RunConfig, Simulation

SETTINGS = [
    ("iid", {"partition": "iid"}),
    ("dirichlet 0.1", {"partition": "dirichlet", "alpha": 0.1}),
    ("2 shards/client", {"partition": "shards", "shards_per_client": 2}),
]
OPTIMIZERS = [
    ("fedavg", {"server_opt": "fedavg"}),
    ("fedavgm", {"server_opt": "fedavgm", "server_lr": 0.5}),
    ("fedadam", {"server_opt": "fedadam", "server_lr": 0.03}),
]


def main(rounds: int = 10, seed: int = 0) -> dict[tuple[str, str], float]:
    results: dict[tuple[str, str], float] = {}
    print(f"{'partition':<18}" + "".join(f"{name:>10}" for name, _ in OPTIMIZERS))
    for pname, pset in SETTINGS:
        row = []
        for oname, oset in OPTIMIZERS:
            cfg = RunConfig.from_flat({"rounds": rounds, "seed": seed, "local_epochs": 2.0, **pset, **oset})
            acc = Simulation(cfg).run().metrics["final"]["accuracy"]
            results[(pname, oname)] = acc
            row.append(acc)
        print(f"{pname:<18}" + "".join(f"{a:>10.4f}" for a in row))
    return results


if __name__ == "__main__":
    main()
