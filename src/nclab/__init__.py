"""nclab: a lab for neural collapse under cross-entropy and label smoothing.

Implements the study of Guo, Andriopoulos, Zhao, Dong, Ling, Ross,
"Cross Entropy versus Label Smoothing: A Neural Collapse Perspective" (arXiv 2402.03979, TMLR 2025).
"""

__version__ = "0.1.0"

#: Where the documentation (the ``docs/*.md`` files that help texts and docstrings name) is
#: read online; the same address as ``[project.urls]`` in pyproject.toml (a placeholder until
#: the repository is published).
DOCS_URL = "https://github.com/nclab/nclab/tree/main/docs"
