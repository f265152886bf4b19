"""Model families; importing this package registers every variant."""
from efficientmod.models import efficientmod  # noqa: F401  (registers the variants)
from efficientmod.models.registry import create_model, list_models, model_info

__all__ = ["create_model", "list_models", "model_info"]
