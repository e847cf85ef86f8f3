"""Tensor parallelism over torch.distributed: the rank group, how tensors are split, the per-step sync between
rank 0 (scheduler) and the worker ranks, and how the ranks are launched."""
