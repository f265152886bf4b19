"""Model families; importing this package registers every variant."""
from efficientmod.models import (  # noqa: F401  (register the variants)
    ablations,  # noqa: F401  (adds the ablation blocks)
    efficientmod,  # noqa: F401  (registers the variants)
    efficientvit,
    mobilevitv2,
)
from efficientmod.models.registry import create_model, list_models, model_info

__all__ = ["create_model", "list_models", "model_info"]
