"""Gradient inversion: reconstructing a client's images from what the server reads.

:mod:`.attacks` (DLG, iDLG, Inverting Gradients, analytic), :mod:`.cases` (one
round's threat model and what each protection releases, through the library's
DP-SGD, DP-FedAvg clipping and distributed noise), :mod:`.metrics` (MSE, PSNR,
SSIM, label accuracy, mean-image baseline), :mod:`.run` (one evaluation),
:mod:`.bench` (``--suite inversion``) and :mod:`.commands` (``securefl attack invert``).
"""
