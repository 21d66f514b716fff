"""Fine-tuning data: the chat template, which targets carry a loss, packing, the JSONL reader and the
built-in ``python-functions`` set.

Expected values come from literal texts and hand-counted positions (the byte tokenizer makes a
character one token), never from the code under test.
"""

import json
import re

import numpy as np
import pytest
import torch

from muonlab.data import ByteTokenizer, DataError, TokenLoader, train_bpe, val_batches
from muonlab.data.chat import CHAT_TEMPLATE, GENERATION_PROMPT, render_chat
from muonlab.data.python_functions import function_pairs, python_function_pairs
from muonlab.data.sft import IGNORE_INDEX, pack, prepare_sft, read_sft_jsonl, split_conversations, tokenize_conversation
from muonlab.models import IGNORE_INDEX as MODEL_IGNORE_INDEX
from muonlab.models import ModelConfig, Transformer

CHAT = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hi"},
        {"role": "assistant", "content": "hello"}, {"role": "user", "content": "2+2?"},
        {"role": "assistant", "content": "4"}]
CHAT_TEXT = ("<|system|>\nBe brief.<|end|>\n<|user|>\nhi<|end|>\n<|assistant|>\nhello<|end|>\n"
             "<|user|>\n2+2?<|end|>\n<|assistant|>\n4<|end|>\n")
TRAINED_TEXTS = ["hello<|end|>\n", "4<|end|>\n"]


def _trained_positions(text: str, pieces: list[str]) -> set[int]:
    """Character positions of each piece, found left to right in ``text`` (ASCII: one byte each)."""
    positions, start = set(), 0
    for piece in pieces:
        at = text.index(piece, start)
        positions |= set(range(at, at + len(piece)))
        start = at + len(piece)
    return positions


def test_ignore_index_is_the_models():
    assert IGNORE_INDEX == MODEL_IGNORE_INDEX == -100


def test_chat_text_and_trained_spans():
    text, spans = render_chat(CHAT)
    assert text == CHAT_TEXT
    assert [text[a:b] for a, b in spans] == TRAINED_TEXTS


def test_trained_targets_are_exactly_the_responses_and_the_final_end_of_text():
    ids, trained = tokenize_conversation(ByteTokenizer(), CHAT)
    assert ids == list(CHAT_TEXT.encode()) + [256]
    expected = _trained_positions(CHAT_TEXT, TRAINED_TEXTS) | {len(CHAT_TEXT)}  # the end-of-text after the last answer
    assert {i for i, t in enumerate(trained) if t} == expected
    ending_with_user = CHAT + [{"role": "user", "content": "bye"}]
    assert tokenize_conversation(ByteTokenizer(), ending_with_user)[1][-1] is False

    packed = pack([(ids, trained)], seq_len=len(ids) + 3, pad_id=256)
    x, y = next(val_batches(packed.tokens, 1, packed.seq_len, labels=packed.labels))
    counted = {i + 1 for i in range(x.shape[1]) if y[0, i] != IGNORE_INDEX}  # target i is token i + 1
    assert counted == expected
    for i in range(x.shape[1] - 1):
        if y[0, i] != IGNORE_INDEX:
            assert y[0, i] == x[0, i + 1]


class _WholeTextToken:
    """A tokenizer whose one token covers the whole text."""

    eot_id = 9

    def encode_batch_with_offsets(self, texts):
        return [([5], [(0, len(text))]) for text in texts]


def test_the_first_token_of_a_conversation_never_carries_a_loss():
    """Its target would be predicted from the previous conversation in the packed row."""
    assert tokenize_conversation(_WholeTextToken(), CHAT) == ([5, 9], [False, True])


def test_the_loss_counts_exactly_the_response_targets_and_ignores_prompt_targets():
    tokenizer = ByteTokenizer()
    examples = [tokenize_conversation(tokenizer, CHAT), tokenize_conversation(tokenizer, CHAT[1:3])]
    packed = pack(examples, seq_len=200, pad_id=256)  # both in one row: 119 + 47 tokens
    x, y = next(val_batches(packed.tokens, 1, 200, labels=packed.labels))
    # The same conversations with every prompt (untrained) token replaced: the targets do not change.
    rng = np.random.default_rng(0)
    scrambled = [([t if keep else int(rng.integers(0, 256)) for t, keep in zip(ids, trained)], trained)
                 for ids, trained in examples]
    other = pack(scrambled, seq_len=200, pad_id=256)
    assert not np.array_equal(other.tokens, packed.tokens)
    np.testing.assert_array_equal(other.labels, packed.labels)
    _, y_other = next(val_batches(other.tokens, 1, 200, labels=other.labels))

    torch.manual_seed(0)
    model = Transformer(ModelConfig(vocab_size=257, d_model=32, n_layers=1, n_heads=2, max_seq_len=200)).double()
    with torch.no_grad():
        loss = model(x, y)
        assert model(x, y_other) == loss
        logits = model(x)[0]
    first = _trained_positions(CHAT_TEXT, TRAINED_TEXTS) | {len(CHAT_TEXT)}
    second_text = CHAT_TEXT[CHAT_TEXT.index("<|user|>"):CHAT_TEXT.index("<|user|>\n2+2")]
    offset = len(CHAT_TEXT) + 1  # the second conversation starts after the first one's end-of-text
    second = {offset + p for p in _trained_positions(second_text, ["hello<|end|>\n"])} | {offset + len(second_text)}
    positions = sorted(first | second)
    reference = -torch.stack([torch.log_softmax(logits[p - 1], -1)[x[0, p] if p < 200 else y[0, p - 1]]
                              for p in positions]).mean()
    assert len(positions) == int((y != IGNORE_INDEX).sum())
    torch.testing.assert_close(loss.double(), reference, rtol=2e-6, atol=0)  # the model's loss is fp32


def _example(k: int, length: int, trained_from: int) -> tuple[list[int], list[bool]]:
    return [100 * k + i for i in range(length)], [i >= trained_from for i in range(length)]


def test_packing_is_next_fit_whole_conversations_padded_without_loss():
    examples = [_example(1, 4, 2), _example(2, 5, 1), _example(3, 3, 1), _example(4, 12, 3), _example(5, 6, 5),
                _example(6, 14, 11)]  # 4: cut to 10 tokens; 6: cut to 10, nothing trained left: dropped
    packed = pack(examples, seq_len=10, pad_id=7)
    rows = [[100, 101, 102, 103, 200, 201, 202, 203, 204, 7], [300, 301, 302] + [7] * 7,
            [400 + i for i in range(10)], [500 + i for i in range(6)] + [7] * 4]
    expected_tokens = np.array(sum(rows, []) + [7])
    np.testing.assert_array_equal(packed.tokens, expected_tokens)
    trained = {(0, 2), (0, 3), (0, 5), (0, 6), (0, 7), (0, 8), (1, 1), (1, 2), (3, 5)} | {(2, i) for i in range(3, 10)}
    expected_labels = np.full(41, IGNORE_INDEX)
    for r, i in trained:
        expected_labels[10 * r + i] = expected_tokens[10 * r + i]
    np.testing.assert_array_equal(packed.labels, expected_labels)
    assert (packed.rows, packed.conversations, packed.truncated, packed.dropped) == (4, 5, 2, 1)

    loader = TokenLoader(packed.tokens, 4, 10, seed=0, labels=packed.labels)
    x, y = loader.next_batch()
    assert sorted(map(tuple, x.tolist())) == sorted(map(tuple, rows))  # each window is one row
    for row_x, row_y in zip(x, y):
        r = rows.index(row_x.tolist())
        np.testing.assert_array_equal(row_y.numpy(), expected_labels[10 * r + 1:10 * r + 11])
        assert row_y[-1] == IGNORE_INDEX  # the next row's first token: no target across conversations


def test_jsonl_rows_of_both_kinds(tmp_path):
    path = tmp_path / "chat.jsonl"
    rows = [{"prompt": "p1", "response": "r1"}, {"prompt": "p2", "response": "r2", "system": "s"},
            {"messages": CHAT}]
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n\n")
    assert read_sft_jsonl(path) == [
        [{"role": "user", "content": "p1"}, {"role": "assistant", "content": "r1"}],
        [{"role": "system", "content": "s"}, {"role": "user", "content": "p2"}, {"role": "assistant", "content": "r2"}],
        CHAT]


@pytest.mark.parametrize("row, message", [
    ({"prompt": "p"}, r"line 2 of \S+bad.jsonl has no response: its \"response\" is missing"),
    ({"prompt": "p", "response": "  "}, r"line 2 of \S+bad.jsonl has no response"),
    ({"messages": [{"role": "user", "content": "u"}]}, r"line 2 of \S+bad.jsonl has no response: its messages have no"),
    ({"messages": [{"role": "bot", "content": "u"}]}, r"line 2 of \S+bad.jsonl has message 0 .* role one of system"),
    ({"text": "t"}, r"line 2 of \S+bad.jsonl is not a fine-tuning row; each row must be"),
    ("not json", r"line 2 of \S+bad.jsonl is not valid JSON"),
])
def test_a_bad_row_is_one_sentence_naming_file_and_line(tmp_path, row, message):
    path = tmp_path / "bad.jsonl"
    text = json.dumps({"prompt": "ok", "response": "ok"}) + "\n" + (row if isinstance(row, str) else json.dumps(row))
    path.write_text(text)
    with pytest.raises(DataError, match=message) as info:
        read_sft_jsonl(path)
    assert "\n" not in str(info.value)
    assert path.read_text() == text


def test_unknown_sources_name_the_valid_ones(tmp_path):
    for spec in ("english", str(tmp_path / "missing.jsonl")):
        with pytest.raises(DataError, match=r"python-functions.*\.jsonl"):
            prepare_sft(spec, ByteTokenizer(), 64, cache_dir=tmp_path)


SOURCE = '''
import x


@decorator
def plain(a, b=1):
    """Add."""
    # a comment
    return a + b


class K:
    async def method(
        self,
    ):
        """Method doc.

        More."""

        text = """
col zero"""
        return text

    def stub(self):
        """Stub."""
        raise NotImplementedError

    def no_doc(self):
        return 1

    def same_line(self):
        """Doc."""; return 2
'''


def test_function_pairs_cut_signature_and_docstring_from_body():
    assert function_pairs(SOURCE) == [
        ('def plain(a, b=1):\n    """Add."""', "    # a comment\n    return a + b"),
        ('async def method(\n    self,\n):\n    """Method doc.\n\n    More."""',
         '    text = """\ncol zero"""\n    return text'),
    ]
    assert function_pairs("def broken(:\n") == []


def test_builtin_set_is_deterministic_and_substantial(muonlab_cache):
    pairs = python_function_pairs(muonlab_cache)  # parsed, then cached
    assert pairs == python_function_pairs(muonlab_cache)  # read back from the cache
    assert len(pairs) > 3000
    assert all(re.match(r"(async )?def ", p) and r.strip() for p, r in pairs)
    assert sum(len(r) for _, r in pairs) > 1_000_000  # characters of responses
    conversations = [[{"role": "user", "content": p}, {"role": "assistant", "content": r}] for p, r in pairs]
    train, val = split_conversations(conversations, 0.03)
    assert (train, val) == split_conversations(conversations, 0.03)
    assert 0.015 < len(val) / len(conversations) < 0.05
    assert not {c[0]["content"] for c in train} & {c[0]["content"] for c in val}  # a prompt stays on one side


@pytest.mark.parametrize("kind", ["byte", "bpe"])
def test_hugging_face_chat_template_gives_the_same_text_ids_and_mask(tmp_path, kind):
    transformers = pytest.importorskip("transformers")
    from muonlab.integrations.hf_tokenizer import write_tokenizer

    # BPE learns "\n" + indentation as one token, so the answer's first token also covers the
    # newline before it: a token that straddles the start of a trained span counts as trained.
    tokenizer = ByteTokenizer() if kind == "byte" else train_bpe([SOURCE] * 20, "python-like", 300, tmp_path)
    write_tokenizer(tokenizer, tmp_path, 256, chat_template=CHAT_TEMPLATE)
    hf = transformers.AutoTokenizer.from_pretrained(tmp_path)
    chat = CHAT[:3] + [{"role": "user", "content": "  two  spaces, ünïcode ✓"},
                       {"role": "assistant", "content": "        return text\n\treply 🎉"}]
    text, spans = render_chat(chat)
    straddling = [(a, b) for a, b in tokenizer.encode_with_offsets(text)[1] if a < spans[-1][0] < b]
    assert bool(straddling) == (kind == "bpe")
    assert hf.apply_chat_template(chat, tokenize=False) == render_chat(chat)[0]
    assert hf.apply_chat_template(chat[:2], tokenize=False, add_generation_prompt=True) == (
        render_chat(chat[:2])[0] + GENERATION_PROMPT)
    out = hf.apply_chat_template(chat, tokenize=True, return_dict=True, return_assistant_tokens_mask=True)
    ids, trained = tokenize_conversation(tokenizer, chat)
    assert out["input_ids"] == ids[:-1]  # muonlab adds the end-of-text after the template's text
    assert out["assistant_masks"] == [int(t) for t in trained[:-1]]


def _trained_by_walking(offsets, spans):
    """Token i is trained when any span overlaps its characters [start, end) (a slow all-pairs check)."""
    return [any(start < span_end and end > span_start for span_start, span_end in spans) for start, end in offsets]


def test_the_vectorised_response_mask_equals_an_all_pairs_overlap_check():
    from muonlab.data.sft import trained_tokens

    rng = np.random.default_rng(1)
    for _ in range(200):
        cuts = np.sort(rng.choice(np.arange(1, 60), size=rng.integers(1, 20), replace=False))
        offsets = list(zip([0, *cuts[:-1].tolist()], cuts.tolist()))  # tokens tile the text
        marks = np.sort(rng.choice(np.arange(0, 61), size=2 * int(rng.integers(0, 4)), replace=False))
        spans = [(int(a), int(b)) for a, b in zip(marks[::2], marks[1::2])]
        assert trained_tokens(offsets, spans).tolist() == _trained_by_walking(offsets, spans)


def test_conversations_tokenized_together_equal_each_tokenized_alone(tmp_path):
    from muonlab.data.sft import tokenize_conversations

    tokenizer = train_bpe(["def f(x):\n    return x + 1\n" * 20, CHAT[1]["content"] * 5], "mixed", 300, tmp_path)
    chats = [CHAT, CHAT[1:3], [{"role": "user", "content": "é ü"}, {"role": "assistant", "content": "ok ✓"}]]
    together = tokenize_conversations(tokenizer, chats)
    for chat, got in zip(chats, together):
        text, spans = render_chat(chat)
        ids, offsets = tokenizer.encode_with_offsets(text)
        expected = _trained_by_walking(offsets, spans)
        expected[0] = False
        assert got == ([*ids, tokenizer.eot_id], [*expected, chat[-1]["role"] == "assistant"])


def test_packed_splits_are_cached_and_a_corrupt_cache_is_rebuilt(tmp_path, monkeypatch):
    import muonlab.data.sft as sft

    path = tmp_path / "rows.jsonl"
    path.write_text("".join(json.dumps({"prompt": f"q{i}", "response": f"answer {i} " * (i % 7 + 1)}) + "\n"
                            for i in range(40)))
    first = prepare_sft(str(path), ByteTokenizer(), 48, cache_dir=tmp_path / "cache")
    cached = list((tmp_path / "cache" / "sft").glob("packed-*.npz"))
    assert len(cached) == 1

    def no_tokenizing(*args, **kwargs):
        raise AssertionError("the cached packed splits should have been read")

    monkeypatch.setattr(sft, "tokenize_conversations", no_tokenizing)
    again = prepare_sft(str(path), ByteTokenizer(), 48, cache_dir=tmp_path / "cache")
    for a, b in ((first.train, again.train), (first.val, again.val)):
        assert np.array_equal(a.tokens, b.tokens) and np.array_equal(a.labels, b.labels)
        assert (a.conversations, a.truncated, a.dropped, a.seq_len) == (b.conversations, b.truncated, b.dropped,
                                                                         b.seq_len)
    monkeypatch.undo()
    cached[0].write_bytes(b"not an npz")
    rebuilt = prepare_sft(str(path), ByteTokenizer(), 48, cache_dir=tmp_path / "cache")
    assert np.array_equal(rebuilt.train.tokens, first.train.tokens)
    other = prepare_sft(str(path), ByteTokenizer(), 64, cache_dir=tmp_path / "cache")  # another seq_len: new entry
    assert other.train.seq_len == 64 and len(list((tmp_path / "cache" / "sft").glob("packed-*.npz"))) == 2
