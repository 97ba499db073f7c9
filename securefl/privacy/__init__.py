"""Differential privacy: DP-SGD on Opacus, DP-FedAvg maths, the typed DP vocabulary
(:mod:`.events`), accountants behind one interface (:mod:`.accounting`), the one
place a budget becomes a noise multiplier (:mod:`.calibration`), the ledger and
secure noise."""
