"""``l0.hard_concrete``: the same :class:`HardConcrete` as :mod:`l0.distributions` (0.6.2's).

Examples
--------
>>> from l0.hard_concrete import HardConcrete
>>> HardConcrete(n_items=4, temperature=0.25, init_mean=0.999)().shape
torch.Size([4])
"""

from l0_core.hard_concrete import hard_concrete_sample, log_alpha_for_prob_active

from .distributions import HardConcrete

__all__ = ["HardConcrete", "hard_concrete_sample", "log_alpha_for_prob_active"]
