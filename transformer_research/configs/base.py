"""Shared defaults for every task config, and the `variant,smoke` argument.

A task config starts from `get_config()` here and changes only what differs,
so each field has one default in one place. Fields are grouped the way a run
flows: model -> data -> train -> eval -> mesh -> checkpoint.

The argument after the colon (`--config=configs/wmt_spa.py:tiny,smoke`) holds
two independent choices, as big_vision's `variant=...,runlocal`:

* a model variant (`tiny`, `small`, `base`, `big`: a size, nothing else; the
  table is in models/variants.py);
* `smoke`: seconds-long runs for tests and debugging (small data, few steps,
  frequent evals and checkpoints), whatever the model size.

Overrides on the command line (`--config.train.batch_size=64`) must name an
existing field: the dict is locked, so a typo is an error naming the key.
"""

import ml_collections

from transformer_research.models import variants


def get_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.seed = 0  # Seeds parameter init, dropout and data shuffling.

  # ---------------------------------------------------------------- model
  c.model = ml_collections.ConfigDict()
  c.model.variant = "small"  # Size name, resolved in models/variants.py.
  # Size overrides; -1 keeps the variant's value.
  c.model.d_model = -1
  c.model.num_heads = -1
  c.model.d_ff = -1  # 0 = no feed-forward sublayers (ablations).
  c.model.num_encoder_layers = -1
  c.model.num_decoder_layers = -1
  c.model.norm = "pre"  # "pre" (stable default), "post" (original paper) or "none".
  c.model.residual = True  # False drops every block's residual connection (ablations).
  c.model.activation = "relu"  # Feed-forward nonlinearity: "relu" or "gelu".
  c.model.positions = "sinusoidal"  # "learned", "sinusoidal", "rope" or "none".
  c.model.max_len = 512  # Longest sequence the position table supports.
  # Length generalisation (models/transformer.py): encoder positions restart at 0
  # after these token ids (per-number digit positions for arithmetic, "index
  # hints"); () = 0..S-1. And while training, each row's positions are shifted
  # by a random integer in [0, position_offset_max] (randomised positions); 0 = none.
  c.model.position_restart_ids = ()
  c.model.position_offset_max = 0
  c.model.fused_qkv = False  # One [D, 3D] projection instead of three.
  c.model.dropout_rate = 0.1
  c.model.attention_dropout_rate = 0.0
  c.model.share_embeddings = False  # Source and target share one table.
  c.model.tie_output = True  # Output projection = target embedding^T.
  c.model.pooling = "mean"  # Classifier pooling: "mean" or "cls".
  c.model.classifier_hidden = 0  # Classifier MLP hidden width; 0 = d_model.
  # Activations: "auto" = bfloat16 on TPU/GPU, float32 on CPU; params stay f32.
  # float16 is refused (it needs loss scaling, not implemented).
  c.model.compute_dtype = "auto"
  # One hk.layer_stack per stack instead of Python-unrolled blocks: compile
  # time stays flat with depth; parameters get a leading [layers] dimension
  # under encoder/layers/layer/... (so checkpoints of the two layouts differ).
  # On TPU pair it with remat: the compiler rematerialises across unrolled
  # blocks but not across a scan, so `big` on one v5e chip needs 2.5x the
  # temporaries of unrolled blocks without remat (README, TPU table).
  c.model.scan_layers = False
  # Rematerialise each block in the backward pass: "none", "full" (keep only
  # block inputs) or "dots" (keep weight-matmul outputs): memory for compute.
  c.model.remat = "none"

  # ----------------------------------------------------------------- data
  c.data = ml_collections.ConfigDict()
  c.data.task = ""  # Task registry name (data/tasks.py).
  # Longest inputs / targets in tokens (EOS included): longer translation
  # pairs are skipped and counted, classification texts cut, LM documents
  # split into chunks. Also the packed row length and the eval padding.
  c.data.max_input_len = 64
  c.data.max_target_len = 64
  # A classification text longer than max_input_len: "head" keeps its first
  # tokens; "head_tail" its first quarter and its last three quarters (where a
  # review's verdict often is: the best cut for IMDB in Sun et al. 2019).
  c.data.truncation = "head"
  c.data.packing = False  # Several examples per row (seq2seq, lm; never classify).
  c.data.num_buckets = 3  # Unpacked: pad to max_len, max_len/2, ... (few compiles).
  c.data.max_train_examples = -1  # Use only the first N training records; -1 = all.
  c.data.prefetch = 2  # Training batches made ahead in a background thread (>= 1).
  # Text tasks: "sentencepiece" (trained on train into the workdir), "bpemb"
  # or "tiktoken" (cl100k_base). Synthetic tasks use a fixed character vocab.
  c.data.tokenizer = "sentencepiece"
  c.data.vocab_size = 8000  # SentencePiece pieces / BPEmb vocabulary size.
  c.data.joint_vocab = True  # Translation: one SentencePiece model for en+es.
  c.data.standardize = False  # Lowercase + strip punctuation (Keras tutorial).
  c.data.tfds_data_dir = ""  # TFDS data_dir; "" = TFDS default.
  c.data.manual_dir = ""  # Holds spa-eng.zip offline; "" = TFDS default.
  c.data.bpemb_cache_dir = ""  # BPEmb models dir; "" = ~/.cache/bpemb.
  # Local files instead of TFDS. imdb, lm_imdb, mlm_imdb: JSON lines, TSV,
  # .txt (one example a line; with labels one file per class) or a directory
  # (one example a .txt file; with labels one sub-folder per class, as aclImdb).
  # spa_eng, wmt13_es_en: .tsv / .txt of source<TAB>target lines (Tatoeba / Anki).
  # A fixed random share (data.validation_fraction) of train_path is held out
  # as validation (translation: of its source sentences), eval_path is test.
  c.data.train_path = ""
  c.data.eval_path = ""
  # Where a dataset has no validation split (local files, IMDB): the share of
  # train held out for it, the last records of one fixed shuffle.
  c.data.validation_fraction = 0.1
  c.data.text_field = ""  # JSON key / TSV column of the text; "" = detect (text, sentence, ...).
  c.data.label_field = ""  # ... of the label; "" = detect (label, sentiment, ...).
  # Class names in label order: string labels of JSON / TSV files, and which
  # folders / files of a class layout to read; () = ints, or the sorted names found.
  c.data.class_names = ()
  # A run directory whose tokenizer models this run uses instead of training its
  # own; "" = checkpoint.init_from's run directory when that is set (warm_start.py).
  c.data.tokenizer_from = ""
  c.data.mask_rate = 0.15  # Masked LM (mlm_imdb): fraction of tokens selected (BERT).
  # Synthetic tasks (reverse, sort, addition, difference); "length" is the
  # sequence length or the digits of the longer number.
  c.data.num_train_examples = 100_000  # Generated once from `seed`.
  c.data.num_eval_per_length = 100  # Eval examples per length (per-length tables).
  c.data.min_len = 1  # Training lengths: [min_len, train_max_len].
  c.data.train_max_len = 10
  c.data.eval_min_len = 1  # Eval lengths: [eval_min_len, eval_max_len].
  c.data.eval_max_len = 20
  c.data.num_symbols = 10  # reverse / sort alphabet size (digits, then a-z).

  # ---------------------------------------------------------------- train
  c.train = ml_collections.ConfigDict()
  c.train.num_steps = 1000
  # Wall-time budget of the run, preparation included, summed over restarts:
  # when it is used the loop checkpoints, evaluates and stops; 0 = none.
  c.train.max_minutes = 0.0
  c.train.batch_size = 64  # Global batch, over all processes and devices.
  c.train.optimizer = "adamw"  # "adamw", "adafactor" or "sgd" (with momentum).
  c.train.learning_rate = 1e-3  # Peak learning rate, reached after warmup.
  c.train.schedule = "rsqrt"  # "rsqrt" (Transformer paper), "cosine", "constant".
  c.train.warmup_steps = 100  # Linear warmup from 0 to learning_rate.
  c.train.min_lr_ratio = 0.0  # Cosine decays to learning_rate * this.
  c.train.weight_decay = 0.0  # Decoupled; never applied to biases and norms.
  c.train.b1 = 0.9
  c.train.b2 = 0.98  # 0.98 as in the Transformer paper (more stable than 0.999).
  c.train.eps = 1e-9
  c.train.momentum = 0.9  # sgd only.
  c.train.grad_clip_norm = 1.0  # Clip by global norm; 0 disables.
  c.train.label_smoothing = 0.1
  c.train.grad_accum_steps = 1  # Micro-batches per step; batch_size is split.
  c.train.partitioning = "jit"  # "jit" (GSPMD) or "shard_map" (explicit pmean).
  c.train.log_every_steps = 50
  # Ordered regexes over parameter paths ("encoder/layer_00/attn/query/w"):
  # matching parameters are not trained and get no optimizer state.
  c.train.frozen = ()
  # Ordered (regex over parameter paths, factor) pairs, first match wins:
  # those parameters train at factor x the learning rate; the rest at 1x.
  c.train.lr_multipliers = ()
  # Steps dispatched ahead of the device (>= 1): hides host latency; SIGTERM
  # is acted on within this many steps.
  c.train.dispatch_ahead = 2
  # Steps traced with jax.profiler into WORKDIR/profile/, from the third step
  # of a start (compilation and warm-up excluded); 0 = no trace.
  c.train.profile_steps = 0
  # For "mfu" in train records: FLOP/s of one device; -1 = the datasheet peak of
  # the device and compute dtype (flops.PEAK_FLOPS; on CPU a float32 matmul
  # measured at start), 0 = don't report.
  c.train.peak_flops_per_device = -1.0

  # ----------------------------------------------------------------- eval
  c.eval = ml_collections.ConfigDict()
  c.eval.every_steps = 500
  c.eval.split = "validation"  # What the loop evaluates; test is for final reports.
  c.eval.batch_size = 64  # Global rows per eval / decoding batch.
  # Examples decoded per eval (BLEU, chrF, exact match); -1 = the whole split,
  # 0 = none (loss and token accuracy only).
  # Decoding dominates eval time, so the loop uses a fixed subset.
  c.eval.decode_examples = 512
  c.eval.max_decode_len = -1  # Generated tokens at most; -1 = data.max_target_len.
  c.eval.beam_size = 4  # 1 = greedy.
  c.eval.length_penalty = 0.6  # GNMT alpha: 0 ranks beams by raw log-probability.
  c.eval.num_samples = 5  # Source / reference / output triples in the eval report.

  # ----------------------------------------------------------------- mesh
  c.mesh = ml_collections.ConfigDict()
  c.mesh.shape = (-1, 1, 1)  # (data, fsdp, tensor); -1 = remaining devices.
  # Across slices/hosts over the data-centre network; () = single-slice mesh.
  c.mesh.dcn_shape = ()
  # Ordered (regex over "module/param", spec) pairs, first match wins; a spec
  # is a tuple of axis names/None per dimension or "fsdp" (largest divisible
  # dimension). () = sharding.PARAM_RULES (FSDP + Megatron tensor parallel).
  c.mesh.param_rules = ()

  # ----------------------------------------------------------- checkpoint
  c.checkpoint = ml_collections.ConfigDict()
  c.checkpoint.every_steps = 500
  c.checkpoint.init_from = ""  # Warm-start params from this run / checkpoint dir.
  # Ordered (regex over this model's parameter paths, source path) pairs for
  # warm starts across model kinds; the first match wins, the source path may
  # use the regex's groups (\1), "" = start fresh. () = the identical tree.
  c.checkpoint.init_rules = ()
  c.checkpoint.max_to_keep = 3
  c.checkpoint.async_save = True  # Write in the background while training goes on.
  # Keep the best checkpoints by this eval metric ("" = keep the latest).
  c.checkpoint.best_metric = ""
  c.checkpoint.best_mode = "max"  # "max" (bleu, accuracy) or "min" (loss).
  return c


def parse_arg(arg: str | None, default_variant: str) -> tuple[str, bool]:
  """`"tiny,smoke"` -> ("tiny", True); `"smoke"` -> (default_variant, True).

  Raises:
    ValueError: an item that is neither a variant nor `smoke`, naming it.
  """
  variant, smoke = default_variant, False
  for item in filter(None, (a.strip() for a in (arg or "").split(","))):
    if item == "smoke":
      smoke = True
    elif item in variants.VARIANTS:
      variant = item
    else:
      raise ValueError(f"config argument {item!r} (in {arg!r}): expected a model variant "
                       f"{sorted(variants.VARIANTS)} and/or 'smoke', comma-separated")
  return variant, smoke


def take_recipe(arg: str | None, recipes: tuple[str, ...]) -> tuple[str, str]:
  """Splits a task's named recipe off the config argument.

  `take_recipe("cpu,smoke", ("cpu",))` -> ("cpu", "smoke"): a recipe is a set
  of training choices a task config applies (e.g. a time-budgeted run), kept
  apart from the model size and the smoke switch, which `parse_arg` reads.
  """
  items = [a.strip() for a in (arg or "").split(",") if a.strip()]
  chosen = [a for a in items if a in recipes]
  if len(chosen) > 1:
    raise ValueError(f"config argument {arg!r}: at most one recipe of {list(recipes)}")
  return (chosen[0] if chosen else ""), ",".join(a for a in items if a not in recipes)


def finalize(c: ml_collections.ConfigDict, smoke: bool) -> ml_collections.ConfigDict:
  """Applies the smoke-run sizes when asked for, then locks the config.

  `smoke` means "seconds on CPU" for every task (tests and debugging), so its
  data, step and eval sizes live here once instead of in each task config.
  Fields a task does not read (e.g. vocab_size for synthetic tasks) are inert.
  """
  if smoke:
    c.data.max_train_examples = 2000  # Text tasks: the first 2000 records.
    c.data.vocab_size = 500
    c.data.num_train_examples = 1000  # Synthetic tasks.
    c.data.num_eval_per_length = 4
    c.train.num_steps = 20
    c.train.batch_size = 16
    c.eval.every_steps = 10
    c.eval.batch_size = 16
    c.eval.decode_examples = 16
    c.checkpoint.every_steps = 10
  return c.lock()
