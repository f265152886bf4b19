"""efficientmod: efficient vision backbones (EfficientMod, EfficientViT, MobileViTv2),
from paper to deployment."""
from efficientmod.checkpoint import from_pretrained, load_checkpoint
from efficientmod.models import create_model, list_models, model_info
from efficientmod.deploy import deploy

__version__ = "0.1.0"
__all__ = ["create_model", "list_models", "model_info", "load_checkpoint", "from_pretrained", "deploy"]
