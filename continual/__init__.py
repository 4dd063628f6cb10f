"""hypercert.continual: certifiably robust continual learning with hypernetworks.

Planned (see the project issues): a hypernetwork that emits every target-network weight from a
task embedding (point or :class:`intervals.Interval`), functional target networks (MLP, small CNN,
ResNet-18), and the methods HNET, HyperMask, HINT and SHIELD on Permuted/Rotated/Split MNIST,
Split CIFAR-100 and TinyImageNet. Nothing is implemented here yet.
"""

__all__: list[str] = []
