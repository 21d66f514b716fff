"""The export command lives beside the CLI: ``integrations`` (Hugging Face configs, weights, tokenizers)
sit below the training loop, which uses them for ``init_from``, and import nothing from ``train``."""

from __future__ import annotations

from test_structure import _imports, _modules


def test_integrations_import_nothing_from_train():
    modules = _modules()
    arrows = {(name, m) for name, path in modules.items() if name.startswith("muonlab.integrations")
              for m in _imports(name, path, modules) if m == "muonlab.train" or m.startswith("muonlab.train.")}
    assert not arrows, sorted(arrows)


def test_the_check_sees_an_arrow_into_train():
    """Negative control: the same scan finds train's own import of integrations (init_from's HF reader)."""
    modules = _modules()
    name = "muonlab.train.init_source"
    assert any(m.startswith("muonlab.integrations") for m in _imports(name, modules[name], modules))
