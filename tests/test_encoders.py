import pytest
import torch

from bench import encoders
from bench.compat import recbole_workdir
from bench.config import load_config, with_overrides
from bench.metrics import evaluate_ranks, metrics_from_ranks
from bench.split import build_split


@pytest.fixture(scope="module")
def trained(slice_overrides, cache_root):
    cfg = load_config("smoke", overrides=[*slice_overrides, "encoder.epochs=2"])
    split = build_split(cfg, cache_root)
    return cfg, split, encoders.load_or_train(split, cfg, cache_root)


def test_encoder_is_frozen_and_exports_item_embeddings(trained):
    cfg, split, encoder = trained
    assert not encoder.model.training
    assert all(not p.requires_grad for p in encoder.model.parameters())
    assert encoder.item_embeddings.shape == (split.n_items, cfg["encoder.params.hidden_size"])
    assert encoder.score([split.history(1, "test")]).shape == (1, split.n_items)


def test_user_representations_are_what_the_encoder_scores_with_and_computed_once_per_stage(trained):
    _, split, encoder = trained
    histories = [split.history(int(u), "test") for u in split.users[:7]]
    reps = encoder.user_representations(histories, batch_size=3)  # batched in parts of 3
    assert reps.shape == (7, encoder.item_embeddings.shape[1])
    assert torch.allclose(reps @ encoder.item_embeddings.T, encoder.score(histories), atol=1e-5)
    stage = encoder.stage_representations(split, "test")
    assert stage.shape == (split.n_users, reps.shape[1]) and torch.equal(stage[0], torch.zeros(reps.shape[1]))
    assert torch.allclose(stage[1:8], reps, atol=1e-6)
    assert encoder.stage_representations(split, "test") is stage  # shared, not recomputed
    valid = encoder.stage_representations(split, "valid")[1:8]
    assert torch.allclose(valid, encoder.user_representations([split.train_history(int(u)) for u in
                                                                split.users[:7]]), atol=1e-6)


def test_ranks_equal_recbole_full_sort_evaluation(trained, tmp_path):
    """Our evaluator (history masking off, as RecBole does for sequential models) reproduces RecBole."""
    cfg, split, encoder = trained
    from recbole.utils import get_trainer

    with recbole_workdir(tmp_path):
        rb_config, (_, _, test_loader) = encoders.recbole_data(split, cfg, "cpu", tmp_path)
        rb_config["metrics"], rb_config["topk"] = ["Hit", "NDCG"], [10, 100]
        rb_config["metric_decimal_place"] = 10
        trainer = get_trainer(rb_config["MODEL_TYPE"], cfg["encoder.model"])(rb_config, encoder.model)
        theirs = trainer.evaluate(test_loader, load_best_model=False)
    users = split.users
    histories = [split.history(int(u), "test") for u in users]
    ranks = evaluate_ranks(lambda chunk: encoder.score([histories[int(u) - 1] for u in chunk]), users,
                           split.test_target[users], None, split.n_items)
    ours = {k: v.mean() for k, v in metrics_from_ranks(ranks, ["hit", "ndcg"], [10, 100]).items()}
    for key in ("hit@10", "ndcg@10", "hit@100"):
        assert ours[key] == pytest.approx(theirs[key], abs=1e-5), key
    assert 0 < ours["hit@100"] < 1


def test_second_load_trains_nothing(trained, cache_root, monkeypatch):
    cfg, split, encoder = trained

    def must_not_train(*args, **kwargs):
        raise AssertionError("the cached encoder was retrained")

    monkeypatch.setattr(encoders, "_train", must_not_train)
    again = encoders.load_or_train(split, cfg, cache_root)
    assert again.key == encoder.key
    assert torch.equal(again.item_embeddings, encoder.item_embeddings)


def test_corrupt_encoder_cache_is_rebuilt(trained, tmp_path):
    cfg, split, _ = trained
    first = encoders.load_or_train(split, cfg, tmp_path)
    weights = next(tmp_path.glob("encoders/*/model.pt"))
    weights.write_bytes(weights.read_bytes()[:100])
    with pytest.warns(UserWarning, match="corrupt"):
        rebuilt = encoders.load_or_train(split, cfg, tmp_path)
    assert torch.equal(rebuilt.item_embeddings, first.item_embeddings)  # same seed, same weights


def test_recbole_logs_stay_out_of_the_working_directory(trained, tmp_path, monkeypatch):
    cfg, split, _ = trained
    monkeypatch.chdir(tmp_path)
    encoders.load_or_train(split, cfg, tmp_path / "cache")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cache"]


def test_gru4rec_is_supported(slice_overrides, tmp_path):
    cfg = load_config("smoke", overrides=[*slice_overrides, "encoder.model=GRU4Rec", {"cache_dir": str(tmp_path)}])
    split = build_split(cfg, tmp_path)
    encoder = encoders.load_or_train(split, cfg, tmp_path)
    scores = encoder.score([split.history(1, "valid"), split.history(2, "valid")])
    assert scores.shape == (2, split.n_items) and torch.isfinite(scores).all()


def test_recbole_leaves_autograd_anomaly_detection_off(trained):
    """RecBole's sine.py turns anomaly detection on at import (get_model imports it): every backward output was
    then checked for NaN, 40-55% of an RA-Rec training step. After the shims, in this process and a fresh one,
    it is off."""
    import subprocess
    import sys

    import torch

    assert not torch.is_anomaly_enabled()
    code = ("from bench.compat import recbole_ready; recbole_ready(); from recbole.utils import get_model; "
            "get_model('SASRec'); import torch; print(torch.is_anomaly_enabled())")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip().splitlines()[-1] == "False"


def test_the_fused_gelu_is_recboles_gelu_and_replaces_it_everywhere(trained):
    """fuse_activations swaps RecBole's five-pass element-wise GELU for PyTorch's fused one: the same function
    (exact erf form), so the model's outputs agree to float32 rounding."""
    import copy

    from recbole.model.layers import FeedForward

    _, split, encoder = trained
    fused = encoder.model
    original = copy.deepcopy(fused)
    for module in original.modules():
        if isinstance(module, FeedForward):
            module.intermediate_act_fn = module.gelu
    blocks = [m for m in fused.modules() if isinstance(m, FeedForward)]
    assert blocks and all(m.intermediate_act_fn is torch.nn.functional.gelu for m in blocks)
    x = torch.linspace(-6, 6, 1001)
    assert torch.allclose(blocks[0].gelu(x), torch.nn.functional.gelu(x), atol=1e-6)
    histories = [split.history(int(u), "test") for u in split.users[:16]]
    assert torch.allclose(encoder.score(histories), original.full_sort_predict(encoder.pack(histories)), atol=1e-5)


def test_training_precision_is_recorded_and_chosen_by_encoder_dtype(trained):
    cfg, split, encoder = trained
    expected = encoders.encoder_precision(cfg, "cpu")
    assert encoder.info["dtype"] == str(expected.dtype) and encoder.info["dtype_reason"] == expected.reason
    assert all(p.dtype == torch.float32 for p in encoder.model.parameters())  # the frozen encoder stays float32
    with pytest.raises(Exception, match="'encoder.params.enable_amp': set the training precision with encoder.dtype"):
        encoders.encoder_precision(load_config("smoke", overrides=["encoder.params.enable_amp=true"]), "cpu")
    with pytest.raises(Exception, match="'encoder.dtype' must be auto, float32 or bfloat16, got 'float16'"):
        encoders.encoder_precision(load_config("smoke", overrides=["encoder.dtype=float16"]), "cpu")
    other = "float32" if cfg["encoder.dtype"] != "float32" else "bfloat16"
    assert encoders.encoder_key(split, cfg) != encoders.encoder_key(split, with_overrides(cfg, [f"encoder.dtype={other}"]))



@pytest.mark.parametrize("p", [0.2, 0.5])
def test_mask_dropout_keeps_1_minus_p_unbiased_and_is_seeded(p):
    """MaskDropout drops each element with probability p (independently: no lane of the 64-bit draws is
    skewed), keeps the mean, is fixed by torch's seed, passes gradients through the same mask, and is the
    identity in eval mode."""
    from bench.encoders import MaskDropout

    drop = MaskDropout(p)
    x = torch.ones(4, 250_000, requires_grad=True)
    torch.manual_seed(3)
    y = drop(x)
    kept = (y > 0).float()
    for lane in range(4):  # elements sharing a position within their 64-bit draw
        assert abs(kept.flatten()[lane::4].mean().item() - (1 - p)) < 0.004
    assert abs(y.mean().item() - 1) < 0.005
    torch.manual_seed(3)
    assert torch.equal(drop(x), y)
    y.sum().backward()
    assert torch.equal(x.grad, y.detach())
    assert drop.eval()(x) is x


def test_speed_up_swaps_every_dropout_of_sasrec(trained):
    """The encoder's model keeps RecBole's class but no torch.nn.Dropout: each became a MaskDropout with its p."""
    from bench.encoders import MaskDropout

    _, _, encoder = trained
    modules = list(encoder.model.modules())
    assert not [m for m in modules if type(m) is torch.nn.Dropout]
    assert type(encoder.model).__name__ == "SASRec"
    assert len([m for m in modules if isinstance(m, MaskDropout)]) >= 4
