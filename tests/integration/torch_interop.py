"""The Python side of the export/import test: PyTorch's own view of a file
`tandem export` wrote, and a file PyTorch writes for `tandem train --init`.

Usage: torch_interop.py ARCH EXPORTED RESAVED FRESH DATA_DIR
Prints one JSON object: the test accuracy of EXPORTED's parameters in
PyTorch's own model, tandem's state digest of EXPORTED and of FRESH (a seeded
new model that this script saves), after re-saving EXPORTED as RESAVED.
"""
import gzip
import hashlib
import json
import sys

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from blake3_ref import blake3


class Mlp(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(28 * 28, 256)
        self.fc2 = nn.Linear(256, 128)
        self.fc3 = nn.Linear(128, 10)

    def forward(self, x):
        x = F.relu(self.fc1(x.flatten(1)))
        return self.fc3(F.relu(self.fc2(x)))


class Cnn(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 32, 3, padding=1)
        self.conv2 = nn.Conv2d(32, 64, 3, padding=1)
        self.fc1 = nn.Linear(64 * 7 * 7, 128)
        self.fc2 = nn.Linear(128, 10)

    def forward(self, x):
        x = F.max_pool2d(F.relu(self.conv1(x)), 2)
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)
        return self.fc2(F.relu(self.fc1(x.flatten(1))))


def idx(path, offset):
    with gzip.open(path, "rb") as f:
        return np.frombuffer(f.read(), dtype=np.uint8, offset=offset)


def test_accuracy(model, data_dir):
    images = idx(f"{data_dir}/t10k-images-idx3-ubyte.gz", 16).reshape(-1, 1, 28, 28)
    labels = torch.from_numpy(idx(f"{data_dir}/t10k-labels-idx1-ubyte.gz", 8).astype(np.int64))
    x = (torch.from_numpy(images.astype(np.float32)) / 255.0 - 0.2860) / 0.3530
    correct = 0
    with torch.no_grad():
        for i in range(0, len(labels), 1000):
            correct += (model(x[i:i + 1000]).argmax(1) == labels[i:i + 1000]).sum().item()
    return correct / len(labels)


def state_digest(state_dict):
    """tandem's StateDigest (format 3): a SHA-256 over, per tensor, its name, NUL,
    byte count (8 bytes LE), then the BLAKE3 of each 4 MiB piece of its bytes."""
    piece = 4 << 20
    h = hashlib.sha256()
    for name, tensor in state_dict.items():
        data = tensor.detach().contiguous().numpy().tobytes()
        h.update(name.encode() + b"\0" + len(data).to_bytes(8, "little"))
        for offset in range(0, len(data), piece):
            h.update(blake3(data[offset:offset + piece]))
    return h.hexdigest()


def main():
    arch, exported, resaved, fresh, data_dir = sys.argv[1:6]
    torch.set_num_threads(1)
    model = Mlp() if arch == "mlp" else Cnn()
    state = torch.load(exported)
    model.load_state_dict(state, strict=True)
    torch.save(model.state_dict(), resaved)
    torch.manual_seed(123)
    new_model = Mlp() if arch == "mlp" else Cnn()
    torch.save(new_model.state_dict(), fresh)
    print(json.dumps({
        "accuracy": test_accuracy(model, data_dir),
        "digest": state_digest(state),
        "fresh_digest": state_digest(new_model.state_dict()),
    }))


if __name__ == "__main__":
    main()
