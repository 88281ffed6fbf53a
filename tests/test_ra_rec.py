"""RA-Rec mechanics on a tiny randomly initialised backbone (real tokenizer, real split, real encoder)."""
import numpy as np
import pytest
import torch
from transformers import AutoTokenizer, BertConfig, BertModel

from bench import encoders, registry, runner
from bench.config import load_config
from bench.features import FeatureStore, FrozenLLM
from bench.llm import ALIASES, Backbone, _package_file
from bench.registry import Context
from bench.split import build_split
from bench.training import bpr_loss
from paradigms.ra_rec import denoise, diversity_sample


@pytest.fixture(scope="module")
def setup(slice_overrides, cache_root):
    cfg = load_config("smoke", overrides=[*slice_overrides, "train.epochs=1"])
    split = build_split(cfg, cache_root)
    encoder = encoders.load_or_train(split, cfg, cache_root)
    tokenizer = AutoTokenizer.from_pretrained(str(_package_file(*ALIASES["minilm"])))
    torch.manual_seed(0)
    model = BertModel(BertConfig(hidden_size=32, num_hidden_layers=3, num_attention_heads=2, intermediate_size=37,
                                 vocab_size=tokenizer.vocab_size)).eval()
    for p in model.parameters():
        p.requires_grad_(False)
    backbone = Backbone("tiny-bert", model, tokenizer, is_decoder=False, fingerprint="tiny-bert-0")
    llm = FrozenLLM(backbone, FeatureStore(backbone, cache_root, 64), FeatureStore(backbone, cache_root, 16), 64)
    return cfg, split, encoder, llm


def _fit(setup, name="ra-rec", **options):
    cfg, split, encoder, llm = setup
    cls = registry.get(name)
    opts = {**registry.options_for(cls, cfg), **options}
    paradigm = cls()
    context = Context(config=cfg, options=opts, seed=0, device=torch.device("cpu"), cache_dir=None, encoder=encoder,
                      llm=llm, generator=runner.seed_everything(0))
    paradigm.fit(split, context)
    return paradigm


def test_backbone_and_encoder_stay_bit_identical(setup):
    _, _, encoder, llm = setup
    before_llm = {k: v.clone() for k, v in llm.backbone.model.state_dict().items()}
    before_enc = {k: v.clone() for k, v in encoder.model.state_dict().items()}
    paradigm = _fit(setup)
    assert all(torch.equal(before_llm[k], v) for k, v in llm.backbone.model.state_dict().items())
    assert all(torch.equal(before_enc[k], v) for k, v in encoder.model.state_dict().items())
    assert paradigm.info["epochs"] == 1 and paradigm.trainable_parameters() > 0


def test_gradients_reach_exactly_projectors_and_instruction(setup):
    _, split, _, llm = setup
    paradigm = _fit(setup)
    trainable = paradigm._aligner.trainable()
    assert {id(p) for p in trainable} == {id(paradigm._aligner.projectors.weight),
                                          id(paradigm._aligner.projectors.bias), id(paradigm._aligner.instruction)}
    user = paradigm.sample_vectors(torch.tensor([0, 1]))
    items = paradigm.item_vectors(torch.tensor([1, 2]))
    (bpr_loss(user, items, items) + paradigm._infonce(torch.tensor([1, 2]), items)).backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in trainable)
    assert all(p.grad is None for p in llm.backbone.model.parameters())


@pytest.mark.parametrize("layer", [0, 1, 2])
def test_changing_one_layers_projector_changes_the_output(setup, layer):
    paradigm = _fit(setup)
    aligner = paradigm._aligner
    soft, hard = [[5, 6, 7]], [paradigm._hard]
    with torch.no_grad():
        before = aligner(soft, hard)
        aligner.projectors.bias[layer] += 1.0
        after = aligner(soft, hard)
    assert not torch.allclose(before, after), f"layer {layer} had no effect"


def test_prompt_positions_match_token_accounting(setup):
    _, split, _, llm = setup
    paradigm = _fit(setup)
    for row in paradigm.token_usage(split.users[:10], "test"):
        soft = paradigm.soft_history(split.history(row.user, "test"))
        _, _, mask = paradigm._aligner.layout([soft], [paradigm._hard])
        assert int(mask.sum()) == row.hard_tokens + row.soft_tokens
        assert row.soft_tokens == 4 + row.history_kept and row.hard_tokens == len(paradigm._hard)
        assert row.hard_tokens + row.soft_tokens <= llm.token_budget
        assert soft == [int(i) for i in split.history(row.user, "test")[-row.history_kept:]]


def test_one_optimisation_step_lowers_the_loss_on_that_batch(setup):
    paradigm = _fit(setup, infonce_weight=0.0)
    optimizer = torch.optim.Adam(paradigm.parameters(), lr=1e-2)
    samples, items = torch.arange(8), torch.tensor(paradigm._split.train_items[:8])
    negatives = torch.arange(1, 20)

    def loss():
        return bpr_loss(paradigm.sample_vectors(samples), paradigm.item_vectors(items),
                        paradigm.item_vectors(negatives))

    first = loss()
    optimizer.zero_grad()
    first.backward()
    optimizer.step()
    assert loss().item() < first.item()


def test_ablations_are_variants_of_the_same_class(setup):
    for name in ("ra-rec-noinst", "ra-rec-noinfonce", "ra-rec-input"):
        assert issubclass(registry.get(name), registry.get("ra-rec")) and not registry.get(name).in_all
    assert [c.name for c in registry.resolve("ra-rec*")] == ["ra-rec", "ra-rec-input", "ra-rec-noinfonce",
                                                             "ra-rec-noinst"]
    noinst = _fit(setup, "ra-rec-noinst")
    assert noinst._aligner.instruction is None
    assert noinst.token_usage(noinst._split.users[:1], "test")[0].soft_tokens == noinst.token_usage(
        noinst._split.users[:1], "test")[0].history_kept
    input_only = _fit(setup, "ra-rec-input")
    assert input_only._aligner.projectors.weight.shape[0] == 1


def test_training_sample_selection(setup):
    _, split, _, _ = setup
    lengths = np.repeat([1, 10, 100, 1000], 20)                   # 4 x 4 buckets of 5 samples each
    popularity = np.tile(np.repeat([1, 10, 100, 1000], 5), 4)
    chosen = diversity_sample(lengths, popularity, 16, np.random.default_rng(0))
    assert len(chosen) == 16 and len(set(chosen.tolist())) == 16
    assert len(set(zip(lengths[chosen], popularity[chosen]))) == 16  # one from every bucket
    paradigm = _fit(setup, train_fraction=0.25)
    assert paradigm.info["samples"] == round(0.25 * 60 * 2)
    users = np.array([1, 1])
    history = split.train_history(1)
    keep = denoise(split, users, np.array([3, 3]), np.array([history[3], history[3]]))
    assert keep.dtype == bool and len(keep) == 2


def test_cosine_similarity_is_blind_to_the_backbone_output_scale(setup):
    paradigm = _fit(setup, similarity="cosine", score_temperature=0.25)
    samples, items = torch.arange(4), torch.arange(1, 6)
    with torch.no_grad():
        user, item = paradigm.sample_vectors(samples), paradigm.item_vectors(items)
        assert torch.allclose(user.norm(dim=-1), torch.full((4,), 2.0))  # |v| = 1 / sqrt(temperature)
        scores = user @ item.T
        assert scores.abs().max() <= 4.0 + 1e-5  # cosine / 0.25
        aligner = paradigm._aligner
        scale = aligner.backbone.pool
        aligner.backbone.pool = lambda hidden, mask: 1000.0 * scale(hidden, mask)  # huge hidden norms
        try:
            assert torch.allclose(paradigm.sample_vectors(samples) @ paradigm.item_vectors(items).T, scores,
                                  atol=1e-5)
        finally:
            aligner.backbone.pool = scale
    with pytest.raises(Exception, match="similarity must be 'dot' or 'cosine'"):
        _fit(setup, similarity="l2")
