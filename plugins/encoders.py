"""Shared building blocks of the built-in methods: the EHR LSTM encoder, the ResNet34 CXR encoder.

Both follow MedFuse (Hayat et al., 2022): the EHR encoder is a stack of single-layer
``nn.LSTM``\\ s whose feature is the last layer's hidden state at each stay's final hour followed
by dropout; the CXR encoder is torchvision's ResNet34 without its ``fc`` (a 512-d feature). The
state dicts of these two classes are what the pretraining stages produce and what the fusion
methods load, so every method must build its encoders from here.

Example:
    >>> from fusebench.specs import ModelConfig
    >>> encoder = EHREncoder.from_config(ModelConfig(task="phenotyping", num_classes=25))
    >>> encoder.feature_dim
    256
"""

from __future__ import annotations

import pickle
import urllib.error
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import torch
from torch import nn
from torch.nn import functional as F

from fusebench.errors import FusebenchError
from fusebench.specs import ModelConfig

__all__ = [
    "CXR_STAGE",
    "EHR_STAGE",
    "IHM",
    "IMAGENET",
    "PHENOTYPING",
    "CXREncoder",
    "EHREncoder",
    "cxr_feature_dim",
    "imagenet_weights_file",
    "init_medfuse_",
    "load_encoder_state",
    "medfuse_2022_hparams",
    "resolve_cxr_weights",
]

IHM = "in-hospital-mortality"
PHENOTYPING = "phenotyping"
CXR_STAGE = "cxr-radiology"
EHR_STAGE = "ehr-uni"
IMAGENET = "imagenet"  # --cxr-weights imagenet: torchvision's ResNet34 IMAGENET1K_V1, as the original

# The published scripts' recipe; lr is tuned per method and task (reference section 2.6).
_RECIPE: dict[str, Any] = {
    "batch_size": 16,
    "epochs": 50,
    "betas": (0.9, 0.9),  # the original passes its beta_1 flag as beta_2
    "patience": 15,
    "lr_patience": 10,
    "lr_factor": 0.5,
}


def medfuse_2022_hparams(
    ihm_lr: float, phenotyping_lr: float, *, constant_lr: bool = False,
    **extra: Mapping[str, Any],
) -> dict[str, dict[str, Any]]:
    """The "medfuse-2022" recipe per task with the method's tuned learning rates.

    Args:
        ihm_lr: learning rate for in-hospital mortality (also the default for other tasks).
        phenotyping_lr: learning rate for phenotyping.
        constant_lr: no ReduceLROnPlateau (``lr_factor`` 1.0): the original's MMTM and DAFT
            trainers never step their schedulers.
        extra: per-task additional keys, e.g. ``{"phenotyping": {"layer_after": 3}}``.

    Returns:
        ``MethodSpec.hparams``: entries for ``"*"``, in-hospital mortality and phenotyping.
    """
    recipe = {**_RECIPE, "lr_factor": 1.0} if constant_lr else _RECIPE
    table = {
        "*": {**recipe, "lr": ihm_lr},
        IHM: {**recipe, "lr": ihm_lr},
        PHENOTYPING: {**recipe, "lr": phenotyping_lr},
    }
    for task, values in extra.items():
        table.setdefault(task, dict(recipe)).update(values)
    return table


def init_medfuse_(module: nn.Module) -> None:
    """MedFuse's EHR initialisation, in place: xavier-uniform input and Linear weights,
    orthogonal hidden-to-hidden weights, zero biases."""
    for sub in module.modules():
        if isinstance(sub, nn.Linear):
            nn.init.xavier_uniform_(sub.weight)
            if sub.bias is not None:
                nn.init.zeros_(sub.bias)
        elif isinstance(sub, nn.LSTM):
            for name, parameter in sub.named_parameters():
                if name.startswith("weight_ih"):
                    nn.init.xavier_uniform_(parameter)
                elif name.startswith("weight_hh"):
                    nn.init.orthogonal_(parameter)
                else:
                    nn.init.zeros_(parameter)


class EHREncoder(nn.Module):
    """Stacked single-layer LSTMs over the padded EHR series.

    Args:
        input_dim: features per hourly bin.
        hidden: hidden size of every LSTM.
        layers: number of stacked LSTMs.
        dropout: dropout on the final feature.
    """

    def __init__(self, input_dim: int, hidden: int, layers: int, dropout: float) -> None:
        super().__init__()
        sizes = [input_dim] + [hidden] * layers
        self.layers = nn.ModuleList(
            nn.LSTM(sizes[i], hidden, batch_first=True) for i in range(layers)
        )
        self.dropout = nn.Dropout(dropout)
        self.feature_dim = hidden
        init_medfuse_(self)

    @classmethod
    def from_config(cls, config: ModelConfig) -> EHREncoder:
        """The encoder at ``config``'s sizes."""
        return cls(config.ehr_input_dim, config.ehr_hidden, config.ehr_layers, config.dropout)

    def sequence(self, ehr: torch.Tensor, lengths: torch.Tensor, stop: int) -> torch.Tensor:
        """Output (B, T, hidden) of the first ``stop`` layers, zero after each length."""
        return _run_by_length(self.layers[:stop], ehr, lengths)

    def features_from(self, sequence: torch.Tensor, lengths: torch.Tensor, start: int) -> torch.Tensor:
        """Feature (B, hidden) after running layers ``start:`` over a padded sequence: the last
        layer's output at each stay's final step."""
        if start >= len(self.layers):
            raise FusebenchError(f"EHR encoder has {len(self.layers)} layers, none after {start}: "
                                 "set ehr_layers >= 2")
        output = _run_by_length(self.layers[start:], sequence, lengths)
        final_step = (lengths.to(output.device) - 1).clamp(min=0)
        return self.dropout(output[torch.arange(len(output), device=output.device), final_step])

    def forward(self, ehr: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """Feature (B, hidden): the last layer's output at each stay's final step, after dropout."""
        return self.features_from(ehr, lengths, start=0)


# Stays per group on the CPU; a GPU runs the batch as one group (splitting serialises its steps).
CPU_ROWS_PER_LENGTH_GROUP = 4


def _run_by_length(layers: Sequence[nn.LSTM], sequence: torch.Tensor,
                   lengths: torch.Tensor) -> torch.Tensor:
    """Output (B, T, hidden) of ``layers`` over the padded ``sequence``, zero after each length.

    A unidirectional LSTM's output at step t never depends on later steps, so each stay's
    outputs up to its length equal those of the original's packed run whatever padding follows.
    That lets the batch run padded, on the fused kernels, in groups of stays of similar length
    each cut to its own longest stay: the same values and gradients as one packed batch, and
    2.8-3.5x faster than it on a 2-core CPU for whole-stay phenotyping batches (padding all to
    the batch's longest stay would waste most steps; tests/benchmarks/bench_train_step.py).
    """
    device, steps = sequence.device, sequence.shape[1]
    rows = CPU_ROWS_PER_LENGTH_GROUP if device.type == "cpu" else len(sequence)
    groups = _length_groups(lengths.cpu(), rows)
    outputs = []
    for group in groups:
        longest = int(lengths[group].max())
        group_output = sequence[group.to(device), :longest]
        for layer in layers:
            group_output, _ = layer(group_output)
        outputs.append(F.pad(group_output, (0, 0, 0, steps - longest)))
    output = torch.cat(outputs)[torch.argsort(torch.cat(groups)).to(device)]
    valid = torch.arange(steps, device=device) < lengths.to(device)[:, None]
    return output * valid.unsqueeze(2)


def _length_groups(lengths: torch.Tensor, rows: int) -> list[torch.Tensor]:
    """Row indices by ascending length, ``rows`` at a time; a group as long as the one before
    joins it (no padding is added, and fixed-length batches such as 48-hour IHM stay whole)."""
    groups: list[torch.Tensor] = []
    for group in torch.split(torch.argsort(lengths, stable=True), rows):
        if groups and lengths[group].max() == lengths[groups[-1]].max():
            groups[-1] = torch.cat([groups[-1], group])
        else:
            groups.append(group)
    return groups


def cxr_feature_dim(depth: int) -> int:
    """Channels of ResNet34's feature map after layer ``depth`` (0: after the stem)."""
    return 64 * 2 ** max(depth - 1, 0)


class CXREncoder(nn.Module):
    """torchvision ResNet34 up to layer ``depth`` (4: the whole network without ``fc``).

    Layers after ``depth`` are not constructed. Parameter names are torchvision's, so ImageNet
    weights and the ``cxr-radiology`` stage's state dict load directly.

    Args:
        depth: last residual stage built, 0-4.
        weights_file: optional local file with torchvision ImageNet ResNet34 weights; without
            it the network keeps torchvision's random initialisation. Never downloaded.
    """

    def __init__(self, depth: int = 4, weights_file: Path | None = None) -> None:
        super().__init__()
        if not 0 <= depth <= 4:
            raise FusebenchError(f"layer_after must be within 0-4, got {depth}")
        import torchvision  # 1.5 s to import: only when a CNN is built

        network = torchvision.models.resnet34(weights=None)
        if weights_file is not None:
            _load_imagenet(network, Path(weights_file))
        self.conv1, self.bn1, self.relu, self.maxpool = (
            network.conv1, network.bn1, network.relu, network.maxpool
        )
        for index in range(1, depth + 1):
            setattr(self, f"layer{index}", getattr(network, f"layer{index}"))
        self.depth = depth
        self.feature_dim = cxr_feature_dim(depth)
        self.source = f"imagenet:{Path(weights_file).name}" if weights_file else "random"

    def feature_map(self, images: torch.Tensor) -> torch.Tensor:
        """The (B, feature_dim, h, w) map after layer ``depth``."""
        out = self.maxpool(self.relu(self.bn1(self.conv1(images))))
        for index in range(1, self.depth + 1):
            out = getattr(self, f"layer{index}")(out)
        return out

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Global-average-pooled feature (B, feature_dim)."""
        return self.feature_map(images).mean(dim=(2, 3))


def _load_imagenet(network: nn.Module, path: Path) -> None:
    try:
        network.load_state_dict(_read_state(path))
    except RuntimeError as error:
        raise FusebenchError(f"{path}: does not fit torchvision resnet34 "
                             f"({str(error).splitlines()[-1].strip()})") from error


def _read_state(path: Path) -> dict[str, torch.Tensor]:
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except (OSError, RuntimeError, EOFError, ValueError, pickle.UnpicklingError) as error:
        raise FusebenchError(f"{path}: cannot read ResNet34 weights ({error}); pass a torchvision "
                             "resnet34 state dict file or omit --cxr-weights") from error
    if not isinstance(state, Mapping) or "conv1.weight" not in state:
        raise FusebenchError(f"{path}: not a torchvision resnet34 state dict (no conv1.weight); "
                             "pass the file saved by torch.save(resnet34(...).state_dict())")
    return dict(state)


def imagenet_weights_file() -> Path:
    """torchvision's ImageNet ResNet34 weights (``IMAGENET1K_V1``, what the original's
    ``pretrained=True`` loads) in torch's hub cache, downloaded on the first call.

    The download goes through torchvision's weights API: into ``$TORCH_HOME/hub/checkpoints``
    under a temporary name, checked against the SHA-256 prefix in the file name, then renamed.

    Raises:
        FusebenchError: the file is not cached and cannot be downloaded (e.g. offline).
    """
    import torchvision

    weights = torchvision.models.ResNet34_Weights.IMAGENET1K_V1
    cached = Path(torch.hub.get_dir()) / "checkpoints" / Path(urlparse(weights.url).path).name
    if cached.is_file():
        return cached
    try:
        weights.get_state_dict(progress=True, check_hash=True)
    except (urllib.error.URLError, OSError, RuntimeError) as error:
        reason = getattr(error, "reason", None) or error
        raise FusebenchError(f"cannot download the ImageNet ResNet34 weights from {weights.url} "
                             f"({reason}); offline, pass --cxr-weights PATH with a torchvision "
                             "resnet34 state dict file") from error
    return cached


def resolve_cxr_weights(value: str | Path | None) -> Path | None:
    """The weights file meant by ``--cxr-weights``: None, a local file, or ``"imagenet"``
    (:func:`imagenet_weights_file`, downloaded on request only)."""
    if value is None:
        return None
    if str(value) == IMAGENET:
        return imagenet_weights_file()
    path = Path(value)
    if not path.is_file():
        raise FusebenchError(f"--cxr-weights {value}: no such file; pass a torchvision resnet34 "
                             f"state dict file or '{IMAGENET}' to download ImageNet's")
    return path


def load_encoder_state(encoder: nn.Module, config: ModelConfig, stage: str) -> str:
    """Load the ``stage`` weights of ``config.pretrained`` into ``encoder`` if present.

    Keys of layers the encoder did not build (e.g. ResNet ``layer4`` for DAFT at layer 3) are
    ignored; any other mismatch is an error.

    Returns:
        How the encoder was initialised, for ``model.init_info``: ``"pretrained:<stage>"``, or
        the encoder's own ``source`` (``"random"``/``"imagenet:<file>"``) when absent.
    """
    state = config.pretrained.get(stage)
    if state is None:
        return getattr(encoder, "source", "random")
    own = encoder.state_dict()
    missing = sorted(set(own) - set(state))
    if missing:
        raise FusebenchError(f"pretraining stage {stage!r} weights lack {missing[0]!r} "
                             f"({len(missing)} keys missing); delete the stage cache and rerun")
    try:
        encoder.load_state_dict({key: state[key] for key in own})
    except RuntimeError as error:
        raise FusebenchError(f"pretraining stage {stage!r} weights do not fit the model's "
                             f"configuration ({str(error).splitlines()[-1].strip()})") from error
    return f"pretrained:{stage}"
