"""A checkpoint's tokenizer.json in our Tokenizer (hf_tokenizer.py), against `tokenizers` and transformers.

Byte-level BPE tokenizers are trained here with the `tokenizers` library (Qwen2's and Llama 3's
pre-tokenizer regexes, GPT-2's ByteLevel regex; NFC for the Qwen2 one) and saved through transformers with a
chat template; nothing is downloaded. The oracles: `tokenizers`' own encode/decode on a few thousand strings,
and transformers' apply_chat_template (Jinja) for the rendered chats.
"""
from __future__ import annotations

import random

import pytest

from cs336_alignment.lm.hf_tokenizer import TokenizerFileError, chat_format_from_template
from cs336_alignment.lm.tokenizer import PretrainedTokenizer, Tokenizer, load_tokenizer

tokenizers = pytest.importorskip("tokenizers")
transformers = pytest.importorskip("transformers")

QWEN2_PAT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+"
             r"|\s+(?!\S)|\s+")
LLAMA3_PAT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
              r"|\s*[\r\n]+|\s+(?!\S)|\s+")
# Qwen2.5-Instruct's template without its tool-call branches (the structure and default system message it ships).
QWEN_TEMPLATE = r"""{%- if messages[0]['role'] == 'system' %}
    {{- '<|im_start|>system\n' + messages[0]['content'] + '<|im_end|>\n' }}
{%- else %}
    {{- '<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\n' }}
{%- endif %}
{%- for message in messages %}
    {%- if (message.role == "user") or (message.role == "system" and not loop.first) or (message.role == "assistant") %}
        {{- '<|im_start|>' + message.role + '\n' + message.content + '<|im_end|>' + '\n' }}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|im_start|>assistant\n' }}
{%- endif %}
"""
# Meta-Llama-3-8B-Instruct's template.
LLAMA3_TEMPLATE = ("{% set loop_messages = messages %}{% for message in loop_messages %}{% set content = "
                   "'<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n'+ message['content'] | trim + "
                   "'<|eot_id|>' %}{% if loop.index0 == 0 %}{% set content = bos_token + content %}{% endif %}"
                   "{{ content }}{% endfor %}{% if add_generation_prompt %}"
                   "{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}")
# A plain ChatML template (no default system message).
CHATML_TEMPLATE = ("{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + "
                   "'<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}"
                   "{% endif %}")

QWEN_SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
LLAMA3_SPECIALS = ["<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"]
FLAVOURS = {  # name -> (pre-tokenizer, NFC?, specials, template, tokenizer_config special tokens)
    "qwen2": ("split", QWEN2_PAT, True, QWEN_SPECIALS, QWEN_TEMPLATE,
              dict(eos_token="<|im_end|>", pad_token="<|endoftext|>")),
    "llama3": ("split", LLAMA3_PAT, False, LLAMA3_SPECIALS, LLAMA3_TEMPLATE,
               dict(bos_token="<|begin_of_text|>", eos_token="<|eot_id|>")),
    "gpt2_chatml": ("bytelevel", None, False, QWEN_SPECIALS, CHATML_TEMPLATE,
                    dict(eos_token="<|endoftext|>")),
}

PIECES = ["the", " The", "cat", "'s", "'LL", "'Re", " don't", "naïve", "café", "cafe\u0301", "Ångström", "straße",
          "Привет", " мир", "中文", "日本語のテキスト", "한국어", "🙂", "👍🏽", "∑", "→", "x²", "12", "2026",
          "3.14159",
          "1,000,000", "$5", "-7", "\n", "\n\n", "\r\n", "\t", "  ", "    ", "\u00a0", "\u3000", " ", "!!", "?", "...",
          "(a+b)", "#### 42", "<|im_end|>", "<|endoftext|>", "<|eot_id|>", "<|im_start|>", "e\u0301\u0302", "ﬁ",
          "Ω", "Ω", "Q: ", "A:", "user", "assistant"]


def random_strings(n: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        parts = [rng.choice(PIECES) if rng.random() < 0.6 else "".join(
            chr(rng.choice([rng.randint(32, 126), rng.randint(0xA0, 0x24F), rng.randint(0x370, 0x3FF),
                            rng.randint(0x4E00, 0x4E80), rng.randint(0x1F600, 0x1F64F), rng.randint(0x300, 0x36F)]))
            for _ in range(rng.randint(1, 6))) for _ in range(rng.randint(1, 12))]
        out.append((" " if rng.random() < 0.5 else "").join(parts))
    return out


def training_corpus() -> list[str]:
    from cs336_alignment.world.tasks import pretraining_text

    return pretraining_text(300, seed=0).split("\n") + random_strings(4000, seed=123)


def build_hf_tokenizer(flavour: str, path):
    """Train a byte-level BPE with `tokenizers` and save it with transformers (tokenizer.json + config)."""
    from tokenizers import Regex, decoders, models, normalizers, pre_tokenizers, trainers

    kind, pattern, nfc, specials, template, config = FLAVOURS[flavour]
    tok = tokenizers.Tokenizer(models.BPE())
    if kind == "split":
        tok.pre_tokenizer = pre_tokenizers.Sequence([
            pre_tokenizers.Split(Regex(pattern), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    else:
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    if nfc:
        tok.normalizer = normalizers.NFC()
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=1200, special_tokens=specials, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(training_corpus(), trainer=trainer)
    fast = transformers.PreTrainedTokenizerFast(tokenizer_object=tok, **config)
    fast.chat_template = template
    fast.save_pretrained(path)
    return tok, fast


@pytest.fixture(scope="module", params=list(FLAVOURS))
def trained(request, tmp_path_factory):
    """(flavour, tokenizers.Tokenizer, transformers tokenizer, our tokenizer loaded from the saved directory)."""
    path = tmp_path_factory.mktemp(request.param)
    tok, fast = build_hf_tokenizer(request.param, path)
    return request.param, tok, fast, Tokenizer.from_pretrained(path)


def test_encode_decode_match_tokenizers_on_3000_strings(trained):
    flavour, tok, _, ours = trained
    assert isinstance(ours, PretrainedTokenizer)
    strings = random_strings(3000, seed=7)
    mismatches = [s for s in strings if ours.encode(s) != tok.encode(s, add_special_tokens=False).ids]
    assert not mismatches, f"{flavour}: {len(mismatches)} of {len(strings)} differ, e.g. {mismatches[0]!r}"
    for s in strings:
        ids = tok.encode(s, add_special_tokens=False).ids
        assert ours.decode(ids) == tok.decode(ids, skip_special_tokens=False)
        assert ours.decode(ids, skip_special_tokens=True) == tok.decode(ids, skip_special_tokens=True)


def test_decode_of_arbitrary_ids_matches_tokenizers(trained):
    """Random id sequences (token boundaries inside UTF-8 characters, special tokens anywhere)."""
    _, tok, _, ours = trained
    rng = random.Random(0)
    for _ in range(300):
        ids = [rng.randrange(tok.get_vocab_size()) for _ in range(rng.randint(1, 20))]
        assert ours.decode(ids) == tok.decode(ids, skip_special_tokens=False)


CHATS = [
    [{"role": "user", "content": "What is 2 + 3?"}, {"role": "assistant", "content": "2 + 3 = 5.\n#### 5"}],
    [{"role": "system", "content": "Answer briefly."}, {"role": "user", "content": "Straße, café, 中文 🙂"},
     {"role": "assistant", "content": "Ja.  Oui.\n\n好"}, {"role": "user", "content": "  spaces\tand\ttabs  "},
     {"role": "assistant", "content": "Done"}],
    [{"role": "user", "content": "Only a question, e\u0301?"}],
]


@pytest.mark.parametrize("add_generation_prompt", [False, True])
def test_chat_template_matches_apply_chat_template(trained, add_generation_prompt):
    flavour, _, fast, ours = trained
    for chat in CHATS:
        text = fast.apply_chat_template(chat, tokenize=False, add_generation_prompt=add_generation_prompt)
        assert ours.apply_chat_template(chat, add_generation_prompt) == text, flavour
        ids = fast.apply_chat_template(chat, tokenize=True, add_generation_prompt=add_generation_prompt)
        ids = ids["input_ids"] if isinstance(ids, dict) or hasattr(ids, "keys") else ids
        assert ours.render(chat, add_generation_prompt)[0] == list(ids), flavour


def test_assistant_mask_covers_content_and_end_of_turn(trained):
    """Oracle: the masked tokens decode to exactly each assistant content followed by the end-of-turn token."""
    flavour, _, _, ours = trained
    end = "<|im_end|>" if flavour != "llama3" else "<|eot_id|>"
    for chat in CHATS:
        ids, mask = ours.render(chat)
        assert len(ids) == len(mask)
        expected = "".join((m["content"].strip() if flavour == "llama3" else m["content"]) + end
                           for m in chat if m["role"] == "assistant")
        assert ours.decode([i for i, keep in zip(ids, mask) if keep]) == expected
        assert ours.end_of_turn_id == ours.special_tokens[end]


def test_special_ids_and_prompt(trained):
    flavour, _, fast, ours = trained
    assert ours.pad_token_id == (fast.pad_token_id if fast.pad_token_id is not None else ours.eos_token_id)
    assert ours.eos_token_id == ours.special_tokens["<|end_of_text|>" if flavour == "llama3" else "<|endoftext|>"]
    prompt = fast.apply_chat_template([{"role": "user", "content": "Hi"}], tokenize=False, add_generation_prompt=True)
    assert ours.decode(ours.prompt_ids("Hi")) == prompt


def test_load_tokenizer_picks_the_format(trained, tmp_path):
    _, _, fast, ours = trained
    assert load_tokenizer(ours.source_dir).encode("hello world") == ours.encode("hello world")
    assert load_tokenizer(None).vocab_size == Tokenizer.load_default().vocab_size


def test_default_system_prompt_is_read_from_the_template():
    assert chat_format_from_template(QWEN_TEMPLATE, "x").default_system == (
        "You are Qwen, created by Alibaba Cloud. You are a helpful assistant.")
    assert chat_format_from_template(CHATML_TEMPLATE, "x").default_system is None
    assert chat_format_from_template(LLAMA3_TEMPLATE, "x", {"bos_token": "<|begin_of_text|>"}).kind == "llama3"
    with pytest.raises(TokenizerFileError, match="chat_template"):
        chat_format_from_template("{{ messages }}", "tokenizer_config.json")


def test_extra_splits_of_a_token_in_merges_load_and_encode_the_same(tmp_path):
    """A tokenizer.json converted from tiktoken ranks can list every split (l, r) of a token as a merge, all
    with the token's id. Add such splits to a trained tokenizer: `tokenizers` and ours still agree."""
    import json

    build_hf_tokenizer("qwen2", tmp_path)
    spec = json.loads((tmp_path / "tokenizer.json").read_text(encoding="utf-8"))
    vocab, merges = spec["model"]["vocab"], spec["model"]["merges"]
    pairs = [m.split(" ") if isinstance(m, str) else list(m) for m in merges]
    known, out, added = {tuple(p) for p in pairs}, [], 0
    for left, right in pairs:
        out.append([left, right])
        token = left + right
        for i in range(1, len(token)):  # other splits whose halves are already tokens
            split = (token[:i], token[i:])
            if split not in known and split[0] in vocab and split[1] in vocab and vocab[split[0]] < vocab[token] \
                    and vocab[split[1]] < vocab[token]:
                out.append(list(split))
                known.add(split)
                added += 1
    assert added >= 10
    spec["model"]["merges"] = out
    (tmp_path / "tokenizer.json").write_text(json.dumps(spec, ensure_ascii=False), encoding="utf-8")
    theirs = tokenizers.Tokenizer.from_file(str(tmp_path / "tokenizer.json"))
    ours = Tokenizer.from_pretrained(tmp_path)
    strings = random_strings(1000, seed=11)
    assert [ours.encode(s) for s in strings] == [theirs.encode(s, add_special_tokens=False).ids for s in strings]


def test_merges_out_of_id_order_are_refused(tmp_path):
    import json

    build_hf_tokenizer("qwen2", tmp_path)
    spec = json.loads((tmp_path / "tokenizer.json").read_text(encoding="utf-8"))
    merges = spec["model"]["merges"]
    merges[3], merges[40] = merges[40], merges[3]
    (tmp_path / "tokenizer.json").write_text(json.dumps(spec, ensure_ascii=False), encoding="utf-8")
    with pytest.raises(TokenizerFileError, match=r"model\.merges\[4\]"):  # the first after the high one
        Tokenizer.from_pretrained(tmp_path)


# ---------------------------------------------------------------------------------------------------------
# Chat templates are recognised by what they render; decode keeps added tokens that are not special
# ---------------------------------------------------------------------------------------------------------

# Qwen3's template (Qwen3-0.6B's tokenizer_config.json; the tool-call branches shortened to their structure):
# the last assistant turn after the last user query gets a <think> block, empty when there is no reasoning.
QWEN3_TEMPLATE = r"""{%- if tools %}
    {{- '<|im_start|>system\n' }}
    {%- if messages[0].role == 'system' %}
        {{- messages[0].content + '\n\n' }}
    {%- endif %}
    {{- "# Tools\n\nYou may call one or more functions to assist with the user query.\n\n<tools>" }}
    {%- for tool in tools %}
        {{- "\n" }}
        {{- tool | tojson }}
    {%- endfor %}
    {{- "\n</tools><|im_end|>\n" }}
{%- else %}
    {%- if messages[0].role == 'system' %}
        {{- '<|im_start|>system\n' + messages[0].content + '<|im_end|>\n' }}
    {%- endif %}
{%- endif %}
{%- set ns = namespace(multi_step_tool=true, last_query_index=messages|length - 1) %}
{%- for message in messages[::-1] %}
    {%- set index = (messages|length - 1) - loop.index0 %}
    {%- if ns.multi_step_tool and message.role == "user" and message.content is string and not(message.content.startswith('<tool_response>') and message.content.endswith('</tool_response>')) %}
        {%- set ns.multi_step_tool = false %}
        {%- set ns.last_query_index = index %}
    {%- endif %}
{%- endfor %}
{%- for message in messages %}
    {%- if message.content is string %}
        {%- set content = message.content %}
    {%- else %}
        {%- set content = '' %}
    {%- endif %}
    {%- if (message.role == "user") or (message.role == "system" and not loop.first) %}
        {{- '<|im_start|>' + message.role + '\n' + content + '<|im_end|>' + '\n' }}
    {%- elif message.role == "assistant" %}
        {%- set reasoning_content = '' %}
        {%- if message.reasoning_content is string %}
            {%- set reasoning_content = message.reasoning_content %}
        {%- else %}
            {%- if '</think>' in content %}
                {%- set reasoning_content = content.split('</think>')[0].rstrip('\n').split('<think>')[-1].lstrip('\n') %}
                {%- set content = content.split('</think>')[-1].lstrip('\n') %}
            {%- endif %}
        {%- endif %}
        {%- if loop.index0 > ns.last_query_index %}
            {%- if loop.last or (not loop.last and reasoning_content) %}
                {{- '<|im_start|>' + message.role + '\n<think>\n' + reasoning_content.strip('\n') + '\n</think>\n\n' + content.lstrip('\n') }}
            {%- else %}
                {{- '<|im_start|>' + message.role + '\n' + content }}
            {%- endif %}
        {%- else %}
            {{- '<|im_start|>' + message.role + '\n' + content }}
        {%- endif %}
        {%- if message.tool_calls %}
            {%- for tool_call in message.tool_calls %}
                {{- '\n<tool_call>\n' + tool_call.function.name + '\n</tool_call>' }}
            {%- endfor %}
        {%- endif %}
        {{- '<|im_end|>\n' }}
    {%- elif message.role == "tool" %}
        {{- '<|im_start|>user\n<tool_response>\n' + content + '\n</tool_response><|im_end|>\n' }}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|im_start|>assistant\n' }}
    {%- if enable_thinking is defined and enable_thinking is false %}
        {{- '<think>\n\n</think>\n\n' }}
    {%- endif %}
{%- endif %}"""
# Qwen2-VL-2B-Instruct's template: its default system message is template text, not a quoted string.
QWEN2_VL_TEMPLATE = (
    "{% set image_count = namespace(value=0) %}{% set video_count = namespace(value=0) %}{% for message in messages %}"
    "{% if loop.first and message['role'] != 'system' %}<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
    "{% endif %}<|im_start|>{{ message['role'] }}\n{% if message['content'] is string %}{{ message['content'] }}"
    "<|im_end|>\n{% else %}{% for content in message['content'] %}{% if content['type'] == 'image' or 'image' in "
    "content or 'image_url' in content %}{% set image_count.value = image_count.value + 1 %}{% if add_vision_id %}"
    "Picture {{ image_count.value }}: {% endif %}<|vision_start|><|image_pad|><|vision_end|>{% elif content['type'] "
    "== 'video' or 'video' in content %}{% set video_count.value = video_count.value + 1 %}{% if add_vision_id %}"
    "Video {{ video_count.value }}: {% endif %}<|vision_start|><|video_pad|><|vision_end|>{% elif 'text' in content "
    "%}{{ content['text'] }}{% endif %}{% endfor %}<|im_end|>\n{% endif %}{% endfor %}{% if add_generation_prompt %}"
    "<|im_start|>assistant\n{% endif %}")
# Meta-Llama-3-8B's (the base model's) template: the instruct one without the generation-prompt branch.
LLAMA3_BASE_TEMPLATE = ("{% set loop_messages = messages %}{% for message in loop_messages %}{% set content = "
                        "'<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n'+ message['content'] | trim"
                        " + '<|eot_id|>' %}{% if loop.index0 == 0 %}{% set content = bos_token + content %}{% endif %}"
                        "{{ content }}{% endfor %}")


@pytest.fixture(scope="module")
def qwen_tokenizer(tmp_path_factory):
    """(tokenizers.Tokenizer, transformers tokenizer) of one trained Qwen2-style tokenizer."""
    return build_hf_tokenizer("qwen2", tmp_path_factory.mktemp("qwen_base"))


def _save_with_template(fast, template, path):
    fast.chat_template = template
    fast.save_pretrained(path)
    return path / "chat_template.jinja" if (path / "chat_template.jinja").is_file() else path / "tokenizer_config.json"


def test_qwen3_template_is_refused_naming_the_file(qwen_tokenizer, tmp_path):
    """Oracle: transformers renders a final assistant turn with an empty <think> block, which ChatML lacks, so the
    old substring match (<|im_start|> -> ChatML) trained on text the model never sees. Now: one error naming
    the file and where the renderings part."""
    _, fast = qwen_tokenizer
    file = _save_with_template(fast, QWEN3_TEMPLATE, tmp_path)
    theirs = fast.apply_chat_template(CHATS[0], tokenize=False)
    assert "<|im_start|>assistant\n<think>\n\n</think>\n\n2 + 3 = 5." in theirs
    with pytest.raises(TokenizerFileError) as info:
        Tokenizer.from_pretrained(tmp_path)
    message = str(info.value)
    assert message.startswith(f"{file}: field 'chat_template'") and "<think>" in message and "\n" not in message


def test_qwen2_vl_default_system_message_is_read_from_the_rendering(qwen_tokenizer, tmp_path):
    """Qwen2-VL writes its default system message as template text: the substring regex found none and rendered
    without it. Oracle: apply_chat_template's text and ids, with and without the generation prompt."""
    _, fast = qwen_tokenizer
    _save_with_template(fast, QWEN2_VL_TEMPLATE, tmp_path)
    ours = Tokenizer.from_pretrained(tmp_path)
    assert ours.chat_format.default_system == "You are a helpful assistant."
    for chat in CHATS:
        for add_generation_prompt in (False, True):
            text = fast.apply_chat_template(chat, tokenize=False, add_generation_prompt=add_generation_prompt)
            assert ours.apply_chat_template(chat, add_generation_prompt) == text
            ids = fast.apply_chat_template(chat, tokenize=True, add_generation_prompt=add_generation_prompt)
            ids = ids["input_ids"] if hasattr(ids, "keys") else ids
            assert ours.render(chat, add_generation_prompt)[0] == list(ids)


def test_llama3_base_template_without_generation_prompt_is_refused(qwen_tokenizer):
    """Oracle: transformers renders Llama 3 base's template identically with and without add_generation_prompt
    (it has no such branch); our Llama 3 format would append the assistant header, so it is refused."""
    _, fast = qwen_tokenizer
    fast.chat_template = LLAMA3_BASE_TEMPLATE
    chat = CHATS[2]
    tokens = {"bos_token": "<|begin_of_text|>"}
    with_prompt, without = (fast.apply_chat_template(chat, tokenize=False, add_generation_prompt=g, **tokens)
                            for g in (True, False))
    assert with_prompt == without and with_prompt.startswith("<|begin_of_text|><|start_header_id|>user")
    with pytest.raises(TokenizerFileError, match=r"tokenizer_config.json: field 'chat_template'.*"
                                                 r"add_generation_prompt=True"):
        chat_format_from_template(LLAMA3_BASE_TEMPLATE, "tokenizer_config.json", tokens)
    assert chat_format_from_template(LLAMA3_TEMPLATE, "tokenizer_config.json", tokens).kind == "llama3"


def test_a_template_that_raises_is_refused_in_one_line():
    with pytest.raises(TokenizerFileError, match=r"^x.json: field 'chat_template' fails to render.*roles"):
        chat_format_from_template("{{ raise_exception('roles must alternate') }}", "x.json")


def test_decode_skips_only_added_tokens_marked_special(qwen_tokenizer, tmp_path):
    """Qwen3's tokenizer.json adds <think>, </think>, <tool_call>, </tool_call> with special=false: `tokenizers`
    keeps them in decode(skip_special_tokens=True) and drops <|im_end|>. Oracle: `tokenizers` on the same file,
    on random id sequences over the whole vocabulary and on encoded strings."""
    tok, fast = qwen_tokenizer
    _save_with_template(fast, QWEN_TEMPLATE, tmp_path)
    tok = tokenizers.Tokenizer.from_str(tok.to_str())  # a copy: the fixture's stays as trained
    added = ["<think>", "</think>", "<tool_call>", "</tool_call>"]
    tok.add_tokens([tokenizers.AddedToken(t, special=False, normalized=False) for t in added])
    tok.save(str(tmp_path / "tokenizer.json"))
    theirs = tokenizers.Tokenizer.from_file(str(tmp_path / "tokenizer.json"))
    ours = Tokenizer.from_pretrained(tmp_path)
    text = "<|im_start|>assistant\n<think>\nsum</think>\n\n5<tool_call>f</tool_call><|im_end|>"
    ids = ours.encode(text)
    assert ids == theirs.encode(text, add_special_tokens=False).ids
    assert ours.decode(ids, skip_special_tokens=True) == theirs.decode(ids, skip_special_tokens=True) == \
        "assistant\n<think>\nsum</think>\n\n5<tool_call>f</tool_call>"
    rng = random.Random(5)
    vocab = theirs.get_vocab_size()
    for _ in range(200):
        seq = [rng.randrange(vocab) for _ in range(rng.randint(1, 30))]
        for skip in (False, True):
            assert ours.decode(seq, skip_special_tokens=skip) == theirs.decode(seq, skip_special_tokens=skip)
