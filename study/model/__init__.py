"""The network: Med3D (MedicalNet) 3D ResNet segmentation, MedicalNet weights, and the study's
model made from its configuration."""

from study.model.build import cpu_state, initial_state, model_from
from study.model.network import MedicalNetSegmentation, recalibrate_batchnorm
from study.model.weights import file_digest, load_medicalnet_weights, read_state_dict, state_digest

__all__ = [
    "MedicalNetSegmentation",
    "cpu_state",
    "file_digest",
    "initial_state",
    "load_medicalnet_weights",
    "model_from",
    "read_state_dict",
    "recalibrate_batchnorm",
    "state_digest",
]
