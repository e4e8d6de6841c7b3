"""The language-model toolkit of CoLoR-Filter scoring: tokenizer, GPT, training, loss engine, checkpoints."""

from __future__ import annotations

import math
import random

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from scoring.checkpoint import HFCausalLM, load_hf_causal_lm, load_model, save_model
from scoring.device import autocast_dtype, cpu_has_native_bf16, pick_device
from scoring.gpt import GPT, GPTConfig
from scoring.lm_loss import (SPREAD_PRIOR_NATS, SPREAD_PRIOR_TOKENS, DocumentLossEngine, evidence,
                             tokenize_documents, window_layout)
from scoring.tokenizer import EOS_TOKEN, PAD_TOKEN, eos_id, load_tokenizer, pad_id, save_tokenizer, train_tokenizer
from scoring.train import EarlyStopping, TrainConfig, batch_loss, finetune, lr_at, pad_windows, pretrain, validation_loss

VOCAB = 64
WORDS = "the cat sat on a mat while dogs ran far away and birds sang old songs".split()


@pytest.fixture(autouse=True)
def one_thread_fp32(monkeypatch):
    """Float32 everywhere (exact comparisons) and one thread: the shared 2-core CI box runs much
    faster single-threaded than with OpenMP threads fighting other processes."""
    monkeypatch.setenv("THRESHER_NO_BF16", "1")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def tiny_model(seed: int = 0, context: int = 16) -> GPT:
    torch.manual_seed(seed)
    return GPT(GPTConfig(vocab_size=VOCAB, context=context, n_layer=2, n_head=2, n_embd=32)).eval()


def random_docs(lengths, seed=0) -> list[list[int]]:
    rng = np.random.default_rng(seed)
    return [rng.integers(2, VOCAB, size=n).tolist() for n in lengths]


def manual_doc_loss(model, doc, context) -> float:
    """Independent reference: each window scored on its own, unpadded, summed, divided by n − 1."""
    total, count = 0.0, 0
    for start in range(0, len(doc) - 1, context):
        piece = torch.tensor(doc[start : start + context + 1])
        with torch.no_grad():
            logits = model(piece[None, :-1])[0]
        total += F.cross_entropy(logits, piece[1:], reduction="sum").item()
        count += len(piece) - 1
    return total / count


class Recorder(torch.nn.Module):
    """A model wrapper that keeps a copy of every input batch it is given."""

    def __init__(self, model):
        super().__init__()
        self.model, self.context, self.seen = model, model.context, []

    def forward(self, idx):
        self.seen.append(idx.clone())
        return self.model(idx)


def test_device_and_precision_choice(monkeypatch):
    assert pick_device("cpu") == torch.device("cpu")
    assert autocast_dtype("cpu") is None  # THRESHER_NO_BF16=1 from the fixture forces float32
    monkeypatch.delenv("THRESHER_NO_BF16")
    assert autocast_dtype("cpu") == (torch.bfloat16 if cpu_has_native_bf16() else None)


def test_bf16_scoring_stays_close_to_float32():
    model = tiny_model()
    docs = random_docs([30, 7, 50], seed=6)
    fp32, _ = DocumentLossEngine(model, dtype=None).score(docs)
    bf16, _ = DocumentLossEngine(model, dtype=torch.bfloat16).score(docs)
    np.testing.assert_allclose(bf16, fp32, atol=2e-2)


def test_tokenizer_is_deterministic_with_fixed_special_ids(tmp_path):
    texts = [" ".join(random.Random(i).choices(WORDS, k=30)) for i in range(50)]
    a, b = train_tokenizer(texts, vocab_size=300), train_tokenizer(texts, vocab_size=300)
    assert a.get_vocab() == b.get_vocab()
    assert pad_id(a) == 0 and a.token_to_id(PAD_TOKEN) == 0 and eos_id(a) == a.token_to_id(EOS_TOKEN) == 1
    save_tokenizer(a, tmp_path / "tok.json")
    loaded = load_tokenizer(tmp_path / "tok.json")
    assert tokenize_documents(loaded, texts[:5]) == tokenize_documents(a, texts[:5])
    assert tokenize_documents(a, ["héllo ✓"], prepend_id=1)[0][0] == 1  # byte-level: anything encodes
    assert a.decode(a.encode("the cat sat").ids) == "the cat sat"


def test_window_layout_predicts_every_target_once():
    win_doc, win_start, win_targets = window_layout(np.array([20, 1, 0, 9, 2]), context=8)
    assert win_doc.tolist() == [0, 0, 0, 3, 4]
    assert win_start.tolist() == [0, 8, 16, 0, 0]
    assert win_targets.tolist() == [8, 8, 3, 8, 1]  # 19 = 8 + 8 + 3 targets for 20 tokens


def test_document_alone_equals_document_in_padded_batch():
    model = tiny_model()
    docs = random_docs([3, 16, 9, 2, 12, 5, 40])
    together, n_together = DocumentLossEngine(model, batch_tokens=64, dtype=None).score(docs)
    alone = [DocumentLossEngine(model, batch_tokens=64, dtype=None).score([d])[0][0] for d in docs]
    np.testing.assert_allclose(together, alone, atol=1e-4)
    assert n_together.tolist() == [len(d) - 1 for d in docs]


def test_long_documents_are_windowed_and_token_weighted():
    model = tiny_model(context=16)
    doc = random_docs([45], seed=3)[0]  # 44 targets: windows of 16 + 16 + 12
    loss, n = DocumentLossEngine(model, batch_tokens=32, dtype=None).score([doc])
    assert n[0] == 44
    assert loss[0] == pytest.approx(manual_doc_loss(model, doc, 16), abs=1e-5)
    # The engine's own context can be lower than the model's.
    loss8, _ = DocumentLossEngine(model, context=8, dtype=None).score([doc])
    assert loss8[0] == pytest.approx(manual_doc_loss(model, doc, 8), abs=1e-5)
    # Capping a document's tokens scores its prefix.
    capped, n_capped = DocumentLossEngine(model, max_tokens_per_doc=20, dtype=None).score([doc])
    assert n_capped[0] == 19 and capped[0] == pytest.approx(manual_doc_loss(model, doc[:20], 16), abs=1e-5)


def test_pair_scoring_feeds_both_models_identical_windows():
    prior, cond = Recorder(tiny_model(0)), Recorder(tiny_model(1))
    docs = random_docs([5, 33, 17, 2, 8, 60], seed=4)
    prior_loss, cond_loss, n, _ = DocumentLossEngine([prior, cond], batch_tokens=48, dtype=None).score_difference(docs)
    assert len(prior.seen) == len(cond.seen) > 1
    for a, b in zip(prior.seen, cond.seen):
        assert torch.equal(a, b)
    assert not np.allclose(prior_loss, cond_loss)  # two different models
    np.testing.assert_allclose(prior_loss, DocumentLossEngine(prior.model, dtype=None).score(docs)[0], atol=1e-5)
    assert n.tolist() == [len(d) - 1 for d in docs]


def manual_token_losses(model, doc, context) -> np.ndarray:
    out = []
    for start in range(0, len(doc) - 1, context):
        piece = torch.tensor(doc[start : start + context + 1])
        with torch.no_grad():
            out.append(F.cross_entropy(model(piece[None, :-1])[0], piece[1:], reduction="none").numpy())
    return np.concatenate(out)


def test_pair_spread_and_evidence_match_a_hand_computation():
    prior, cond = tiny_model(0), tiny_model(1)
    docs = random_docs([40, 3, 25, 1, 70], seed=5)
    pair = DocumentLossEngine([prior, cond], batch_tokens=40, dtype=None).score_difference(docs)
    ev = evidence(pair)
    for i, doc in enumerate(docs):
        if len(doc) < 2:
            assert pair.n_tokens[i] == 0 and np.isnan(pair.prior_loss[i]) and np.isnan(ev[i])
            continue
        d = manual_token_losses(prior, doc, 16) - manual_token_losses(cond, doc, 16)
        assert pair.prior_loss[i] - pair.cond_loss[i] == pytest.approx(d.mean(), abs=1e-5)
        assert pair.diff_sd[i] == pytest.approx(d.std(), abs=1e-4)  # population sd over the doc's tokens
        n, k, s0 = len(d), SPREAD_PRIOR_TOKENS, SPREAD_PRIOR_NATS
        assert ev[i] == pytest.approx(d.mean() * math.sqrt(n) / math.sqrt((n * d.var() + k * s0 ** 2) / (n + k)),
                                      rel=1e-4)


def test_evidence_prefers_a_steady_long_reduction_to_a_short_lucky_one():
    """Two documents with the same mean reduction: the longer one is surer; a short one with a
    higher mean but a wide spread ranks below a long steady one (the t-statistic, not the mean)."""
    from scoring.lm_loss import PairScores
    pair = PairScores(prior_loss=np.array([5.0, 5.0, 5.6]), cond_loss=np.array([4.5, 4.5, 4.6]),
                      n_tokens=np.array([400, 40, 30]), diff_sd=np.array([2.0, 2.0, 3.0]))
    ev = evidence(pair)
    assert ev[0] > ev[1] and ev[0] > ev[2]
    assert (pair.prior_loss - pair.cond_loss)[2] > (pair.prior_loss - pair.cond_loss)[0]


def test_empty_and_single_token_documents_are_flagged_not_scored():
    model = Recorder(tiny_model())
    loss, n = DocumentLossEngine(model, dtype=None).score([[], [7], [7, 9], []])
    assert np.isnan(loss[[0, 1, 3]]).all() and np.isfinite(loss[2])
    assert n.tolist() == [0, 0, 1, 0]
    assert [t.shape for t in model.seen] == [torch.Size([1, 1])]  # only the 2-token document ran
    loss, n = DocumentLossEngine(model, dtype=None).score([[], [3]])
    assert np.isnan(loss).all() and n.tolist() == [0, 0]


def test_pretraining_reduces_loss_on_a_synthetic_corpus():
    # Documents are runs of consecutive ids (k, k+1, k+2, …): easy to learn, impossible to guess.
    rng = np.random.default_rng(0)
    docs = [list(range(s, s + n)) for s, n in zip(rng.integers(2, 30, 200), rng.integers(5, 30, 200))]
    stream = np.concatenate([np.array(d + [1]) for d in docs])
    model = tiny_model()
    before = validation_loss(model, docs[:50], dtype=None)
    stats = pretrain(model, stream, TrainConfig(lr=3e-3, batch_size=16, seq_len=16, tokens=16 * 16 * 120, seed=0))
    after = validation_loss(model, docs[:50], dtype=None)
    assert before > math.log(VOCAB) - 0.5
    assert after < 0.5 * before and stats["steps"] == 120 and stats["tokens"] == 16 * 16 * 120


def test_finetune_masks_padding_in_loss_and_gradients():
    model = tiny_model()
    short, long_ = random_docs([4, 15], seed=5)
    windows = [(short[:-1], short[1:]), (long_[:-1], long_[1:])]
    inputs, targets = pad_windows(windows)
    assert (targets[0, 3:] == -100).all()  # the short row is padded
    padded = batch_loss(model, inputs, targets)
    padded.backward()
    grads_padded = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    # Without padding: each row alone, combined by its token count.
    losses = [batch_loss(model, *pad_windows([w])) for w in windows]
    unpadded = (losses[0] * 3 + losses[1] * 14) / 17
    unpadded.backward()
    assert padded.item() == pytest.approx(unpadded.item(), abs=1e-6)
    for gp, p in zip(grads_padded, model.parameters()):
        torch.testing.assert_close(gp, p.grad, atol=1e-6, rtol=1e-5)


def test_finetune_one_pass_lowers_target_loss():
    model = tiny_model()
    target = [[5, 6, 7, 8, 9, 10, 11, 12][: n] for n in (3, 5, 8)] * 20
    before = validation_loss(model, target, dtype=None)
    progress = []
    stats = finetune(model, target, TrainConfig(lr=3e-3, batch_size=4, warmup_steps=3),
                     on_progress=lambda done, total: progress.append((done, total)))
    assert stats["steps"] == 15 and stats["warmup_steps"] == 3  # 60 documents, one pass, 4 per batch
    assert progress[-1] == (20 * (2 + 4 + 7), 20 * (2 + 4 + 7))  # real targets only, no padding
    assert validation_loss(model, target, dtype=None) < 0.7 * before


def test_lr_schedule_warms_up_to_peak_and_ends_at_a_tenth():
    cfg = TrainConfig(lr=1e-3, warmup_frac=0.05)
    lrs = [lr_at(s, 200, 10, cfg) for s in range(200)]
    assert lrs[0] == pytest.approx(1e-4) and lrs[9] == pytest.approx(1e-3) and lrs[10] == pytest.approx(1e-3)
    assert lrs[-1] == pytest.approx(1e-4)  # min_lr_frac 0.1 × peak
    assert lrs[105] == pytest.approx(1e-4 + 0.9e-3 * 0.5 * (1 + math.cos(math.pi * 95 / 189)))
    assert all(a >= b for a, b in zip(lrs[10:], lrs[11:]))
    # The schedule pretrain applies: 40 steps, warm-up 5% of them = 2 steps.
    stats = pretrain(tiny_model(), np.arange(500) % VOCAB, TrainConfig(batch_size=2, seq_len=16, tokens=2 * 16 * 40))
    assert stats["warmup_steps"] == 2 and stats["lrs"][1] == pytest.approx(1e-3) and stats["lrs"][-1] == pytest.approx(1e-4)


def test_save_load_round_trip_gives_identical_losses(tmp_path):
    texts = [" ".join(random.Random(i).choices(WORDS, k=20)) for i in range(30)]
    tok = train_tokenizer(texts, vocab_size=300)
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=tok.get_vocab_size(), context=16, n_layer=1, n_head=2, n_embd=16))
    docs = tokenize_documents(tok, texts)
    save_model(tmp_path / "m", model, tok, {"trained_on": "test", "steps": 0})
    loaded, loaded_tok, meta = load_model(tmp_path / "m")
    assert meta == {"trained_on": "test", "steps": 0}
    assert loaded.lm_head.weight.data_ptr() == loaded.wte.weight.data_ptr()  # still tied
    assert tokenize_documents(loaded_tok, texts) == docs
    a = DocumentLossEngine(model, dtype=None).score(docs)[0]
    b = DocumentLossEngine(loaded, dtype=None).score(docs)[0]
    np.testing.assert_array_equal(a, b)


def test_hugging_face_checkpoint_scores_like_our_models(tmp_path):
    from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

    texts = [" ".join(random.Random(i).choices(WORDS, k=25)) for i in range(40)]
    tok = train_tokenizer(texts, vocab_size=200)
    PreTrainedTokenizerFast(tokenizer_object=tok, pad_token=PAD_TOKEN, eos_token=EOS_TOKEN).save_pretrained(tmp_path)
    torch.manual_seed(0)
    config = GPT2Config(vocab_size=tok.get_vocab_size(), n_positions=32, n_embd=32, n_layer=2, n_head=2,
                        bos_token_id=eos_id(tok), eos_token_id=eos_id(tok))
    GPT2LMHeadModel(config).save_pretrained(tmp_path)

    model, hf_tok, meta = load_hf_causal_lm(tmp_path)
    assert isinstance(model, HFCausalLM) and model.context == 32 and meta["model_type"] == "gpt2"
    assert load_hf_causal_lm(tmp_path, context=16)[0].context == 16
    docs = tokenize_documents(hf_tok, texts)
    assert docs == tokenize_documents(tok, texts)
    docs = [docs[1][:20]] + docs  # the first fits in one window; most others span several
    loss, n = DocumentLossEngine(model, batch_tokens=128, dtype=None).score(docs)
    with torch.no_grad():
        ids = torch.tensor([docs[0]])
        reference = model.hf_model(input_ids=ids, labels=ids).loss.item()  # HF's own shifted CE
    assert loss[0] == pytest.approx(reference, abs=1e-5)
    assert loss[-1] == pytest.approx(manual_doc_loss(model, docs[-1], 32), abs=1e-5)
    assert n[-1] == len(docs[-1]) - 1


def test_early_stopping_stops_after_patience_and_keeps_the_best_weights():
    model = tiny_model()
    values = iter([5.0, 4.0, 3.0, 3.5, 3.2, 3.1, 1.0])  # best at the 3rd evaluation, then 3 without gain
    snapshots = []

    def evaluate():
        assert not model.training
        snapshots.append([p.detach().clone() for p in model.parameters()])
        return next(values)

    cfg = TrainConfig(lr=3e-3, batch_size=2, seq_len=16, tokens=2 * 16 * 100)
    stats = pretrain(model, np.arange(500) % VOCAB, cfg, early_stopping=EarlyStopping(evaluate, every_tokens=2 * 16 * 5, patience=3))
    assert [t for t, _ in stats["evaluations"]] == [160, 320, 480, 640, 800, 960]
    assert stats["steps"] == 30 and stats["tokens"] == 960  # stopped at the 6th evaluation of 20
    assert stats["best_eval"] == 3.0 and stats["best_tokens"] == 480
    for kept, p in zip(snapshots[2], model.parameters()):
        torch.testing.assert_close(kept, p.detach(), rtol=0, atol=0)
    assert not model.training


def test_early_stopping_counts_the_end_of_the_schedule():
    model = tiny_model()
    values = iter([5.0, 4.0, 3.0])
    cfg = TrainConfig(batch_size=2, seq_len=16, tokens=2 * 16 * 25)
    stats = pretrain(model, np.arange(500) % VOCAB, cfg, early_stopping=EarlyStopping(lambda: next(values), every_tokens=2 * 16 * 10))
    assert stats["evaluations"] == [(320, 5.0), (640, 4.0), (800, 3.0)] and stats["best_tokens"] == 800
