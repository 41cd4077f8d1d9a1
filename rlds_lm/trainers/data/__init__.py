"""The trainers' input pipeline: published datasets -> fixed-shape ``[batch, length]`` batches.

No TensorFlow, no Grain: each dataset's per-token arrays come from its training view
(:mod:`rlds_lm.view`: memory-mapped columns next to the dataset, built once from its
``array_record`` files and rebuilt when stale; docs/training_view.md), or, without one,
from the records themselves through ``tfds.builder_from_directory(...).as_data_source``
(raw bytes) decoded with :class:`rlds_lm.read.RawSequenceDecoder`; the batches are the
same either way. So this runs on GPU / TPU hosts with JAX alone.

**Batch ``i`` is a pure function of (datasets, config, seed, ``i``).** Nothing depends on
what was read before, on worker or thread counts, or on the number of processes:

* Each dataset is an endless stream of *units* (one episode per unit when padding, one
  packed row per unit when packing), epoch after epoch. Epoch ``e`` visits the dataset's
  trainable episodes in the order of a permutation keyed by ``(seed, dataset identity,
  e)`` (a stable argsort of Philox raw output: counter-based, independent of NumPy's
  ``Generator`` algorithms, which NumPy does not promise to keep). Packing then fills rows
  in that order (first fit over a few open rows), so every token of every episode lands
  in exactly one row per epoch.
* Global row slot ``n`` (batch ``i`` holds slots ``i * batch_size ...``) belongs to the
  mixture component chosen by a fixed weighted interleave (the Sainte-Lague sequence of the
  weights, rounded to 1/10000): over every period of ``sum(parts)`` slots each dataset
  gets exactly its share, spread evenly. Its unit index within the dataset follows in
  closed form, so no counter has to be replayed.
* Process ``p`` of ``P`` decodes the contiguous rows ``[p * B / P, (p + 1) * B / P)`` of
  each global batch (the layout of ``jax.make_array_from_process_local_data`` with the
  batch axis sharded over processes); the processes' slices concatenated in process order
  are the single-process global batch.

Resuming is therefore ``{"step": n}``; the state also carries a fingerprint of the
datasets (content identity, not paths), weights and :class:`DataConfig`, and restoring a
state saved by a different pipeline is refused (:class:`StateMismatchError`). The shard
layout is not part of it: a run may resume on a different number of processes.

Episodes marked ``invalid`` and episodes without tokens are never trained on. Finding them
(and, for packing, every episode's length) takes one pass over each dataset at
construction; ``index_cache_dir`` keeps the result for the next run.

Batch contract (``B`` = rows of this process = ``batch_size / shard_count``, ``L`` =
``max_length``, ``M`` = ``max_segments``, ``K`` / ``S`` = teacher top-k / sampled-k width,
``R`` = number of reward names; "per sequence" shapes are ``[B]`` when padding and
``[B, M]`` when packing, slot ``j`` holding the sequence with segment id ``j + 1``):

=========================  ========  =============  =======================================
key                        dtype     shape          meaning
=========================  ========  =============  =======================================
``tokens``                 int32     [B, L]         prompt and completion tokens, turn by
                                                    turn; ``pad_id`` on padding
``loss_mask``              bool      [B, L]         True on action (policy) tokens
``behaviour_logprobs``     float32   [B, L]         behaviour log p(token); 0 off-action
``segment_ids``            int32     [B, L]         1, 2, ... per sequence in the row; 0 on
                                                    padding (always 1 when padding)
``positions``              int32     [B, L]         0, 1, ... restarting in every segment;
                                                    0 on padding
``reward``                 float32   per sequence   sum of the episode's step rewards (the
                                                    whole episode's, also when truncated)
``dataset``                int32     per sequence   index of the dataset in the mixture;
                                                    -1 for an empty slot
``record_index``           int32     per sequence   record of that dataset's split; -1 empty
``rewards``                float32   per seq. + [R] named rewards summed over steps, columns
                                                    in :attr:`DataPipeline.reward_names`
``token_rewards``          float32   [B, L]         per-token rewards; 0 off-action
``thinking_mask``          bool      [B, L]         True on thinking tokens
``teacher_token_logprobs`` float32   [B, L]         teacher log p(token); 0 off-action
``teacher_topk_ids``       int32     [B, L, K]      teacher top-k ids; 0 off-action
``teacher_topk_logprobs``  float32   [B, L, K]      their log-probs; 0 off-action
``teacher_sampled_ids``    int32     [B, L, S]      distinct ids among S teacher draws
``teacher_sampled_counts`` int32     [B, L, S]      draws per id (rows sum to S on action)
=========================  ========  =============  =======================================

The first eight keys are always there; the others when required or available (see
:class:`DataPipeline`). A sequence longer than ``max_length`` is cut at ``max_length``, as
:func:`rlds_lm.read.episode_to_sequence` does; a padded row equals that function's output.
The per-token keys besides ``loss_mask``, ``segment_ids`` and ``positions`` are the stored
per-token action fields, declared once in the schema's field table with the key each fills
(:func:`rlds_lm.schema.token_fields`: ``action/tokens`` -> ``tokens``, ``action_logprobs``
-> ``behaviour_logprobs``, ``teacher/topk_ids`` -> ``teacher_topk_ids``, ...): their
dtypes and widths come from there, and one decoder (:class:`rlds_lm.read.RawSequenceDecoder`)
reads them all in one parse of each record.

**The packing contract a model must honour** (:func:`attention_mask` and
:func:`target_mask` implement it and work on NumPy and JAX arrays alike):

1. Attention: token ``t`` may attend to token ``u`` only if ``segment_ids[u] ==
   segment_ids[t] > 0`` and ``positions[u] <= positions[t]``. A position-only causal mask
   (``rlds_lm.models.forward``'s ``positions`` / ``valid``) is not enough: it lets a
   segment see the earlier segments of its row.
2. Positions: rotary / absolute position embeddings use ``positions``, not the column.
3. Loss: the logits at ``t`` predict ``tokens[t + 1]`` only when ``segment_ids[t + 1] ==
   segment_ids[t]``; the first token of a segment has no context. Train on
   ``target_mask(loss_mask, segment_ids)`` (``[B, L - 1]``, aligned with
   ``tokens[:, 1:]``).
4. Per-sequence values reach tokens through the segment ids:
   ``reward[b, segment_ids[b, t] - 1]`` for ``segment_ids[b, t] > 0``.

The package, one concern per module (this ``__init__`` re-exports the public names):

* ``_contract``: the batch keys, the fields a trainer may ask for (derived from the
  schema's field table, :func:`rlds_lm.schema.token_fields`), :class:`DataConfig`, the
  errors and the packing helpers :func:`attention_mask` / :func:`target_mask`;
* ``_mixture``: the weighted interleave of row slots over the datasets;
* ``_index``: a dataset opened for training: its content identity and the index of its
  trainable episodes (with their lengths), cached;
* ``_plan``: epoch planning: the permutation of each epoch and the packing of rows;
* ``_pipeline``: :class:`DataPipeline` and :class:`DataIterator`.

Example::

    pipeline = DataPipeline({"/data/math/1.0.0": 0.7, "/data/chat/1.0.0": 0.3},
                            DataConfig(batch_size=64, max_length=2048, packing=True),
                            require=(S.TEACHER_TOPK_IDS, S.TEACHER_TOPK_LOGPROBS),
                            vocab_size=259, tokenizer="byte",
                            shard_index=jax.process_index(),
                            shard_count=jax.process_count())
    it = pipeline.iterator(state=saved.get("data"))  # None: start at step 0
    for step in range(num_steps):
      batch = next(it)
      ...
      saved["data"] = it.get_state()  # JSON: {"step": ..., "fingerprint": ...}
"""

from __future__ import annotations

from rlds_lm.trainers.data._contract import BEHAVIOUR_LOGPROBS
from rlds_lm.trainers.data._contract import DATASET
from rlds_lm.trainers.data._contract import FIELDS
from rlds_lm.trainers.data._contract import LOSS_MASK
from rlds_lm.trainers.data._contract import POSITIONS
from rlds_lm.trainers.data._contract import RECORD_INDEX
from rlds_lm.trainers.data._contract import REWARD
from rlds_lm.trainers.data._contract import REWARDS
from rlds_lm.trainers.data._contract import SEGMENT_IDS
from rlds_lm.trainers.data._contract import TEACHER_SAMPLED_COUNTS
from rlds_lm.trainers.data._contract import TEACHER_SAMPLED_IDS
from rlds_lm.trainers.data._contract import TEACHER_TOKEN_LOGPROBS
from rlds_lm.trainers.data._contract import TEACHER_TOPK_IDS
from rlds_lm.trainers.data._contract import TEACHER_TOPK_LOGPROBS
from rlds_lm.trainers.data._contract import THINKING_MASK
from rlds_lm.trainers.data._contract import TOKEN_REWARDS
from rlds_lm.trainers.data._contract import TOKENS
from rlds_lm.trainers.data._contract import DataConfig
from rlds_lm.trainers.data._contract import DataMismatchError
from rlds_lm.trainers.data._contract import Datasets
from rlds_lm.trainers.data._contract import StateMismatchError
from rlds_lm.trainers.data._contract import attention_mask
from rlds_lm.trainers.data._contract import target_mask
from rlds_lm.trainers.data._index import _INDEX_CACHE  # the in-memory index cache (tests clear it)
from rlds_lm.trainers.data._pipeline import DataIterator
from rlds_lm.trainers.data._pipeline import DataPipeline
