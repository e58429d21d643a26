"""nclab: a lab for neural collapse under cross-entropy and label smoothing.

Implements the study of Guo, Andriopoulos, Zhao, Dong, Ling, Ross,
"Cross Entropy versus Label Smoothing: A Neural Collapse Perspective" (arXiv 2402.03979, TMLR 2025).
"""

__version__ = "0.1.0"
