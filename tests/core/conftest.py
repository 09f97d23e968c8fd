"""Core tests use small tensors: one intra-op thread avoids spin-waiting when the machine is busy."""

import torch

torch.set_num_threads(1)
