"""RA-Rec learns: on data whose next item is fixed by the item IDs alone (titles are noise), trained RA-Rec
reaches at least 90% of its encoder's validation NDCG@10, and its untrained initialisation does not.

Mechanism test: the encoder is a real RecBole SASRec trained on the synthetic data, the backbone a tiny
randomly initialised BERT with the real MiniLM tokenizer."""
import numpy as np
import pytest
import torch
from transformers import AutoTokenizer, BertConfig, BertModel

from bench import encoders, registry, resources
from bench.config import load_config, with_overrides
from bench.evaluation import fit_paradigm, validation_ndcg
from bench.features import FeatureStore, FrozenLLM
from bench.llm import BACKBONES, Backbone, _package_file
from bench.registry import Context
from bench.split import build_split

N_ITEMS, N_USERS = 40, 300
WORDS = "red blue green lamp chair river stone cloud paper glass wind salt iron moon".split()


def _write_cycle_data(root):
    """Each user walks the item cycle 1 -> 2 -> ... -> N -> 1 from a random start; titles are random words."""
    rng = np.random.default_rng(0)
    folder = root / "cycle"
    folder.mkdir()
    lines = ["user_id:token\titem_id:token\ttimestamp:float"]
    for user in range(N_USERS):
        start, length = rng.integers(N_ITEMS), rng.integers(8, 15)
        lines += [f"u{user}\ti{(start + t) % N_ITEMS}\t{t}" for t in range(length)]
    (folder / "cycle.inter").write_text("\n".join(lines) + "\n")
    titles = [f"i{i}\t{' '.join(rng.choice(WORDS, 3))}" for i in range(N_ITEMS)]
    (folder / "cycle.item").write_text("\n".join(["item_id:token\ttitle:token_seq", *titles]) + "\n")


@pytest.fixture(scope="module")
def cycle(tmp_path_factory, cache_root):
    root = tmp_path_factory.mktemp("cycle-data")
    _write_cycle_data(root)
    cfg = load_config("smoke", overrides=[
        {"data": {"dataset": "cycle", "data_dir": str(root), "max_users": None}, "cache_dir": str(cache_root)},
        "encoder.epochs=30", "encoder.learning_rate=0.01", "encoder.train_batch_size=256",
        "encoder.params.hidden_size=32", "encoder.params.inner_size=64",
        "train.epochs=12", "train.samples_per_user=6", "train.batch_size=128", "train.stopping_step=3"])
    split = build_split(cfg, cache_root)
    encoder = encoders.load_or_train(split, cfg, cache_root)
    tokenizer = AutoTokenizer.from_pretrained(str(_package_file(*BACKBONES.get("minilm"))))
    torch.manual_seed(0)
    model = BertModel(BertConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                                 vocab_size=tokenizer.vocab_size)).eval()
    for p in model.parameters():
        p.requires_grad_(False)
    backbone = Backbone("tiny-bert", model, tokenizer, is_decoder=False, fingerprint="tiny-bert-cycle")
    llm = FrozenLLM(backbone, FeatureStore(backbone, cache_root, 64), FeatureStore(backbone, cache_root, 16), 64)
    return cfg, split, encoder, llm


def _fit(cycle, name, **options):
    cfg, split, encoder, llm = cycle
    cls = registry.get(name)
    paradigm = cls()
    context = Context(config=cfg, options={**registry.options_for(cls, cfg), **options}, seed=0,
                      device=torch.device("cpu"), cache_dir=None, encoder=encoder, llm=llm,
                      generator=resources.seed_everything(0))
    fit_paradigm(paradigm, split, context)
    return validation_ndcg(split, paradigm.score, cfg)


def test_trained_ra_rec_reaches_its_encoders_accuracy_and_the_untrained_one_does_not(cycle):
    cfg, split, encoder, _ = cycle
    reference = validation_ndcg(split, lambda users, stage: encoder.score(
        [split.history(int(u), stage) for u in users]), cfg)
    assert reference > 0.8, "the encoder did not learn the cycle; the test data is broken"
    trained = _fit(cycle, "ra-rec", learning_rate=0.1)  # a tiny random backbone needs a large step
    untrained = _fit(cycle, "ra-rec-untrained")
    assert trained >= 0.9 * reference, (trained, reference)
    assert untrained < 0.9 * reference, (untrained, reference)


def test_ra_rec_lm_learns_the_next_title_beyond_its_initialisation(cycle):
    """ra-rec-lm on the same data with a tiny random LLaMA decoder (tied embeddings): after training on the
    target titles' likelihood, the target ranks well above where the initial prefixes put it among 19 sampled
    negatives (validation stage, the first 120 users)."""
    from transformers import LlamaConfig, LlamaModel

    from bench.metrics import evaluate_candidates, metrics_from_ranks
    from bench.protocols import candidate_lists, parse_protocols

    cfg, split, encoder, llm = cycle
    cfg = with_overrides(cfg, ["train.epochs=6"])
    torch.manual_seed(0)
    model = LlamaModel(LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                                   num_key_value_heads=2, vocab_size=llm.backbone.tokenizer.vocab_size,
                                   tie_word_embeddings=True)).eval()
    for p in model.parameters():
        p.requires_grad_(False)
    backbone = Backbone("tiny-llama", model, llm.backbone.tokenizer, is_decoder=True, fingerprint="tiny-llama-cycle")
    decoder = FrozenLLM(backbone, llm.prompts, llm.items, 64)
    lists = candidate_lists(split, parse_protocols(["uni19"]), 0)

    def ndcg(**options):
        cls = registry.get("ra-rec-lm")
        paradigm = cls()
        context = Context(config=cfg, options={**registry.options_for(cls, cfg), **options}, seed=0,
                          device=torch.device("cpu"), cache_dir=None, encoder=encoder, llm=decoder,
                          generator=resources.seed_everything(0))
        fit_paradigm(paradigm, split, context)
        users = split.users[:120]
        ranks = evaluate_candidates(lambda chunk, items: paradigm.score_candidates(chunk, "valid", items), users,
                                    split.target("valid")[users], {"uni19": lists["uni19"]["valid"][users - 1]})
        return float(metrics_from_ranks(ranks["uni19"], ["ndcg"], [10])["ndcg@10"].mean()), paradigm

    untrained, _ = ndcg(trained=False)
    trained, paradigm = ndcg(learning_rate=0.1)
    losses = paradigm.info["epoch_loss"]
    assert losses[-1] < losses[0], losses
    assert trained > untrained + 0.2, (trained, untrained)
