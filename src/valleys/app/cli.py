"""The ``valleys`` command line: argument parsing and dispatch only (the work is in the library and the run layer).

The parser is built from plain data (:mod:`valleys.zoo.catalog`, :class:`valleys.app.config.RunSettings`, and the
registries: ``valleys train``'s method flags are generated from the registered methods' settings dataclasses,
and every registered study is a subcommand whose flags come from its settings, see
:mod:`valleys.app.options`), so ``valleys --help`` starts without importing torch; each command imports what
it runs.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import math
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TypeVar

from ..errors import AdapterError, InputError, ValleysError
from .options import CHECKS, add_flags, path_flag

_T = TypeVar("_T")

EXAMPLES = """examples:
  valleys demo --quick                      # SGD, SWA, SWAG, FGE on MNIST-1D in well under 2 minutes
  valleys demo --preset fashion-mnist       # every section on all 60,000 Fashion-MNIST images (needs its files)
  valleys demo --budgets 1 1.25 1.5         # SWA and SWAG at 1, 1.25 and 1.5 budgets against SGD at one
  valleys train --method swa --epochs 100 --swa-start 50 --swa-lr 0.1 --out runs/swa
  valleys train --dataset digits --model cnn --method sgd --epochs 30 --out runs/digits-sgd
  valleys train --method swag --epochs 100 --swa-start 50 --rank 20 --samples 30 --out runs/swag
  valleys train --method fge --epochs 100 --cycle 2 --out runs/fge
  valleys train --method swag --ood-split --out runs/swag-ood    # classes 5-9 held out as OOD
  valleys evaluate runs/swa --temperature-scaling                 # SWA-Temp baseline
  valleys connect runs/sgd-a runs/sgd-b --kind bezier --out runs/curve   # mode connectivity
  valleys evaluate runs/curve --points 61
  valleys geometry runs/fmnist --quick     # slides 6, 9-15 on an existing demo folder
  valleys subspace runs/swag --space pca --rank 5 --temperature 100 1000 --out runs/pca-ess   # slides 25-33
  valleys regression --datasets concrete boston --splits 10 --out runs/uci     # RMSE, NLL, 95% coverage
  valleys regression --datasets toy1d --splits 1 --epochs 1000 --out runs/toy   # the 1-D figure (slide 32)
  valleys semisup --labels-per-class 40 --consistency none pi mean-teacher --seeds 0 1 2 --out runs/semi  # slides 34-36
"""


JOBS_HELP = (
    "worker processes for the independent runs, one torch thread each (default: the CPU cores; 1: all "
    "in this process with torch's own threads)"
)

# flag validators (argparse ``type=``, torch-free): argparse prefixes their message with the flag
_positive_int = CHECKS["positive"][3]
_non_negative_int = CHECKS["non_negative"][3]
_at_least_two = CHECKS["at_least_two"][3]
_seed = CHECKS["seed"][3]
_positive_float = CHECKS["positive"][4]
_non_negative_float = CHECKS["non_negative"][4]
_fraction = CHECKS["fraction"][4]
_path = path_flag


class _Parser(argparse.ArgumentParser):
    """Reads ``-1e-4``, ``-.5``, ``-inf`` and ``-nan`` as values, not as flags (argparse only knows ``-5`` and
    ``-0.5``), so that a validator can say what is wrong with them (``--wd -1e-4``: "must be ... >= 0")."""

    def __init__(self, *args, **kwargs) -> None:
        import re

        super().__init__(*args, **kwargs)
        self._negative_number_matcher = re.compile(
            r"^-(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?$|^-(inf|infinity|nan)$", re.IGNORECASE
        )

    def error(self, message: str):  # noqa: D401
        """argparse's refusal (usage and one line, exit 2), printed by the first torchrun rank only."""
        if not _first_rank():
            self.exit(2)
        super().error(message)


class _VersionAction(argparse.Action):
    """``--version``: reads the installed version (importlib.metadata, slow to import) only when asked."""

    def __init__(self, option_strings, dest=argparse.SUPPRESS, default=argparse.SUPPRESS, help=None):
        super().__init__(
            option_strings, dest=dest, default=default, nargs=0, help=help or "show program's version number and exit"
        )

    def __call__(self, parser, namespace, values, option_string=None):
        from .. import __version__

        print(f"valleys {__version__}")  # on stdout, like argparse's own version action
        parser.exit()


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Adds ``(default: X)`` once, only where it says something: not after a help text that already states
    its default, not for ``None`` defaults (the help says what happens instead), not for on/off flags."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if (
            "%(default)" in text
            or "default" in text
            or action.nargs == 0
            or action.default in (None, argparse.SUPPRESS)
        ):
            return text
        if not action.option_strings and action.nargs not in (argparse.OPTIONAL, argparse.ZERO_OR_MORE):
            return text
        return text + " (default: %(default)s)"


def _applies(setting: str) -> str:
    """``"swag, multiswag: "``: the methods a train flag applies to, from the method registry."""
    from .registry import methods_using

    return ", ".join(methods_using(setting)) + ": "


def _method_flags(p: argparse.ArgumentParser) -> None:
    """The flags of every registered method's settings (each settings dataclass once, in registry order)."""
    from .registry import METHODS

    for cls in dict.fromkeys(c for m in METHODS.values() for c in m.settings):
        add_flags(p, cls, help_prefix=_applies)


def _study_parsers(sub: argparse._SubParsersAction) -> None:
    """``valleys <study>`` for every registered study: its settings' flags, then --out, --overwrite and
    --no-progress."""
    from .studies import STUDIES

    for name, study in STUDIES.items():
        sp = sub.add_parser(name, help=study.help)
        add_flags(sp, study.settings)
        sp.add_argument("--out", type=_path, required=True, help="output folder")
        sp.add_argument(
            "--overwrite",
            action="store_true",
            help="replace a study already in --out (a run or curve folder is never replaced)",
        )
        sp.add_argument("--no-progress", action="store_true", help="hide progress bars")


def _resumable_output_flags(p: argparse.ArgumentParser, what: str) -> None:
    """The flags of a command that writes many runs into one folder and can resume: --out, --overwrite,
    --resume, --no-progress, --jobs."""
    p.add_argument("--out", type=_path, required=True, help="output folder")
    p.add_argument("--overwrite", action="store_true", help=f"replace a {what} already in --out")
    p.add_argument("--resume", action="store_true", help=f"continue an interrupted {what} in --out")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    p.add_argument("--jobs", type=_positive_int, default=None, help=JOBS_HELP)


def _parser() -> argparse.ArgumentParser:
    """The whole command line: one sub-parser per command (each built by its own function below)."""
    p = _Parser(
        prog="valleys",
        description="Loss valleys for any PyTorch model: SWA and more.",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--version", action=_VersionAction)
    sub = p.add_subparsers(
        dest="command",
        metavar="COMMAND",  # every subcommand: the same help formatter
        parser_class=functools.partial(_Parser, formatter_class=_HelpFormatter),
    )
    for build in (
        _train_parser,
        _import_parser,
        _evaluate_parser,
        _connect_parser,
        _study_parsers,
        _geometry_parser,
        _subspace_parser,
        _subspace_table_parser,
        _regression_parser,
        _semisup_parser,
        _demo_parser,
    ):
        build(sub)
    for command in sub.choices.values():  # read by main() before parsing (see valleys.app.toml_config)
        command.add_argument(
            "--config",
            metavar="FILE.toml",
            default=None,
            help="read this command's flags from a TOML file (keys: the flags, e.g. batch_size = 64); flags typed "
            "on the command line win",
        )
    return p


def _train_parser(sub: argparse._SubParsersAction) -> None:
    """``valleys train``: the run's settings, the registered methods' settings, the output flags."""
    from ..zoo.catalog import MODELS
    from .config import RunSettings
    from .registry import method_help

    d = RunSettings()
    methods = method_help()
    width = max(map(len, methods))

    t = sub.add_parser(
        "train",
        help=f"train one run ({', '.join(methods)}) into a run folder",
        description="methods (--method):\n" + "\n".join(f"  {name:<{width}}  {text}" for name, text in methods.items()),
    )
    _data_flags(t)
    t.add_argument(
        "--model",
        default=None,
        type=_model_flag,
        metavar="MODEL",
        help=f"built-in architecture ({', '.join(MODELS)}; default: {d.model}, mlp for regression and for --data) "
        "or your own factory returning an nn.Module: module.path:factory or file.py:factory",
    )
    _user_flags(t)
    t.add_argument("--method", default=d.method, choices=list(methods), help="training method (see above)")
    t.add_argument("--epochs", type=_positive_int, default=d.epochs, help="epoch budget")
    t.add_argument("--lr", type=_positive_float, default=d.lr, help="initial learning rate")
    t.add_argument("--momentum", type=_fraction, default=d.momentum, help="SGD momentum")
    t.add_argument("--wd", type=_non_negative_float, default=d.wd, help="weight decay")
    t.add_argument("--batch-size", type=_positive_int, default=d.batch_size, help="minibatch size")
    t.add_argument(
        "--augment",
        default=d.augment,
        choices=("none", "standard"),
        help="transform every training batch: none, or standard (images: random translation by up to 2 pixels, "
        "1 at 14 pixels or fewer, and flips for Fashion-MNIST; signals: shifts by up to 3 samples); evaluation "
        "and the BatchNorm recompute see the plain inputs",
    )
    _method_flags(t)
    t.add_argument(
        "--ood-split",
        action="store_true",
        help="train on the first half of the classes; the rest are out-of-distribution (OOD AUROC)",
    )
    t.add_argument("--seed", type=_seed, default=d.seed, help="random seed")
    t.add_argument(
        "--train-subset", type=_positive_int, default=None, help="use only N training examples (default: all)"
    )
    t.add_argument("--test-subset", type=_positive_int, default=None, help="use only N test examples (default: all)")
    t.add_argument(
        "--val-fraction",
        type=_fraction,
        default=d.val_fraction,
        help="fraction of the training split held out for validation",
    )
    t.add_argument(
        "--data-root", type=_path, default=None, help="torchvision data root (Fashion-MNIST), or the UCI folder"
    )
    t.add_argument(
        "--uci-split", type=_non_negative_int, default=d.uci_split, help="regression: split index (index_train_<i>.txt)"
    )
    t.add_argument(
        "--homoscedastic",
        dest="heteroscedastic",
        action="store_false",
        help="regression: one learned noise variance instead of a per-input variance (default: off, "
        "i.e. heteroscedastic=True)",
    )
    t.add_argument(
        "--init",
        type=_path,
        default=None,
        metavar="RUN_OR_CHECKPOINT",
        help="start from trained weights: a run folder or a checkpoint (state_dict, safetensors, Hugging Face "
        "folder, Lightning .ckpt); allows --swa-start 0 and --fge-start 0",
    )
    t.add_argument("--device", default=d.device, help="cpu, cuda, cuda:1, ...")
    t.add_argument(
        "--checkpoint-every", type=_positive_int, default=d.checkpoint_every, help="epochs between checkpoints"
    )
    t.add_argument("--eval-every", type=_positive_int, default=d.eval_every, help="epochs between evaluations")
    t.add_argument(
        "--out", type=_path, default=None, help="run folder (default: runs/<dataset>-<model>-<method>-seed<seed>)"
    )
    t.add_argument("--overwrite", action="store_true", help="replace a run already in --out")
    t.add_argument(
        "--resume",
        action="store_true",
        help="continue the run in --out from its last checkpoint, with the settings of its config.json "
        "(a flag given with --resume must agree with it, except --lr, --swa-lr and --epochs of an unfinished "
        "run, e.g. after a divergence: they act on the epochs still to run and are recorded as amendments)",
    )
    t.add_argument("--no-progress", action="store_true", help="hide the progress bar")


def _data_flags(p: argparse.ArgumentParser) -> None:
    """``--dataset`` (built-in) or ``--data`` (the user's), one of the two; both set ``dataset``."""
    from ..zoo.catalog import DATASETS, REGRESSION_DATASETS
    from .config import RunSettings

    data = p.add_mutually_exclusive_group()
    data.add_argument(
        "--dataset",
        default=RunSettings().dataset,
        choices=list(DATASETS) + list(REGRESSION_DATASETS),
        help="built-in dataset (diabetes, concrete, boston, toy1d and uci are regression)",
    )
    data.add_argument(
        "--data",
        dest="dataset",
        type=_path,
        default=argparse.SUPPRESS,
        metavar="SOURCE",
        help="your own data instead: file.npz (x_train, y_train, x_test, y_test, optional x_val, y_val), "
        "module.path:factory or file.py:factory returning train/test(/val) datasets or loaders",
    )


def _model_flag(text: str) -> str:
    """``--model``: a built-in name or a reference to the user's factory."""
    from ..zoo.catalog import MODELS

    if ":" in text or text in MODELS:
        return text
    raise argparse.ArgumentTypeError(
        f"invalid choice: {text!r} (choose a built-in model: {', '.join(MODELS)}; or your own factory: "
        "module.path:factory or path/to/file.py:factory)"
    )


class _KeyValues(argparse.Action):
    """``--model-args width=64 act=relu``: a dict, each value read as JSON when it is JSON (else a string)."""

    def __call__(self, parser, namespace, values, option_string=None):
        from .user_code import parse_key_values

        try:
            setattr(namespace, self.dest, parse_key_values(values, option_string or self.dest))
        except ValueError as e:
            parser.error(str(e))


def _user_flags(p: argparse.ArgumentParser) -> None:
    """The flags of the user's own model and data: factory arguments, the task, the model adapter, the loss."""
    p.add_argument(
        "--model-args",
        nargs="+",
        action=_KeyValues,
        default=None,
        metavar="KEY=VALUE",
        help="keyword arguments of the model factory (values read as JSON: 64, 0.1, true, [1,2], else strings)",
    )
    p.add_argument(
        "--data-args", nargs="+", action=_KeyValues, default=None, metavar="KEY=VALUE", help="of the data factory"
    )
    p.add_argument(
        "--task",
        default=None,
        choices=["classification", "regression"],
        help="what the targets are (default: inferred: integer labels classify, floats regress)",
    )
    p.add_argument(
        "--input",
        default=None,
        metavar="KEY",
        help="where the model input is in a batch: a dict key, keys a,b (passed as keyword arguments) or a "
        "tuple index (default: the first element of a tuple; a dict's keys other than the target's)",
    )
    p.add_argument("--target", default=None, metavar="KEY", help="where the targets are: a dict key or a tuple index")
    p.add_argument(
        "--output",
        default=None,
        metavar="KEY",
        help="which part of the model's output is the prediction: an index of a tuple, a dict key or an attribute "
        "(default: a tensor, .logits or ['logits'])",
    )
    p.add_argument(
        "--loss",
        default=None,
        metavar="LOSS",
        help="cross_entropy, gaussian or module:callable(prediction, targets) -> mean loss (default: the task's)",
    )


def _import_parser(sub: argparse._SubParsersAction) -> None:
    """``valleys import``."""
    from .config import RunSettings

    d = RunSettings()
    im = sub.add_parser(
        "import",
        help="make a run folder from a checkpoint written by other code (state_dict, safetensors, Hugging Face "
        "folder, Lightning .ckpt), for evaluate, plane, path, connect, ...",
    )
    im.add_argument(
        "checkpoint",
        type=_path,
        help="a torch.save'd state_dict (.pt/.pth/.bin, read with weights_only=True), a .safetensors file, a "
        "save_pretrained folder or a Lightning .ckpt",
    )
    im.add_argument(
        "--model",
        required=True,
        type=_model_flag,
        metavar="MODEL",
        help="the architecture: your factory (module.path:factory or file.py:factory) or a built-in name",
    )
    _data_flags(im)
    _user_flags(im)
    im.add_argument(
        "--posterior",
        type=_path,
        default=None,
        metavar="FILE",
        help="a SWAG posterior saved by valleys (a swag run's posterior.safetensors, valleys.hf.SWAGCallback.save, "
        "or a Lightning .ckpt with valleys.lightning.SWAGCallback): the run becomes a swag run",
    )
    im.add_argument(
        "--epochs", type=_positive_int, default=None, help="the epochs it was trained for (connect's default budget)"
    )
    im.add_argument("--lr", type=_positive_float, default=None, help="its learning rate (connect's default)")
    im.add_argument("--batch-size", type=_positive_int, default=None, help="minibatch size for later commands")
    im.add_argument("--val-fraction", type=_fraction, default=None, help="held out of train if there is no val split")
    im.add_argument("--seed", type=_seed, default=None, help="seed recorded for later commands")
    im.add_argument("--device", default=d.device, help="cpu, cuda, cuda:1, ...")
    im.add_argument("--out", type=_path, required=True, help="the run folder to create")
    im.add_argument("--overwrite", action="store_true", help="replace a run already in --out")
    im.add_argument("--no-progress", action="store_true", help="hide progress bars")


def _evaluate_parser(sub: argparse._SubParsersAction) -> None:
    """``valleys evaluate``."""
    e = sub.add_parser("evaluate", help="re-evaluate a run folder's predictive, print a table, write evaluation.json")
    e.add_argument("run_dir", type=_path, help="a folder written by 'valleys train' or 'valleys connect'")
    e.add_argument(
        "--points",
        type=_at_least_two,
        default=None,
        help="curve folders only: points per path (>= 2; default: the folder's, 61)",
    )
    e.add_argument("--samples", type=_positive_int, default=None, help="SWAG draws S (default: the run's)")
    e.add_argument("--ood", action="store_true", help="report OOD AUROC (run trained with --ood-split)")
    e.add_argument(
        "--temperature-scaling",
        action="store_true",
        help="also report test metrics after a temperature fitted on validation data",
    )
    e.add_argument("--overwrite", action="store_true", help="replace an evaluation.json already in the folder")


def _connect_parser(sub: argparse._SubParsersAction) -> None:
    """``valleys connect``."""
    c = sub.add_parser("connect", help="train a curve between two runs and compare it with the straight segment")
    c.add_argument(
        "run_a",
        nargs="?",
        type=_path,
        help="run folder or model.safetensors of the first network (with --resume: the saved one)",
    )
    c.add_argument(
        "run_b",
        nargs="?",
        type=_path,
        help="run folder or model.safetensors of the second network (with --resume: the saved one)",
    )
    # defaults None (filled from ConnectConfig): with --resume, a flag given is one the user typed
    c.add_argument("--kind", default=None, choices=["bezier", "polychain"], help="curve family (default: bezier)")
    c.add_argument(
        "--bends", type=_at_least_two, default=None, help="control points including the two ends (>= 2; default: 3)"
    )
    c.add_argument(
        "--epochs", type=_positive_int, default=None, help="curve training epochs (default: twice the first endpoint's)"
    )
    c.add_argument(
        "--lr",
        type=_positive_float,
        default=None,
        help="initial LR, decaying to 1%% like SGD runs (default: the first endpoint's)",
    )
    c.add_argument("--wd", type=_non_negative_float, default=None, help="L2 on w(t) (default: 5e-4)")
    c.add_argument("--seed", type=_seed, default=None, help="random seed (t draws, batch order; default: 0)")
    c.add_argument("--points", type=_at_least_two, default=None, help="points per path at evaluation (default: 61)")
    c.add_argument(
        "--bn", default=None, choices=["recompute", "keep"], help="BatchNorm policy per point (default: recompute)"
    )
    c.add_argument("--out", type=_path, required=True, help="output folder")
    c.add_argument("--overwrite", action="store_true", help="replace a curve already in --out")
    c.add_argument(
        "--resume",
        action="store_true",
        help="continue curve training from its checkpoint, with the settings of --out's config.json",
    )
    c.add_argument("--no-progress", action="store_true", help="hide progress bars")


def _geometry_parser(sub: argparse._SubParsersAction) -> None:
    """``valleys geometry``: the demo's geometry section."""
    ge = sub.add_parser("geometry", help="the demo's geometry section (slides 6, 9-15) on an existing demo folder")
    ge.add_argument("demo_dir", type=_path, help="a folder made by 'valleys demo' (sgd-seed<s> and swag-seed<s> runs)")
    ge.add_argument("--seeds", type=_seed, nargs="+", default=None, help="seeds (default: all in the folder)")
    ge.add_argument("--quick", action="store_true", help="coarser plane (9x9), 21-point line, 3 rays of 11 steps")
    ge.add_argument("--overwrite", action="store_true", help="replace a geometry/ section already in the folder")
    ge.add_argument("--no-progress", action="store_true", help="hide progress bars")


def _subspace_parser(sub: argparse._SubParsersAction) -> None:
    """``valleys subspace``."""
    ss = sub.add_parser(
        "subspace",
        help="Bayesian inference in a low-dimensional subspace of a run's weights "
        "(Izmailov et al. 2019): PCA, random or curve subspace; ESS, VI or NUTS; BMA of the samples",
    )
    ss.add_argument("run", type=_path, help="a run folder (a SWAG run for --space pca)")
    ss.add_argument(
        "--space",
        default="pca",
        choices=["pca", "random", "curve"],
        help="pca: top principal directions of the SWAG deviations (shift: SWA mean); random: unit "
        "Gaussian directions around the run's weights; curve: the plane of a --curve folder",
    )
    ss.add_argument("--rank", type=_positive_int, default=5, help="subspace dimension k (2 for --space curve)")
    ss.add_argument(
        "--curve", type=_path, default=None, help="a 'valleys connect' folder whose endpoints include the run"
    )
    ss.add_argument(
        "--inference",
        default="ess",
        choices=["ess", "vi", "flow", "nuts"],
        help="elliptical slice sampling, mean-field VI, VI with a RealNVP flow, or NUTS (needs valleys[pyro])",
    )
    ss.add_argument("--samples", type=_positive_int, default=30, help="posterior samples averaged (per chain)")
    ss.add_argument("--burn-in", type=int, default=20, help="ESS steps discarded first")
    ss.add_argument("--thin", type=_positive_int, default=1, help="keep every n-th ESS state")
    ss.add_argument(
        "--temperature",
        type=_positive_float,
        nargs="+",
        default=[1.0],
        help="T dividing the log-likelihood (large T for classification, e.g. 100-10000); several "
        "values: each is sampled and the one with the lowest validation NLL is kept",
    )
    ss.add_argument(
        "--prior-scale",
        type=_positive_float,
        nargs="+",
        default=[1.0],
        help="s of the prior N(0, s^2 I) over z; several values: chosen on validation as --temperature",
    )
    ss.add_argument(
        "--bn",
        default="shift",
        choices=["shift", "recompute", "keep"],
        help="BatchNorm statistics: recomputed once at the shift, per sample, or the run's own",
    )
    ss.add_argument("--vi-steps", type=_positive_int, default=1000, help="VI optimisation steps (minibatch 256)")
    ss.add_argument("--vi-lr", type=_positive_float, default=0.01, help="VI learning rate (Adam)")
    ss.add_argument("--flow-layers", type=_non_negative_int, default=4, help="coupling layers of --inference flow")
    ss.add_argument("--warmup", type=int, default=100, help="NUTS warm-up steps")
    ss.add_argument("--chains", type=_positive_int, default=1, help="NUTS chains (r_hat needs 2 or more)")
    ss.add_argument("--grid", type=int, default=21, help="points per axis of the log-density figure (0: none)")
    ss.add_argument("--seed", type=_seed, default=0, help="seed of the directions and the sampler")
    ss.add_argument("--out", type=_path, required=True, help="output folder")
    ss.add_argument(
        "--checkpoint-every",
        type=_positive_int,
        default=50,
        help="sampler steps (ESS, VI, flow) between checkpoints; NUTS writes one after every chain",
    )
    ss.add_argument("--overwrite", action="store_true", help="replace a subspace run already in --out")
    ss.add_argument(
        "--resume",
        action="store_true",
        help="continue a stopped subspace run in --out from its checkpoint (give the same settings)",
    )
    ss.add_argument("--no-progress", action="store_true", help="hide the progress bar")


def _subspace_table_parser(sub: argparse._SubParsersAction) -> None:
    """``valleys subspace-table``."""
    st = sub.add_parser(
        "subspace-table",
        help="the talk's classification comparison on a demo folder: SGD, SWA, "
        "SWAG beside PCA + ESS, PCA + VI, random + ESS and curve + ESS over its seeds (slides 30-31)",
    )
    st.add_argument("demo_dir", type=_path, help="a folder made by 'valleys demo' (with its curve folders)")
    st.add_argument("--seeds", type=_seed, nargs="+", default=None, help="seeds (default: all in the folder)")
    st.add_argument("--quick", action="store_true", help="rank 3, 8 samples: a smoke test")
    st.add_argument("--overwrite", action="store_true", help="replace a subspace-table/ already in the folder")
    st.add_argument("--no-progress", action="store_true", help="hide progress bars")
    st.add_argument("--jobs", type=_positive_int, default=None, help=JOBS_HELP)


def _regression_parser(sub: argparse._SubParsersAction) -> None:
    """``valleys regression``."""
    from .regression import RegressionProtocol

    rg = sub.add_parser(
        "regression",
        help="the UCI regression protocol over many splits: SGD, SWA, SWAG and "
        "subspace inference (RMSE, NLL, 95%% coverage; the 1-D toy figure with --datasets toy1d)",
    )
    add_flags(rg, RegressionProtocol)
    _resumable_output_flags(rg, "protocol")


def _semisup_parser(sub: argparse._SubParsersAction) -> None:
    """``valleys semisup``: the flags of :class:`valleys.app.semisup.SemisupConfig`, then the output flags."""
    from .presets import PRESETS
    from .semisup import SemisupConfig

    ss = sub.add_parser(
        "semisup",
        help="semi-supervised training with a few labels: supervised-only, Pi model and "
        "mean teacher, each with SWA and fast-SWA side by side (slides 34-36)",
    )
    add_flags(ss, SemisupConfig)
    ss.add_argument(
        "--preset",
        choices=[name for name, p in PRESETS.items() if p.semisup is not None],
        default=None,
        help="start from a demo preset's semi-supervised settings (its data, model, labels, schedule; on a CUDA "
        "--device the papers' size where the preset has one); flags given win",
    )
    ss.add_argument(
        "--quick", action="store_true", help="with --preset: its short budget (under a minute for fashion-cnn)"
    )
    _resumable_output_flags(ss, "study")


def _demo_parser(sub: argparse._SubParsersAction) -> None:
    """``valleys demo``."""
    from ..zoo.catalog import DATASETS, MODELS
    from .presets import DEFAULT_PRESET, PRESETS, presets_help

    m = sub.add_parser(
        "demo",
        help="the main job: SGD, SWA, SWAG and FGE under a named preset (default MNIST-1D); "
        "claims table, report, figures",
        description="The main job: SGD, SWA, SWAG and FGE at one budget over several seeds, with\n"
        "the talk's other sections (OOD, mode connectivity, geometry, subspace inference,\n"
        "semi-supervised learning) and its claims table, under a named preset.\n\n"
        "presets:\n" + presets_help(),
    )
    m.add_argument(
        "--preset",
        choices=list(PRESETS),
        default=DEFAULT_PRESET,
        help=f"a named configuration (default {DEFAULT_PRESET}); the flags below change its settings",
    )
    m.add_argument(
        "--quick",
        action="store_true",
        help="one seed and the preset's short budget (mnist1d: 30 epochs, 10 SWAG samples, well under 2 "
        "minutes); flags given win over these",
    )
    m.add_argument("--out", type=_path, default="runs/demo", help="output folder")
    m.add_argument(
        "--seeds",
        type=_seed,
        nargs="+",
        default=None,
        help="how many seeds, N (seeds 0 .. N-1; the claims table's t-test and power use them all), or two or more "
        "seeds to run (default: 3, that is 0 1 2; quick: 1)",
    )
    m.add_argument("--overwrite", action="store_true", help="replace a demo already in --out")
    m.add_argument("--no-progress", action="store_true", help="hide progress bars")
    m.add_argument("--no-ood", action="store_true", help="skip the split-classes OOD runs")
    m.add_argument("--jobs", type=_positive_int, default=None, help=JOBS_HELP)
    m.add_argument(
        "--no-subspace",
        action="store_true",
        help="skip the subspace-inference section (PCA, random and curve subspaces; the 1-D toy figure)",
    )
    m.add_argument(
        "--budgets",
        type=_positive_float,
        nargs="+",
        default=None,
        help="the budget protocol: SWA and SWAG also at these multiples of --epochs (e.g. 1 1.5), each "
        "compared with SGD at one budget (default: the preset's, mnist1d 1 1.5; --quick: 1; "
        "1: no extra runs)",
    )
    m.add_argument(
        "--no-semisup",
        action="store_true",
        help="skip the semi-supervised section (supervised-only, Pi and mean teacher with SWA and fast-SWA "
        "on the preset's labelled subset; mnist1d: 40 labels per class)",
    )
    g = m.add_argument_group("change the demo's setting (default: the preset's)")
    g.add_argument("--dataset", choices=list(DATASETS), default=None)
    g.add_argument(
        "--model",
        type=_model_flag,
        metavar="MODEL",
        default=None,
        help=f"a built-in architecture ({', '.join(MODELS)}) or your own factory, called without arguments "
        "(module.path:factory or file.py:factory)",
    )
    g.add_argument("--data-root", type=_path, default=None, help="torchvision data root (Fashion-MNIST files)")
    g.add_argument(
        "--device",
        default=None,
        help="cpu (default), cuda or cuda:N; on a CUDA device a preset with CUDA sizes (fashion-cnn) trains at "
        "the papers' size",
    )
    for flag, typ in (
        ("--epochs", _positive_int),
        ("--swa-start", _positive_int),
        ("--lr", _positive_float),
        ("--swa-lr", _positive_float),
        ("--samples", _positive_int),
        ("--bn-batches", _positive_int),
        ("--train-subset", _positive_int),
        ("--test-subset", _positive_int),
        ("--val-fraction", _fraction),
        ("--eval-every", _positive_int),
        ("--batch-size", _positive_int),
    ):
        g.add_argument(flag, type=typ, default=None, help="as in 'valleys train' (default: the preset's value)")


def _keys(res: dict) -> tuple[str, ...]:
    from .report import TABLE_KEYS

    return ("rmse", "nll", "coverage_95") if "rmse" in res["metrics"]["test"] else TABLE_KEYS


def _given(argv: Sequence[str], command: str) -> dict[str, object]:
    """``{dest: value}`` of the options typed on the command line for ``command`` (not their defaults)."""
    parser = _parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices[command]
    for action in sub._actions:
        action.default = argparse.SUPPRESS
    argv = list(argv)
    rest = argv[argv.index(command) + 1 :] if command in argv else argv
    return {k: v for k, v in vars(sub.parse_args(rest)).items()}


def _train(args: argparse.Namespace, argv: Sequence[str] | None = None) -> int:
    from .report import aggregate, format_table
    from .train import train_config_from_flags, train_run

    given = _given(argv if argv is not None else sys.argv[1:], "train") if args.resume else {}
    cfg, out = train_config_from_flags(vars(args), given=given)
    args.out = str(out)  # for the interruption message
    from ..core.distributed import is_main

    res = train_run(cfg, out, overwrite=args.overwrite, resume=args.resume, progress=not args.no_progress and is_main())
    if not is_main():
        return 0
    keys = _keys(res)
    rows = {f"{cfg.method} ({split})": aggregate([m], keys) for split, m in res["metrics"].items()}
    print(format_table(rows, keys))
    if "ood_auroc" in res:
        print(f"OOD AUROC (predictive entropy): {res['ood_auroc']:.4f}")
    for note in res.get("data_notes", ()):
        print(f"note: {note}")
    print(f"\nwrote {out}/results.json ({res['timing']['train_s']:.1f}s training)")
    return 0


def _import(args: argparse.Namespace) -> int:
    from .import_run import import_checkpoint, import_config_from_flags
    from .report import aggregate, format_table

    cfg = import_config_from_flags(vars(args))
    res = import_checkpoint(
        args.checkpoint,
        cfg,
        args.out,
        posterior=args.posterior,
        overwrite=args.overwrite,
        progress=not args.no_progress,
    )
    keys = _keys(res)
    print(format_table({f"imported ({k})": aggregate([v], keys) for k, v in res["metrics"].items()}, keys))
    for note in res.get("data_notes", ()):
        print(f"note: {note}")
    print(f"\nwrote {Path(args.out) / 'results.json'}")
    return 0


def _connect(args: argparse.Namespace) -> int:
    from .connect import connect_config_from_flags, connect_runs

    cfg = connect_config_from_flags(vars(args))
    from ..core.distributed import is_main

    res = connect_runs(
        cfg, args.out, overwrite=args.overwrite, resume=args.resume, progress=not args.no_progress and is_main()
    )
    if is_main():
        _print_curve(res, args.out)
    return 0


def _print_curve(res: dict, out) -> None:
    b = res["barrier"]
    if math.isnan(b["segment_max_test_error"]):  # regression: no classification error, the barrier in NLL
        print(
            f"max test NLL: segment {b['segment_max_test_nll']:.4f}, {res['kind']} curve "
            f"{b['curve_max_test_nll']:.4f}, worse endpoint {b['worse_endpoint_test_nll']:.4f}"
        )
    else:
        print(
            f"max test error: segment {100 * b['segment_max_test_error']:.2f}%, {res['kind']} curve "
            f"{100 * b['curve_max_test_error']:.2f}%, worse endpoint {100 * b['worse_endpoint_test_error']:.2f}%"
        )
    print(
        f"max train loss: segment {res['segment']['summary']['train_loss']['max']:.4f}, curve "
        f"{res['curve']['summary']['train_loss']['max']:.4f}"
    )
    print(f"\nwrote {Path(out) / 'report.md'} and {Path(out) / 'figures' / 'path.png'}")


def _unique_seeds(seeds) -> None:
    if seeds is not None and len(set(seeds)) != len(seeds):
        raise InputError(f"--seeds lists a seed twice: {' '.join(map(str, seeds))}")


def _study(args: argparse.Namespace) -> int:
    from .studies import StudyContext, get_study, run_study

    study = get_study(args.command)
    settings = _settings_from(study.settings, args)
    result = run_study(
        study, settings, args.out, context=StudyContext(progress=not args.no_progress), overwrite=args.overwrite
    )
    if study.summary(result):
        print(study.summary(result))
    out = Path(args.out)
    print(f"wrote {out / 'results.json'} and {out / 'report.md'}")
    return 0


def _evaluate(args: argparse.Namespace) -> int:
    from .evaluate import evaluate_folder
    from .report import aggregate, format_table

    kind, res = evaluate_folder(
        args.run_dir,
        points=args.points,
        samples=args.samples,
        ood=args.ood,
        temperature_scaling=args.temperature_scaling,
        overwrite=args.overwrite,
        progress=True,
    )
    if kind == "curve":
        _print_curve(res, args.run_dir)
        return 0
    keys = _keys(res)
    print(format_table({f"{res['method']} ({k})": aggregate([v], keys) for k, v in res["metrics"].items()}, keys))
    if "ood_auroc" in res:
        print(f"OOD AUROC (predictive entropy): {res['ood_auroc']:.4f}")
    if "temperature" in res:
        print(f"temperature fitted on validation: {res['temperature']:.4f}")
    for note in res.get("data_notes", ()):
        print(f"note: {note}")
    print(f"\nwrote {Path(args.run_dir) / 'evaluation.json'}")
    return 0


def _demo_seeds(seeds: list[int] | None) -> list[int] | None:
    """``--seeds N`` (one number: seeds 0 .. N-1) or the seeds listed (two or more)."""
    if seeds is None or len(seeds) > 1:
        _unique_seeds(seeds)
        return seeds
    if seeds[0] < 1:
        raise InputError(
            f"--seeds {seeds[0]}: one number is how many seeds to run (0 .. N-1), at least 1; "
            "to run particular seeds list two or more"
        )
    return list(range(seeds[0]))


def _demo(args: argparse.Namespace) -> int:
    from .demo import DemoSettings, demo_base, run_demo

    args.seeds = _demo_seeds(args.seeds)
    base, keep = demo_base(args.preset, vars(args), quick=args.quick)
    settings = DemoSettings(
        preset=args.preset,
        quick=args.quick,
        seeds=args.seeds,
        base=base,
        keep=keep,
        budgets=args.budgets,
        ood=not args.no_ood,
        subspace=not args.no_subspace,
        semisup=not args.no_semisup,
    )
    run_demo(args.out, settings, overwrite=args.overwrite, progress=not args.no_progress, jobs=args.jobs)
    return 0


def _geometry_demo(args: argparse.Namespace) -> int:
    from .demo import geometry_section

    _unique_seeds(args.seeds)
    geometry_section(
        args.demo_dir, seeds=args.seeds, quick=args.quick, progress=not args.no_progress, overwrite=args.overwrite
    )
    print(f"\nwrote {Path(args.demo_dir) / 'geometry' / 'report.md'}")
    return 0


def _subspace_table(args: argparse.Namespace) -> int:
    from .demo_subspace import subspace_table

    _unique_seeds(args.seeds)
    from .parallel import default_jobs

    subspace_table(
        args.demo_dir,
        seeds=args.seeds,
        quick=args.quick,
        progress=not args.no_progress,
        overwrite=args.overwrite,
        jobs=args.jobs or default_jobs(),
    )
    print(f"\nwrote {Path(args.demo_dir) / 'subspace-table' / 'report.md'}")
    return 0


def _subspace(args: argparse.Namespace) -> int:
    from .subspace import subspace_config_from, subspace_run

    res = subspace_run(
        subspace_config_from(args),
        args.out,
        overwrite=args.overwrite,
        resume=args.resume,
        progress=not args.no_progress,
    )
    keys = [k for k in ("accuracy", "nll", "ece", "rmse", "coverage_95") if k in res["metrics"]["test"]]
    for label, table in (("subspace BMA", res["metrics"]), ("shift only", res["shift_metrics"])):
        print(f"{label:13s} test " + "  ".join(f"{k} {table['test'][k]:.4f}" for k in keys))
    print(f"\nwrote {Path(args.out) / 'results.json'} and {Path(args.out) / 'report.md'}")
    return 0


def _settings_from(cls: type[_T], args: argparse.Namespace, **fixed: object) -> _T:
    """A ``cls`` settings dataclass from the flags named like its fields (a flag left unset keeps the field's
    default) plus ``fixed``; ``--overwrite`` with ``--resume`` is refused first."""
    if getattr(args, "overwrite", False) and getattr(args, "resume", False):
        raise InputError("--overwrite and --resume contradict each other: choose one")
    names = {f.name for f in dataclasses.fields(cls)}
    return cls(**{k: v for k, v in vars(args).items() if k in names and v is not None}, **fixed)


def _regression(args: argparse.Namespace) -> int:
    from .regression import RegressionProtocol, regression_protocol

    cfg = _settings_from(RegressionProtocol, args)
    from .parallel import default_jobs

    res = regression_protocol(
        cfg,
        args.out,
        overwrite=args.overwrite,
        resume=args.resume,
        progress=not args.no_progress,
        jobs=args.jobs or default_jobs(),
    )
    for dataset, d in res["datasets"].items():
        print(f"{dataset}: test mean over {cfg.splits} splits")
        for m, row in d["summary"].items():
            print(f"  {m:12s} " + "  ".join(f"{k} {row[k]['mean']:.4f}" for k in ("rmse", "nll", "coverage_95")))
    print(f"\nwrote {Path(args.out) / 'results.json'} and {Path(args.out) / 'report.md'}")
    return 0


def _semisup(args: argparse.Namespace, argv: Sequence[str] | None = None) -> int:
    from .semisup import SemisupConfig, semisup_run

    if args.quick and args.preset is None:
        raise InputError("--quick is the short budget of a preset; give --preset NAME too")
    if args.preset is not None:
        from .presets import get_preset, preset_semisup

        typed = _given(argv if argv is not None else sys.argv[1:], "semisup")
        device = str(typed["device"]) if "device" in typed else None
        settings = preset_semisup(get_preset(args.preset), quick=args.quick, device=device) or {}
        names = {f.name for f in dataclasses.fields(SemisupConfig)}
        cfg = _settings_from(SemisupConfig, args)  # refuses --overwrite with --resume
        cfg = SemisupConfig(**{**settings, **{k: v for k, v in typed.items() if k in names}})
    else:
        cfg = _settings_from(SemisupConfig, args)
    if cfg.device.startswith("cuda"):
        import torch

        if not torch.cuda.is_available():
            raise InputError(f"--device {cfg.device} requested but CUDA is not available; use --device cpu")
    from ..core.distributed import is_main
    from .parallel import default_jobs

    res = semisup_run(
        cfg,
        args.out,
        overwrite=args.overwrite,
        resume=args.resume,
        progress=not args.no_progress and is_main(),
        jobs=args.jobs or default_jobs(cfg.device),
    )
    if not is_main():
        return 0
    print(f"test error (%) over seeds {cfg.seeds}")
    for c, kinds in res["summary"].items():
        print(f"  {c:13s} " + "  ".join(f"{k} {100 * st['error']['mean']:.2f}" for k, st in kinds.items()))
    print(f"\nwrote {Path(args.out) / 'results.json'} and {Path(args.out) / 'report.md'}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``valleys`` command; returns the exit status (errors: 2 with a one-line reason; a
    stop by SIGINT or SIGTERM: 130 or 143, after a checkpoint where the command can resume)."""
    from ..core import stopping

    with stopping.handlers():  # first: Ctrl-C or a preemption while torch loads is handled below
        return _main(argv)


def _main(argv: Sequence[str] | None) -> int:
    from ..core import stopping

    parser = _parser()
    argv = list(argv) if argv is not None else sys.argv[1:]
    try:
        argv = _with_config(parser, argv)
    except ValleysError as e:
        print(f"valleys: error: {e}", file=sys.stderr)
        return 2
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
    try:  # nothing imports torch before this point: a Ctrl-C while it loads is handled below
        if _under_torchrun(args):
            from ..core.distributed import init_from_env

            init_from_env()
        if args.command == "train":
            return _train(args, argv)
        if args.command == "semisup":
            return _semisup(args, argv)
        if args.command in _studies():
            return _study(args)
        return {
            "evaluate": _evaluate,
            "import": _import,
            "demo": _demo,
            "connect": _connect,
            "subspace": _subspace,
            "geometry": _geometry_demo,
            "regression": _regression,
            "subspace-table": _subspace_table,
            "semisup": _semisup,
        }[args.command](args)
    except KeyboardInterrupt as e:
        _finish_progress_bars()
        code = e.exit_code if isinstance(e, stopping.Stopped) else 130
        if _first_rank():
            print(f"valleys {args.command}: {_interrupted(args, code)}{_previous_kept(args)}", file=sys.stderr)
        return code
    except (ValueError, OSError, ValleysError) as e:
        # OSError: --out under a file, no permission, a full disk (FileExistsError: a folder holding output)
        _finish_progress_bars()
        if _first_rank() or not isinstance(e, InputError):  # bad input: every torchrun rank refuses alike, one says so
            rank = "" if _first_rank() else f" (rank {_rank()})"
            print(
                f"valleys {args.command}{rank}: error: {_message(e)}{_resume_hint(args, e)}{_previous_kept(args)}",
                file=sys.stderr,
            )
        return 2
    except Exception as e:  # noqa: BLE001 - a bug: one line, the traceback in a file
        _finish_progress_bars()
        print(f"valleys {args.command}: {_bug_report(e)}", file=sys.stderr)
        return 1


def _bug_report(e: BaseException) -> str:
    """One line for an unexpected exception (a bug in valleys), its traceback written to a temporary file."""
    import tempfile
    import traceback

    fd, path = tempfile.mkstemp(prefix="valleys-bug-", suffix=".log")
    with open(fd, "w") as f:
        f.write("".join(traceback.format_exception(e)))
    first = str(e).splitlines()[0] if str(e) else ""
    return (
        f"internal error (a bug in valleys, not in your input): {type(e).__name__}: {first}; the traceback is in "
        f"{path}; please report it with that file"
    )


def _with_config(parser: argparse.ArgumentParser, argv: list[str]) -> list[str]:
    """``argv`` with its ``--config FILE.toml`` replaced by the flags the file holds, placed before the flags
    typed after the command (which win; see :mod:`valleys.app.toml_config`)."""
    from .toml_config import config_argv, find_config

    path, rest = find_config(argv)
    if path is None:
        return argv
    subs = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices
    at = next((i for i, a in enumerate(rest) if a in subs), None)
    if at is None:
        raise InputError("--config belongs to a command: valleys COMMAND --config FILE.toml")
    typed = rest[at + 1 :]
    return [*rest[: at + 1], *config_argv(path, subs[rest[at]], typed), *typed]


def _studies() -> list[str]:
    from .studies import STUDIES

    return STUDIES.names()


def _rank() -> str:
    import os

    return os.environ.get("RANK", "0")


def _first_rank() -> bool:
    """Whether this is the first (or only) process: under ``torchrun`` the other ranks stay quiet about bad
    input, which every rank refuses alike."""
    return _rank() == "0"


def _under_torchrun(args: argparse.Namespace) -> bool:
    """Whether ``torchrun`` started this process with more than one rank; only ``train``, ``connect`` and
    ``semisup`` run data-parallel (other commands are refused with the command to use instead)."""
    import os

    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return False
    if args.command not in ("train", "connect", "semisup"):
        raise InputError(
            f"valleys {args.command} runs in one process; under torchrun only 'valleys train', "
            f"'valleys connect' and 'valleys semisup' run data-parallel: start it without torchrun "
            f"(python -m valleys {args.command} ...)"
        )
    return True


def _resume_hint(args: argparse.Namespace, e: BaseException) -> str:
    """After a failed write (a full disk) in a run that has a checkpoint: how to continue once there is room;
    after a divergence: how to continue from the last good checkpoint with a lower rate."""
    from ..errors import TrainingDiverged
    from .folders import OutputFolderError

    if args.command == "train" and isinstance(e, TrainingDiverged) and e.checkpoint and e.checkpoint.is_file():
        return (
            f" Continue from it with a lower rate: valleys train --out {args.out or e.checkpoint.parent} --resume "
            "--lr LR (or --swa-lr LR); the change is recorded in config.json"
        )
    if args.command not in ("train", "connect") or not isinstance(e, OSError) or isinstance(e, OutputFolderError):
        return ""
    out = Path(args.out or ".")
    if not ((out / "checkpoint.safetensors").is_file() or any(out.glob("member-*/checkpoint.safetensors"))):
        return ""
    return f"; once there is room, continue with: valleys {args.command} ... --out {out} --resume"


def _previous_kept(args: argparse.Namespace) -> str:
    """After a failure that kept a resumable folder: where the output an --overwrite was replacing is."""
    from .folders import PREVIOUS

    out = getattr(args, "out", None)
    if not out or not getattr(args, "overwrite", False) or not (Path(out) / PREVIOUS).is_dir():
        return ""
    return f"; the output it was replacing is kept in {Path(out) / PREVIOUS} until this run completes"


def _message(e: BaseException) -> str:
    """One line for an expected failure: an OSError as 'file: reason' rather than '[Errno 28] ...'."""
    if isinstance(e, OSError) and e.strerror and len(e.args) >= 2:  # OSError(errno, strerror[, filename])
        return f"{e.filename}: {e.strerror}" if e.filename else e.strerror
    text = str(e).replace("\n", " ")
    if isinstance(e, AdapterError):  # the library's keyword is a flag here: output=0 -> --output 0
        import re

        text = re.sub(r"\b(input|target|output|loss)=", r"--\1 ", text)
    return text


def _finish_progress_bars() -> None:
    """Close the progress bars an exception left open, so that the message starts on a line of its own."""
    try:
        from tqdm import tqdm
    except ImportError:
        return
    for bar in list(getattr(tqdm, "_instances", ())):
        try:
            bar.close()
        except Exception:  # noqa: BLE001 - a broken bar must not hide the message
            pass
    sys.stderr.flush()


def _interrupted(args: argparse.Namespace, code: int = 130) -> str:
    """What was stopped (Ctrl-C: 130, SIGTERM: 143) and how to go on."""
    how = "stopped by SIGTERM" if code == 143 else "interrupted"
    return how + _after_stop(args).removeprefix("interrupted")


def _after_stop(args: argparse.Namespace) -> str:
    out = Path(getattr(args, "out", None) or ".")
    if args.command == "train":
        if (out / "checkpoint.safetensors").is_file() or any(out.glob("member-*/checkpoint.safetensors")):
            return f"interrupted; continue with: valleys train ... --out {out} --resume"
        return f"interrupted before the first checkpoint; nothing was kept in {out}; run the command again"
    if args.command == "connect":
        if (out / "checkpoint.safetensors").is_file():
            return f"interrupted; continue with: valleys connect {args.run_a} {args.run_b} ... --out {out} --resume"
        return f"interrupted before the first checkpoint; nothing was kept in {out}; run the command again"
    if args.command in ("semisup", "regression") and (out / "config.json").is_file():
        return f"interrupted; continue with: valleys {args.command} ... --out {out} --resume"
    if args.command == "subspace":
        if (out / "checkpoint.safetensors").is_file():
            return f"interrupted; continue with: valleys subspace {args.run} ... --out {out} --resume"
        return f"interrupted before the first checkpoint; nothing was kept in {out}; run the command again"
    if args.command == "evaluate":
        return f"interrupted; nothing was written to {args.run_dir}; run the command again"
    if args.command == "demo":
        return f"interrupted; a demo cannot be resumed and nothing new was kept in {out}; run the command again"
    if args.command == "geometry":
        return f"interrupted; nothing was kept in {Path(args.demo_dir) / 'geometry'}; run the command again"
    return f"interrupted; nothing was kept in {out}; run the command again"


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
