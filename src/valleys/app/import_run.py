"""``valleys import``: a network trained by other code becomes a run folder every command accepts.

The checkpoint (a PyTorch ``state_dict`` file, a safetensors file, a Hugging Face ``save_pretrained`` folder, a
Lightning ``.ckpt``; see :func:`valleys.core.foreign.read_state_dict`, which never unpickles code) is loaded
into the model the run's settings build (``--model``, usually the user's factory), on the run's data
(``--data`` or ``--dataset``). The folder gets what ``valleys train`` writes for an SGD run: ``config.json``
(its ``imported`` setting names the checkpoint; ``method`` is ``sgd``: one network, evaluated as it is),
``model.safetensors`` (with the architecture's signature) and ``results.json``; with ``--posterior``, a SWAG
state saved by valleys' callbacks, it is a ``swag`` run (``posterior.safetensors``). ``evaluate``, ``plane``,
``path``, ``rays``, ``sharpness``, ``landscape``, ``connect`` and ``train --init`` read it like any run.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from ..core.checkpoint import CheckpointError, model_signature, save_checkpoint, write_json
from ..core.foreign import load_foreign_weights, read_swag_state
from ..errors import InputError
from .config import TrainConfig, write_run_config
from .evaluate import evaluate_run
from .folders import output_guard, prepare_run_dir
from .run_data import build_run_model, load_splits, with_sources

__all__ = ["import_checkpoint", "import_config_from_flags"]


def import_checkpoint(
    checkpoint: str | Path,
    cfg: TrainConfig,
    out: str | Path,
    *,
    posterior: str | Path | None = None,
    overwrite: bool = False,
    progress: bool = True,
) -> dict[str, Any]:
    """Make the run folder ``out`` from the weights in ``checkpoint`` and the settings ``cfg`` (model, data,
    adapter; ``method`` becomes ``sgd``); returns its ``results.json``. With ``posterior`` (a SWAG state saved
    by valleys: a run's ``posterior.safetensors``, ``valleys.hf.SWAGCallback.save``, or a Lightning checkpoint
    holding ``valleys.lightning.SWAGCallback``) the run is a ``swag`` run over it, evaluated by its Bayesian
    model average. Every check (the folder, the data, the model, the checkpoint's keys and shapes, the
    posterior's size) runs before anything is written, and a checkpoint inside ``out`` is refused
    (``--overwrite`` would delete what is being read)."""
    checkpoint, out = Path(checkpoint), Path(out)
    if not checkpoint.exists():
        raise CheckpointError(f"{checkpoint} does not exist")
    src, dst = checkpoint.resolve(), out.resolve()
    for given in [src] + ([Path(posterior).resolve()] if posterior is not None else []):
        if given == dst or dst in given.parents:
            raise InputError(f"--out {out} holds {given}, which is being imported; import into another folder")
    swag = read_swag_state(posterior) if posterior is not None else None
    cfg = dataclasses.replace(cfg, method="swag" if swag is not None else "sgd", imported=str(src))
    if swag is not None:
        cfg.rank = int(swag["rank"])  # a method setting (a field the method registry adds)
    cfg = cfg.resolved()
    prepare_run_dir(out, overwrite=overwrite, create=False)
    splits = load_splits(cfg)
    cfg = with_sources(cfg, splits)
    model = load_foreign_weights(build_run_model(cfg, splits), checkpoint)
    if swag is not None:
        from ..methods.swag import SWAG

        try:
            SWAG(model, rank=cfg.rank).load_state_dict(swag)  # its size must be the model's trainable weights
        except ValueError as e:
            raise CheckpointError(f"--posterior {posterior} does not fit the model: {e}") from None
    with output_guard(out):
        prepare_run_dir(out, overwrite=overwrite)
        header = {"config": dataclasses.asdict(cfg), "signature": model_signature(model)}
        write_run_config(out, cfg)
        save_checkpoint(out / "model.safetensors", {"model": model.state_dict()}, {**header, "kind": "model"})
        if swag is not None:
            save_checkpoint(out / "posterior.safetensors", {"swag": swag}, {**header, "kind": "swag"})
        results = evaluate_run(out, splits=splits, progress=progress, write=False)
        results.pop("eval_s", None)
        results["imported_from"] = str(src)
        write_json(out / "results.json", results)
    return results


def import_config_from_flags(flags: dict[str, Any]) -> TrainConfig:
    """The settings of ``valleys import`` from its flags (``{setting: value}``, ``None``: not given)."""
    if flags.get("model") is None:
        raise InputError("--model is needed: the architecture the checkpoint's weights belong to (module:factory)")
    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    return TrainConfig(**{k: v for k, v in flags.items() if k in fields and v is not None})
