"""plasticrl: continual reinforcement learning and the study of loss of plasticity.

The repository's folders are this package's subpackages: ``plasticrl.agents``,
``plasticrl.networks``, ``plasticrl.envs``, ``plasticrl.buffers``,
``plasticrl.interventions``, ``plasticrl.supervised`` and ``plasticrl.benchmarks``.
"""

__version__ = "0.1.0"
