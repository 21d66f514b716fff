"""Integrations with other libraries; each module imports its library only when used.

- :mod:`.hf_trainer`: ``transformers.Trainer`` trains with muonlab's Muon (one line).
- :mod:`.hf_convert`, :mod:`.hf_import`, :mod:`.hf_tokenizer`: configs, weights and tokenizers to and
  from Hugging Face model folders (``muonlab train --init_from``; ``muonlab export``, which lives beside
  the CLI in :mod:`muonlab.export`). Nothing here imports :mod:`muonlab.train`.

Routing Hugging Face models needs no integration: :func:`muonlab.optim.param_groups` recognises
their layers (``Conv1D``, MoE routers, expert stacks) by itself.
"""
