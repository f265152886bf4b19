"""PyTorch's own tools on the library's models: torch.ao dynamic quantisation, the default
(dynamo) ONNX exporter."""
from __future__ import annotations

import warnings

import pytest
import torch

import efficientmod

pytestmark = pytest.mark.clients


@pytest.mark.parametrize("name", ["efficientmod_xxs", "efficientvit_m0", "mobilevitv2_050"])
def test_quantize_dynamic_on_a_deployed_model(name):
    model = efficientmod.deploy(efficientmod.create_model(name).eval())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.ao's deprecation notice
        quantized = torch.ao.quantization.quantize_dynamic(model, {torch.nn.Linear}, dtype=torch.qint8)
    x = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        reference, out = model(x), quantized(x)
    assert any(type(m).__module__.startswith("torch.ao.nn.quantized") for m in quantized.modules())
    assert torch.nn.functional.cosine_similarity(out.flatten(), reference.flatten(), dim=0) > 0.95  # int8 weights


@pytest.mark.slow  # the dynamo exporter: ~20 s on one core
def test_dynamo_onnx_export_of_the_undeployed_efficientvit():
    """torch.onnx.export(dynamo=True), torch's default exporter, on the training-form
    EfficientViT (its attention through scaled_dot_product_attention), run by ONNX Runtime."""
    import onnxruntime

    model = efficientmod.create_model("efficientvit_m0").eval()
    x = torch.randn(2, 3, 224, 224)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        program = torch.onnx.export(model, (x,), dynamo=True, verbose=False)
    session = onnxruntime.InferenceSession(program.model_proto.SerializeToString(),
                                           providers=["CPUExecutionProvider"])
    (out,) = session.run(None, {session.get_inputs()[0].name: x.numpy()})
    with torch.no_grad():
        expected = model(x)
    torch.testing.assert_close(torch.from_numpy(out), expected, rtol=1e-4, atol=1e-4 * expected.abs().max().item())
