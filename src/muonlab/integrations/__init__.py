"""Integrations with other libraries; each module imports its library only when used.

- :mod:`.hf_trainer`: ``transformers.Trainer`` trains with muonlab's Muon (one line).
- :mod:`.hf_export`, :mod:`.hf_import`: muonlab runs to and from Hugging Face model folders
  (``muonlab export``, ``muonlab train --init_from``); :mod:`.hf_tokenizer` does the tokenizers.

Routing Hugging Face models needs no integration: :func:`muonlab.optim.param_groups` recognises
their layers (``Conv1D``, MoE routers, expert stacks) by itself.
"""
