"""Model families; importing this package registers every variant."""
from efficientmod.models import efficientmod  # noqa: F401  (registers the variants)
from efficientmod.models import ablations  # noqa: F401  (adds the ablation blocks)
from efficientmod.models import efficientvit, mobilevitv2  # noqa: F401  (register the variants)
from efficientmod.models.registry import create_model, list_models, model_info

__all__ = ["create_model", "list_models", "model_info"]
