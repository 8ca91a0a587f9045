"""Re-parameterization: the `RepConv2d` primitive, fusion, and verification; BatchNorm folding."""
from .conv import REP_INITS, RepConv2d, fold_bn
from .fold import fold_batchnorm
from .fuse import has_branches, reparameterize, verify_fusion
from .repify import repify

__all__ = ["REP_INITS", "RepConv2d", "fold_bn", "fold_batchnorm", "reparameterize", "verify_fusion", "has_branches", "repify"]
