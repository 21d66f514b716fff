"""Export and import round trips beyond the one-head models of test_hf_export.py: multi-head and
grouped-query attention (Llama), MLA with a query LoRA (``q_lora_rank > 0``) and an MoE without shared
experts (DeepSeek-V3). Each model goes muonlab -> transformers (``hf_config`` + ``to_hf_state``, as
``muonlab export`` does) -> a saved folder -> muonlab (``read_hf_folder``, as ``--init_from`` does),
and the logits agree with the original's at every hop."""

from __future__ import annotations

import pytest
import torch

from muonlab.data import ByteTokenizer
from muonlab.models import Transformer, preset

tf = pytest.importorskip("transformers")
pytestmark = pytest.mark.filterwarnings("ignore::UserWarning", "ignore::FutureWarning")

VOCAB, SEQ = 257, 32
CASES = {
    "multi-head": dict(name="tiny", n_heads=4),
    "gqa": dict(name="tiny", n_heads=4, n_kv_heads=2),
    "mla-q-lora": dict(name="moe-tiny", n_heads=2, q_lora_rank=16),
    "moe-no-shared-experts": dict(name="moe-tiny", n_shared_experts=0),
}
TOLERANCE = 2e-5


def _model(case: dict, seed: int) -> Transformer:
    kwargs = {k: v for k, v in case.items() if k != "name"}
    torch.manual_seed(seed)
    model = Transformer(preset(case["name"], VOCAB, SEQ, tie_embeddings=False, **kwargs)).eval()
    with torch.no_grad():
        model.lm_head.weight.mul_(30.0)  # logits of order 1 and more: a comparison that can fail
    return model


@pytest.mark.parametrize("case", list(CASES))
def test_round_trip_keeps_the_logits(case, tmp_path):
    from muonlab.integrations.hf_convert import hf_config, to_hf_state
    from muonlab.integrations.hf_import import read_hf_folder
    from muonlab.integrations.hf_tokenizer import write_tokenizer

    model = _model(CASES[case], seed=0)
    cfg = model.config
    model_type, kwargs = hf_config(cfg, eos_token_id=VOCAB - 1)
    hf = tf.AutoModelForCausalLM.from_config(tf.AutoConfig.for_model(model_type, **kwargs), dtype=torch.float32)
    hf.load_state_dict(to_hf_state(model.state_dict(), cfg), strict=True)
    hf.save_pretrained(tmp_path)
    write_tokenizer(ByteTokenizer(), tmp_path, SEQ)
    source = read_hf_folder(tmp_path, SEQ)
    back = Transformer(source.model_config).eval()
    source.load_into(back)

    ids = torch.randint(0, VOCAB, (2, SEQ), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ours, theirs, again = model(ids), hf.eval()(input_ids=ids).logits, back(ids)
        other = _model(CASES[case], seed=1)(ids)
    assert float(ours.abs().max()) > 1.0
    torch.testing.assert_close(theirs, ours, rtol=0, atol=TOLERANCE)
    torch.testing.assert_close(again, ours, rtol=0, atol=TOLERANCE)
    # negative control: another initialisation of the same shape is far outside the tolerance
    assert float((other - ours).abs().max()) > 1000 * TOLERANCE
    for field in ("n_heads", "n_kv_heads", "q_lora_rank", "n_shared_experts", "attention"):
        assert getattr(source.model_config, field) == getattr(cfg, field), field
