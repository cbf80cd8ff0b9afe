"""Where the MNIST demo runs: its ``device`` option parsed and checked to exist here (:func:`resolve_device`),
``cuda`` without an index pinned to one GPU per process, and what the demo's JSON reports say of the device.

Below the demo's options and runs: :class:`~tensortrain.demo_config.DemoConfig` parses its ``device`` string
when built, the CLI checks ``--device`` with :func:`resolve_device` before anything is loaded, and one run
(:mod:`tensortrain.demo`) or many (:mod:`tensortrain.demo_seeds`) resolve, pin and report the device they use.
"""

from __future__ import annotations

import os

import torch

__all__ = ["resolve_device"]


def parse_device(spec: object) -> torch.device | None:
    """``spec`` as a ``torch.device`` (None for ``"auto"``), or a TypeError/ValueError saying what is wrong."""
    if not isinstance(spec, str):
        raise TypeError(f"device must be a str ('auto', 'cpu', 'cuda', 'cuda:0', ...), got {spec!r}")
    if spec == "auto":
        return None
    try:
        return torch.device(spec)
    except RuntimeError as err:  # torch's "Invalid device string: 'cuda:x'", "Expected one of cpu, cuda, ..."
        raise ValueError(
            f"device {spec!r} is not a device: expected 'auto' or a torch device such as 'cpu', 'cuda' or "
            f"'cuda:0' (torch: {err})"
        ) from None


def _available_devices() -> list[str]:
    """The devices this process can compute on: the CPU, each CUDA GPU, and MPS (Apple GPUs) when present."""
    devices = ["cpu"] + [f"cuda:{i}" for i in range(torch.cuda.device_count())]
    return devices + (["mps"] if torch.backends.mps.is_available() else [])


def resolve_device(spec: str) -> torch.device:
    """The device a demo's ``device`` option names, checked to exist here.

    Args:
        spec: ``"auto"`` (``"cuda"`` when CUDA is available, else ``"cpu"``) or any ``torch.device`` string
            (``"cpu"``, ``"cuda"``, ``"cuda:1"``, ``"mps"``).

    Returns:
        The device (``cuda`` without an index stays without one: the current GPU, or under torchrun each
        process's own).

    Raises:
        TypeError: ``spec`` is not a str.
        ValueError: torch cannot parse ``spec``; it names CUDA and CUDA is not available, or a GPU index past
            the last; it names another device this process cannot allocate on, or ``meta`` (which holds no
            values). The message lists the devices that are available.

    Example:
        >>> resolve_device("cpu")
        device(type='cpu')
    """
    device = parse_device(spec)
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    available = ", ".join(_available_devices())
    if device.type == "cuda":
        if not torch.cuda.is_available():
            why = (
                f"this torch build ({torch.__version__}) has no CUDA support"
                if torch.version.cuda is None
                else "no CUDA GPU or driver was found"
            )
            raise ValueError(f"device {spec!r}: CUDA is not available ({why}); available: {available}")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ValueError(
                f"device {spec!r}: there is no GPU {device.index} ({torch.cuda.device_count()} CUDA "
                f"device(s)); available: {available}"
            )
        return device
    if device.type == "meta":
        raise ValueError(f"device {spec!r} holds no values (shapes only): the demo cannot train on it")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError(f"device {spec!r}: MPS is not available; available: {available}")
    try:  # any other device type: usable if a tensor can live there
        torch.empty(0, device=device)
    except Exception as err:  # AssertionError "Torch not compiled with XPU enabled", NotImplementedError, ...
        # the first sentence: a missing backend's NotImplementedError goes on with pages of dispatch keys
        reason = (str(err).strip() or type(err).__name__).splitlines()[0].split(". ")[0]
        raise ValueError(
            f"device {spec!r} is not available here ({reason}); available: {available}"
        ) from None
    return device


def on_rank(device: torch.device, rank: int, world: int) -> torch.device:
    """``cuda`` without an index pinned to one GPU, so that results.json names the GPU used: the current one,
    or under torchrun the process's own (``LOCAL_RANK``, else its rank, modulo the number of GPUs)."""
    if device.type != "cuda" or device.index is not None:
        return device
    if world == 1:
        return torch.device("cuda", torch.cuda.current_device())
    local = int(os.environ.get("LOCAL_RANK", rank))
    return torch.device("cuda", local % torch.cuda.device_count())


def device_fields(device: torch.device) -> dict[str, str | None]:
    """What the JSON reports say of the device: its name (``"cpu"``, ``"cuda:0"``) and the GPU's model."""
    return {
        "device": str(device),
        "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
    }
