"""MedicalNet weights: reading a published checkpoint into the study's network, and file digests."""

from __future__ import annotations

import hashlib
import re
from pathlib import Path
from typing import Any

import torch

from study.config import StudyError, first_line
from study.model.network import ARCHITECTURES, MedicalNetSegmentation


def _checkpoint_depth(keys: set[str]) -> int | None:
    """The MedicalNet depth whose encoder has exactly these block keys, if any."""
    bottleneck = any(re.match(r"layer\d\.\d+\.conv3\.", k) for k in keys)
    blocks = []
    for layer in range(1, 5):
        indices = {int(m.group(1)) for k in keys if (m := re.match(rf"layer{layer}\.(\d+)\.", k))}
        blocks.append(len(indices))
    for depth, (block_name, layout, _) in ARCHITECTURES.items():
        if tuple(blocks) == layout and bottleneck == (block_name == "bottleneck"):
            return depth
    return None


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """The state dict of a MedicalNet checkpoint (``{"state_dict": {"module.conv1.weight": ...}}``)
    or of a bare state dict, ``module.`` prefixes removed; a ``StudyError`` says what is wrong."""
    path = Path(path)
    if not path.is_file():
        raise StudyError(f"weights file {path} does not exist; pass --weights with a MedicalNet .pth")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for corrupt or unsafe pickles
        raise StudyError(
            f"weights file {path} cannot be loaded safely (weights_only=True): {first_line(exc)}"
        ) from exc
    state = checkpoint.get("state_dict", checkpoint) if isinstance(checkpoint, dict) else None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise StudyError(
            f"weights file {path} holds no state dict of tensors; expected MedicalNet's "
            "{'state_dict': {...}} or a bare state dict"
        )
    return {k.removeprefix("module."): v for k, v in state.items()}


def _check_encoder(
    own: dict[str, torch.Tensor], state: dict[str, torch.Tensor], depth: int, path: Path
) -> None:
    """Any encoder key missing, unexpected or of another shape: a ``StudyError`` (another depth or width)."""
    own_encoder = {k for k in own if not k.startswith("conv_seg.")}
    given_encoder = {k for k in state if not k.startswith("conv_seg.")}
    missing = sorted(own_encoder - given_encoder)
    unexpected = sorted(given_encoder - own_encoder)
    mismatched = sorted(k for k in own_encoder & given_encoder if own[k].shape != state[k].shape)
    if missing or unexpected or mismatched:
        found = _checkpoint_depth(given_encoder)
        found_text = f"a ResNet-{found} checkpoint" if found else "not a MedicalNet ResNet"
        detail = (missing or unexpected or mismatched)[0]
        raise StudyError(
            f"weights file {path} does not fit a ResNet-{depth} model ({found_text}; "
            f"{len(missing)} missing, {len(unexpected)} unexpected, {len(mismatched)} "
            f"mismatched keys, e.g. {detail!r}); set model_depth to the checkpoint's depth "
            "and model_width to 1.0"
        )


def _head_note(own: dict[str, torch.Tensor], state: dict[str, torch.Tensor]) -> tuple[bool, str]:
    """Whether the checkpoint's ``conv_seg`` fits ``own``, and what happens to the head."""
    head = {k: v for k, v in state.items() if k.startswith("conv_seg.")}
    own_head = {k: v for k, v in own.items() if k.startswith("conv_seg.")}
    if not head:
        return False, "segmentation head trained afresh (the checkpoint has none)"
    if head.keys() == own_head.keys() and all(head[k].shape == own_head[k].shape for k in head):
        return True, "segmentation head loaded from the checkpoint"
    classes = head.get("conv_seg.6.weight", next(iter(head.values()))).shape[0]
    return False, (
        f"segmentation head trained afresh (the checkpoint's head has {classes} outputs, "
        f"this study needs {own['conv_seg.6.weight'].shape[0]})"
    )


def load_medicalnet_weights(model: MedicalNetSegmentation, path: Path) -> dict[str, Any]:
    """Loads a MedicalNet checkpoint into ``model``; returns missing/unexpected keys and a note
    on the segmentation head.

    A 1-channel ``conv1`` kernel is repeated over the input channels and divided by their
    number, so the response to a constant image is unchanged. MedicalNet ships encoders, so
    ``conv_seg`` is usually absent and trained afresh; a head that fits ``model`` (same
    classes) is loaded, one that does not (a checkpoint fine-tuned for another number of
    classes) is left out and trained afresh.
    """
    state = read_state_dict(path)
    if bad := [k for k, v in state.items() if v.is_floating_point() and not torch.isfinite(v).all()]:
        raise StudyError(
            f"weights {path}: {len(bad)} tensor(s) hold NaN or infinite values ({', '.join(bad[:3])}"
            f"{', ...' if len(bad) > 3 else ''}); the file is damaged or not a trained model"
        )
    conv1 = state.get("conv1.weight")
    expected_in = model.conv1.weight.shape[1]
    if conv1 is not None and conv1.shape[1] == 1 and expected_in != 1:
        state["conv1.weight"] = conv1.repeat(1, expected_in, 1, 1, 1) / expected_in
    own = model.state_dict()
    _check_encoder(own, state, model.depth, Path(path))
    head_fits, head_note = _head_note(own, state)
    if not head_fits:
        state = {k: v for k, v in state.items() if not k.startswith("conv_seg.")}
    model.load_state_dict(state, strict=False)
    return {
        "missing": sorted(set(own) - set(state)),
        "unexpected": sorted(set(state) - set(own)),
        "head": head_note,
    }


def file_digest(path: Path) -> str:
    """SHA-256 hex digest of a file's bytes (identifies weights in cache keys)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def state_digest(state: dict[str, torch.Tensor]) -> str:
    """SHA-256 hex digest of a state dict's names, dtypes, shapes and values, in key order
    (identifies a model in an audit record, whatever file holds it)."""
    digest = hashlib.sha256()
    for name in sorted(state):
        tensor = state[name].detach().cpu().contiguous()
        digest.update(f"{name}:{tensor.dtype}:{tuple(tensor.shape)}".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()
