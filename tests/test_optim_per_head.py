"""``param_groups(model, orthogonalize="per_head")``: heads read from muonlab's dense and MLA models, from
the configs of Hugging Face architectures, and from a custom module's declaration; each head's block
is orthogonalized on its own (the block math itself is checked against float64 in test_optim_variants)."""

import pytest
import torch
from torch import nn

from muonlab.models import ModelConfig, Transformer
from muonlab.optim import Muon, param_groups, routing_table

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


def _layouts(groups) -> dict[str, tuple]:
    """name -> (row blocks, column blocks) of every Muon parameter."""
    return {n: (g.get("blocks", 1), g.get("col_blocks", 1)) for g in groups if g["algorithm"] == "muon"
            for n in g["names"]}


def test_dense_gqa_model_blocks_per_head():
    model = Transformer(ModelConfig(vocab_size=64, d_model=32, n_layers=1, n_heads=4, n_kv_heads=2, ffn_hidden=48,
                                    max_seq_len=16))
    layouts = _layouts(param_groups(model, orthogonalize="per_head"))
    attn = "layers.0.attn."
    assert layouts[attn + "wq.weight"] == (4, 1)
    assert layouts[attn + "wk.weight"] == layouts[attn + "wv.weight"] == (2, 1)
    assert layouts[attn + "wo.weight"] == (1, 4)
    assert all(v == (1, 1) for k, v in layouts.items() if ".mlp." in k)
    assert all(v == (1, 1) for v in _layouts(param_groups(model)).values())  # the default is whole matrices


def test_mla_up_projections_per_head_and_shared_projections_whole():
    model = Transformer(ModelConfig(vocab_size=64, d_model=16, n_layers=2, n_heads=2, ffn_hidden=34, max_seq_len=16,
                                    attention="mla", kv_lora_rank=9, v_head_dim=4, n_routed_experts=4,
                                    n_shared_experts=1, top_k=2, expert_ffn_hidden=6))
    layouts = _layouts(param_groups(model, orthogonalize="per_head"))
    attn = "layers.0.attn."
    for name in ("wq_nope", "wq_rope", "wk_up", "wv_up"):
        assert layouts[attn + name + ".weight"] == (2, 1), name
    assert layouts[attn + "wo.weight"] == (1, 2)
    for name in ("wkv_down", "wk_rope"):
        assert layouts[attn + name + ".weight"] == (1, 1), name


def _hf_models():
    tf = pytest.importorskip("transformers")
    from hf_models import VOCAB, tiny_configs

    common = dict(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                  intermediate_size=64, max_position_embeddings=64, bos_token_id=1, eos_token_id=2)
    configs = dict(tiny_configs())
    configs.update({
        "mistral": tf.MistralConfig(**common, num_key_value_heads=2),
        "qwen3": tf.Qwen3Config(**common, num_key_value_heads=2, head_dim=8),
        "gemma": tf.GemmaConfig(**common, num_key_value_heads=2, head_dim=8),
        "phi3": tf.Phi3Config(**common, num_key_value_heads=2, pad_token_id=0),
        "qwen3_moe": tf.Qwen3MoeConfig(**common, num_key_value_heads=2, head_dim=8, num_experts=4,
                                       num_experts_per_tok=2, moe_intermediate_size=16),
        "olmo2": tf.Olmo2Config(**common, num_key_value_heads=2, pad_token_id=0),
        "gpt_neox": tf.GPTNeoXConfig(**common),
    })
    return configs


HF_NAMES = ["gpt2", "llama", "qwen2", "mixtral", "qwen2_moe", "deepseek_v3", "mistral", "qwen3", "gemma", "phi3",
            "qwen3_moe", "olmo2", "gpt_neox"]


def _expected_head_sizes(config) -> dict[str, tuple[str, int]]:
    """Projection name -> (side, head size), from the config alone."""
    heads = getattr(config, "num_attention_heads", None) or config.n_head
    hidden = getattr(config, "hidden_size", None) or config.n_embd
    head_dim = getattr(config, "head_dim", None) or hidden // heads
    if getattr(config, "kv_lora_rank", None):  # DeepSeek-V3's MLA
        return {"q_proj": ("rows", config.qk_nope_head_dim + config.qk_rope_head_dim), "q_b_proj": (
            "rows", config.qk_nope_head_dim + config.qk_rope_head_dim), "kv_b_proj": (
            "rows", config.qk_nope_head_dim + config.v_head_dim), "o_proj": ("cols", config.v_head_dim)}
    sizes = {name: ("rows", head_dim) for name in ("q_proj", "k_proj", "v_proj", "qkv_proj", "c_attn",
                                                   "query_key_value")}
    sizes.update({name: ("cols", head_dim) for name in ("o_proj", "dense")})
    sizes["c_proj"] = ("cols", head_dim)
    return sizes


@pytest.mark.parametrize("name", HF_NAMES)
def test_hf_attention_projections_block_by_head(name):
    tf = pytest.importorskip("transformers")
    config = _hf_models()[name]
    torch.manual_seed(0)
    model = tf.AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    groups = param_groups(model, orthogonalize="per_head")
    expected = _expected_head_sizes(config)
    modules = dict(model.named_modules())
    seen = 0
    for group in groups:
        if group["algorithm"] != "muon" or group["role"] != "hidden":
            continue
        for full in group["names"]:
            module_name = full.rsplit(".", 1)[0]
            kind = module_name.rsplit(".", 1)[-1]
            if kind not in expected or (kind == "c_proj" and ".mlp." in full):
                assert (group.get("blocks", 1), group.get("col_blocks", 1)) == (1, 1), full
                continue
            side, size = expected[kind]
            module = modules[module_name]
            out_f, in_f = ((module.nf, module.nx) if type(module).__name__ == "Conv1D"
                           else (module.out_features, module.in_features))
            count = group.get("blocks" if side == "rows" else "col_blocks", 1)
            assert count * size == (out_f if side == "rows" else in_f), (full, count, size)
            seen += 1
    assert seen >= 4  # two layers, at least a fused or q projection and an output projection each
    optimizer = Muon(groups, lr=1e-3, ns_dtype=torch.float32)
    x = torch.randint(3, 90, (2, 12))
    model(input_ids=x, labels=x).loss.backward()
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    optimizer.step()
    changed = [n for n, p in model.named_parameters() if not torch.equal(before[n], p.detach())]
    assert changed and all(torch.isfinite(p).all() for p in model.parameters())


class Declared(nn.Module):
    muon_roles = {"w": "hidden", "u": "hidden"}
    muon_layouts = {"w": {"heads": [16, 8, 8]}, "u": {"col_heads": 2}}

    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.randn(32, 8))
        self.u = nn.Parameter(torch.randn(16, 32))


def test_custom_module_declares_heads_and_table_shows_them():
    layouts = _layouts(param_groups(Declared(), orthogonalize="per_head"))
    assert layouts == {"w": ([16, 8, 8], 1), "u": (1, 2)}
    table = routing_table(Declared(), orthogonalize="per_head")
    assert "hidden (3 blocks)" in table and "hidden (2 column blocks)" in table
    assert "0.800/0.566" in table  # each block by its own shape: 0.2·sqrt(16) for [16, 8], 0.2·sqrt(8) for [8, 8]


def test_unknown_orthogonalize_and_misfit_heads_name_themselves():
    with pytest.raises(ValueError, match="orthogonalize='heads' is not one of"):
        param_groups(Declared(), orthogonalize="heads")

    class Misfit(Declared):
        muon_layouts = {"w": {"heads": 5}}

    with pytest.raises(ValueError, match="parameter 'w' of shape \\(32, 8\\) cannot be laid out as declared"):
        param_groups(Misfit(), orthogonalize="per_head")


def test_train_config_and_trainer_pass_the_refinements_on():
    from types import SimpleNamespace

    from muonlab.integrations.hf_trainer import muon_trainer_optimizers
    from muonlab.train.config import ConfigError, TrainConfig
    from muonlab.train.loop import build_optimizer

    model = Transformer(ModelConfig(vocab_size=64, d_model=32, n_layers=1, n_heads=4, n_kv_heads=2, ffn_hidden=48,
                                    max_seq_len=16))
    config = TrainConfig(orthogonalize="per_head", normuon=True, normuon_beta2=0.9, cautious_wd=True)
    args = SimpleNamespace(learning_rate=1e-3, weight_decay=0.1, adam_beta1=0.9, adam_beta2=0.95, adam_epsilon=1e-8)
    trainer_optimizer, _ = muon_trainer_optimizers(model, args, orthogonalize="per_head", normuon=True,
                                                   normuon_beta2=0.9, cautious_wd=True)
    for optimizer in (build_optimizer(model, config), trainer_optimizer):
        muon = [g for g in optimizer.param_groups if g["algorithm"] == "muon"]
        assert all(g["normuon"] and g["normuon_beta2"] == 0.9 and g["cautious_wd"] for g in muon)
        assert _layouts(optimizer.param_groups)["layers.0.attn.wo.weight"] == (1, 4)
    with pytest.raises(ConfigError, match="normuon_beta2 must lie in \\[0, 1\\), got 1.0"):
        TrainConfig(normuon_beta2=1.0)
    with pytest.raises(ConfigError, match="orthogonalize='heads' is not valid"):
        TrainConfig(orthogonalize="heads")


def test_row_state_index_of_a_region_names_its_column_block():
    """NorMuon's row state of a [8, 12] matrix with column blocks of 4: column block j's row i at j·8 + i. A region
    of whole blocks starts at a block edge; one that cuts a block (a deliberately wrong shard-local plan) keeps
    the rows of the block it starts in; a column outside the matrix names itself."""
    from muonlab.optim.blocks import Blocks

    whole = Blocks((8,), (4, 4, 4))
    assert [whole.col_block_of(c) for c in (0, 3, 4, 5, 8, 11)] == [0, 0, 1, 1, 2, 2]
    (index,) = Blocks((8,), (4,)).row_index(0, whole.col_block_of(4), 8)
    assert index.tolist() == [list(range(8, 16))]
    with pytest.raises(ValueError, match="column 12 lies outside the matrix's 12 columns"):
        whole.col_block_of(12)
