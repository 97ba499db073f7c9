"""Membership inference: was this record in the training set?

:mod:`.attacks` (loss threshold, reference-calibrated), :mod:`.cases` (members,
non-members, the attacker's population; the target trained plainly or with the
library's DP-SGD), :mod:`.metrics` (AUC, TPR at low FPR), :mod:`.run` (one
evaluation), :mod:`.bench` (``--suite membership``) and :mod:`.commands`
(``securefl attack membership``).
"""
