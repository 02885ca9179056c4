"""Models built from short spec strings ("linear", "mlp:784-256-10:relu", "cnn:lenet", "lstm:64x2").

`build_model` turns a spec (or a user's own nn.Module) into a module mapping (N, *input_shape)
to (N, output_dim); `MODEL_FAMILIES` describes each family's syntax for `gdlab list`.
"""

from gdlab.models.spec import MODEL_FAMILIES, ModelSpec, parse_model_spec
from gdlab.models.zoo import build_model, count_parameters

__all__ = ["MODEL_FAMILIES", "ModelSpec", "build_model", "count_parameters", "parse_model_spec"]
