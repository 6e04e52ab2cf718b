"""``experiments/train_sparse_transformer.py``: the synthetic tasks are right and a pure
function of the key, the mask reaches the prefix from the end, and a run killed midway and
resumed reaches bit for bit the parameters of an uninterrupted run."""

import json
import sys
from pathlib import Path

import jax
import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:  # `experiments` is a top-level package of the checkout
    sys.path.insert(0, str(ROOT))

from dp2ejax.config import ConfigError, TaskConfig, load_config  # noqa: E402
from experiments import read_metrics, restore_final  # noqa: E402
from experiments import train_sparse_transformer as tst  # noqa: E402

TINY = ["run.experiment=sparse_transformer", "task.seq_len=32", "task.vocab_size=8",
        "task.num_pairs=4", "task.num_queries=2", "transformer.block_size=8",
        "transformer.window=8", "transformer.width=16", "transformer.num_heads=2",
        "transformer.num_layers=1", "train.batch=4", "train.steps=10",
        "train.checkpoint_every=4", "train.learning_rate=0.01"]


def config(tmp_path, name, *more):
    return load_config(None, [*TINY, f"run.out_dir={json.dumps(str(tmp_path))}",
                              f"run.name={name}", *more])


def test_docstring_examples():
    import doctest

    result = doctest.testmod(tst, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    assert result.attempted > 0 and result.failed == 0


def test_associative_recall_batches():
    task = TaskConfig(seq_len=32, vocab_size=8, num_pairs=4, num_queries=3)
    tokens, targets, weights = map(np.asarray, tst.make_batch(jax.random.key(3), task, 5))
    again = tst.make_batch(jax.random.key(3), task, 5)
    for a, b in zip((tokens, targets, weights), again, strict=True):
        np.testing.assert_array_equal(a, np.asarray(b))  # a pure function of the key
    assert not np.array_equal(tokens, np.asarray(tst.make_batch(jax.random.key(4), task, 5)[0]))
    assert tokens.shape == targets.shape == weights.shape == (5, 32)
    assert tokens.max() < tst.vocab_size(task)
    np.testing.assert_array_equal(weights[:, -3:], 1)
    assert weights[:, :-3].sum() == 0
    for row, target in zip(tokens, targets, strict=True):
        keys, values = row[:8:2], row[1:8:2]
        assert len(set(keys.tolist())) == 4 and keys.max() < 8 and values.max() < 8
        assert (row[8:-3] >= 8).all() and (row[8:-3] < 16).all()  # filler tokens
        for query, answer in zip(row[-3:], target[-3:], strict=True):
            assert answer == values[list(keys).index(query)]


def test_copy_batches():
    task = TaskConfig(kind="copy", seq_len=32, vocab_size=8, copy_length=5)
    tokens, targets, weights = map(np.asarray, tst.make_batch(jax.random.key(0), task, 3))
    for row, target, weight in zip(tokens, targets, weights, strict=True):
        content = row[:5]
        assert row[32 - 5] == 16  # the separator
        np.testing.assert_array_equal(row[32 - 4:], content[:4])
        np.testing.assert_array_equal(target[32 - 5:], content)
        np.testing.assert_array_equal(weight, np.r_[np.zeros(27), np.ones(5)])


def test_mask_reaches_the_prefix_only_through_global_keys():
    cfg = config(Path("."), "mask")
    mask = tst.attention_mask(cfg).to_dense()[0, 0]
    last = mask[-1]
    assert last[:8].all()  # the 4 key-value pairs
    assert not last[8:-8].any()  # nothing in the middle
    assert last[-8:].all()  # its window of 8, itself included
    assert not np.triu(mask, 1).any()  # causal


def test_kill_and_resume_reaches_the_same_parameters(tmp_path):
    whole_cfg = config(tmp_path, "whole")
    whole = tst.run(whole_cfg)
    history = whole["training"]["whole"]
    assert history["step"] == list(range(1, 11))
    assert set(history) == {"step", "loss", "query_accuracy"}
    assert 0 <= whole["summary"]["eval_query_accuracy"] <= 1
    assert 0 < whole["summary"]["attention_density"] < 1

    cfg = config(tmp_path, "killed")
    assert tst.run(cfg, stop_after=6)["stopped_at"] == 6  # checkpoint 4 is the last
    assert [row["step"] for row in read_metrics(cfg.run_dir)] == list(range(1, 7))
    resumed = tst.run(cfg)
    assert resumed["summary"]["resumed_from"] == 4
    assert resumed["training"]["killed"] == history
    assert resumed["summary"]["eval_loss"] == whole["summary"]["eval_loss"]
    a = restore_final(cfg, tst.build(cfg))
    b = restore_final(whole_cfg, tst.build(whole_cfg))
    for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b), strict=True):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))

    changed = config(tmp_path, "killed", "task.kind=copy", "task.copy_length=4")
    with pytest.raises(ConfigError, match=r"was started with another config \(task.copy_length: "
                                          r"8 -> 4; task.kind: 'associative_recall' -> 'copy'\)"):
        tst.run(changed)


def test_batch_must_split_over_the_mesh(tmp_path):
    n = jax.device_count()
    if n < 2:
        pytest.skip("needs several devices (tests/conftest.py sets 8 CPU devices)")
    cfg = config(tmp_path, "mesh", "mesh.axes={data = -1}", f"train.batch={n + 1}")
    with pytest.raises(ConfigError, match=f"train.batch: {n + 1} sequences do not split evenly "
                                          f"over mesh axis 'data' of size {n}"):
        tst.run(cfg)
    assert not cfg.run_dir.exists()
