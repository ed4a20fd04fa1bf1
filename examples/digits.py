"""The reproductions' dataset: scikit-learn's handwritten digits (1,797 8x8 images, 10 classes, shipped inside the
package, nothing downloaded), scaled to [0, 1] and split 75/25, stratified."""

from __future__ import annotations

import numpy as np
import torch
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

#: (train inputs, train labels, test inputs, test labels)
Data = tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]


def load(seed: int = 0) -> Data:
    digits = load_digits()
    x = (digits.data / 16.0).astype(np.float32)
    x_tr, x_te, y_tr, y_te = train_test_split(
        x, digits.target, test_size=0.25, random_state=seed, stratify=digits.target
    )
    return torch.from_numpy(x_tr), torch.from_numpy(y_tr), torch.from_numpy(x_te), torch.from_numpy(y_te)
