"""Differential privacy: DP-SGD on Opacus, DP-FedAvg, accountants, the ledger and secure noise."""
