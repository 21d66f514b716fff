"""``transformers.Trainer`` with ``muon_trainer_optimizers``: the weights change exactly (bit for bit) as
a plain muonlab loop changes them on the same batches under the same (linear warmup + decay) lr
schedule, with the same gradient clipping.

The plain loop divides each batch's summed loss by the divisor the Trainer used (its
``num_items_in_batch``): B·(T−1) for Llama, but B·T for GPT-2, whose config names no ``loss_type``
so transformers 5 counts every label, shifted or not.
"""

import copy

import pytest
import torch

from muonlab.integrations.hf_trainer import muon_trainer_optimizers
from muonlab.optim import Muon, param_groups

from hf_models import VOCAB, build

tf = pytest.importorskip("transformers")
pytestmark = pytest.mark.filterwarnings("ignore::UserWarning", "ignore::FutureWarning")

STEPS, WARMUP, LR, WD, CLIP = 6, 2, 3e-3, 0.1, 1.0


class Sequences(torch.utils.data.Dataset):
    def __init__(self, n: int = 32, length: int = 16):
        g = torch.Generator().manual_seed(0)
        self.ids = torch.randint(0, VOCAB, (n, length), generator=g)

    def __len__(self):
        return len(self.ids)

    def __getitem__(self, i):
        return {"input_ids": self.ids[i], "labels": self.ids[i]}


def _expected_lr(step: int) -> float:
    """transformers' "linear" schedule, written out: warmup from 0, then linear decay to 0 at STEPS."""
    return LR * step / WARMUP if step < WARMUP else LR * (STEPS - step) / (STEPS - WARMUP)


def _plain_loop(model, batches):
    optimizer = Muon(param_groups(model), lr=LR, weight_decay=WD, adamw_betas=(0.9, 0.999), adamw_eps=1e-8)
    for step, (ids, divisor) in enumerate(batches):
        model(input_ids=ids, labels=ids, num_items_in_batch=divisor).loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), CLIP)
        for group in optimizer.param_groups:
            group["lr"] = _expected_lr(step)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)


@pytest.mark.parametrize("name", ["llama", "gpt2"])
def test_trainer_steps_equal_the_plain_muon_loop(name, tmp_path):
    model = build(name)
    initial = copy.deepcopy(model)
    batches = []  # each step's input ids, and the divisor the Trainer has the loss's sum divided by

    def record(module, args, kwargs):
        batches.append((kwargs["input_ids"].clone(), kwargs["num_items_in_batch"]))

    model.register_forward_pre_hook(record, with_kwargs=True)
    args = tf.TrainingArguments(
        output_dir=str(tmp_path), max_steps=STEPS, per_device_train_batch_size=4, learning_rate=LR, weight_decay=WD,
        lr_scheduler_type="linear", warmup_steps=WARMUP, max_grad_norm=CLIP, save_strategy="no", report_to=[],
        use_cpu=True, disable_tqdm=True, logging_steps=100, seed=0)
    trainer = tf.Trainer(model=model, args=args, train_dataset=Sequences(),
                         optimizers=muon_trainer_optimizers(model, args))
    trainer.train()
    optimizer = trainer.optimizer.optimizer  # under accelerate's wrapper
    assert isinstance(optimizer, Muon)
    assert len(batches) == STEPS and {g["algorithm"] for g in optimizer.param_groups} == {"muon", "adamw"}
    assert all(g["lr"] == 0.0 for g in optimizer.param_groups)  # the schedule ended every group at 0

    _plain_loop(initial, batches)
    changed = 0
    for (n, trained), (_, expected) in zip(model.named_parameters(), initial.named_parameters()):
        assert torch.equal(trained, expected), n
        changed += not torch.equal(trained, build(name).get_parameter(n))
    assert changed == len(list(model.parameters()))  # every parameter moved, so the comparison means something
