"""Bring your own model and data: a user file securefl imports, never edits.

Every securefl command takes ``--model FILE:CALLABLE`` and ``--dataset FILE:CALLABLE``:

    securefl train --model examples/byo/model_and_data.py:relu_cnn \\
                   --dataset examples/byo/model_and_data.py:digits_images --dp sample --epsilon 3 ...

``relu_cnn`` is a model factory: securefl calls it with the keyword arguments it
declares among ``input_shape``, ``num_classes`` and ``hidden`` (here the first two,
read from the data) under the run's seed, and checks the model it returns (output
size, layers Opacus can train under ``--dp sample``, size under ``--protect ckks``).

``digits_images`` returns one set ``(X, y)``; securefl splits it into train and test
with the run's seed and ``--test-fraction``. Return ``(train, test)`` to fix the split
yourself; a ``torch.utils.data.Dataset`` of ``(x, y)`` pairs works in place of tensors.
Integer labels make a classification task, floating-point targets a regression.

Run this file to train it through the Python API instead (the same objects, no strings):

    python examples/byo/model_and_data.py
"""

from __future__ import annotations

import torch
from torch import nn


def relu_cnn(input_shape: tuple[int, ...] = (1, 8, 8), num_classes: int = 10) -> nn.Module:
    """A small ReLU convnet for (C, H, W) images: two conv layers, GroupNorm (BatchNorm
    would mix the examples of a batch, which DP-SGD cannot allow), a ReLU head."""
    c, h, w = input_shape
    flat = 16 * ((h + 1) // 2) * ((w + 1) // 2)
    return nn.Sequential(
        nn.Conv2d(c, 8, 3, padding=1),
        nn.GroupNorm(2, 8),
        nn.ReLU(),
        nn.Conv2d(8, 16, 3, padding=1, stride=2),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(flat, 32),
        nn.ReLU(),
        nn.Linear(32, num_classes),
    )


def digits_images() -> tuple[torch.Tensor, torch.Tensor]:
    """scikit-learn's 8x8 digits (shipped with the package: nothing is downloaded) as
    image tensors ``X`` of shape (1797, 1, 8, 8) in [0, 1] and integer labels ``y``."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    x = torch.tensor(digits.data / 16.0, dtype=torch.float32).reshape(-1, 1, 8, 8)
    return x, torch.tensor(digits.target, dtype=torch.long)


def main() -> None:
    """The Python API takes the factory and the data directly."""
    from securefl import RunConfig, Simulation

    config = RunConfig.from_flat({"clients": 5, "rounds": 5, "partition": "iid", "seed": 0})
    result = Simulation(config, model=relu_cnn, data=digits_images()).run()
    final = result.metrics["final"]
    print(f"model {result.metrics['config']['model']}: accuracy {final['accuracy']:.3f} after {config.server.rounds} rounds")


if __name__ == "__main__":
    main()
