"""Poisoning: malicious clients against (robust) aggregators.

:mod:`.attacks` (what a malicious client sends), :mod:`.cases` (who is malicious,
what the coalition knows, how it joins a library :class:`~securefl.simulation.Simulation`),
:mod:`.metrics` (main accuracy, attack success), :mod:`.run` (a clean and an
attacked run), :mod:`.bench` (``--suite poisoning``) and :mod:`.commands`
(``securefl attack poison``).
"""
