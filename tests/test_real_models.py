"""Real architectures, built small from code or configs (nothing downloaded): the default selection names
exactly their weight matrices, SynFlow, SNIP and magnitude keep exactly round(d*N) weights, and the pruned
model still runs."""

import copy

import pytest
import torch
from lightning.pytorch import LightningModule, Trainer
from torch import nn
from torch.nn import functional as F
from torch.utils.data import DataLoader, TensorDataset

from lightning_synflow import (
    PruneAtInit, PruningDiagnostics, apply_masks, compute_masks, compute_scores, num_kept, select_prunable, sparsity_report,
)

SPARSITY = 0.9


def logits(out):
    """Hugging Face models return a ModelOutput; everything else here returns the logits."""
    return out.logits if hasattr(out, "logits") else out


def classification_loss(model, batch):
    x, y = batch
    out = logits(model(*x) if isinstance(x, tuple) else model(x))
    return F.cross_entropy(out.reshape(-1, out.shape[-1]), y.reshape(-1))


def check_pruning(model, expected, x, y):
    """Default selection == ``expected``; each scorer keeps exactly round(d*N); the pruned model runs."""
    assert select_prunable(model) == expected
    total = sum(p.numel() for n, p in model.named_parameters() if n in expected)
    for scorer in ("synflow", "snip", "magnitude"):
        masks = compute_masks(
            model, scorer, sparsity=SPARSITY, iterations=5 if scorer == "synflow" else None, example_input=x,
            dataloader=[(x, y)], loss_fn=classification_loss,
        )
        assert list(masks) == expected
        assert sum(int(m.sum()) for m in masks.values()) == num_kept(1 - SPARSITY, total), scorer
        pruned = copy.deepcopy(model).eval()
        apply_masks(pruned, masks)
        with torch.no_grad():
            out = logits(pruned(*x) if isinstance(x, tuple) else pruned(x))
        assert torch.isfinite(out).all(), scorer


def test_vision_transformer():
    torchvision = pytest.importorskip("torchvision")
    torch.manual_seed(0)
    model = torchvision.models.VisionTransformer(
        image_size=32, patch_size=8, num_layers=2, num_heads=2, hidden_dim=32, mlp_dim=64, num_classes=10
    )
    blocks = [
        f"encoder.layers.encoder_layer_{i}.{t}"
        for i in range(2)
        for t in ("self_attention.in_proj_weight", "self_attention.out_proj.weight", "mlp.0.weight", "mlp.3.weight")
    ]
    check_pruning(model, ["conv_proj.weight", *blocks, "heads.head.weight"], torch.randn(2, 3, 32, 32), torch.tensor([1, 7]))


def test_swin_transformer():
    swin = pytest.importorskip("torchvision.models.swin_transformer")
    torch.manual_seed(0)
    model = swin.SwinTransformer(
        patch_size=[4, 4], embed_dim=8, depths=[1, 1], num_heads=[1, 2], window_size=[2, 2], num_classes=10
    )
    block = ("attn.qkv.weight", "attn.proj.weight", "mlp.0.weight", "mlp.3.weight")
    expected = [
        "features.0.0.weight",  # the patch embedding convolution
        *[f"features.1.0.{t}" for t in block],
        "features.2.reduction.weight",  # patch merging
        *[f"features.3.0.{t}" for t in block],
        "head.weight",
    ]  # not the relative position bias tables, norms or biases
    check_pruning(model, expected, torch.randn(2, 3, 16, 16), torch.tensor([1, 7]))


class Seq2Seq(nn.Module):
    """``nn.Transformer`` on (source, target) feature sequences, a Linear head."""

    def __init__(self):
        super().__init__()
        self.transformer = nn.Transformer(
            d_model=16, nhead=2, num_encoder_layers=1, num_decoder_layers=1, dim_feedforward=32, batch_first=True
        )
        self.head = nn.Linear(16, 5)

    def forward(self, src, tgt):
        return self.head(self.transformer(src, tgt))


def test_nn_transformer_encoder_decoder():
    torch.manual_seed(0)
    enc = "transformer.encoder.layers.0"
    dec = "transformer.decoder.layers.0"
    expected = [
        f"{enc}.self_attn.in_proj_weight", f"{enc}.self_attn.out_proj.weight", f"{enc}.linear1.weight", f"{enc}.linear2.weight",
        f"{dec}.self_attn.in_proj_weight", f"{dec}.self_attn.out_proj.weight",
        f"{dec}.multihead_attn.in_proj_weight", f"{dec}.multihead_attn.out_proj.weight",
        f"{dec}.linear1.weight", f"{dec}.linear2.weight",
        "head.weight",
    ]
    x = (torch.randn(2, 6, 16), torch.randn(2, 4, 16))
    check_pruning(Seq2Seq(), expected, x, torch.randint(0, 5, (2, 4)))


def test_nn_transformer_encoder_classifier():
    torch.manual_seed(0)
    layer = nn.TransformerEncoderLayer(d_model=16, nhead=2, dim_feedforward=32, batch_first=True)
    model = nn.Sequential(nn.TransformerEncoder(layer, num_layers=2, enable_nested_tensor=False), nn.Flatten(), nn.Linear(6 * 16, 3))
    expected = [
        f"0.layers.{i}.{t}" for i in range(2)
        for t in ("self_attn.in_proj_weight", "self_attn.out_proj.weight", "linear1.weight", "linear2.weight")
    ] + ["2.weight"]
    check_pruning(model, expected, torch.randn(2, 6, 16), torch.tensor([0, 2]))


class LSTMClassifier(nn.Module):
    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(30, 8)
        self.lstm = nn.LSTM(8, 12, num_layers=2, bidirectional=True, proj_size=6, batch_first=True)
        self.fc = nn.Linear(12, 3)

    def forward(self, tokens):
        out, _ = self.lstm(self.embed(tokens))
        return self.fc(out[:, -1])


def test_lstm_classifier_on_tokens():
    torch.manual_seed(0)
    lstm = [f"lstm.weight_{k}_l{layer}{d}" for layer in (0, 1) for d in ("", "_reverse") for k in ("ih", "hh", "hr")]
    check_pruning(LSTMClassifier(), [*lstm, "fc.weight"], torch.randint(0, 30, (2, 7)), torch.tensor([0, 2]))


class TiedLM(nn.Module):
    """Token and position embeddings, one block, and an output head tied to the token embedding."""

    def __init__(self, vocab=40, dim=16, length=8):
        super().__init__()
        self.embed = nn.Embedding(vocab, dim)
        self.pos = nn.Embedding(length, dim)
        self.block = nn.TransformerEncoderLayer(dim, 2, dim_feedforward=32, batch_first=True)
        self.head = nn.Linear(dim, vocab, bias=False)
        self.head.weight = self.embed.weight

    def forward(self, tokens):
        positions = torch.arange(tokens.shape[1], device=tokens.device)
        return self.head(self.block(self.embed(tokens) + self.pos(positions)))


LM_BLOCK = ["block.self_attn.in_proj_weight", "block.self_attn.out_proj.weight", "block.linear1.weight", "block.linear2.weight"]


@pytest.mark.parametrize("scorer", ["synflow", "snip", "magnitude"])
def test_a_tied_embedding_and_head_are_pruned_once_and_alike(scorer):
    torch.manual_seed(0)
    model = TiedLM()
    tokens = torch.randint(0, 40, (2, 8))
    masks = compute_masks(
        model, scorer, sparsity=SPARSITY, iterations=5 if scorer == "synflow" else None, example_input=tokens,
        dataloader=[(tokens, tokens.roll(-1, 1))], loss_fn=classification_loss,
    )
    assert list(masks) == ["embed.weight", *LM_BLOCK]  # the tied tensor under its named_parameters name
    total = sum(m.numel() for m in masks.values())
    assert sum(int(m.sum()) for m in masks.values()) == num_kept(1 - SPARSITY, total)
    apply_masks(model, masks)
    assert torch.equal(model.embed.weight != 0, masks["embed.weight"])
    assert torch.equal(model.head.weight != 0, masks["embed.weight"])
    assert torch.isfinite(model(tokens)).all()


def test_gpt2_built_from_a_config():
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    config = transformers.GPT2Config(n_layer=2, n_head=2, n_embd=32, vocab_size=100, n_positions=32, bos_token_id=0, eos_token_id=0)
    model = transformers.GPT2LMHeadModel(config)
    blocks = [f"transformer.h.{i}.{t}" for i in range(2) for t in ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")]
    tokens = torch.randint(0, 100, (2, 16))
    # the token embedding is tied to lm_head, a Linear; the position embedding wpe, norms and biases stay dense
    check_pruning(model, ["transformer.wte.weight", *blocks], tokens, tokens.roll(-1, 1))


class LogitsOnly(nn.Module):
    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, tokens):
        return self.model(tokens).logits


def test_gpt2_synflow_sums_the_logits_of_its_model_output():
    """R sums every floating tensor of the output: a ModelOutput's logits. Without ``use_cache=False`` it would
    also sum the key/value cache where that is returned as tensors (transformers 4.x; 5.x returns a Cache
    object, which is no tensor and is left out)."""
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    config = transformers.GPT2Config(
        n_layer=1, n_head=2, n_embd=16, vocab_size=50, n_positions=16, bos_token_id=0, eos_token_id=0, use_cache=False
    )
    model = transformers.GPT2LMHeadModel(config)
    tokens = torch.zeros(1, 8, dtype=torch.long)
    direct = compute_scores(model, "synflow", example_input=tokens)
    wrapped = compute_scores(LogitsOnly(model), "synflow", example_input=tokens)
    assert list(wrapped) == [f"model.{n}" for n in direct]
    assert all(torch.equal(direct[n], wrapped[f"model.{n}"]) for n in direct)


def test_bert_built_from_a_config():
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    config = transformers.BertConfig(
        vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
        max_position_embeddings=32, num_labels=3,
    )
    model = transformers.BertForSequenceClassification(config)
    layer = (
        "attention.self.query.weight", "attention.self.key.weight", "attention.self.value.weight",
        "attention.output.dense.weight", "intermediate.dense.weight", "output.dense.weight",
    )
    expected = [f"bert.encoder.layer.{i}.{t}" for i in range(2) for t in layer] + ["bert.pooler.dense.weight", "classifier.weight"]
    # word, position and token-type embeddings (the latter two looked up from buffers) and norms stay dense
    check_pruning(model, expected, torch.randint(0, 100, (2, 12)), torch.tensor([0, 2]))


def test_a_frozen_backbone_stays_dense_and_is_listed_as_frozen():
    torchvision = pytest.importorskip("torchvision")
    torch.manual_seed(0)
    model = torchvision.models.VisionTransformer(
        image_size=32, patch_size=8, num_layers=1, num_heads=2, hidden_dim=32, mlp_dim=64, num_classes=10
    )
    model.requires_grad_(False)
    model.heads.requires_grad_(True)  # fine-tuning the head only
    masks = compute_masks(model, "synflow", sparsity=0.5, iterations=2, example_input=torch.zeros(1, 3, 32, 32))
    assert list(masks) == ["heads.head.weight"]
    report = sparsity_report(model, masks)
    assert [t.name for t in report.frozen] == [
        "conv_proj.weight", "encoder.layers.encoder_layer_0.self_attention.in_proj_weight",
        "encoder.layers.encoder_layer_0.self_attention.out_proj.weight",
        "encoder.layers.encoder_layer_0.mlp.0.weight", "encoder.layers.encoder_layer_0.mlp.3.weight",
    ]
    assert report.total == 320
    everything = compute_masks(model, "magnitude", sparsity=0.5, parameters=select_prunable(model, include_frozen=True))
    assert len(everything) == 6


class LightningLM(LightningModule):
    """The tied LM trained on (tokens, next tokens) batches, one of its weight matrices frozen."""

    def __init__(self):
        super().__init__()
        self.lm = TiedLM()
        self.lm.block.linear2.requires_grad_(False)

    def forward(self, tokens):
        return self.lm(tokens)

    def training_step(self, batch, batch_idx):
        return classification_loss(self, batch)

    def configure_optimizers(self):
        return torch.optim.SGD([p for p in self.parameters() if p.requires_grad], lr=0.1)

    def train_dataloader(self):
        tokens = torch.randint(0, 40, (8, 8), generator=torch.Generator().manual_seed(0))
        return DataLoader(TensorDataset(tokens, tokens.roll(-1, 1)), batch_size=4)


@pytest.mark.parametrize("include_frozen", [False, True])
def test_prune_at_init_scores_a_token_model_from_its_first_batch_and_keeps_frozen_weights_dense(tmp_path, include_frozen):
    torch.manual_seed(0)
    model = LightningLM()
    pruner = PruneAtInit(sparsity=SPARSITY, iterations=3, include_frozen=include_frozen, verbose=False)
    trainer = Trainer(
        max_steps=2, accelerator="cpu", devices=1, default_root_dir=tmp_path, logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, callbacks=[pruner],
    )
    trainer.fit(model)
    frozen = "lm.block.linear2.weight"
    expected = ["lm.embed.weight", *[f"lm.{n}" for n in LM_BLOCK]]
    assert list(pruner.masks) == (expected if include_frozen else [n for n in expected if n != frozen])
    if not include_frozen:
        assert (model.lm.block.linear2.weight != 0).all()
        assert [t.name for t in sparsity_report(model, pruner.masks).frozen] == [frozen]


class LightningBert(LightningModule):
    """A Hugging Face model called with keyword inputs, trained on dict batches, as HF users write it."""

    def __init__(self):
        super().__init__()
        from transformers import BertConfig, BertForSequenceClassification

        config = BertConfig(vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                            intermediate_size=64, max_position_embeddings=32, num_labels=3)
        self.bert = BertForSequenceClassification(config)
        self.example_input_array = {"input_ids": torch.zeros(1, 16, dtype=torch.long),
                                    "attention_mask": torch.ones(1, 16, dtype=torch.long)}

    def forward(self, input_ids, attention_mask):
        return self.bert(input_ids=input_ids, attention_mask=attention_mask).logits

    def training_step(self, batch, batch_idx):
        return F.cross_entropy(self(batch["input_ids"], batch["attention_mask"]), batch["labels"])

    def configure_optimizers(self):
        return torch.optim.AdamW(self.parameters(), lr=1e-3)

    def train_dataloader(self):
        g = torch.Generator().manual_seed(0)
        data = [{"input_ids": torch.randint(0, 100, (16,), generator=g), "attention_mask": torch.ones(16, dtype=torch.long),
                 "labels": torch.tensor(i % 3)} for i in range(16)]
        return DataLoader(data, batch_size=8)


@pytest.mark.parametrize("scorer", ["synflow", "snip", "grasp"])
def test_a_keyword_input_model_on_dict_batches_in_lightning(tmp_path, scorer):
    pytest.importorskip("transformers")
    torch.manual_seed(0)
    model = LightningBert()
    pruner = PruneAtInit(scorer=scorer, sparsity=SPARSITY, iterations=3)
    Trainer(max_steps=2, accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False,
            enable_model_summary=False, default_root_dir=tmp_path, callbacks=[pruner]).fit(model)
    params = dict(model.named_parameters())
    assert "bert.bert.encoder.layer.0.attention.self.query.weight" in pruner.masks
    total = sum(params[n].numel() for n in pruner.masks)
    assert sum(int(m.sum()) for m in pruner.masks.values()) == num_kept(1 - SPARSITY, total)
    assert all((params[n][~m] == 0).all() for n, m in pruner.masks.items())


def test_a_keyword_input_gives_synflow_the_same_scores_as_the_positional_one():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4))

    class Keyword(nn.Module):
        def __init__(self):
            super().__init__()
            self.net = net

        def forward(self, x):
            return self.net(x)

    positional = compute_scores(net, "synflow", example_input=torch.zeros(1, 8))
    keyword = compute_scores(Keyword(), "synflow", example_input={"x": torch.zeros(1, 8)})
    assert all(torch.equal(positional[n], keyword[f"net.{n}"]) for n in positional)


class WeightNormed(LightningModule):
    def __init__(self):
        super().__init__()
        from torch.nn.utils.parametrizations import spectral_norm, weight_norm

        self.net = nn.Sequential(weight_norm(nn.Linear(32, 32)), nn.ReLU(), spectral_norm(nn.Linear(32, 32)), nn.ReLU(),
                                 nn.Linear(32, 4))
        self.example_input_array = torch.zeros(1, 32)

    def forward(self, x):
        return self.net(x)

    def training_step(self, batch, batch_idx):
        return F.cross_entropy(self(batch[0]), batch[1])

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=1e-2)

    def train_dataloader(self):
        return DataLoader(TensorDataset(torch.randn(32, 32), torch.randint(0, 4, (32,))), batch_size=8)


@pytest.mark.parametrize("scorer", ["synflow", "snip", "magnitude"])
def test_weight_norm_and_spectral_norm_layers_are_pruned_through_their_stored_weight(tmp_path, scorer):
    torch.manual_seed(0)
    model = WeightNormed()
    expected = ["net.0.parametrizations.weight.original1", "net.2.parametrizations.weight.original", "net.4.weight"]
    assert select_prunable(model) == expected
    pruner = PruneAtInit(scorer=scorer, sparsity=0.5)  # leaves no weight_norm row empty
    Trainer(max_steps=4, accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False,
            enable_model_summary=False, default_root_dir=tmp_path, callbacks=[pruner]).fit(model)
    assert list(pruner.masks) == expected
    assert sum(int(m.sum()) for m in pruner.masks.values()) == num_kept(0.5, 32 * 32 + 32 * 32 + 32 * 4)
    assert all(torch.isfinite(p).all() for p in model.parameters())
    with torch.no_grad():  # the weights the layers compute from their stored tensors are pruned too
        assert (model.net[0].weight[~pruner.masks[expected[0]]] == 0).all()
        assert (model.net[2].weight[~pruner.masks[expected[1]]] == 0).all()


def test_uninitialised_lazy_layers_get_a_clear_error():
    model = nn.Sequential(nn.LazyLinear(16), nn.ReLU(), nn.Linear(16, 4))
    with pytest.raises(ValueError, match=r"uninitialised \(lazy\) parameters \['0.weight'\]: run one forward pass"):
        compute_masks(model, "magnitude", sparsity=0.5)


def test_emptying_a_weight_norm_row_is_refused_before_any_weight_is_touched():
    torch.manual_seed(0)
    model = WeightNormed()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    pruner = PruneAtInit(scorer="magnitude", sparsity=0.99)
    trainer = Trainer(max_steps=1, accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False,
                      enable_model_summary=False, callbacks=[pruner])
    with pytest.raises(ValueError, match=r"pruning empties slice\(s\) \[\d+.*\(dim 0\) of 'net.0.parametrizations.weight.original1', the direction of a weight_norm layer"):
        trainer.fit(model)
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())


def test_jacobian_logging_on_a_token_model_is_refused_before_any_weight_is_touched(tmp_path):
    torch.manual_seed(0)
    model = LightningLM()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    trainer = Trainer(max_steps=1, accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False,
                      enable_model_summary=False, default_root_dir=tmp_path, callbacks=[PruneAtInit(sparsity=0.5), PruningDiagnostics(log_jacobian=True)])
    with pytest.raises(ValueError, match=r"PruningDiagnostics\(log_jacobian=True\) takes the Jacobian .* LightningLM gets torch.int64 tensors"):
        trainer.fit(model)
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())
