"""The settings of a training run (:class:`TrainConfig`) and the JSON files that hold settings (no torch at import).

:class:`TrainConfig` is flat, as ``config.json`` is: the settings every run has (:class:`RunSettings`) and the
settings of every registered method (each method's own settings dataclass, see
:class:`valleys.app.methods.Method`), inserted after ``batch_size``. Registering a method
(:func:`valleys.app.registry.register_method`) adds its settings to :class:`TrainConfig`; nothing here names a
method.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import ConfigError, InputError, MissingFileError
from ..zoo.catalog import DATASETS, INPUT_KINDS, MODEL_INPUTS, MODELS, REGRESSION_DATASETS
from .options import SEED_MAX, check_settings, check_types, settings_fields

if TYPE_CHECKING:  # pragma: no cover
    from ..core.adapter import ModelAdapter

__all__ = [
    "RunSettings",
    "TrainConfig",
    "set_method_settings",
    "method_fields",
    "read_json_object",
    "check_resume_flags",
    "read_epoch_log",
    "check_saved_settings",
    "check_types",
    "settings_from_dict",
    "read_run_config",
    "write_run_config",
    "NOT_FLAGS",
    "FUTURE_SETTINGS",
    "amend",
    "before_amendments",
    "config_from_dict",
    "ConfigError",
    "SEED_MAX",
]


@dataclass
class RunSettings:
    """The settings every training run has, whatever its method (see ``valleys train --help``)."""

    dataset: str = "mnist1d"
    model: str = "cnn1d"
    method: str = "swa"
    epochs: int = 100
    lr: float = 0.1
    momentum: float = 0.9
    wd: float = 5e-4
    batch_size: int = 128
    augment: str = "none"  # training inputs' transforms (valleys.training.augment.AUGMENTATIONS)
    # the registered methods' settings come here (see TrainConfig)
    ood_split: bool = False  # train on the first half of the classes; the rest are OOD
    uci_split: int = 0  # regression: which index_train_<i>/index_test_<i> pair (or diabetes split seed)
    heteroscedastic: bool = True  # regression: per-input variance (else one learned noise variance)
    seed: int = 0
    val_fraction: float = 0.1
    train_subset: int | None = None
    test_subset: int | None = None
    data_root: str | None = None
    device: str = "cpu"
    checkpoint_every: int = 10
    eval_every: int = 1
    # the user's own model and data (see valleys.app.user_code and valleys.app.user_data)
    model_args: dict[str, Any] = field(default_factory=dict)  # keyword arguments of the model factory
    data_args: dict[str, Any] = field(default_factory=dict)  # keyword arguments of the data factory
    task: str | None = None  # classification or regression; None: from the dataset (inferred for user data)
    input: str | None = None  # the model adapter: where the input is (a key, keys "a,b", or an index)
    target: str | None = None  # where the targets are (a key or an index)
    output: str | None = None  # which part of the model's output is the prediction (a key, attribute or index)
    loss: str | None = None  # cross_entropy, gaussian or module:callable (default: the task's)
    init: str | None = None  # start from these weights (a run folder or a checkpoint file)
    imported: str | None = None  # the checkpoint this run's weights were imported from (valleys import)
    model_sha256: str | None = None  # the model factory's file when the run was made
    data_sha256: str | None = None  # the data file (or factory's file) when the run was made
    # changes made by a --resume (after a divergence): {"epoch", "step", "changes": {setting: [old, new]}}
    amendments: list[dict[str, Any]] = field(default_factory=list)


_AFTER = "batch_size"  # the methods' settings follow this field (the order of config.json)
_METHOD_SETTINGS: list[type] = []


@dataclass
class TrainConfig(RunSettings):
    """Every setting of a training run: the fields of :class:`RunSettings` and those of the registered methods'
    settings dataclasses (all have defaults; see ``valleys train --help``)."""

    def __getattr__(self, name: str) -> Any:
        """Reached only for a name that is not a field: the methods' settings are fields added at registration
        (see :func:`set_method_settings`), so type checkers cannot list them."""
        raise AttributeError(f"{type(self).__name__!r} has no setting {name!r}")

    if TYPE_CHECKING:  # a method's resolve() fills its own settings in

        def __setattr__(self, name: str, value: Any) -> None: ...

    @property
    def is_regression(self) -> bool:
        """Whether the dataset is a regression task (Gaussian likelihood): ``task`` when set, else the catalog's."""
        return self.task == "regression" if self.task is not None else self.dataset in REGRESSION_DATASETS

    @property
    def user_model(self) -> bool:
        """Whether ``model`` names the user's factory (``module:name`` or ``file.py:name``)."""
        return ":" in self.model

    @property
    def user_data(self) -> bool:
        """Whether ``dataset`` names the user's data (a factory reference or an ``.npz`` file)."""
        from .user_data import is_user_data

        return is_user_data(self.dataset)

    def adapter(self, task: str | None = None) -> ModelAdapter:
        """How this run's batches and outputs are read (``input``, ``target``, ``output``, ``loss``; see
        :class:`valleys.core.adapter.ModelAdapter`): by default Gaussian NLL on a (mean, variance) head for a
        regression task, cross-entropy on the logits otherwise. ``task`` overrides the run's. Every training
        step and evaluation of the run uses it."""
        from ..core.adapter import ModelAdapter

        regression = task == "regression" if task is not None else self.is_regression
        loss: Any = self.loss or ("gaussian" if regression else "cross_entropy")
        if ":" in loss:
            from .user_code import load_reference

            loss = load_reference(loss, "--loss")
        return ModelAdapter(
            input=_selector(self.input, many=True),
            target=_selector(self.target),
            output=_selector(self.output),
            loss=loss,
            predictive="gaussian" if regression else "classification",
        )

    def resolved(self) -> TrainConfig:
        """A copy with defaults filled in and every value checked; raises :class:`InputError` (a ``ValueError``)
        saying what is wrong."""
        from .registry import get_method

        cfg = dataclasses.replace(self)
        check_types(cfg)
        _check_user_settings(cfg)
        if not cfg.user_data and cfg.dataset not in DATASETS and cfg.dataset not in REGRESSION_DATASETS:
            raise InputError(
                f"unknown dataset {cfg.dataset!r}; valid datasets: "
                f"{', '.join(list(DATASETS) + list(REGRESSION_DATASETS))}, or your own with --data "
                "(file.npz, module:factory or file.py:factory)"
            )
        if cfg.is_regression:
            if not cfg.user_model and not cfg.user_data and cfg.model != "mlp":
                raise InputError(f"regression datasets use --model mlp (a Gaussian-head MLP), got {cfg.model!r}")
            if cfg.ood_split:
                raise InputError("--ood-split is a classification protocol; it does not apply to regression")
        if not cfg.user_model and cfg.model not in MODELS:
            raise InputError(
                f"unknown model {cfg.model!r}; valid models: {', '.join(MODELS)}, or your own factory "
                "(--model module.path:factory or path/to/file.py:factory)"
            )
        needs, gives = MODEL_INPUTS.get(cfg.model, "any"), INPUT_KINDS.get(cfg.dataset)
        if gives is not None and needs not in ("any", gives):
            fits = [m for m, k in MODEL_INPUTS.items() if k in ("any", gives)]
            raise InputError(
                f"model {cfg.model!r} needs {needs}, dataset {cfg.dataset!r} gives {gives}; use "
                f"--model {' or '.join(fits)}"
            )
        method = get_method(cfg.method)
        if not isinstance(cfg.epochs, int) or cfg.epochs < 1:
            raise InputError(f"epochs must be a positive integer, got {cfg.epochs}")
        for name in ("lr", "batch_size", "checkpoint_every", "eval_every"):
            v = getattr(cfg, name)
            if not (isinstance(v, (int, float)) and math.isfinite(v) and v > 0):
                raise InputError(f"{name.replace('_', '-')} must be positive, got {v}")
        if not (math.isfinite(cfg.val_fraction) and 0 <= cfg.val_fraction < 1):
            raise InputError(f"val-fraction must be in [0, 1), got {cfg.val_fraction}")
        if not (math.isfinite(cfg.wd) and cfg.wd >= 0):
            raise InputError(f"wd must be finite and >= 0, got {cfg.wd}")
        from ..training.augment import AUGMENTATIONS

        if cfg.augment not in AUGMENTATIONS:
            raise InputError(f"unknown augment {cfg.augment!r}; valid: {', '.join(AUGMENTATIONS)}")
        if cfg.augment != "none" and cfg.is_regression:
            raise InputError("--augment transforms images and signals of classification datasets; use --augment none")
        if not (math.isfinite(cfg.momentum) and 0 <= cfg.momentum < 1):
            raise InputError(f"momentum must be in [0, 1), got {cfg.momentum}")
        if not 0 <= cfg.seed <= SEED_MAX:
            raise InputError(f"seed must be in [0, 2**63 - 1], got {cfg.seed}")
        if cfg.uci_split < 0:
            raise InputError(f"uci-split must be >= 0, got {cfg.uci_split}")
        for name in ("train_subset", "test_subset"):
            v = getattr(cfg, name)
            if v is not None and v < 1:
                raise InputError(f"{name.replace('_', '-')} must be at least 1, got {v}")
        if cfg.data_root is not None and not cfg.data_root.strip():
            raise InputError("data-root must be a path, got an empty string")
        method.resolve(cfg)  # its own defaults and relations first: its messages say more than a field's rule
        check_settings(cfg, method_fields())
        import torch

        try:
            device = torch.device(cfg.device)
        except RuntimeError:
            raise InputError(f"unknown device {cfg.device!r}; use cpu, cuda or cuda:N") from None
        if device.type == "cuda" and not torch.cuda.is_available():
            raise InputError(f"device {cfg.device!r} requested but CUDA is not available; use --device cpu")
        return cfg


def _selector(text: str | None, many: bool = False) -> Any:
    """An adapter selector from its flag: ``None``, an index (``"0"``), a key, or (``many``) keys ``"a,b"``."""
    if text is None:
        return None
    if text.lstrip("-").isdigit():
        return int(text)
    if many and "," in text:
        return [k.strip() for k in text.split(",") if k.strip()]
    return text


def _check_user_settings(cfg: RunSettings) -> None:
    """The settings of the user's own model and data: references made absolute (a run folder rebuilds them from
    any working folder), the task a known one that fits a built-in dataset, factory arguments only for factories."""
    from .user_code import absolute_reference, split_reference

    if cfg.task is not None and cfg.task not in ("classification", "regression"):
        raise InputError(f"task must be classification or regression, got {cfg.task!r}")
    from .user_data import is_user_data

    if not is_user_data(cfg.dataset):
        if cfg.data_args:
            raise InputError("--data-args are the keyword arguments of a data factory; give --data module:factory")
        builtin_task = "regression" if cfg.dataset in REGRESSION_DATASETS else "classification"
        if cfg.task is not None and cfg.task != builtin_task:
            raise InputError(f"dataset {cfg.dataset!r} is not a {cfg.task} task; drop --task (it is for --data)")
    elif ":" in cfg.dataset:
        cfg.dataset = absolute_reference(cfg.dataset, "--data")
    else:
        if cfg.data_args:
            raise InputError("--data-args are the keyword arguments of a data factory, not of an .npz file")
        cfg.dataset = str(Path(cfg.dataset).resolve())
    if ":" in cfg.model:
        cfg.model = absolute_reference(cfg.model, "--model")
    if cfg.loss is not None:
        if ":" in cfg.loss:
            cfg.loss = absolute_reference(cfg.loss, "--loss")
            split_reference(cfg.loss, "--loss")
        elif cfg.loss not in ("cross_entropy", "gaussian"):
            raise InputError(f"loss must be cross_entropy, gaussian or module:callable, got {cfg.loss!r}")
    for name in ("init", "imported"):
        v = getattr(cfg, name)
        if v is not None:
            if not v.strip():
                raise InputError(f"{name} must be a path, got an empty string")
            setattr(cfg, name, str(Path(v).resolve()))


#: settings of config.json that are not flags of ``valleys train`` (recorded, checked, never typed)
NOT_FLAGS = ("model_sha256", "data_sha256", "imported", "amendments")

#: settings a ``--resume`` may change: they act on the epochs still to run, never on those done (the learning
#: rate, the averaging-phase learning rate, the number of epochs); each change is recorded in ``amendments``
FUTURE_SETTINGS = ("lr", "swa_lr", "epochs")


def write_run_config(out: str | Path, cfg: TrainConfig) -> None:
    """Write a run's settings: ``config.json`` (every setting) and ``config.toml`` (the flags of ``valleys
    train`` that make this run: the common ones and its method's own, so that ``valleys train --config
    RUN/config.toml --out RUN2`` trains it again)."""
    from ..core.checkpoint import write_json
    from .registry import get_method
    from .toml_config import write_toml

    values = dataclasses.asdict(cfg)
    write_json(Path(out) / "config.json", values)
    method = get_method(cfg.method)
    classes = list(method.settings) + (list(get_method(method.member).settings) if method.member else [])
    own = {f.name for f in dataclasses.fields(RunSettings)} | {f.name for c in classes for f in settings_fields(c)}
    flags = {k: v for k, v in values.items() if k in own and k not in NOT_FLAGS}
    header = "the flags of this run: valleys train --config config.toml --out NEW_FOLDER trains it again"
    if cfg.amendments:
        header = (
            "the flags of this run as amended on --resume (see 'amendments' in config.json: the epochs before "
            "each change ran with the earlier values); valleys train --config config.toml --out NEW_FOLDER "
            "trains with these values throughout"
        )
    write_toml(Path(out) / "config.toml", flags, header=header)


def method_fields() -> list[dataclasses.Field]:
    """The fields of :class:`TrainConfig` that come from the registered methods' settings dataclasses."""
    out: dict[str, dataclasses.Field] = {}
    for cls in _METHOD_SETTINGS:
        for f in settings_fields(cls):
            out.setdefault(f.name, f)
    return list(out.values())


def set_method_settings(classes: Sequence[type]) -> None:
    """Make the methods' settings dataclasses ``classes`` (in order, duplicates once) the method fields of
    :class:`TrainConfig` (called by the method registry whenever it changes). Two classes may not define the
    same field; the common settings may not be redefined."""
    unique = list(dict.fromkeys(classes))
    seen: dict[str, type] = {f.name: RunSettings for f in dataclasses.fields(RunSettings)}
    for cls in unique:
        for f in settings_fields(cls):
            if f.name in seen:
                raise InputError(
                    f"setting {f.name!r} of {cls.__name__} is already defined by {seen[f.name].__name__}; "
                    "share that settings class instead"
                )
            seen[f.name] = cls
    _METHOD_SETTINGS[:] = unique
    _rebuild_train_config()


def _copy(f: dataclasses.Field) -> dataclasses.Field:
    if f.default_factory is not dataclasses.MISSING:
        return dataclasses.field(default_factory=f.default_factory, metadata=f.metadata)
    return dataclasses.field(default=f.default, metadata=f.metadata)


def _rebuild_train_config() -> None:
    """Give :class:`TrainConfig` the fields of :class:`RunSettings` with the methods' settings after
    ``batch_size``: a dataclass with those fields is generated and its generated methods (``__init__``,
    ``__eq__``, ``__repr__``, the field table) are put on :class:`TrainConfig`, so that every reference to the
    class sees the new fields."""
    spec: list[tuple[str, Any, dataclasses.Field]] = []
    for f in dataclasses.fields(RunSettings):
        spec.append((f.name, f.type, _copy(f)))
        if f.name == _AFTER:
            spec += [(m.name, m.type, _copy(m)) for m in method_fields()]
    fresh = dataclasses.make_dataclass("TrainConfig", spec, namespace={"__module__": __name__})
    for name in list(vars(TrainConfig)):
        if name in TrainConfig.__dataclass_fields__ and name not in RunSettings.__dataclass_fields__:
            delattr(TrainConfig, name)  # an old method field's class default
    for name in ("__init__", "__repr__", "__eq__", "__dataclass_fields__", "__dataclass_params__", "__match_args__"):
        if name in vars(fresh):
            setattr(TrainConfig, name, vars(fresh)[name])
    TrainConfig.__annotations__ = dict(vars(fresh).get("__annotations__", {}))
    for f in dataclasses.fields(fresh):
        if f.default is not dataclasses.MISSING and f.name not in RunSettings.__dataclass_fields__:
            setattr(TrainConfig, f.name, f.default)


# ---------------------------------------------------------------------- settings files
def read_json_object(path: str | Path) -> dict[str, Any]:
    """The JSON object in ``path``; :class:`ConfigError` naming the file if it is not valid JSON or not an object
    (``FileNotFoundError`` if it does not exist)."""
    path = Path(path)
    if not path.is_file():
        raise MissingFileError(f"{path} does not exist")
    try:
        raw = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ConfigError(f"{path} is not valid JSON ({e})") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path} must hold a JSON object of settings, found a JSON {type(raw).__name__}")
    return raw


def read_epoch_log(run_dir: str | Path) -> list[dict[str, Any]]:
    """The per-epoch log of a run folder (``metrics.jsonl``, one JSON object per line)."""
    text = (Path(run_dir) / "metrics.jsonl").read_text()
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def check_saved_settings(out: Path, settings: dict[str, Any], what: str) -> None:
    """Before ``--resume`` of a multi-run command: ``out/config.json`` must exist and hold ``settings`` (its
    ``folder`` tag aside); else an :class:`InputError` naming ``what`` or listing the settings that differ."""
    if not (out / "config.json").is_file():
        raise InputError(f"cannot resume: {out} holds no {what} (no config.json)")
    saved = read_json_object(out / "config.json")
    if not set(settings) <= set(saved):  # another command's folder: say so, not which of its settings differ
        by = made_by(saved)
        raise InputError(
            f"cannot resume: {out} is not a {what}"
            + (f" (a folder made by '{by}')" if by else " (its config.json holds other settings)")
            + "; give the folder this command wrote"
        )
    saved.pop("folder", None)
    if saved != settings:
        diff = {k: (saved.get(k), v) for k, v in settings.items() if saved.get(k) != v}
        raise InputError(f"cannot resume {out}: the settings differ from the saved ones (saved, now): {diff}")


def settings_from_dict(cls: type, raw: dict[str, Any], source: str | Path, *, ignore: tuple[str, ...] = ()) -> Any:
    """``cls(**raw)`` for a settings dataclass read from ``source``, refusing unknown fields and wrong types with
    a :class:`ConfigError` naming ``source`` (``ignore``: keys that are not settings)."""
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(raw) - names - set(ignore))
    if unknown:
        raise ConfigError(
            f"{source}: unknown setting{'s' if len(unknown) > 1 else ''} {', '.join(map(repr, unknown))} "
            f"(written by another version of valleys, or edited by hand?); known: {', '.join(sorted(names))}"
        )
    missing = [
        f.name
        for f in dataclasses.fields(cls)
        if f.name not in raw and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
    ]
    if missing:
        raise ConfigError(f"{source}: missing setting{'s' if len(missing) > 1 else ''} {', '.join(missing)}")
    obj = cls(**{k: v for k, v in raw.items() if k in names})
    try:
        check_types(obj)
    except ValueError as e:
        raise ConfigError(f"{source}: {e}") from None
    return obj


def read_run_config(run_dir: str | Path) -> TrainConfig:
    """The resolved :class:`TrainConfig` of a run folder's ``config.json``, every error naming the file."""
    path = Path(run_dir) / "config.json"
    if not path.is_file():
        raise MissingFileError(f"{run_dir} is not a run folder: it has no config.json (train one with 'valleys train')")
    raw = read_json_object(path)
    if raw.get("folder") == "curve":
        raise ConfigError(f"{run_dir} is a curve folder (made by 'valleys connect'), not a training run")
    if "method" not in raw or "dataset" not in raw:
        by = made_by(raw)
        raise ConfigError(
            f"{run_dir} is not a training run"
            + (f" (a folder made by '{by}')" if by else " (its config.json names no method and dataset)")
            + "; give a folder made by 'valleys train' or 'valleys import'"
        )
    return config_from_dict(raw, path)


def made_by(raw: dict[str, Any]) -> str | None:
    """The command that wrote a folder's ``config.json`` (from the settings it holds), if recognisable."""
    if raw.get("folder") == "curve":
        return "valleys connect"
    return next(
        (
            cmd
            for keys, cmd in (
                (("space", "inference"), "valleys subspace"),
                (("consistency", "labels_per_class"), "valleys semisup"),
                (("datasets", "splits"), "valleys regression"),
                (("base", "runs"), "valleys demo"),
                (("method", "dataset"), "valleys train"),
            )
            if all(k in raw for k in keys)
        ),
        None,
    )


def config_from_dict(raw: Any, source: str | Path) -> TrainConfig:
    """A resolved :class:`TrainConfig` from saved settings (a run's ``config.json`` or a checkpoint header)."""
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: the run's settings must be a JSON object, found {type(raw).__name__}")
    cfg = settings_from_dict(TrainConfig, raw, source)
    try:
        return cfg.resolved()
    except ValueError as e:
        raise ConfigError(f"{source}: {e}") from None


def amend(saved: TrainConfig, given: dict[str, Any], epoch: int, step: int) -> TrainConfig:
    """``saved`` with the settings of :data:`FUTURE_SETTINGS` that ``given`` changes, and the change appended to
    ``amendments`` (``epoch``, ``step``: where the run resumes). ``epochs`` must leave an epoch to run."""
    changes = {k: [getattr(saved, k), v] for k, v in given.items() if k in FUTURE_SETTINGS and getattr(saved, k) != v}
    if not changes:
        return saved
    if "epochs" in changes and int(changes["epochs"][1]) <= epoch:
        raise InputError(
            f"--epochs {changes['epochs'][1]} with --resume: the run has done {epoch} epochs already; give more "
            "epochs than that"
        )
    return dataclasses.replace(
        saved,
        **{k: new for k, (_, new) in changes.items()},
        amendments=[*saved.amendments, {"epoch": int(epoch), "step": int(step), "changes": changes}],
    )


def before_amendments(cfg: TrainConfig, keep: int) -> TrainConfig:
    """``cfg`` as it was with only its first ``keep`` amendments (the later changes undone)."""
    out = cfg
    for a in reversed(cfg.amendments[keep:]):
        out = dataclasses.replace(out, **{k: old for k, (old, _) in a["changes"].items()})
    return dataclasses.replace(out, amendments=list(cfg.amendments[:keep]))


def check_resume_flags(
    given: dict[str, Any],
    saved: dict[str, Any],
    config: Path,
    flags: dict[str, str] | None = None,
    may_change: Sequence[str] = (),
) -> None:
    """Refuse flags given with ``--resume`` whose value differs from the saved ``config.json``: an
    :class:`InputError` naming each flag (``flags``: the flag of a setting not named ``--<setting>``)."""
    flags = flags or {}
    bad = [
        f"{flags.get(k, '--' + k.replace('_', '-'))} {given[k]!r} (config.json: {saved[k]!r})"
        for k in given
        if k in saved and given[k] != saved[k]
    ]
    if bad:
        raise InputError(
            f"--resume continues {config.parent} with the settings of {config}; these flags contradict "
            f"it: {', '.join(bad)}. Drop them (or start a new run without --resume)"
            + (
                f"; only {', '.join('--' + k.replace('_', '-') for k in may_change)} may change on --resume "
                "(they act on the epochs still to run)"
                if may_change
                else ""
            )
        )
