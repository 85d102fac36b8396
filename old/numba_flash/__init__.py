"""numba_flash: FlashAttention forward and backward as Numba CUDA kernels.

Attention is slow because of memory traffic, not arithmetic: the kernels keep tiles of Q, K and V
in shared memory, run the online softmax there and never write the N x N score matrix to HBM.
"""

from . import backend  # first: decides GPU or simulator before numba.cuda is imported
from . import reference
from .api import flash_attention, flash_attention_backward, flash_attention_varlen, flash_attention_varlen_backward
from .philox import dropout_mask, new_seed
from .config import BlockConfig, TensorCoreConfig, default_config

__version__ = "0.1.0"
BACKEND = backend.BACKEND

__all__ = [
    "BACKEND",
    "BlockConfig",
    "TensorCoreConfig",
    "default_config",
    "flash_attention",
    "flash_attention_backward",
    "flash_attention_varlen",
    "flash_attention_varlen_backward",
    "dropout_mask",
    "new_seed",
    "reference",
]
