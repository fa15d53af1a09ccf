"""Warm starts: what a new run takes from another run, across model kinds.

A run directory that never saved a checkpoint starts from
`config.checkpoint.init_from` (the resume order is in checkpointing.py). Two
things come from that source run:

* **Parameters.** With `checkpoint.init_rules = ()` the source's whole tree,
  which must be identical (`checkpointing.restore_params`). Otherwise the rules
  are an ordered tuple of `(regex, replacement)` pairs over this model's
  parameter paths (`encoder/layer_00/attn/query/w`, as `sharding.path_str`
  names them). A parameter takes the first rule whose regex matches
  (`re.search`, as the sharding rules) and loads the source parameter
  `re.sub(regex, replacement, path, count=1)`, so

      (r"^(embed|encoder)/", r"\1/")          # a masked LM -> a classifier
      (r"^source_embed/", "embed/"), (r"^encoder/", "encoder/")   # -> a translator

  carry a masked LM's embedding and encoder over; a replacement of None starts
  the matched parameters fresh, and so does matching no rule. Fresh parameters
  keep the values of this run's own initialisation and are listed once in the
  log; the loaded / fresh counts go into the log and the run's origin line in
  `runs.jsonl`. Every rule must match some parameter, every source parameter
  named must exist, and shapes and dtypes must agree: otherwise the run stops
  before anything is loaded, with an error naming the rule or the parameter
  and both shapes. Only the source parameters named are read (Orbax partial
  restore), straight onto this run's shardings.

* **The tokenizer.** Embeddings mean something only with the vocabulary they
  were trained with, so a warm-started run reuses the source run's tokenizer
  instead of training its own: `tokenizers_to_adopt` checks that the source's
  tokenizer settings (kind, vocabulary size, standardisation) equal this
  config's (else an error naming both vocabulary sizes), and once the
  parameters are restored `copy_tokenizers` copies the source run
  directory's SentencePiece model into this run directory under the name
  this task looks for, so the run directory stays self-contained for
  evaluate.py and translate.py. `data.tokenizer_from` names the run directory
  to take the tokenizer from without its parameters (a from-scratch baseline
  with the same vocabulary); "" means `init_from`'s.
"""

import hashlib
import logging
import re
from typing import Any, Sequence

from etils import epath
import jax
import ml_collections
import orbax.checkpoint as ocp

from transformer_research import configs
from transformer_research import distributed
from transformer_research import sharding
from transformer_research import storage
from transformer_research.data import tasks


def locate(path: str) -> tuple[str, int]:
  """(checkpoints directory, step) of a warm-start source.

  Args:
    path: a run directory (its latest step), its `checkpoints/` directory, or
      one step directory (`RUN/checkpoints/800`).

  Raises:
    ValueError: no checkpoint there, naming the path.
  """
  path = storage.absolute(path)
  if (path / "checkpoints").is_dir():
    path = path / "checkpoints"
  elif (path / "params").is_dir() and path.name.isdigit():
    return str(path.parent), int(path.name)
  # A plain listing of the finished steps: an Orbax manager's construction is a
  # collective, which a process that finds no directory would never join.
  steps = ocp.utils.checkpoint_steps(path) if path.is_dir() else []
  if not steps:
    raise ValueError(f"config.checkpoint.init_from='{path}': no checkpoint found there")
  return str(path), max(steps)


def locate_source(init_from: str) -> tuple[str, int]:
  """`locate(init_from)`, refused unless it is one checkpoint on every process.

  Each process reads the source at its own `init_from` path: with a copy on
  each host's disk, a stale copy on one (another latest step, another run)
  started the processes from different parameters, which then trained on as
  one model without a word. Orbax's `_CHECKPOINT_METADATA` records when a
  checkpoint was saved, so copies of one save agree and two saves do not.

  Raises:
    ValueError: no checkpoint there (`locate`); on every process when one
      process finds none.
    distributed.LaunchError: naming the first process whose source differs.
  """
  directory, step = distributed.raise_together(lambda: locate(init_from))
  if jax.process_count() > 1:
    metadata = epath.Path(directory) / str(step) / "_CHECKPOINT_METADATA"
    digest = hashlib.sha256(metadata.read_bytes()).hexdigest()[:16] if metadata.exists() else ""
    distributed.check_same_data({"step": step, "metadata_sha256": digest}, "warm-start parameters",
                                f"config.checkpoint.init_from={init_from!r}")
  return directory, step


def run_directory(path: str) -> str:
  """The run directory a warm-start source path lies in (where its config.json is)."""
  path = storage.absolute(path)
  if (path / "checkpoints").is_dir():
    return str(path)
  if path.name == "checkpoints":
    return str(path.parent)
  return str(path.parent.parent)  # RUN/checkpoints/<step>


def source_config(path: str) -> ml_collections.ConfigDict | None:
  """The config the source run trained with (its config.json), None if it has none."""
  config_path = epath.Path(run_directory(path)) / "config.json"
  if not config_path.exists():
    return None
  return configs.saved_config(config_path)


# --------------------------------------------------------------- parameters
def _compile_rules(rules: Sequence[Any]) -> list[tuple[re.Pattern, str | None]]:
  out = []
  for rule in rules:
    if len(rule) != 2 or not isinstance(rule[1], (str, type(None))):
      raise ValueError(f"config.checkpoint.init_rules entry {tuple(rule)!r}: expected a "
                       "(regex, source path or None) pair")
    try:
      out.append((re.compile(rule[0]), rule[1]))
    except (re.error, TypeError) as e:
      raise ValueError(f"config.checkpoint.init_rules regex {rule[0]!r} is not a regex "
                       f"({e})") from None
  return out


def plan(rules: Sequence[Any], target: dict[str, tuple[tuple[int, ...], str]],
         source: dict[str, tuple[tuple[int, ...], str]], where: str) -> dict[str, str | None]:
  """Which source parameter each target parameter loads (None: fresh).

  Args:
    rules: `checkpoint.init_rules`.
    target, source: parameter path -> (shape, dtype) of this model and of the source.
    where: names the source in errors.

  Raises:
    ValueError: a rule matching no parameter, a source parameter that does
      not exist, or shapes / dtypes that differ (naming both, and the other
      parameters loading the same source).
  """
  compiled = _compile_rules(rules)
  for pattern, _ in compiled:
    if not any(pattern.search(name) for name in target):
      raise ValueError(f"config.checkpoint.init_rules regex {pattern.pattern!r} matches no "
                       f"parameter of this model (they are named like {min(target)!r})")
  mapping = {}
  for name in sorted(target):
    rule = next(((p, r) for p, r in compiled if p.search(name)), None)
    mapping[name] = None if rule is None or rule[1] is None else rule[0].sub(rule[1], name, 1)
  loaders: dict[str, list[str]] = {}
  for name, src in mapping.items():
    if src is not None:
      loaders.setdefault(src, []).append(name)
  for name, src in mapping.items():
    if src is None:
      continue
    if src not in source:
      close = sorted(s for s in source if s.split("/")[-1] == src.split("/")[-1])[:5]
      raise ValueError(f"config.checkpoint.init_rules: parameter {name} would load {src}, which "
                       f"{where} does not have (it has e.g. {close or sorted(source)[:5]})")
    if source[src] != target[name]:
      others = [n for n in loaders[src] if n != name]
      also = (f" (also loaded into {', '.join(f'{n} {target[n][0]}' for n in others)})"
              if others else "")
      raise ValueError(f"config.checkpoint.init_rules: parameter {name} has shape "
                       f"{target[name][0]} dtype {target[name][1]}, but {src} in {where} has "
                       f"shape {source[src][0]} dtype {source[src][1]}{also}")
  return mapping


def _shapes(tree: Any) -> dict[str, tuple[tuple[int, ...], str]]:
  return {sharding.path_str(path): (tuple(x.shape), str(jax.numpy.dtype(x.dtype)))
          for path, x in jax.tree_util.tree_leaves_with_path(tree)}


def load(init_from: str, rules: Sequence[Any], abstract: Any, fresh: Any) -> tuple[Any, str]:
  """This model's parameters: the source's where the rules say, `fresh` elsewhere.

  Args:
    init_from: the source (see `locate`).
    rules: `checkpoint.init_rules` (non-empty).
    abstract: this model's parameters as `jax.ShapeDtypeStruct`s with shardings.
    fresh: this run's freshly initialised parameters (same tree).

  Returns:
    (params, origin): origin is one line for the log and runs.jsonl.
  """
  directory, step = locate_source(init_from)
  where = f"checkpoint step {step} in {directory}"
  # PyTree handler: its restore reads a part of the tree (partial_restore).
  handlers = {"params": ocp.PyTreeCheckpointHandler(), "train": ocp.StandardCheckpointHandler(),
              "extra": ocp.JsonCheckpointHandler()}
  manager = ocp.CheckpointManager(directory, options=ocp.CheckpointManagerOptions(read_only=True),
                                  item_handlers=handlers)
  try:
    saved = manager.item_metadata(step)["params"]
    saved = getattr(saved, "tree", saved)
    mapping = plan(rules, _shapes(abstract), _shapes(saved), where)
    targets = {sharding.path_str(p): x for p, x in jax.tree_util.tree_leaves_with_path(abstract)}
    wanted: dict[str, dict[str, Any]] = {}  # The source tree, cut to the parameters used.
    for name, src in mapping.items():
      if src is not None:
        module, _, param = src.rpartition("/")
        wanted.setdefault(module, {})[param] = targets[name]
    loaded = {}
    if wanted:
      restored = manager.restore(step, args=ocp.args.Composite(params=ocp.args.PyTreeRestore(
          wanted, restore_args=jax.tree.map(lambda x: ocp.ArrayRestoreArgs(sharding=x.sharding),
                                            wanted), partial_restore=True)))["params"]
      loaded = {f"{m}/{p}": v for m, params in restored.items() for p, v in params.items()}
  finally:
    manager.close()
  used: set[str] = set()

  def take(path, fresh_value):
    src = mapping[sharding.path_str(path)]
    if src is None:
      return fresh_value
    value = loaded[src]
    if src in used:  # A second parameter loading the same source gets its own buffer.
      value = jax.numpy.copy(value)
    used.add(src)
    return jax.device_put(value, targets[sharding.path_str(path)].sharding)

  params = jax.tree_util.tree_map_with_path(take, fresh)
  fresh_names = [n for n, s in mapping.items() if s is None]
  if fresh_names:
    logging.info("warm start: %d parameters start fresh (no checkpoint.init_rules entry loads "
                 "them): %s", len(fresh_names), ", ".join(fresh_names))
  return params, (f"params from {directory} step {step} by checkpoint.init_rules: "
                  f"{len(mapping) - len(fresh_names)} loaded, {len(fresh_names)} fresh")


# ---------------------------------------------------------------- tokenizer
def _vocabulary(config: ml_collections.ConfigDict) -> tuple[str, int, bool]:
  """(tokenizer, size of the vocabulary the inputs are read with, standardize)."""
  sizes = tasks.vocab_sizes(config)
  kind = "char" if tasks.spec(config.data.task).tokenizer == "char" else config.data.tokenizer
  return kind, sizes.input if sizes.input is not None else sizes.target, bool(
      config.data.standardize)


def tokenizers_to_adopt(config: ml_collections.ConfigDict, workdir: str
                        ) -> list[tuple[str, str]]:
  """The (source file, file in `workdir`) tokenizer models a fresh run takes from
  its warm-start source, checked; nothing is written (`copy_tokenizers` does that).

  Called for a run directory without checkpoints, before anything is restored
  and before the task is built (which would otherwise train a tokenizer).

  Raises:
    ValueError: the source's vocabulary differs from this config's (naming
      both sizes), or its tokenizer model cannot be found, or the run directory
      already holds another tokenizer.
  """
  source = config.data.get("tokenizer_from", "") or config.checkpoint.init_from
  if not source:
    return []
  field = "data.tokenizer_from" if config.data.get("tokenizer_from", "") else (
      "checkpoint.init_from")
  previous = source_config(source)
  if previous is None:
    if tasks.sentencepiece_files(config.data) is None:
      logging.warning("%s=%s has no config.json: its vocabulary is not checked", field, source)
      return []
    raise ValueError(f"config.{field}={source!r}: no config.json in {run_directory(source)}, so "
                     "its tokenizer cannot be found; expected the run directory of a training run")
  theirs, ours = _vocabulary(previous), _vocabulary(config)
  if theirs != ours:
    raise ValueError(
        f"config.{field}={source!r} was trained with a vocabulary of {theirs[1]} ids "
        f"(data.tokenizer={theirs[0]!r}, standardize={theirs[2]}); this config reads "
        f"{ours[1]} (data.tokenizer={ours[0]!r}, standardize={ours[2]}). Its embeddings mean "
        "nothing in another vocabulary: set this run's data.tokenizer, data.vocab_size and "
        "data.standardize to the source run's (its tokenizer model is then reused).")
  ours_files, theirs_files = tasks.sentencepiece_files(config.data), tasks.sentencepiece_files(
      previous.data)
  if ours_files is None:
    return []
  pairs = [(theirs_files[0], ours_files[0])]
  if ours_files[1] != ours_files[0]:  # A translator with one model per side.
    if tasks.spec(previous.data.task).kind == "seq2seq":
      pairs.append((theirs_files[1], ours_files[1]))
  elif tasks.spec(config.data.task).kind == "seq2seq" and theirs_files[1] != theirs_files[0]:
    raise ValueError(f"config.{field}={source!r} has one tokenizer per language; a joint "
                     "vocabulary cannot reuse it: set data.joint_vocab=False")
  elif tasks.spec(config.data.task).kind == "seq2seq" and (
      tasks.spec(previous.data.task).kind != "seq2seq"):
    raise ValueError(f"config.{field}={source!r} has a tokenizer of one language; a joint "
                     "vocabulary would read the targets with it: set data.joint_vocab=False "
                     "(the target side then trains its own)")
  files = []
  for theirs_name, ours_name in pairs:
    src = epath.Path(run_directory(source)) / theirs_name
    dst = epath.Path(workdir) / ours_name
    if not src.exists():
      raise ValueError(f"config.{field}={source!r}: its tokenizer model {src} is missing")
    if dst.exists():
      if src.read_bytes() != dst.read_bytes():
          raise ValueError(f"{dst} differs from {src}, the tokenizer of config.{field}: this "
                           "run directory has a tokenizer of its own; use a new --workdir")
    files.append((str(src), str(dst)))
  return files


def copy_tokenizers(files: Sequence[tuple[str, str]]) -> str | None:
  """Copies `tokenizers_to_adopt`'s files (process 0; the others receive the
  model's bytes from it when the task loads it, see tokenizers.py).

  Returns:
    One line saying what was adopted (for the origin line), None for nothing.
  """
  if not files:
    return None
  for src, dst in files:
    if jax.process_index() == 0 and not epath.Path(dst).exists():
      storage.replace_bytes(dst, epath.Path(src).read_bytes())
  adopted = ", ".join(f"{epath.Path(dst).name} from {src}" for src, dst in files)
  logging.info("tokenizer: %s", adopted)
  return f"tokenizer {adopted}"
