"""Image classification: the recipe (config), data, the training engine and its QAT variant,
evaluation, prediction and the embedded demo.

Nothing is imported here: each module is imported where it is used, so that the command
line's ``--help`` costs about an ``import torch``.
"""
